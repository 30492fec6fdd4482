"""The streams' database lane: one thread that keeps its connection, and serves stops first.

Every write of the stream lifecycle (store a prompt, start, flush, stop request,
finalize) runs here. Under ASGI with CONN_MAX_AGE=0, Django opens and closes a
connection for each `database_sync_to_async` call, all on one shared thread that
also serves page reads; under load those calls queued behind each other and a stop
waited seconds for its turn. This thread opens its connection once and drops it
after a database error, so the next call reconnects (the database may have restarted).

Calls are served by urgency, then in order: a stop request or a finalize (`urgent`)
goes ahead of the flushes and starts already queued, so a stop never waits for a
burst of other streams' writes.
"""

import asyncio
import itertools
import queue
import threading
from concurrent.futures import Future

from django.db import Error, connection, connections

URGENT, NORMAL = 0, 1


class Lane:
    def __init__(self):
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()  # ties within one urgency keep their order
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, function, kwargs: dict, urgent: bool) -> Future:
        future: Future = Future()
        self._queue.put((URGENT if urgent else NORMAL, next(self._order), function, kwargs, future))
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="stream-db", daemon=True)
                self._thread.start()
        return future

    def _serve(self) -> None:
        while True:
            _, _, function, kwargs, future = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(**kwargs))
            except BaseException as error:
                if isinstance(error, Error):
                    connection.close()
                future.set_exception(error)


_lane = Lane()


async def run(function, /, *, urgent: bool = False, **kwargs):
    """`function(**kwargs)` on the lane's thread; `urgent` for what a stop waits on."""
    return await asyncio.wrap_future(_lane.submit(function, kwargs, urgent))


async def close() -> None:
    """Let go of the lane's connection (tests, shutdown, before a database is dropped)."""
    await run(connections.close_all, urgent=True)
