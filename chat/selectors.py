"""Read-side queries. Every object is reached through its owner."""

from datetime import timedelta

from django.db.models import Q
from django.shortcuts import get_object_or_404

from .models import Message, Project, ProjectFile


def project_list(*, user):
    return Project.objects.filter(owner=user)


def project_get(*, user, project_id) -> Project:
    """The user's project, or Http404 (also for somebody else's)."""
    return get_object_or_404(Project, pk=project_id, owner=user)


def message_list(*, project):
    return Message.objects.filter(project=project).order_by("created_at", "id")


def message_get(*, user, project_id, message_id) -> Message:
    """A message of one of the user's projects, or Message.DoesNotExist."""
    return Message.objects.select_related("project").get(
        pk=message_id, project_id=project_id, project__owner=user
    )


def finished_messages(*, ids: list[int]) -> list[Message]:
    return list(Message.objects.filter(pk__in=ids).exclude(status__in=Message.ACTIVE_STATUSES))


def project_file_list(*, project):
    return ProjectFile.objects.filter(project=project)


def project_file_get(*, project, file_id) -> ProjectFile:
    return get_object_or_404(ProjectFile, pk=file_id, project=project)


def active_answers(*, user):
    """The user's answers still pending or streaming, in any process, oldest first."""
    return Message.objects.filter(
        project__owner=user, role=Message.Role.ASSISTANT, status__in=Message.ACTIVE_STATUSES
    ).order_by("created_at", "id")


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
