"""Write-side functions (keyword-only arguments), shared by pages, API, consumer, admin and commands."""

import asyncio
import contextlib
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from streaming.registry import registry
from streaming.runner import Outcome
from streaming.worker import WORKER_ID

from . import events, selectors, writer
from .frames import names_list
from .bus import bus
from .models import Message, Project, ProjectFile

log = logging.getLogger("chat.services")

CANCEL_WAIT = 3.0  # how long a stop waits for another process to finalize the row
FINAL_POLL = 0.25  # how often it reads the row meanwhile, should the announcement be lost


class ServiceError(Exception):
    """Bad input a user can correct; the message is safe to show."""


class LimitExceeded(ServiceError):
    """A concurrency cap was reached under the `reject` policy."""


class StreamUnavailable(ServiceError):
    """The answer is still running, but not where it can be reached."""


class CancelPending(Exception):
    """The stop is stored and sent, but the producing process has not finalized the row yet."""

    def __init__(self, message: Message):
        super().__init__(f"stop of message {message.pk} requested")
        self.message = message


class MessageAlreadyFinished(Exception):
    def __init__(self, event: dict):
        self.event = event
        self.status = events.TERMINAL_STATUS[event["type"]]
        super().__init__(f"message {event['message_id']} is already {self.status}")


def project_create(*, owner, name: str) -> Project:
    name = _clean_name(name)
    return Project.objects.create(owner=owner, name=name)


def project_rename(*, project: Project, name: str) -> Project:
    project.name = _clean_name(name)
    project.save(update_fields=["name"])
    return project


def project_file_create(*, project: Project, name: str, content: str) -> ProjectFile:
    name = (name or "").strip()
    if not name or len(name) > 255:
        raise ServiceError("A file name is 1 to 255 characters.")
    try:
        with transaction.atomic():
            return ProjectFile.objects.create(project=project, name=name, content=content or "")
    except IntegrityError:
        raise ServiceError(f"This project already has a file named {name!r}.") from None


def project_file_delete(*, project_file: ProjectFile) -> None:
    project_file.delete()


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise ServiceError("A project name is 1 to 200 characters.")
    return name


def chat_prompt_create(*, user, project: Project, content: str, include_context: bool, context_files: list[str],
                       provider: str, model: str):
    """Store a prompt and its answer placeholder; the prompt to send upstream, and the
    user's answers to evict first under the `cancel_oldest` policy."""
    files = _context_files(project=project, include_context=include_context, names=context_files)
    with transaction.atomic():
        # Serializes one user's sends (PostgreSQL), so two cannot both take the last slot.
        get_user_model().objects.select_for_update().filter(pk=user.pk).first()
        active = list(selectors.active_answers(user=user))
        evict = []
        excess = len(active) - settings.STREAM_MAX_PER_USER + 1
        if excess > 0:
            if settings.STREAM_LIMIT_POLICY == "reject":
                raise LimitExceeded(f"You have {len(active)} answers streaming (at most {settings.STREAM_MAX_PER_USER} per user).")
            evict = active[:excess]
        user_message = Message.objects.create(project=project, role=Message.Role.USER, content=content)
        answer = Message.objects.create(
            project=project, role=Message.Role.ASSISTANT, status=Message.Status.PENDING,
            provider=provider, model=model, worker=WORKER_ID,
        )
    prompt = selectors.prompt_messages(project=project, up_to=user_message, files=files)
    return user_message, answer, prompt, evict


def _context_files(*, project, include_context, names):
    # Naming files asks for them; include_context alone asks for all of them.
    if not include_context and not names:
        return []
    files = list(selectors.project_file_list(project=project))
    if not names:
        return files
    by_name = {f.name: f for f in files}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise ServiceError(f"No such project file: {names_list(missing)}.")
    return [by_name[name] for name in dict.fromkeys(names)]


def message_start(*, message_id: int) -> bool:
    now = timezone.now()
    return bool(
        Message.objects.filter(pk=message_id, status=Message.Status.PENDING).update(
            status=Message.Status.STREAMING, started_at=now, last_chunk_at=now, worker=WORKER_ID
        )
    )


def message_flush_many(*, flushes: list[tuple[int, str, int]]) -> list[str | None]:
    """Append each stream's new text and refresh its heartbeat (message id, new text, chunk
    count), all in one transaction; for each, None or the reason it must stop (a stored
    stop request, or the row is final or gone).

    The one frequent write (every stream, every flush interval), so one statement run
    for every row, not an ORM update each: building those held the GIL the relay needs.
    """
    ops = connection.ops
    flush = (
        f"UPDATE {ops.quote_name(Message._meta.db_table)}"
        " SET content = content || %s, chunk_count = %s, last_chunk_at = %s"
        " WHERE id = %s AND status = %s AND cancel_requested_at IS NULL"
    )
    now = ops.adapt_datetimefield_value(timezone.now())
    streaming = Message.Status.STREAMING
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.executemany(flush, [(text, count, now, message_id, streaming) for message_id, text, count in flushes])
        if cursor.rowcount == len(flushes):
            return [None] * len(flushes)
    ids = [message_id for message_id, _, _ in flushes]
    rows = {pk: rest for pk, *rest in Message.objects.filter(pk__in=ids).values_list(
        "pk", "status", "cancel_requested_at", "cancel_requested_reason")}

    def stop_reason(message_id: int) -> str | None:
        if message_id not in rows:
            return Message.CancelReason.ORPHANED
        status, requested_at, reason = rows[message_id]
        if status == streaming and requested_at is None:
            return None
        return reason or Message.CancelReason.USER

    return [stop_reason(message_id) for message_id in ids]


def message_finalize(*, message_id: int, outcome: Outcome | None, content: str | None = None,
                     chunk_count: int | None = None) -> tuple[Message, bool]:
    """Write the one terminal state (whoever races, the first conditional UPDATE wins).
    The row as it ends up, and whether this call was the one that finalized it."""
    won = False
    if outcome is not None:
        changes = {"status": outcome.status, "finished_at": timezone.now()}
        if outcome.status == Message.Status.CANCELLED:
            changes["cancel_reason"] = outcome.reason
        elif outcome.status == Message.Status.ERROR:
            changes["error_type"] = outcome.error_type
            changes["error_detail"] = outcome.detail[:500]
            changes["error_internal"] = outcome.internal
        if content is not None:
            changes["content"] = content
        if chunk_count is not None:
            changes["chunk_count"] = chunk_count
        won = Message.objects.filter(pk=message_id, status__in=Message.ACTIVE_STATUSES).update(**changes)
        if won:
            log.info("message %s finalized: %s %s", message_id, outcome.status, outcome.reason or outcome.error_type)
    if won and content is not None:
        # The text is what was just written: not read back (an answer can be megabytes).
        row = Message.objects.defer("content").get(pk=message_id)
        row.content = content
        return row, True
    return Message.objects.get(pk=message_id), bool(won)


def message_request_cancel(*, message_id: int, reason: str) -> Message:
    """Store a stop request on the row; MessageAlreadyFinished when it is final."""
    Message.objects.filter(
        pk=message_id, status__in=Message.ACTIVE_STATUSES, cancel_requested_at__isnull=True
    ).update(cancel_requested_at=timezone.now(), cancel_requested_reason=reason)
    message = Message.objects.get(pk=message_id)
    if message.is_finished:
        raise MessageAlreadyFinished(events.terminal(message))
    return message


async def message_cancel(*, message: Message, reason: str, wait: float | None = None) -> dict:
    """The one way to stop an answer (socket, REST, admin, caps, sweeper).

    Stops the producing task here at once; otherwise stores the request on the
    row and asks the producing process through the layer (its next flush sees
    the stored request even if that message is lost), or finalizes the row here
    when no process produces it any more. The `stream_cancelled` event once
    the row is final; MessageAlreadyFinished when the answer ended first;
    CancelPending when another process has not finished it within `wait`.
    """
    if registry.cancel(message.pk, reason):
        # Produced here: stopped at once, with no database round trip before the stop.
        event = await registry.wait(message.pk) or await _finalize_here(message.pk, reason)
    else:
        event = await _cancel_elsewhere(message_id=message.pk, reason=reason, wait=CANCEL_WAIT if wait is None else wait)
    if event["type"] != "stream_cancelled":
        raise MessageAlreadyFinished(event)
    return event


async def _cancel_elsewhere(*, message_id: int, reason: str, wait: float) -> dict:
    # Listening before the request is stored: its producer may see it at its next flush.
    async with bus.final_announced(message_id) as announced:
        message = await writer.run(message_request_cancel, message_id=message_id, reason=reason)
        if message.worker == WORKER_ID or _owner_is_gone(message):
            return await _finalize_here(message.pk, reason)
        await bus.request(message.worker, {"type": "stream.cancel", "message_id": message.pk, "reason": reason})
        event = await _wait_until_final(message.pk, wait, announced)
    if event is None:
        raise CancelPending(message)
    return event


def _owner_is_gone(message: Message) -> bool:
    heartbeat = message.last_chunk_at or message.created_at
    return (timezone.now() - heartbeat).total_seconds() > settings.STREAM_STALE_AFTER


async def message_finalize_announced(*, message_id: int, outcome: Outcome | None, content: str | None = None,
                                     chunk_count: int | None = None) -> dict:
    """`message_finalize` on the streams' database lane, then the terminal event of the
    row as it ends up, published to whoever waits on the message in any process."""
    row, _ = await writer.run(message_finalize, message_id=message_id, outcome=outcome, content=content,
                              chunk_count=chunk_count)
    event = events.terminal(row)
    bus.announce(event)
    return event


async def _finalize_here(message_id: int, reason: str) -> dict:
    return await message_finalize_announced(message_id=message_id, outcome=Outcome(Message.Status.CANCELLED, reason=reason))


async def _wait_until_final(message_id: int, timeout: float, announced: asyncio.Event) -> dict | None:
    """The terminal event from the final row, read when the producing process announces
    it (or every FINAL_POLL, should that announcement be lost); None after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(min(FINAL_POLL, deadline - loop.time()), 0)):
                await announced.wait()
        row = await database_sync_to_async(Message.objects.get)(pk=message_id)
        if row.is_finished:
            return events.terminal(row)
        if loop.time() >= deadline:
            return None
        announced.clear()
