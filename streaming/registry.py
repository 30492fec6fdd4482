"""The per-process registry of running streams (DESIGN.md principle 1).

It holds a strong reference to every stream task, so a stream belongs to the
process and not to the socket that started it, and removes each entry in a
`finally`, so it is empty when nothing runs.
"""

import asyncio
import contextvars
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field

from . import metrics
from .relay import Relay, Watcher
from .worker import WORKER_ID


@dataclass(eq=False)
class Stream:
    message_id: int
    user_id: int
    project_id: int
    relay: Relay
    worker: str = WORKER_ID
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.monotonic)
    last_update: float = field(default_factory=time.monotonic)
    chunk_count: int = 0
    cancel_reason: str | None = None
    stop_requested: float | None = None  # monotonic time the stop reached this process
    first_chunk: float | None = None  # monotonic time of the first upstream delta
    task: asyncio.Task | None = None
    running: bool = False  # the task has taken its first step
    # Resolved with the terminal event once the row is final.
    outcome: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    grace_timer: asyncio.TimerHandle | None = None

    def stats(self) -> dict:
        now = time.monotonic()
        return {
            "message_id": self.message_id,
            "user_id": self.user_id,
            "project_id": self.project_id,
            "worker": self.worker,
            "started_at": self.started_at,
            "age": round(now - self.started, 3),
            "idle": round(now - self.last_update, 3),
            "chunk_count": self.chunk_count,
            "watchers": len(self.relay.watchers),
            "cancel_reason": self.cancel_reason,
        }


class Registry:
    def __init__(self):
        self._streams: dict[int, Stream] = {}

    def start(self, stream: Stream, run: Coroutine) -> asyncio.Task:
        if stream.message_id in self._streams:
            run.close()
            raise ValueError(f"message {stream.message_id} is already streaming")
        self._streams[stream.message_id] = stream
        # A fresh context: a stream outlives the request or socket that started it, and must not
        # inherit theirs (under ASGI a request's context holds a thread executor that quits with it,
        # after which every database call of the stream would fail).
        stream.task = asyncio.get_running_loop().create_task(
            self._run(stream, run), name=f"stream-{stream.message_id}", context=contextvars.Context()
        )
        return stream.task

    async def _run(self, stream: Stream, run: Coroutine) -> None:
        stream.running = True
        try:
            await run
        finally:
            self._streams.pop(stream.message_id, None)
            stream.relay.close()
            if stream.grace_timer is not None:
                stream.grace_timer.cancel()
            if not stream.outcome.done():
                stream.outcome.cancel()

    def get(self, message_id: int) -> Stream | None:
        return self._streams.get(message_id)

    def is_active(self, message_id: int) -> bool:
        return message_id in self._streams

    def active_count(self) -> int:
        return len(self._streams)

    def stats(self, message_id: int | None = None):
        if message_id is not None:
            stream = self._streams.get(message_id)
            return stream.stats() if stream else None
        return [stream.stats() for stream in self._streams.values()]

    def user_streams(self, user_id: int) -> list[Stream]:
        """The user's running streams in this process, oldest first."""
        return sorted((s for s in self._streams.values() if s.user_id == user_id), key=lambda s: s.started)

    def oldest(self) -> Stream | None:
        return min(self._streams.values(), key=lambda s: s.started, default=None)

    def cancel(self, message_id: int, reason: str) -> bool:
        """Ask a running stream to stop; the first reason given wins. False when not running here."""
        stream = self._streams.get(message_id)
        if stream is None:
            return False
        if stream.cancel_reason is None:
            stream.cancel_reason = reason
            stream.stop_requested = time.monotonic()
            if stream.running:
                stream.task.cancel()
            else:
                # A task cancelled before its first step never enters its body, so its
                # row would never be finalized: let it start, then cancel it.
                asyncio.get_running_loop().call_soon(stream.task.cancel)
        return True

    def cancel_all(self, reason: str) -> list[int]:
        ids = list(self._streams)
        for message_id in ids:
            self.cancel(message_id, reason)
        return ids

    async def wait(self, message_id: int, timeout: float | None = None) -> dict | None:
        """The terminal event of a running stream once its row is final; None if not running here
        or if it could not finalize."""
        stream = self._streams.get(message_id)
        if stream is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(stream.outcome), timeout)
        except asyncio.CancelledError:
            if stream.outcome.cancelled():  # the stream ended without a final row
                return None
            raise

    async def shutdown(self, reason: str = "shutdown", timeout: float = 10.0) -> None:
        """Cancel every stream and wait until each has finalized its row."""
        tasks = [s.task for s in self._streams.values()]
        self.cancel_all(reason)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def attach(self, message_id: int, watcher: Watcher, after_seq: int = 0) -> bool:
        stream = self._streams.get(message_id)
        if stream is None or stream.relay.finished:
            return False
        if stream.grace_timer is not None:
            stream.grace_timer.cancel()
            stream.grace_timer = None
        stream.relay.attach(watcher, after_seq)
        return True

    def detach(self, message_id: int, watcher: Watcher, grace: float) -> None:
        """Stop feeding a watcher; a stream nobody watches is cancelled after `grace` seconds."""
        stream = self._streams.get(message_id)
        if stream is None:
            return
        stream.relay.detach(watcher)
        if stream.relay.watchers or stream.grace_timer is not None:
            return
        if grace <= 0:
            self.cancel(message_id, "disconnect")
        else:
            loop = asyncio.get_running_loop()
            stream.grace_timer = loop.call_later(grace, self.cancel, message_id, "disconnect")


registry = Registry()
metrics.active_streams.set_function(registry.active_count)
