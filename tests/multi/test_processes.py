"""Workers that die, stop or lose Redis; the sweeper that cleans up after them."""

import asyncio
import json
import signal
import subprocess
import time

import pytest
import websockets

from tests.helpers import TERMINAL, chunks_text
from tests.live import BIN, ROOT, frames_until, open_socket, send_frame, sign_in
from tests.multi.conftest import cluster_env, running_cluster, two_workers_on
from tests.upstream import chat_reply, endless_reply


@pytest.fixture
def one_worker(tmp_path, pg_database, layer_prefix, cluster_upstream):
    with running_cluster(tmp_path, cluster_env(pg_database, layer_prefix, cluster_upstream), workers=1) as cluster:
        client = sign_in(cluster.workers[0])
        cluster.client = client
        cluster.project_id = client.get("/api/projects/").json()["results"][0]["id"]
        yield cluster
        client.close()


async def stream_some(cluster, upstream, ws) -> tuple[int, list[dict]]:
    seen = len(upstream.requests)
    upstream.enqueue(endless_reply(delay=0.005))
    await send_frame(ws, type="send", content="keep talking")
    answer_id = (await frames_until(ws, "message_created"))[-1]["assistant_message"]["id"]
    await asyncio.to_thread(upstream.wait_for_requests, seen + 1)
    frames = []
    while len(frames) < 20:
        frames += await frames_until(ws, "message_chunk")
    return answer_id, frames


async def test_it_finalizes_every_stream_as_shutdown_on_sigterm(one_worker, cluster_upstream):
    worker = one_worker.workers[0]
    async with open_socket(worker, one_worker.project_id, one_worker.client) as ws:
        answer_id, before = await stream_some(one_worker, cluster_upstream, ws)
        request = cluster_upstream.requests[-1]
        worker.process.send_signal(signal.SIGTERM)
        rest = await frames_until(ws, *TERMINAL)
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 15)
    event = rest[-1]
    assert (event["type"], event["reason"]) == ("stream_cancelled", "shutdown")
    assert event["content"] == chunks_text(before + rest)
    assert worker.process.wait(15) == 0, worker.output()
    assert request.closed_early
    rows = one_worker.sql("select status, cancel_reason, content from chat_message where id = %s", answer_id)
    assert rows == [("cancelled", "shutdown", event["content"])]


async def test_it_sweeps_the_stream_of_a_killed_worker_as_orphaned(one_worker, cluster_upstream):
    worker = one_worker.workers[0]
    async with open_socket(worker, one_worker.project_id, one_worker.client) as ws:
        answer_id, before = await stream_some(one_worker, cluster_upstream, ws)
    await asyncio.sleep(0.5)  # a couple of flushes; the stream runs on within its disconnect grace
    worker.process.send_signal(signal.SIGKILL)
    worker.process.wait(5)
    received = chunks_text(before)
    saved = one_worker.sql("select status, content from chat_message where id = %s", answer_id)[0]
    assert saved[0] == "streaming" and saved[1].startswith(received)
    early = one_worker.manage("sweep_streams", "--stale-after", "5", "--json")
    assert str(answer_id) not in json.loads(early.stdout)["finalized"]
    time.sleep(1.2)
    swept = json.loads(one_worker.manage("sweep_streams", "--stale-after", "1", "--json").stdout)
    assert swept["finalized"][str(answer_id)] == "orphaned"
    row = one_worker.sql("select status, cancel_reason, content from chat_message where id = %s", answer_id)[0]
    assert row == ("cancelled", "orphaned", saved[1])


def test_it_lets_two_sweepers_finalize_each_orphan_once(one_worker):
    project = one_worker.project_id
    ids = [one_worker.sql(
        "insert into chat_message (project_id, role, status, cancel_reason, error_type, error_detail, content, chunk_count,"
        " created_at, last_chunk_at, cancel_requested_reason, provider, model, worker)"
        " values (%s, 'assistant', 'streaming', '', '', '', %s, 3, now() - interval '1 hour', now() - interval '1 hour',"
        " '', 'openai', 'm', 'dead:1:1') returning id", project, f"partial {i}")[0][0] for i in range(20)]
    env = one_worker.workers[0].env
    sweepers = [subprocess.Popen([str(BIN / "python"), "manage.py", "sweep_streams", "--stale-after", "60", "--json"],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in sweepers]
    finalized = [set(map(int, r["finalized"])) for r in results]
    assert not finalized[0] & finalized[1]
    assert finalized[0] | finalized[1] >= set(ids)
    rows = one_worker.sql("select status, cancel_reason, content from chat_message where id = any(%s) order by id", ids)
    assert rows == [("cancelled", "orphaned", f"partial {i}") for i in range(20)]


def test_it_exits_non_zero_when_the_database_is_unreachable(one_worker):
    result = one_worker.manage("sweep_streams", check=False, DATABASE_URL="postgres://postgres@127.0.0.1:1/none")
    assert result.returncode != 0
    assert "cannot reach the database" in result.stderr


def test_it_prints_a_summary_line_and_changes_nothing_on_a_dry_run(one_worker):
    project = one_worker.project_id
    [(orphan,)] = one_worker.sql(
        "insert into chat_message (project_id, role, status, cancel_reason, error_type, error_detail, content, chunk_count,"
        " created_at, last_chunk_at, cancel_requested_reason, provider, model, worker)"
        " values (%s, 'assistant', 'streaming', '', '', '', 'x', 1, now() - interval '1 hour', now() - interval '1 hour',"
        " '', 'openai', 'm', 'dead:1:1') returning id", project)
    dry = one_worker.manage("sweep_streams", "--stale-after", "60", "--dry-run").stdout
    assert f"{orphan} (orphaned)" in dry and "would be stopped" in dry
    assert one_worker.sql("select status from chat_message where id = %s", orphan) == [("streaming",)]
    line = one_worker.manage("sweep_streams", "--stale-after", "60").stdout
    assert line.startswith("sweep: ") and "orphaned" in line


def test_it_loops_until_sigterm_and_exits_cleanly(one_worker):
    sweeper = subprocess.Popen([str(BIN / "python"), "manage.py", "sweep_streams", "--loop", "--interval", "0.2"],
                               cwd=ROOT, env=one_worker.workers[0].env, stdout=subprocess.PIPE, text=True)
    passes = [sweeper.stdout.readline() for _ in range(2)]
    sweeper.send_signal(signal.SIGTERM)
    sweeper.communicate(timeout=10)
    assert sweeper.returncode == 0
    assert all(line.startswith("sweep: ") for line in passes), passes


async def test_it_keeps_streaming_and_stopping_while_redis_is_down(tmp_path, pg_database, layer_prefix, cluster_upstream, own_redis):
    with two_workers_on(own_redis, tmp_path, pg_database, layer_prefix, cluster_upstream) as (cluster, clients, project_id):
        a, (client_a, client_b) = cluster.workers[0], clients
        words = [f"w{i} " for i in range(60)]
        async with open_socket(a, project_id, client_a) as on_a:
            seen = len(cluster_upstream.requests)
            cluster_upstream.enqueue(chat_reply(words, delay=0.03), endless_reply(delay=0.01))
            await send_frame(on_a, type="send", content="long answer")
            finishing = (await frames_until(on_a, "message_created"))[-1]["assistant_message"]["id"]
            await send_frame(on_a, type="send", content="endless answer")
            endless = (await frames_until(on_a, "message_created"))[-1]["assistant_message"]["id"]
            await asyncio.to_thread(cluster_upstream.wait_for_requests, seen + 2)

            own_redis.stop()
            await send_frame(on_a, type="send", content="a new one while Redis is down")
            refused = (await frames_until(on_a, "error", timeout=10))[-1]
            assert refused["code"] == "unavailable"

            stop = await asyncio.to_thread(client_b.post, f"/api/projects/{project_id}/chat/cancel", json={"message_id": endless})
            assert stop.status_code == 200, stop.text
            frames = await frames_until(on_a, "stream_complete", timeout=15)
            assert any(f["type"] == "stream_cancelled" and f["message_id"] == endless for f in frames)

            own_redis.start()
            await asyncio.sleep(1.5)
            await send_frame(on_a, type="send", content="Redis is back")
            back = (await frames_until(on_a, "message_created", "error", timeout=10))[-1]
            assert back["type"] == "message_created", back
            await frames_until(on_a, "stream_complete", timeout=10)
        rows = dict(cluster.sql("select id, status from chat_message where id = any(%s)", [finishing, endless]))
        assert rows == {finishing: "complete", endless: "cancelled"}
        assert cluster.sql("select content from chat_message where id = %s", finishing) == [("".join(words),)]


async def test_a_socket_following_another_workers_answer_gets_its_end_while_redis_is_down(
        tmp_path, pg_database, layer_prefix, cluster_upstream, own_redis):
    with two_workers_on(own_redis, tmp_path, pg_database, layer_prefix, cluster_upstream) as (cluster, clients, project_id):
        (a, b), (client_a, client_b) = cluster.workers, clients
        words = [f"w{i} " for i in range(60)]
        async with open_socket(a, project_id, client_a) as on_a, open_socket(b, project_id, client_b) as on_b:
            seen = len(cluster_upstream.requests)
            cluster_upstream.enqueue(chat_reply(words, delay=0.05))
            await send_frame(on_a, type="send", content="a long answer")
            answer_id = (await frames_until(on_a, "message_created"))[-1]["assistant_message"]["id"]
            await asyncio.to_thread(cluster_upstream.wait_for_requests, seen + 1)
            await send_frame(on_b, type="resume", message_id=answer_id, after_seq=0)
            await frames_until(on_b, "message_chunk")  # B follows the answer of A through Redis

            own_redis.stop()  # the rest of its chunks and its terminal event cannot reach B
            on_a_end = (await frames_until(on_a, *TERMINAL, timeout=10))[-1]
            on_b_frames = await frames_until(on_b, *TERMINAL, timeout=6)  # from the row, within a check
            own_redis.start()
            with pytest.raises(asyncio.TimeoutError):
                await frames_until(on_b, *TERMINAL, timeout=3)  # and once only
        assert on_a_end["type"] == on_b_frames[-1]["type"] == "stream_complete"
        assert on_b_frames[-1]["content"] == "".join(words)
