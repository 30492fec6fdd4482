"""Cost grows with the length of an answer, not its square: frames and writes are coalesced."""

import time
from contextlib import contextmanager

import pytest
from django.db.backends.signals import connection_created

from tests.helpers import assert_contiguous, chunks_text, receive_until, send_prompt
from tests.upstream import chat_reply

pytestmark = pytest.mark.django_db(transaction=True)

WORDS = [f"w{i} " for i in range(400)]


@contextmanager
def message_writes():
    """Counts the SQL statements that write the chat_message table, on every connection opened meanwhile."""
    writes = []
    counting = [True]  # wrappers outlive the block on other threads' connections: they go quiet

    def count(execute, sql, params, many, context):
        if counting[0] and sql.lstrip().upper().startswith(("UPDATE", "INSERT")) and '"chat_message"' in sql:
            writes.append(sql.split()[0])
        return execute(sql, params, many, context)

    def watch(sender, connection, **kwargs):
        # The same wrapper object of a thread reconnects: wrap it once.
        if count not in connection.execute_wrappers:
            connection.execute_wrappers.append(count)

    connection_created.connect(watch)
    try:
        yield writes
    finally:
        counting[0] = False
        connection_created.disconnect(watch)


async def stream_once(llm, connect, project, user, delay):
    llm.enqueue(chat_reply(WORDS, delay=delay))
    ws = await connect(project, user)
    started = time.monotonic()
    await send_prompt(ws)
    frames = await receive_until(ws, "stream_complete", timeout=15)
    return frames, time.monotonic() - started


async def test_it_joins_fast_deltas_into_one_frame_per_interval(llm, settings, connect, project, user):
    settings.STREAM_FRAME_INTERVAL = 0.05
    coalesced, elapsed = await stream_once(llm, connect, project, user, delay=0.002)
    frames = [f for f in coalesced if f["type"] == "message_chunk"]
    assert len(frames) <= elapsed / 0.05 + 2, (len(frames), elapsed)
    assert len(frames) < len(WORDS) / 4
    assert_contiguous(coalesced)
    settings.STREAM_FRAME_INTERVAL = 0
    one_by_one, _ = await stream_once(llm, connect, project, user, delay=0.002)
    assert len([f for f in one_by_one if f["type"] == "message_chunk"]) == len(WORDS)
    assert chunks_text(coalesced) == chunks_text(one_by_one) == "".join(WORDS)
    assert coalesced[-1]["chunk_count"] == one_by_one[-1]["chunk_count"] == len(WORDS)


async def test_it_writes_the_row_by_the_clock_not_by_the_chunk(llm, settings, connect, project, user):
    settings.STREAM_FLUSH_INTERVAL = 0.1
    with message_writes() as writes:
        _, elapsed = await stream_once(llm, connect, project, user, delay=0.002)
    # two inserts (prompt, placeholder), start, one flush per interval, finalize
    assert len(writes) <= 2 + 1 + elapsed / 0.1 + 1 + 1, (len(writes), elapsed)
    assert len(writes) < len(WORDS) / 10
    assert writes.count("INSERT") == 2
