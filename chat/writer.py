"""The streams' database lane: one thread that keeps its connection, and serves stops first.

Every write of the stream lifecycle (store a prompt, start, flush, stop request,
finalize) runs here. Under ASGI with CONN_MAX_AGE=0, Django opens and closes a
connection for each `database_sync_to_async` call, all on one shared thread that
also serves page reads; under load those calls queued behind each other and a stop
waited seconds for its turn. This thread opens its connection once and drops it
after a database error, so the next call reconnects (the database may have restarted).

Calls are served by priority, then in order: a stop request or a finalize (STOPS) goes
ahead of everything queued, so a stop never waits for a burst of other streams' writes;
a new prompt (PROMPTS) goes ahead of the routine writes (ROUTINE: the batched starts
and flushes), so a user's first chunk does not wait for them either. And what must
follow a write at once (a stop's terminal event) can run in the very callback that
hands the result back to the loop (`then`), one loop turn before the awaiting
coroutine resumes.
"""

import asyncio
import itertools
import queue
import threading

from django.db import Error, connection, connections

STOPS, PROMPTS, ROUTINE = 0, 1, 2


class Lane:
    def __init__(self):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # ties within one urgency keep their order
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, function, kwargs: dict, priority: int, done) -> None:
        """Run `function(**kwargs)` on the lane; `done(result, error)` is called on its thread."""
        self._queue.put((priority, next(self._order), function, kwargs, done))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="stream-db", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while True:
            _, _, function, kwargs, done = self._queue.get()
            try:
                result = function(**kwargs)
            except BaseException as error:
                if isinstance(error, Error):
                    connection.close()
                done(None, error)
            else:
                done(result, None)


_lane = Lane()


async def run(function, /, *, priority: int = ROUTINE, then=None, **kwargs):
    """`function(**kwargs)` on the lane's thread, by `priority` (STOPS for what a stop waits on);
    `then(result)` runs on the loop as soon as the result is back, before this coroutine resumes."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    def hand_back(result, error) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
            return
        try:
            if then is not None:
                then(result)
        finally:
            future.set_result(result)

    _lane.submit(function, kwargs, priority, lambda result, error: loop.call_soon_threadsafe(hand_back, result, error))
    return await future


async def close() -> None:
    """Let go of the lane's connection (tests, shutdown, before a database is dropped)."""
    await run(connections.close_all, priority=STOPS)
