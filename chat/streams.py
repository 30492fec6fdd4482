"""Glue between the chat models and the streaming engine: start an answer, watch one, store its row."""

from channels.db import database_sync_to_async
from django.conf import settings

from streaming.batch import Batcher
from streaming.providers import get_provider
from streaming.registry import Stream, registry
from streaming.relay import Relay, Watcher, dump, dump_terminal
from streaming.runner import Limits, Outcome, Runner

from . import events, services, writer
from .bus import bus
from .models import Message, Project


class MessageStore:
    """The runner's persistence, on the Message model, through the streams' database
    lane (chat.writer). Flushes are the one frequent write (every stream, every flush
    interval): those queued meanwhile are written together in one transaction."""

    def __init__(self):
        self._flushes = Batcher(self._flush_many)

    async def start(self, message_id: int) -> bool:
        return await writer.run(services.message_start, message_id=message_id)

    async def flush(self, message_id: int, text: str, chunk_count: int) -> str | None:
        return await self._flushes.submit((message_id, text, chunk_count))

    async def _flush_many(self, flushes):
        return await writer.run(services.message_flush_many, flushes=flushes)

    async def finalize(self, message_id: int, outcome: Outcome | None, content: str, chunk_count: int) -> dict:
        return await services.message_finalize_announced(
            message_id=message_id, outcome=outcome, content=content, chunk_count=chunk_count
        )


store = MessageStore()


def limits() -> Limits:
    return Limits(
        flush_interval=settings.STREAM_FLUSH_INTERVAL,
        max_age=settings.STREAM_MAX_AGE,
        stale_after=settings.STREAM_STALE_AFTER,
    )


async def answer_prompt(*, user, project: Project, content: str, include_context: bool, context_files: list[str],
                        client_id, watcher: Watcher) -> Message:
    """Store the prompt, start its answer in this process and let `watcher` follow it
    (`message_created` first, then the stream). Raises LimitExceeded or ServiceError."""
    if not await bus.check():
        raise services.StreamUnavailable("The server cannot start answers right now (its message bus is down).")
    await _make_room_in_process()
    provider = get_provider()
    user_message, answer, prompt, evict = await writer.run(
        services.chat_prompt_create, user=user, project=project, content=content, include_context=include_context,
        context_files=context_files, provider=provider.name, model=provider.model,
    )
    for old in evict:
        await _evict(old)
    stream = Stream(
        message_id=answer.pk, user_id=user.pk, project_id=project.pk,
        relay=Relay(answer.pk, settings.STREAM_FRAME_INTERVAL),
    )
    watcher.deliver(answer.pk, dump(events.message_created(user_message, answer, client_id)), False)
    stream.relay.attach(watcher)
    runner = Runner(stream=stream, provider=provider, messages=prompt, store=store, limits=limits())
    registry.start(stream, runner.run())
    return answer


async def _make_room_in_process() -> None:
    if registry.active_count() < settings.STREAM_MAX_PER_PROCESS:
        return
    if settings.STREAM_LIMIT_POLICY == "reject":
        raise services.LimitExceeded(
            f"This server is running {registry.active_count()} answers (at most {settings.STREAM_MAX_PER_PROCESS})."
        )
    oldest = registry.oldest()
    if oldest is not None:
        registry.cancel(oldest.message_id, Message.CancelReason.LIMIT)
        await registry.wait(oldest.message_id)


async def _evict(message: Message) -> None:
    try:
        await services.message_cancel(message=message, reason=Message.CancelReason.LIMIT)
    except services.MessageAlreadyFinished:
        pass


async def watch(*, message: Message, watcher: Watcher, after_seq: int) -> Message | None:
    """Follow an answer produced here from `after_seq` on (the missed chunks, then live
    ones) or send its terminal event. The row, when another process produces it."""
    if registry.attach(message.pk, watcher, after_seq):
        return None
    message = await database_sync_to_async(Message.objects.get)(pk=message.pk)
    if message.is_finished:
        watcher.deliver(message.pk, dump_terminal(events.terminal(message)), True)
        return None
    return message
