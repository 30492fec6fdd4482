"""The frames to one socket, in order, written as soon as the socket takes them.

Both servers' websocket send completes without waiting unless the client's transport is
paused (daphne never pauses; uvicorn when a client stops reading). So a frame is
written in the very call that delivers it, with no loop turn in between: under load a
turn waits for a whole burst of other streams' work, and a stop's terminal event must
not. Only behind a paused socket do frames queue, written by a task of the outbox's
own until the queue is empty again.
"""

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable

from streaming import metrics

log = logging.getLogger("chat.outbox")


class Outbox:
    def __init__(self, send: Callable[[str], Awaitable[None]]):
        self._send = send
        self._queue: collections.deque[tuple[str, dict | None]] = collections.deque()
        self._writer: asyncio.Task | None = None
        self.closed = False

    def put(self, text: str, stop_timeline: dict | None = None) -> None:
        """Write `text` now if the socket takes it at once, else after what is queued. A stop's
        timeline, on the frame that ends a stopped answer, gets its `event_written` stage."""
        if self.closed:
            return
        if not self._queue and not self._writing() and self._write_now(text):
            if stop_timeline:
                metrics.stop_reached(stop_timeline, "event_written")
            return
        self._queue.append((text, stop_timeline))
        if not self._writing():
            self._writer = asyncio.get_running_loop().create_task(self._write_queued())

    async def close(self) -> None:
        self.closed = True
        if self._writing():
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)

    def _writing(self) -> bool:
        return self._writer is not None and not self._writer.done()

    def _write_now(self, text: str) -> bool:
        """Drive the send to its end now; False, with nothing written, if it would wait (the
        servers wait, if at all, before they write)."""
        sending = self._send(text)
        try:
            sending.send(None)
        except StopIteration:
            return True
        except Exception:
            self._gone()
            return True
        sending.close()
        return False

    async def _write_queued(self) -> None:
        try:
            while self._queue:
                text, stop_timeline = self._queue[0]
                await self._send(text)
                self._queue.popleft()
                if stop_timeline:
                    metrics.stop_reached(stop_timeline, "event_written")
        except Exception:
            self._gone()

    def _gone(self) -> None:
        # The socket closed under us (its disconnect is on its way): nothing more to write.
        log.debug("a frame was not written: the socket is gone", exc_info=True)
        self.closed = True
        self._queue.clear()
