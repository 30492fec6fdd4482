"""Following an answer: in this process the engine's relay feeds the watcher; in another,
that process replays the missed frames to this socket's channel and relays live ones,
through the channel layer (chat/bus.py), and the answer's group carries its end."""

import asyncio
import contextlib
from dataclasses import dataclass

from channels.db import database_sync_to_async
from django.conf import settings

from streaming.registry import registry
from streaming.relay import Frame, Watcher

from . import protocol, selectors
from .bus import bus, event_message, message_group
from .errors import StreamUnavailable
from .models import Message

WATCH_RETRIES = 5
WATCH_RETRY_AFTER = 1.0  # seconds without a frame before asking the producing worker again
END_CHECK = 2.0  # seconds between checks of the rows of the answers followed through the layer


async def follow_here(*, message_id: int, watcher: Watcher, after_seq: int) -> Message | None:
    """Let `watcher` follow an answer produced here from `after_seq` on (the missed chunks,
    then live ones), or hand it the terminal event of a finished one. The row, when the
    answer runs in another process."""
    if registry.attach(message_id, watcher, after_seq):
        return None
    message = await database_sync_to_async(selectors.message_row)(message_id=message_id)
    if message.is_finished:
        watcher.deliver(Frame(message_id, event=protocol.terminal(message), encoder=protocol.ENCODER))
        return None
    return message


@dataclass(frozen=True)
class RemoteWatcher:
    """A socket of another process following an answer of this one, through its channel."""

    channel: str

    def deliver(self, frame: Frame) -> None:
        bus.send(self.channel, event_message(frame.message_id, frame.text, frame.final, frame.seq))


@bus.handles("stream.watch")
async def _watch_requested(message: dict) -> None:
    # Not produced here (any more): the asking socket reads the row on its own.
    await follow_here(message_id=message["message_id"], watcher=RemoteWatcher(message["channel"]),
                      after_seq=message.get("after_seq", 0))


@bus.handles("stream.unwatch")
def _unwatch_requested(message: dict) -> None:
    registry.detach(message["message_id"], RemoteWatcher(message["channel"]), settings.STREAM_DISCONNECT_GRACE)


class Following:
    """The answers of other processes one socket follows, until each has ended on it once.

    It joins each answer's group (its terminal event is published there), asks the
    producing worker to relay its frames (again, should the request be lost to a Redis
    restart; duplicates are dropped by seq), and reads the rows every few seconds, so an
    answer whose terminal event was lost with the layer still ends on the socket.
    """

    def __init__(self, consumer):
        self.consumer = consumer  # its channel_name, channel_layer and deliver(frame)
        self.pending: set[int] = set()  # answers followed that have not ended on the socket yet
        self.workers: dict[int, str] = {}  # answer -> the worker relaying its frames to this socket
        self.last_seq: dict[int, int] = {}
        self.groups: set[int] = set()
        self.tasks: set[asyncio.Task] = set()
        self.checker: asyncio.Task | None = None

    async def follow(self, *, message: Message, after_seq: int) -> None:
        """Relay an answer of another process to the socket; StreamUnavailable without a layer."""
        await self.await_end(message.pk)
        self.workers[message.pk] = message.worker
        self.last_seq[message.pk] = after_seq
        if not await self._ask_to_watch(message.pk):
            self.pending.discard(message.pk)
            raise StreamUnavailable("The server producing this answer cannot be reached.")
        self._in_background(self._ask_again_if_silent(message.pk, after_seq))

    async def await_end(self, message_id: int) -> None:
        """Deliver the answer's terminal event when its process (or a sweep) finalizes it."""
        try:
            await self.consumer.channel_layer.group_add(message_group(message_id), self.consumer.channel_name)
        except Exception:
            raise StreamUnavailable("The message bus is unavailable.") from None
        self.pending.add(message_id)
        self.groups.add(message_id)
        if self.checker is None or self.checker.done():
            self.checker = self._in_background(self._check_ends())

    def on_layer_event(self, message: dict) -> None:
        """A frame relayed through the layer; duplicates and strays are dropped."""
        message_id, final = message["message_id"], message["final"]
        if message_id not in self.pending:
            return
        if not final and message_id in self.last_seq:
            if message["seq"] <= self.last_seq[message_id]:
                return
            self.last_seq[message_id] = message["seq"]
        self._deliver(Frame(message_id, seq=message["seq"], text=message["text"], final=final))

    async def close(self) -> None:
        for message_id, worker in self.workers.items():
            if message_id in self.pending:
                await bus.request(worker, {"type": "stream.unwatch", "message_id": message_id,
                                           "channel": self.consumer.channel_name})
        for message_id in self.groups:
            try:
                await self.consumer.channel_layer.group_discard(message_group(message_id), self.consumer.channel_name)
            except Exception:  # the layer is away; its groups expire on their own
                break
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _deliver(self, frame: Frame) -> None:
        if frame.final:
            self.pending.discard(frame.message_id)
        self.consumer.deliver(frame)

    def _in_background(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _ask_to_watch(self, message_id: int) -> bool:
        return await bus.request(self.workers[message_id], {
            "type": "stream.watch", "message_id": message_id, "channel": self.consumer.channel_name,
            "after_seq": self.last_seq[message_id]})

    async def _ask_again_if_silent(self, message_id: int, after_seq: int) -> None:
        # A request that lands while the layer has just lost its groups (a Redis restart) is
        # dropped; the producer re-joins within seconds.
        for _ in range(WATCH_RETRIES):
            await asyncio.sleep(WATCH_RETRY_AFTER)
            if message_id not in self.pending or self.last_seq.get(message_id, 0) > after_seq:
                return
            await self._ask_to_watch(message_id)

    async def _check_ends(self) -> None:
        """While answers are followed: read their rows, and re-join their groups (a Redis
        restart forgets them)."""
        while self.pending:
            await asyncio.sleep(END_CHECK)
            for row in await database_sync_to_async(selectors.finished_messages)(ids=list(self.pending)):
                if row.pk in self.pending:  # the terminal event did not come first
                    self._deliver(Frame(row.pk, event=protocol.terminal(row), encoder=protocol.ENCODER))
            for message_id in list(self.pending):
                with contextlib.suppress(Exception):  # the layer is away: the rows still tell
                    await asyncio.wait_for(self.consumer.channel_layer.group_add(
                        message_group(message_id), self.consumer.channel_name), END_CHECK)
