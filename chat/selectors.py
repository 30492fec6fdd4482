"""Read-side queries. Every object is reached through its owner."""

from datetime import timedelta
from importlib import import_module

from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.db.models import Q
from django.shortcuts import get_object_or_404
from django.utils import timezone
from django.utils.crypto import constant_time_compare

from streaming.worker import WORKER_ID

from .errors import NotFound
from .models import Message, Project, ProjectFile, Worker


def project_list(*, user):
    return Project.objects.filter(owner=user)


def project_get(*, user, project_id) -> Project:
    """The user's project, or Http404 (also for somebody else's)."""
    return get_object_or_404(Project, pk=project_id, owner=user)


def message_list(*, project):
    return Message.objects.filter(project=project).order_by("created_at", "id")


def message_get(*, user, project_id, message_id) -> Message:
    """A message of one of the user's projects, or NotFound (also for somebody else's)."""
    try:
        return Message.objects.select_related("project").get(pk=message_id, project_id=project_id,
                                                               project__owner=user)
    except Message.DoesNotExist:
        raise NotFound(f"No message {message_id} in this project.") from None


def session_is_current(*, session_key: str, user) -> bool:
    """Whether the session still signs `user` in: not logged out or expired, and not cut off
    by a password change (the check Django's own get_user makes on every request)."""
    data = import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key).load()
    return str(data.get(SESSION_KEY)) == str(user.pk) and constant_time_compare(
        data.get(HASH_SESSION_KEY, ""), user.get_session_auth_hash())


def message_row(*, message_id: int) -> Message:
    return Message.objects.get(pk=message_id)


def finished_messages(*, ids: list[int]) -> list[Message]:
    return list(Message.objects.filter(pk__in=ids).exclude(status__in=Message.ACTIVE_STATUSES))


def project_file_list(*, project):
    return ProjectFile.objects.filter(project=project)


def project_file_get(*, project, file_id) -> ProjectFile:
    return get_object_or_404(ProjectFile, pk=file_id, project=project)


# -- workers and their answers -----------------------------------------------------------------

def live_workers(*, now=None):
    """Ids of the server processes whose heartbeat is fresh."""
    cut = (now or timezone.now()) - timedelta(seconds=settings.WORKER_DEAD_AFTER)
    return Worker.objects.filter(heartbeat_at__gte=cut).values("id")


def produced_by_a_live_worker(*, now=None) -> Q:
    """Answers whose producing process is alive: this one, or one with a fresh heartbeat."""
    return Q(worker=WORKER_ID) | Q(worker__in=live_workers(now=now))


def worker_is_alive(*, worker: str, now=None) -> bool:
    return worker == WORKER_ID or live_workers(now=now).filter(id=worker).exists()


def active_answers(*, user):
    """The user's answers still pending or streaming on a live worker, oldest first."""
    return Message.objects.filter(
        project__owner=user, role=Message.Role.ASSISTANT, status__in=Message.ACTIVE_STATUSES,
    ).filter(produced_by_a_live_worker()).order_by("created_at", "id")


def answers_of_dead_workers(*, limit: int = 100) -> list[int]:
    """Ids of unfinished answers whose producing process stopped its heartbeat."""
    return list(Message.objects.filter(role=Message.Role.ASSISTANT, status__in=Message.ACTIVE_STATUSES)
                .exclude(produced_by_a_live_worker()).order_by("id").values_list("id", flat=True)[:limit])


def recent_answer_times(*, user, since, limit: int) -> list:
    """When the user's latest answers (at most `limit`) since `since` were created, oldest first."""
    return list(Message.objects.filter(project__owner=user, role=Message.Role.ASSISTANT, created_at__gte=since)
                .order_by("-created_at").values_list("created_at", flat=True)[:limit])[::-1]


# -- the conversation sent upstream ----------------------------------------------------------------

def prompt_messages(*, project, up_to: Message, files) -> list[dict]:
    """The conversation sent upstream: context files as a system message, then every
    finished message up to `up_to` (stopped answers as what they produced)."""
    prompt = []
    if files:
        parts = [f"--- {f.name} ---\n{f.content}" for f in files]
        prompt.append({"role": "system", "content": "Project files for context:\n\n" + "\n\n".join(parts)})
    history = message_list(project=project).filter(id__lte=up_to.pk).exclude(status__in=Message.ACTIVE_STATUSES)
    for role, content in history.values_list("role", "content"):
        if content:
            prompt.append({"role": role, "content": content})
    return prompt


def streams_to_sweep(*, stale_after: float, max_age: float, now) -> dict[int, str]:
    """Unfinished answers whose heartbeat is older than `stale_after` (reason `orphaned`)
    or that are older than `max_age` (reason `timeout`), by message id."""
    stale_cut = now - timedelta(seconds=stale_after)
    age_cut = now - timedelta(seconds=max_age)
    rows = Message.objects.filter(role=Message.Role.ASSISTANT, status__in=Message.ACTIVE_STATUSES).filter(
        Q(last_chunk_at__lt=stale_cut) | Q(last_chunk_at__isnull=True, created_at__lt=stale_cut) | Q(created_at__lt=age_cut)
    ).values_list("id", "last_chunk_at", "created_at")
    return {
        message_id: Message.CancelReason.ORPHANED if (heartbeat or created) < stale_cut else Message.CancelReason.TIMEOUT
        for message_id, heartbeat, created in rows
    }
