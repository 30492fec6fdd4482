"""The services under the server fail: PostgreSQL connections killed mid-stream, Redis
restarted. Real daphne workers on this machine's PostgreSQL and a private redis-server
(skipped when PostgreSQL or Redis do not answer, as tests/multi is).

PostgreSQL connection killed (`pg_terminate_backend` of the worker's backend while it
flushes): what must hold
- the stream is not disturbed: chunks keep flowing to the socket while the database is away,
- nothing lost beyond one flush interval: the runner keeps the text of a failed flush in
  memory and writes it with the next one, so the row catches up once the database is back,
- exactly one terminal state: the answer completes, the row holds the complete content
  and agrees with the `stream_complete` event; no leaks.

Redis restarted (its data gone, as with a restart without persistence or a failover):
tests/multi/test_processes.py shows that streams run on and stops still work while
Redis is down, and that a new prompt works once it is back. Here, after the restart,
what must hold
- an answer that spanned the restart completes with its full content,
- a stop sent to worker B reaches the answer running on worker A within a flush
  interval, and both sockets get the same `stream_cancelled`; a new prompt on B works,
- the workers' bus works again: a socket on worker B can follow (`resume`) an answer
  running on worker A (each worker re-joins its group every few seconds),
- no leaks: both registries empty, the upstream request closed.
"""

import asyncio
import contextlib
import time

import httpx
import psycopg

from tests.faults.conftest import needs_postgres_and_redis
from tests.helpers import BUDGET, wait_for
from tests.faults.support import (
    SocketReader, assert_no_streams_left, max_gap, project_of, start_answer,
)
from tests.live import sign_in
from tests.multi.conftest import cluster_env, running_cluster, two_workers_on
from tests.upstream import chat_reply, endless_reply

pytestmark = needs_postgres_and_redis

FLUSH_INTERVAL = 0.2  # cluster_env's


def waiting_flush(cluster, answer_id: int) -> int | None:
    """The backend of a flush of `answer_id` that waits for the row lock, if there is one."""
    rows = cluster.sql(
        "select pid from pg_stat_activity where datname = current_database() and wait_event_type = 'Lock'"
        " and query ilike 'UPDATE%%chat_message%%' and query like %s", f"%{answer_id}%")
    return rows[0][0] if rows else None


async def test_it_keeps_the_text_of_flushes_whose_database_connection_was_killed(
        tmp_path, pg_database, layer_prefix, module_upstream):
    words = [f"p{i} " for i in range(100)]
    with running_cluster(tmp_path, cluster_env(pg_database, layer_prefix, module_upstream), workers=1) as cluster:
        worker = cluster.workers[0]
        client = sign_in(worker)
        async with contextlib.AsyncExitStack() as stack:
            ws = await SocketReader.open(stack, worker, project_of(client), client)
            answer_id = await start_answer(ws, module_upstream, chat_reply(words, delay=0.03))
            await ws.chunk_count_at_least(answer_id, 3)

            # Hold the row's lock so that each flush waits inside its UPDATE, then kill its backend.
            killed = 0
            with psycopg.connect(pg_database) as locker:
                locker.execute("select id from chat_message where id = %s for update", (answer_id,))
                for _ in range(3):
                    backend = await wait_for(lambda: waiting_flush(cluster, answer_id), 5, "a flush on the lock",
                                     in_thread=True)
                    killed += cluster.sql("select pg_terminate_backend(%s)", backend)[0][0]
                received_at_last_kill = ws.text(answer_id)
                locker.rollback()
            assert killed == 3

            def saved_content():
                return cluster.sql("select content from chat_message where id = %s", answer_id)[0][0]

            caught_up = time.monotonic()
            await wait_for(lambda: saved_content().startswith(received_at_last_kill), 3,
                           "the row to hold the text of the failed flushes", in_thread=True)
            assert time.monotonic() - caught_up < FLUSH_INTERVAL + 1.0
            completed = await ws.terminal(answer_id, timeout=10)
            assert max_gap([t for t, _ in ws.chunks(answer_id)]) < BUDGET  # the stream never waited for the database

        assert completed["type"] == "stream_complete", completed
        assert completed["content"] == ws.text(answer_id) == "".join(words)
        row = cluster.sql("select status, content, chunk_count from chat_message where id = %s", answer_id)
        assert row == [("complete", "".join(words), len(words))]
        await assert_no_streams_left(client)
        client.close()


async def restart(own_redis, workers) -> None:
    own_redis.stop()
    own_redis.start()
    await wait_for(lambda: all(httpx.get(f"{w.url}/healthz").status_code == 200 for w in workers), 15,
                   "the workers to find Redis again", in_thread=True)


async def test_after_a_redis_restart_answers_complete_and_stops_from_another_worker_land(
        tmp_path, pg_database, layer_prefix, module_upstream, own_redis):
    words = [f"s{i} " for i in range(60)]
    with two_workers_on(own_redis, tmp_path, pg_database, layer_prefix, module_upstream) as (cluster, clients, project_id):
        (a, b), (client_a, client_b) = cluster.workers, clients
        async with contextlib.AsyncExitStack() as stack:
            on_a = await SocketReader.open(stack, a, project_id, client_a)
            spanning = await start_answer(on_a, module_upstream, chat_reply(words, delay=0.05))
            endless = await start_answer(on_a, module_upstream, endless_reply(delay=0.02))
            endless_request = module_upstream.requests[-1]
            await on_a.chunk_count_at_least(endless, 3)

            await restart(own_redis, (a, b))
            on_b = await SocketReader.open(stack, b, project_id, client_b)
            sent = time.monotonic()
            await on_b.send(type="cancel", message_id=endless)
            stopped = await on_b.terminal(endless, timeout=10)
            stop_took = time.monotonic() - sent
            on_a_stopped = await on_a.terminal(endless)
            completed = await on_a.terminal(spanning, timeout=10)
            after = await start_answer(on_b, module_upstream, chat_reply(["after", " the", " restart"]))
            after_completed = await on_b.terminal(after)

        assert (stopped["type"], stopped["reason"]) == ("stream_cancelled", "user")
        assert stopped == on_a_stopped and stopped["content"] == on_a.text(endless)
        assert stop_took < FLUSH_INTERVAL + 1.0, f"the stop took {stop_took:.2f}s"
        assert completed["content"] == on_a.text(spanning) == "".join(words)
        assert after_completed["content"] == "after the restart"
        rows = dict(cluster.sql("select id, status from chat_message where id = any(%s)", [spanning, endless, after]))
        assert rows == {spanning: "complete", endless: "cancelled", after: "complete"}
        await asyncio.to_thread(module_upstream.wait_closed, endless_request, 5)
        for client in (client_a, client_b):
            await assert_no_streams_left(client)


async def test_after_a_redis_restart_a_socket_on_another_worker_can_follow_an_answer(
        tmp_path, pg_database, layer_prefix, module_upstream, own_redis):
    with two_workers_on(own_redis, tmp_path, pg_database, layer_prefix, module_upstream) as (cluster, clients, project_id):
        (a, b), (client_a, client_b) = cluster.workers, clients
        try:
            async with contextlib.AsyncExitStack() as stack:
                on_a = await SocketReader.open(stack, a, project_id, client_a)
                endless = await start_answer(on_a, module_upstream, endless_reply(delay=0.02))
                await on_a.chunk_count_at_least(endless, 3)

                await restart(own_redis, (a, b))
                on_b = await SocketReader.open(stack, b, project_id, client_b)
                await on_b.send(type="resume", message_id=endless, after_seq=0)
                # Milliseconds on a healthy bus; after a Redis restart, until the producing worker
                # has re-joined its group (every second) and the socket asked again (every second).
                await on_b.chunk_count_at_least(endless, 3, timeout=5)
                await on_b.send(type="cancel", message_id=endless)
                stopped = await on_b.terminal(endless)
                assert stopped["content"] == on_b.text(endless) == on_a.text(endless)
                assert on_b.seqs(endless) == list(range(1, len(on_b.seqs(endless)) + 1))
        finally:
            await asyncio.to_thread(client_a.post, f"/api/projects/{project_id}/chat/cancel",
                                    json={"message_id": endless})
