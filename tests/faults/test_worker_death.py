"""A server process stopped or killed under load: 20 answers streaming at once, from 10
sockets, against a real daphne process.

SIGTERM (a deploy, `docker stop`): what must hold
- every answer ends `cancelled`/`shutdown` with the text it had produced (nothing lost),
- every watching socket is told, with a `stream_cancelled` whose content is exactly the
  text of the chunks it received, before daphne closes it,
- exactly one terminal state: the rows say the same as the events,
- the process exits 0 and every upstream request was closed (no paid tokens run on).

SIGKILL (out of memory, a crashed host): the sockets and upstream connections just drop.
What must hold
- nothing lost beyond one flush interval: each row holds the text its socket received,
  except at most what arrived within the last STREAM_FLUSH_INTERVAL (plus scheduling slack),
- after `manage.py sweep_streams --stale-after 1` every answer is `cancelled`/`orphaned`
  with the text of its last flush, and nothing is left streaming.

(tests/multi/test_processes.py covers one stream per worker on PostgreSQL.)
"""

import asyncio
import contextlib
import json
import signal
import time

import pytest

from tests.faults.support import SocketReader, active_streams, project_of, sqlite_rows
from tests.live import sign_in
from tests.upstream import endless_reply

SOCKETS, PER_SOCKET = 10, 2
FLUSH_INTERVAL = 0.2
SLACK = 0.5  # scheduling on a loaded 2-core machine, on top of one flush interval


@pytest.fixture
def loaded_server(live_servers, module_upstream):
    """A server with 20 answers streaming (sockets, answer ids per socket, upstream requests)."""

    async def start(stack):
        server = live_servers(
            LLM_PROVIDER="openai", LLM_BASE_URL=module_upstream.base_url, LLM_API_KEY="k",
            STREAM_FLUSH_INTERVAL=FLUSH_INTERVAL, STREAM_FRAME_INTERVAL=0.05, STREAM_DISCONNECT_GRACE=30,
            STREAM_MAX_PER_USER=SOCKETS * PER_SOCKET,
        )
        client = sign_in(server)
        stack.callback(client.close)
        project_id = project_of(client)
        seen = len(module_upstream.requests)
        module_upstream.enqueue(*[endless_reply(delay=0.05) for _ in range(SOCKETS * PER_SOCKET)])
        sockets = [await SocketReader.open(stack, server, project_id, client) for _ in range(SOCKETS)]
        answers = {}
        for ws in sockets:
            answers[ws] = [await ws.prompt(f"answer {i}") for i in range(PER_SOCKET)]
        await asyncio.to_thread(module_upstream.wait_for_requests, seen + SOCKETS * PER_SOCKET, 10)
        requests = module_upstream.requests[seen:]
        for ws, ids in answers.items():
            for answer_id in ids:
                await ws.chunk_count_at_least(answer_id, 3, timeout=10)
        assert active_streams(client) == SOCKETS * PER_SOCKET
        return server, answers, requests

    return start


def rows_of(server, ids) -> dict[int, tuple]:
    found = sqlite_rows(server, "select id, status, cancel_reason, content from chat_message where id in (%s)"
                        % ",".join("?" * len(ids)), *ids)
    return {row[0]: row[1:] for row in found}


async def test_sigterm_under_load_ends_every_answer_as_shutdown_and_tells_every_socket(
        loaded_server, module_upstream):
    async with contextlib.AsyncExitStack() as stack:
        server, answers, requests = await loaded_server(stack)
        server.process.send_signal(signal.SIGTERM)
        for ws, ids in answers.items():
            for answer_id in ids:
                await ws.terminal(answer_id, timeout=15)
        for ws in answers:
            await ws.wait_closed(timeout=15)  # daphne closes the sockets after telling them
        assert await asyncio.to_thread(server.process.wait, 15) == 0, server.output()

    all_ids = [i for ids in answers.values() for i in ids]
    rows = rows_of(server, all_ids)
    for ws, ids in answers.items():
        for answer_id in ids:
            [event] = ws.terminals(answer_id)
            assert (event["type"], event["reason"]) == ("stream_cancelled", "shutdown"), event
            assert event["content"] == ws.text(answer_id) and event["content"]
            assert event["partial_content"] == event["content"] + "\n\n*[Response stopped: shutdown]*"
            assert rows[answer_id] == ("cancelled", "shutdown", event["content"])
    assert all(request.closed_early for request in requests)
    await _no_upstream_connections(module_upstream)


async def test_sigkill_under_load_loses_at_most_a_flush_and_the_sweeper_finalizes_every_orphan(
        loaded_server, module_upstream):
    async with contextlib.AsyncExitStack() as stack:
        server, answers, requests = await loaded_server(stack)
        server.process.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert await asyncio.to_thread(server.process.wait, 5) == -signal.SIGKILL
        for ws in answers:
            await ws.wait_closed(timeout=5)
    await _no_upstream_connections(module_upstream)

    all_ids = [i for ids in answers.values() for i in ids]
    saved = rows_of(server, all_ids)
    for ws, ids in answers.items():
        for answer_id in ids:
            status, _, content = saved[answer_id]
            assert status == "streaming"
            received = ws.text(answer_id)
            assert received.startswith(content), f"message {answer_id}: the row is not what was sent"
            # Every chunk whose text is not in the row arrived within the last flush interval.
            arrived, lost_since = "", None
            for at, chunk in ws.chunks(answer_id):
                arrived += chunk["delta"]
                if len(arrived) > len(content):
                    lost_since = at
                    break
            if lost_since is not None:
                assert killed_at - lost_since < FLUSH_INTERVAL + SLACK, (
                    f"message {answer_id}: text received {killed_at - lost_since:.2f}s before the kill was not saved")

    finalized = {}
    deadline = time.monotonic() + 20
    while set(finalized) < set(all_ids):
        assert time.monotonic() < deadline, f"not swept: {set(all_ids) - set(finalized)}"
        swept = await asyncio.to_thread(server.manage, "sweep_streams", "--stale-after", "1", "--json")
        finalized.update({int(k): v for k, v in json.loads(swept.stdout)["finalized"].items()})
    assert set(finalized.values()) == {"orphaned"}
    after = rows_of(server, all_ids)
    assert after == {i: ("cancelled", "orphaned", saved[i][2]) for i in all_ids}
    assert sqlite_rows(server, "select count(*) from chat_message where status in ('pending', 'streaming')") == [(0,)]


async def _no_upstream_connections(upstream, timeout=5.0):
    deadline = time.monotonic() + timeout
    while upstream.open_connections():
        assert time.monotonic() < deadline, f"{upstream.open_connections()} upstream connections still open"
        await asyncio.sleep(0.05)
