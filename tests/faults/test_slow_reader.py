"""A client that never reads its socket.

The server's policy. Daphne gives the application no backpressure: `send()` on a socket
returns at once and its frames are written into the socket's transport, whatever the
reader does, so a socket that is never read buffers in the server process. The server
bounds what such a reader can cost instead of blocking on it:

- it sends only coalesced deltas (one `message_chunk` per STREAM_FRAME_INTERVAL with the
  new text, never the full content), so the bytes queued for a socket are about the text
  of the answers it watches plus one terminal event each, not the square of it;
- every answer ends by STREAM_MAX_AGE, so what a never-reading socket can pile up is
  bounded by what its answers can produce in that time;
- the stream itself is not slowed by its reader: it runs at the upstream's pace,
  completes and is saved; the other sockets are unaffected.

The test: a raw TCP websocket client (with a small receive buffer, so the bytes pile up
in the server: in daphne's transport, and in the kernel's send buffer of the socket,
which VmRSS does not count) completes the handshake, sends a `send` frame and never
reads, while the upstream streams about 5 MB. The row completes with the full content
about when the upstream finishes; another client's stream on the same server completes
at its normal pace; and the daphne process's resident memory (VmRSS) grows by less than
3 x the content size + 25 MB. The peak is exact (VmHWM, reset through clear_refs) and the
server runs without DEBUG, as in production. Measured here: about 33 MB for 4.8 MB: the
frames queued for the reader, the relay's frame log, the joined text and the database
driver's copies of it when the answer is finalized (the row is not read back, and a
terminal event too long for a websocket message is not serialized with its text).
"""

import asyncio
import contextlib
import json
import time

from tests.helpers import BUDGET
from tests.faults.support import (
    MB, PRODUCTION, RawWebSocket, RssSampler, SocketReader, assert_no_streams_left, max_gap, project_of,
    session_client, sqlite_row, start_answer,
)
from tests.upstream import chat_reply

CHUNKS, CHUNK_SIZE, CHUNK_DELAY = 1000, 5000, 0.002  # 5 MB in about 2 s


async def test_a_reader_that_never_reads_costs_a_bounded_buffer_and_slows_nobody(
        live_servers, template_database, module_upstream):
    # Without DEBUG, as in production: in DEBUG, Django also keeps the SQL of every flush
    # (the text itself) in the connection's query log, which is not what is measured here.
    server = live_servers(
        LLM_PROVIDER="openai", LLM_BASE_URL=module_upstream.base_url, LLM_API_KEY="k",
        STREAM_FLUSH_INTERVAL=0.2, STREAM_FRAME_INTERVAL=0.05, STREAM_DISCONNECT_GRACE=0, **PRODUCTION,
    )
    client = session_client(server, template_database.demo_session)
    project_id = project_of(client)
    big = [f"{i:06d}" + "y" * (CHUNK_SIZE - 6) for i in range(CHUNKS)]
    content_size = CHUNKS * CHUNK_SIZE
    words = [f"n{i} " for i in range(40)]
    nominal = 40 * 0.05
    async with contextlib.AsyncExitStack() as stack:
        other = await SocketReader.open(stack, server, project_id, client)
        warm_up = await start_answer(other, module_upstream, chat_reply(["warm", " up"]))
        await other.terminal(warm_up)

        with RssSampler(server.process.pid) as memory:
            seen = len(module_upstream.requests)
            module_upstream.enqueue(chat_reply(big, delay=CHUNK_DELAY))
            never_reads = RawWebSocket(server, project_id, client)
            stack.callback(never_reads.abort)
            never_reads.send_text(json.dumps({"type": "send", "content": "tell me everything"}))
            await asyncio.to_thread(module_upstream.wait_for_requests, seen + 1)
            request = module_upstream.requests[-1]
            [answer_id] = [s["message_id"] for s in client.get("/api/streams/").json()["streams"]
                           if s["message_id"] != warm_up]

            started = time.monotonic()
            other_id = await start_answer(other, module_upstream, chat_reply(words, delay=0.05))
            completed = await other.terminal(other_id, timeout=nominal + 5)
            other_took = time.monotonic() - started

            while not request.finished:
                assert time.monotonic() - started < 30, "the upstream could not send its answer"
                await asyncio.sleep(0.01)
            upstream_done = time.monotonic()
            upstream_took = upstream_done - request.received_at
            while (await asyncio.to_thread(sqlite_row, server, answer_id))["status"] == "streaming":
                assert time.monotonic() - upstream_done < 5, "the answer was not saved after the upstream ended"
                await asyncio.sleep(0.05)
            saved_after = time.monotonic() - upstream_done
            await assert_no_streams_left(client)

        row = await asyncio.to_thread(sqlite_row, server, answer_id)
        assert (row["status"], row["chunk_count"], len(row["content"])) == ("complete", CHUNKS, content_size)
        assert row["content"] == "".join(big)
        # The server read the upstream at the upstream's pace (a blocked reader would slow it through TCP)
        # and saved the answer as soon as it ended.
        assert upstream_took < 3 * CHUNKS * CHUNK_DELAY + 2, f"the upstream took {upstream_took:.1f}s to send"
        assert saved_after < 3, f"the answer was saved {saved_after:.1f}s after the upstream finished"

        assert completed["content"] == other.text(other_id) == "".join(words)
        assert other_took < nominal * 1.5 + 1.5, f"the other stream took {other_took:.1f}s (nominal {nominal}s)"
        assert max_gap([t for t, _ in other.chunks(other_id)]) < BUDGET
        assert await other.ping() < BUDGET

        limit = 3 * content_size + 25 * MB
        assert memory.growth < limit, (
            f"daphne grew by {memory.growth / MB:.1f} MB for {content_size / MB:.1f} MB of content"
            f" (limit {limit / MB:.0f} MB)")
    await assert_no_streams_left(client)
    client.close()
