"""An answer's lifecycle, in one place (DESIGN.md principle 9): start it in this process,
stop it wherever it runs, wait until its row is final, finalize and announce.

Every stop goes through `stop()`: the socket, REST, the admin, both caps, shutdown,
the workers' own sweep of dead workers' answers and the operator's sweeper.
"""

import asyncio
import contextlib
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings

from streaming.batch import Batcher
from streaming.ends import Ending, Outcome
from streaming.providers import get_provider
from streaming.registry import Stream, registry
from streaming.relay import Frame, Relay, Watcher
from streaming.runner import Limits, Runner
from streaming.worker import WORKER_ID

from . import protocol, selectors, services, writer
from .bus import bus
from .errors import LimitExceeded, MessageAlreadyFinished, StopPending, StreamUnavailable
from .models import Message, Project

STOP_WAIT = 3.0  # how long a stop waits for another process to finalize the row
FINAL_POLL = 0.25  # how often it reads the row meanwhile, should the announcement be lost


class MessageStore:
    """The runner's persistence, on the Message model, through the streams' database lane
    (chat/writer.py). Flushes are the one frequent write (every stream, every flush
    interval): those queued meanwhile are written together in one transaction."""

    def __init__(self):
        self._starts = Batcher(self._start_many)
        self._flushes = Batcher(self._flush_many)

    async def start(self, message_id: int) -> bool:
        return await self._starts.submit(message_id)

    async def _start_many(self, message_ids):
        return await writer.run(services.message_start_many, message_ids=message_ids)

    async def flush(self, message_id: int, text: str, chunk_count: int) -> str | None:
        return await self._flushes.submit((message_id, text, chunk_count))

    async def _flush_many(self, flushes):
        return await writer.run(services.message_flush_many, flushes=flushes)

    async def finalize(self, message_id: int, outcome: Outcome | None, content: str, chunk_count: int,
                       on_final=None) -> Ending:
        ending, _ = await finalize(message_id=message_id, outcome=outcome, content=content, chunk_count=chunk_count,
                                   on_final=on_final)
        return ending


store = MessageStore()


def limits() -> Limits:
    return Limits(flush_interval=settings.STREAM_FLUSH_INTERVAL, max_age=settings.STREAM_MAX_AGE,
                  stale_after=settings.STREAM_STALE_AFTER)


# -- start ------------------------------------------------------------------------------------

async def start(*, user, project: Project, watcher: Watcher, client_id=None, session_key: str | None = None,
                content: str = "", include_context: bool = False, context_files: list[str] = (),
                edit_of: int | None = None, again_of: int | None = None, continuing: bool = False) -> Message:
    """Start an answer in this process and let `watcher` follow it (`message_created` first,
    then the stream): to a new prompt (`content`; `edit_of` the prompt it replaces), or,
    `again_of` an answer, another answer to its prompt (Continue when `continuing`, else
    Regenerate). Raises a ServiceError when refused; `session_key` (a socket's) must still
    sign the user in."""
    if not await bus.check():
        raise StreamUnavailable("The server cannot start answers right now (its message bus is down).")
    await _make_room_in_process()
    provider = get_provider()
    who = {"user": user, "project": project, "provider": provider.name, "model": provider.model,
           "session_key": session_key}
    if again_of is not None:
        prompt = await writer.run(services.answer_again, priority=writer.PROMPTS, message_id=again_of,
                                  continuing=continuing, **who)
    else:
        prompt = await writer.run(services.chat_prompt_create, priority=writer.PROMPTS, content=content,
                                  include_context=include_context, context_files=list(context_files),
                                  edit_of=edit_of, **who)
    for message_id in prompt.evict:
        await stop_if_running(message_id=message_id, reason=Message.CancelReason.LIMIT)
    answer = prompt.answer
    stream = Stream(message_id=answer.pk, user_id=user.pk, project_id=project.pk,
                    relay=Relay(answer.pk, settings.STREAM_FRAME_INTERVAL, protocol.ENCODER))
    created = protocol.dump(protocol.message_created(None if again_of else prompt.user_message, answer, client_id,
                                                     prompt.superseded))
    watcher.deliver(Frame(answer.pk, text=created))
    stream.relay.attach(watcher)
    runner = Runner(stream=stream, provider=provider, messages=prompt.messages, store=store, limits=limits())
    registry.start(stream, runner.run())
    return answer


async def _make_room_in_process() -> None:
    if registry.active_count() < settings.STREAM_MAX_PER_PROCESS:
        return
    if settings.STREAM_LIMIT_POLICY == "reject":
        raise LimitExceeded(
            f"This server is running {registry.active_count()} answers (at most {settings.STREAM_MAX_PER_PROCESS})."
        )
    oldest = registry.oldest()
    if oldest is not None:
        await stop_if_running(message_id=oldest.message_id, reason=Message.CancelReason.LIMIT)


# -- stop -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stopped:
    event: dict  # the `stream_cancelled` event of the final row
    finalized_here: bool  # this call wrote the final row (the producer was gone, or did not answer)


async def stop(*, message_id: int, reason: str, wait: float | None = None, force: bool = False,
               requested_at: float | None = None) -> Stopped:
    """The one way to stop an answer, wherever it runs.

    Produced here: the stream is stopped at once (its upstream closed in this call), with
    no database round trip before. Elsewhere: the request is stored on the row and sent to
    the producing process (which also sees the stored request at its next flush), or the
    row is finalized here when that process is gone. Callers check ownership first.

    Raises MessageAlreadyFinished when the answer ended first, and StopPending when its
    live producer has not finalized it within `wait` (unless `force`: then it is
    finalized here, as the sweeper does). `requested_at`: when the stop was asked for (the
    monotonic time its frame was read), where its stages are timed from.
    """
    if registry.stop(message_id, reason, requested_at):
        ending = await registry.wait(message_id)
        if ending is not None:
            return _stopped(ending.event, False)
        ending, won = await finalize(message_id=message_id, outcome=Outcome(Message.Status.CANCELLED, reason=reason))
        return _stopped(ending.event, won)
    return await _stop_elsewhere(message_id=message_id, reason=reason, wait=STOP_WAIT if wait is None else wait,
                                 force=force)


async def stop_if_running(*, message_id: int, reason: str) -> None:
    """`stop()` for the caps and the sweeps, to which an answer that ended first is no matter."""
    with contextlib.suppress(MessageAlreadyFinished, StopPending):
        await stop(message_id=message_id, reason=reason)


async def stop_every_answer_here(*, reason: str, timeout: float) -> None:
    """Shutdown: `stop()` every answer this process produces, until each row is final."""
    ids = [stats["message_id"] for stats in registry.stats()]
    if ids:
        await asyncio.wait([asyncio.ensure_future(stop_if_running(message_id=i, reason=reason)) for i in ids],
                           timeout=timeout)


def _stopped(event: dict, finalized_here: bool) -> Stopped:
    if event["type"] != "stream_cancelled":
        raise MessageAlreadyFinished(event)
    return Stopped(event, finalized_here)


async def _stop_elsewhere(*, message_id: int, reason: str, wait: float, force: bool) -> Stopped:
    # Listening before the request is stored: its producer may see it at its next flush.
    async with bus.final_announced(message_id) as announced:
        message, owner_alive = await writer.run(services.message_request_stop, priority=writer.STOPS,
                                                message_id=message_id, reason=reason)
        if owner_alive and message.worker != WORKER_ID:
            await bus.request(message.worker, {"type": "stream.stop", "message_id": message_id, "reason": reason})
            event = await _wait_until_final(message_id, wait, announced)
            if event is not None:
                return _stopped(event, False)
            if not force:
                raise StopPending(message)
    ending, won = await finalize(message_id=message_id, outcome=Outcome(Message.Status.CANCELLED, reason=reason))
    return _stopped(ending.event, won)


async def _wait_until_final(message_id: int, timeout: float, announced: asyncio.Event) -> dict | None:
    """The terminal event from the final row, read when the producing process announces
    it (or every FINAL_POLL, should that announcement be lost); None after `timeout`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(min(FINAL_POLL, deadline - loop.time()), 0)):
                await announced.wait()
        row = await database_sync_to_async(selectors.message_row)(message_id=message_id)
        if row.is_finished:
            return protocol.terminal(row)
        if loop.time() >= deadline:
            return None
        announced.clear()


# -- finalize and announce -------------------------------------------------------------------------

async def finalize(*, message_id: int, outcome: Outcome | None, content: str | None = None,
                   chunk_count: int | None = None, on_final=None) -> tuple[Ending, bool]:
    """The one terminal write (services.message_finalize, on the streams' lane), then the
    row's terminal event published to whoever waits on the message, in any process, and
    handed to `on_final(ending)` (the stream's watchers): both as soon as the write returns.
    The row's Ending, and whether this call finalized it."""
    endings = []

    def announce(result) -> None:
        endings.append(protocol.ending(result[0]))
        bus.announce(endings[0].event)
        if on_final is not None:
            on_final(endings[0])

    _, won = await writer.run(services.message_finalize, priority=writer.STOPS, then=announce, message_id=message_id,
                              outcome=outcome, content=content, chunk_count=chunk_count)
    return endings[0], won


@bus.handles("stream.stop")
def _stop_requested(message: dict) -> None:
    """Another process asks this one to stop an answer it produces (the engine's stop)."""
    registry.stop(message["message_id"], message["reason"])
