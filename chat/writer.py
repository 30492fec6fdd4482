"""The streams' database lane: one thread that keeps its connection.

Every write of the stream lifecycle (store a prompt, start, flush, stop request,
finalize) runs here, in order. Under ASGI with CONN_MAX_AGE=0, Django opens and
closes a connection for each `database_sync_to_async` call, all on one shared
thread that also serves page reads; under load those calls queued behind each
other and a stop waited seconds for its turn. This thread opens its connection
once and drops it after a database error, so the next call reconnects (the
database may have restarted).
"""

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor

from django.db import Error, connection, connections

_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stream-db")


async def run(function, /, **kwargs):
    """`function(**kwargs)` on the lane's thread."""
    return await asyncio.get_running_loop().run_in_executor(_thread, functools.partial(_call, function, kwargs))


def _call(function, kwargs):
    try:
        return function(**kwargs)
    except Error:
        connection.close()
        raise


async def close() -> None:
    """Let go of the lane's connection (tests, before their database is dropped)."""
    await asyncio.get_running_loop().run_in_executor(_thread, connections.close_all)
