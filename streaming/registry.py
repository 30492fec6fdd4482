"""The per-process registry of running streams (DESIGN.md principle 1).

It holds a strong reference to every stream task, so a stream belongs to the
process and not to the socket that started it, and removes each entry in a
`finally`, so it is empty when nothing runs.
"""

import asyncio
import contextvars
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from . import metrics
from .ends import Ending
from .relay import Relay, Watcher
from .worker import WORKER_ID


@dataclass(eq=False)
class Stream:
    message_id: int
    user_id: int
    project_id: int
    relay: Relay
    worker: str = WORKER_ID
    started_at: float = field(default_factory=time.time)  # wall clock, for people
    started_monotonic: float = field(default_factory=time.monotonic)  # for every duration
    last_progress: float = field(default_factory=time.monotonic)  # monotonic time of the last upstream delta
    chunk_count: int = 0
    stop_reason: str | None = None
    stop_requested_at: float | None = None  # monotonic time the stop was decided
    stop_timeline: dict = field(default_factory=dict)  # stage -> monotonic time (metrics.STOP_STAGES)
    first_chunk_at: float | None = None  # monotonic time of the first upstream delta
    task: asyncio.Task | None = None
    running: bool = False  # the task has taken its first step
    # Resolved with the row's Ending once it is final (cancelled if the stream could not finalize).
    ending: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    grace_timer: asyncio.TimerHandle | None = None
    # Closes the upstream connection at once, while one is open (set by the runner's provider).
    abort_upstream: Callable[[], None] | None = None

    def claim_stop(self, reason: str, requested_at: float | None = None) -> bool:
        """Record why the stream stops, and since when (the frame that asked was read then,
        say); the first reason wins. Whether this call set it."""
        if self.stop_reason is not None:
            return False
        self.stop_reason = reason
        self.stop_requested_at = self.stop_timeline["requested"] = requested_at or time.monotonic()
        return True

    def stop(self, reason: str, requested_at: float | None = None) -> None:
        """The engine's one way to stop a stream: the upstream connection is aborted now, in
        this call, and the task is cancelled so that it saves its text and finalizes its row."""
        if not self.claim_stop(reason, requested_at):
            return
        if self.abort_upstream is not None:
            self.abort_upstream()
            metrics.stop_reached(self.stop_timeline, "upstream_aborted")
        if self.running:
            self.task.cancel()
        else:
            # A task cancelled before its first step never enters its body, so its
            # row would never be finalized: let it start, then cancel it.
            asyncio.get_running_loop().call_soon(self.task.cancel)

    def stats(self) -> dict:
        now = time.monotonic()
        return {
            "message_id": self.message_id,
            "user_id": self.user_id,
            "project_id": self.project_id,
            "worker": self.worker,
            "started_at": self.started_at,
            "age": round(now - self.started_monotonic, 3),
            "idle": round(now - self.last_progress, 3),
            "chunk_count": self.chunk_count,
            "watchers": len(self.relay.watchers),
            "stop_reason": self.stop_reason,
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
            stream.abort_upstream = None
            if stream.grace_timer is not None:
                stream.grace_timer.cancel()
            if not stream.ending.done():
                stream.ending.cancel()

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

    def oldest(self) -> Stream | None:
        return min(self._streams.values(), key=lambda s: s.started_monotonic, default=None)

    def stop(self, message_id: int, reason: str, requested_at: float | None = None) -> bool:
        """Stop a stream running here (Stream.stop); False when it does not run here."""
        stream = self._streams.get(message_id)
        if stream is None:
            return False
        stream.stop(reason, requested_at)
        return True

    async def wait(self, message_id: int, timeout: float | None = None) -> Ending | None:
        """The Ending of a stream running here once its row is final; None if it does not run
        here or could not finalize."""
        stream = self._streams.get(message_id)
        if stream is None:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(stream.ending), timeout)
        except asyncio.CancelledError:
            if stream.ending.cancelled():  # the stream ended without a final row
                return None
            raise

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
        """Stop feeding a watcher; a stream nobody watches is stopped after `grace` seconds."""
        stream = self._streams.get(message_id)
        if stream is None:
            return
        stream.relay.detach(watcher)
        if stream.relay.watchers or stream.grace_timer is not None:
            return
        if grace <= 0:
            stream.stop("disconnect")
        else:
            stream.grace_timer = asyncio.get_running_loop().call_later(grace, stream.stop, "disconnect")


registry = Registry()
metrics.active_streams.set_function(registry.active_count)
