"""Write-side functions (keyword-only arguments, synchronous), shared by pages, API, the
answer lifecycle (chat/answers.py, which runs the stream writes on chat/writer.py's lane),
admin and commands."""

import logging
import math
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import Case, Q, Value, When
from django.db.models.functions import Coalesce, NullIf
from django.utils import timezone

from streaming.ends import Outcome
from streaming.worker import WORKER_ID

from . import protocol, selectors
from .errors import LimitExceeded, MessageAlreadyFinished, RateLimited, ServiceError, SessionEnded
from .models import Message, Project, ProjectFile, Worker

log = logging.getLogger("chat.services")

RATE_WINDOW = timedelta(minutes=1)


def user_ensure(*, username: str, password: str, staff: bool) -> bool:
    """The user exists (with a first project, and staff rights if asked); whether it was made now.
    An existing user's password is left alone."""
    with transaction.atomic():
        user, created = get_user_model().objects.get_or_create(
            username=username, defaults={"is_staff": staff, "is_superuser": staff})
        if created:
            user.set_password(password)
            user.save()
            project_create(owner=user, name="First project")
    return created


def project_create(*, owner, name: str) -> Project:
    return Project.objects.create(owner=owner, name=_clean_name(name))


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
    problem = protocol.storable_problem(name)
    if problem:
        raise ServiceError(f"The name {problem}.")
    return name


# -- a prompt and its answer -------------------------------------------------------------------

@dataclass(frozen=True)
class Prompt:
    """A stored request for an answer: the user's message it answers, the answer's placeholder
    row, the conversation to send upstream, the user's answers to stop first under
    `cancel_oldest`, and (an edit) the rows it replaced."""

    user_message: Message
    answer: Message
    messages: list[dict]
    evict: list[int]
    superseded: list[int] = field(default_factory=list)


def chat_prompt_create(*, user, project: Project, content: str, include_context: bool, context_files: list[str],
                       provider: str, model: str, session_key: str | None = None,
                       edit_of: int | None = None) -> Prompt:
    """A prompt and its answer's placeholder. `edit_of`: a prompt of this project this one
    replaces, with every message after it (kept, marked superseded, out of the conversation).
    `session_key`: the session a socket was opened with, checked to still sign the user in."""
    files = _context_files(project=project, include_context=include_context, names=context_files)
    with transaction.atomic():
        evict = _admit(user=user, session_key=session_key)
        superseded = _supersede_from(project=project, message_id=edit_of) if edit_of is not None else []
        user_message = Message.objects.create(project=project, role=Message.Role.USER, content=content)
        answer = _placeholder(project=project, reply_to=user_message, provider=provider, model=model)
    messages = selectors.prompt_messages(project=project, up_to=user_message, files=files)
    return Prompt(user_message=user_message, answer=answer, messages=messages, evict=evict, superseded=superseded)


def answer_again(*, user, project: Project, message_id: int, continuing: bool, provider: str, model: str,
                 session_key: str | None = None) -> Prompt:
    """Another answer to an answered prompt: Continue (`continuing`: a stopped or failed answer
    goes on, as a new row that continues it) or Regenerate (a new version, the one shown)."""
    with transaction.atomic():
        evict = _admit(user=user, session_key=session_key)
        target = selectors.answer_get(project=project, message_id=message_id)
        if not target.is_finished:
            raise ServiceError("This answer is still being written; stop it first.")
        prompt = target.reply_to
        if continuing:
            if target.status not in (Message.Status.CANCELLED, Message.Status.ERROR):
                raise ServiceError("Only an answer that was stopped or failed can be continued.")
            if target.continuations.filter(superseded_at__isnull=True).exists():
                raise ServiceError("This answer was continued already; continue its last part.")
            partial = selectors.chain_text(answer=target)
            answer = _placeholder(project=project, reply_to=prompt, provider=provider, model=model, continues=target)
        else:
            Message.objects.filter(reply_to=prompt, continues__isnull=True).update(selected=False)
            answer = _placeholder(project=project, reply_to=prompt, provider=provider, model=model)
    messages = selectors.prompt_messages(project=project, up_to=prompt, files=[])
    if continuing:
        messages.append({"role": Message.Role.ASSISTANT, "content": partial, "partial": True})
    return Prompt(user_message=prompt, answer=answer, messages=messages, evict=evict)


def version_select(*, project: Project, message_id: int) -> Message:
    """Show another version of an answer (and send it upstream from now on); the version."""
    with transaction.atomic():
        head = selectors.chain_head(answer=selectors.answer_get(project=project, message_id=message_id))
        Message.objects.filter(reply_to=head.reply_to, continues__isnull=True).update(
            selected=Case(When(pk=head.pk, then=Value(True)), default=Value(False)))
    head.selected = True
    return head


def _admit(*, user, session_key: str | None) -> list[int]:
    """The checks before any new answer: the session (a socket's), the rate, the user's cap.
    The answers to stop first under `cancel_oldest`; raises when refused."""
    # Serializes one user's sends (PostgreSQL), so two cannot both take the last slot.
    current = get_user_model().objects.select_for_update().filter(pk=user.pk).first()
    if session_key is not None and (current is None or not selectors.session_is_current(
            session_key=session_key, user=current)):
        raise SessionEnded("Your session has ended; please sign in again.")
    now, limit = timezone.now(), settings.STREAM_SENDS_PER_MINUTE
    since = now - RATE_WINDOW if limit else None
    counted = selectors.answers_counted(user=user, since=since)
    if limit:
        _check_rate(times=[row["created_at"] for row in counted if row["created_at"] >= since], limit=limit, now=now)
    active = [row for row in counted if row["status"] in Message.ACTIVE_STATUSES]
    if len(active) >= settings.STREAM_MAX_PER_USER:  # only then: do dead processes' answers count?
        alive = selectors.live_of(workers={row["worker"] for row in active})
        active = [row for row in active if row["worker"] in alive]
    excess = len(active) - settings.STREAM_MAX_PER_USER + 1
    if excess <= 0:
        return []
    if settings.STREAM_LIMIT_POLICY == "reject":
        raise LimitExceeded(f"You have {len(active)} answers streaming (at most {settings.STREAM_MAX_PER_USER} per user).")
    return [row["id"] for row in active[:excess]]


def _placeholder(*, project, reply_to: Message, provider: str, model: str, continues: Message | None = None) -> Message:
    return Message.objects.create(project=project, role=Message.Role.ASSISTANT, status=Message.Status.PENDING,
                                  provider=provider, model=model, worker=WORKER_ID, reply_to=reply_to,
                                  continues=continues)


def _supersede_from(*, project, message_id: int) -> list[int]:
    """Mark a prompt of the project and every message after it superseded; their ids."""
    edited = selectors.prompt_get(project=project, message_id=message_id)
    later = selectors.visible_messages(project=project).filter(
        Q(created_at__gt=edited.created_at) | Q(created_at=edited.created_at, id__gte=edited.pk))
    if later.filter(status__in=Message.ACTIVE_STATUSES).exists():
        raise ServiceError("An answer after this prompt is still being written; stop it first.")
    ids = list(later.values_list("pk", flat=True))
    Message.objects.filter(pk__in=ids).update(superseded_at=timezone.now())
    return ids


def _check_rate(*, times: list, limit: int, now) -> None:
    """At most STREAM_SENDS_PER_MINUTE answers in any minute (`times`: when the user's answers
    of the last minute were created, oldest first); counted in the database, so across every
    process, with or without Redis."""
    if len(times) >= limit:
        retry_after = max(1, math.ceil((times[-limit] + RATE_WINDOW - now).total_seconds()))
        raise RateLimited(f"You sent {limit} prompts in the last minute; please wait {retry_after} s.", retry_after)


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
        raise ServiceError(f"No such project file: {protocol.names_list(missing)}.")
    return [by_name[name] for name in dict.fromkeys(names)]


# -- the stream's writes (on the lane of chat/writer.py) ----------------------------------------------

def message_start_many(*, message_ids: list[int]) -> list[bool]:
    """pending -> streaming for each stream starting (batched as the flushes are); for each,
    whether it started (False: the row is no longer pending). One statement; RETURNING
    (PostgreSQL, SQLite >= 3.35) names the rows this call moved."""
    ops = connection.ops
    marks = ", ".join(["%s"] * len(message_ids))
    start = (f"UPDATE {ops.quote_name(Message._meta.db_table)} SET status = %s, started_at = %s,"
             f" last_chunk_at = %s, worker = %s WHERE id IN ({marks}) AND status = %s RETURNING id")
    now = ops.adapt_datetimefield_value(timezone.now())
    with connection.cursor() as cursor:
        cursor.execute(start, [Message.Status.STREAMING, now, now, WORKER_ID, *message_ids, Message.Status.PENDING])
        started = {row[0] for row in cursor.fetchall()}
    return [message_id in started for message_id in message_ids]


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
    """Write the one terminal state (whoever races, the first conditional UPDATE wins); a
    stop request stored on the row wins over the reason given here (the user asked first).
    The row as it ends up, and whether this call was the one that finalized it."""
    won = False
    if outcome is not None:
        changes = {"status": outcome.status, "finished_at": timezone.now()}
        if outcome.status == Message.Status.CANCELLED:
            changes["cancel_reason"] = Coalesce(NullIf("cancel_requested_reason", Value("")), Value(outcome.reason))
        elif outcome.status == Message.Status.ERROR:
            changes["error_type"] = outcome.error_type
            changes["error_detail"] = outcome.detail[:500]
            changes["error_internal"] = outcome.internal
        if content is not None:
            changes["content"] = content
        if chunk_count is not None:
            changes["chunk_count"] = chunk_count
        if outcome.usage is not None:
            changes.update(prompt_tokens=outcome.usage.prompt_tokens, completion_tokens=outcome.usage.completion_tokens,
                           tokens_estimated=outcome.usage_estimated)
        won = bool(Message.objects.filter(pk=message_id, status__in=Message.ACTIVE_STATUSES).update(**changes))
        if won:
            log.info("message %s finalized: %s %s", message_id, outcome.status, outcome.reason or outcome.error_type)
    if won and content is not None:
        # The text is what was just written: not read back (an answer can be megabytes).
        row = Message.objects.defer("content").get(pk=message_id)
        row.content = content
        return row, True
    return Message.objects.get(pk=message_id), won


def message_request_stop(*, message_id: int, reason: str) -> tuple[Message, bool]:
    """Store a stop request on the row (the producer sees it at its next flush, should the
    message on the bus be lost); the row, and whether its producing process is alive.
    MessageAlreadyFinished when it is final."""
    Message.objects.filter(
        pk=message_id, status__in=Message.ACTIVE_STATUSES, cancel_requested_at__isnull=True
    ).update(cancel_requested_at=timezone.now(), cancel_requested_reason=reason)
    message = Message.objects.get(pk=message_id)
    if message.is_finished:
        raise MessageAlreadyFinished(protocol.terminal(message))
    return message, selectors.worker_is_alive(worker=message.worker)


# -- workers ------------------------------------------------------------------------------------------

def worker_beat(*, worker: str) -> None:
    """This process is alive (chat/liveness.py, every WORKER_HEARTBEAT seconds)."""
    if not Worker.objects.filter(pk=worker).update(heartbeat_at=timezone.now()):
        Worker.objects.get_or_create(pk=worker)


def worker_forget(*, worker: str) -> None:
    """This process stops: its answers are final already, and nobody should wait for it."""
    Worker.objects.filter(pk=worker).delete()


def workers_prune(*, older_than: timedelta) -> int:
    """Forget the workers that died long ago (their rows only serve the liveness check)."""
    return Worker.objects.filter(heartbeat_at__lt=timezone.now() - older_than).delete()[0]
