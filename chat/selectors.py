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
    """Every message of the project, oldest first, superseded ones included (the REST API)."""
    return Message.objects.filter(project=project).order_by("created_at", "id")


def visible_messages(*, project):
    """The conversation as shown: every message not replaced by an edit, oldest first."""
    return message_list(project=project).filter(superseded_at__isnull=True)


def answer_get(*, project, message_id: int) -> Message:
    """A visible answer of the project (to continue, regenerate, show), or NotFound."""
    try:
        return visible_messages(project=project).select_related("reply_to").get(
            pk=message_id, role=Message.Role.ASSISTANT, reply_to__isnull=False)
    except Message.DoesNotExist:
        raise NotFound(f"No answer {message_id} in this project.") from None


def prompt_get(*, project, message_id: int) -> Message:
    """A visible prompt of the project (to edit), or NotFound."""
    try:
        return visible_messages(project=project).get(pk=message_id, role=Message.Role.USER)
    except Message.DoesNotExist:
        raise NotFound(f"No prompt {message_id} in this project.") from None


def chain_head(*, answer: Message) -> Message:
    """The version an answer row belongs to: the first row of its chain of continuations."""
    while answer.continues_id is not None:
        answer = Message.objects.get(pk=answer.continues_id)
    return answer


def chain_text(*, answer: Message) -> str:
    """The text of an answer up to this row: its version's rows joined, without markers."""
    parts = []
    while answer is not None:
        parts.append(answer.content)
        answer = Message.objects.get(pk=answer.continues_id) if answer.continues_id else None
    return "".join(reversed(parts))


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


def answers_counted(*, user, since=None) -> list[dict]:
    """The user's answers that count against the caps (pending or streaming) or, with `since`,
    the send rate (created since then), oldest first: id, created_at, status, worker. One
    query without the liveness subquery, as every prompt reads it (`live_of` settles that)."""
    which = Q(status__in=Message.ACTIVE_STATUSES)
    if since is not None:
        which |= Q(created_at__gte=since)
    return list(Message.objects.filter(which, project__owner=user, role=Message.Role.ASSISTANT)
                .order_by("created_at", "id").values("id", "created_at", "status", "worker"))


def live_of(*, workers: set[str]) -> set[str]:
    """Those of `workers` that are alive: this process, and those with a fresh heartbeat."""
    others = workers - {WORKER_ID}
    alive = set(live_workers().filter(id__in=others).values_list("id", flat=True)) if others else set()
    return alive | (workers & {WORKER_ID})


def answers_of_dead_workers(*, limit: int = 100) -> list[int]:
    """Ids of unfinished answers whose producing process stopped its heartbeat."""
    return list(Message.objects.filter(role=Message.Role.ASSISTANT, status__in=Message.ACTIVE_STATUSES)
                .exclude(produced_by_a_live_worker()).order_by("id").values_list("id", flat=True)[:limit])


# -- the conversation sent upstream ----------------------------------------------------------------

def prompt_messages(*, project, up_to: Message, files) -> list[dict]:
    """The conversation sent upstream: context files as a system message, then every turn
    before `up_to` (a prompt, and the text of the version of its answer that is shown, its
    continuations joined, without markers), then `up_to` itself."""
    prompt = []
    if files:
        parts = [f"--- {f.name} ---\n{f.content}" for f in files]
        prompt.append({"role": "system", "content": "Project files for context:\n\n" + "\n\n".join(parts)})
    rows = list(visible_messages(project=project).values(
        "id", "role", "status", "content", "reply_to_id", "continues_id", "selected"))
    answers = _shown_answers(rows)
    for row in rows:
        if row["id"] == up_to.pk:
            break
        if row["role"] != Message.Role.USER:
            continue
        prompt.append({"role": "user", "content": row["content"]})
        if answers.get(row["id"]):
            prompt.append({"role": "assistant", "content": answers[row["id"]]})
    prompt.append({"role": "user", "content": up_to.content})
    return prompt


def _shown_answers(rows: list[dict]) -> dict[int, str]:
    """Prompt id -> the text later prompts see of its answer: the selected version (the latest,
    should two be), each finished row of its chain of continuations joined."""
    heads, next_of = {}, {}
    for row in rows:
        if row["role"] != Message.Role.ASSISTANT or row["reply_to_id"] is None:
            continue
        if row["continues_id"] is None:
            if row["selected"] or row["reply_to_id"] not in heads:
                heads[row["reply_to_id"]] = row
        else:
            next_of[row["continues_id"]] = row
    shown = {}
    for prompt_id, row in heads.items():
        parts = []
        while row is not None and row["status"] not in Message.ACTIVE_STATUSES:
            parts.append(row["content"])
            row = next_of.get(row["id"])
        shown[prompt_id] = "".join(parts)
    return shown


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
