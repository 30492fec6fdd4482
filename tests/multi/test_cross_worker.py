"""Stop and resume from any worker, caps across workers, a lost stop message (real PostgreSQL + Redis)."""

import asyncio
import time

import pytest

from tests.helpers import BUDGET, TERMINAL, assert_contiguous, chunks_text
from tests.live import frames_until, open_socket, send_frame
from tests.upstream import chat_reply, endless_reply


async def start_answer(ws, upstream, reply, content="hello") -> int:
    """Sends a prompt answered by `reply`; returns once the upstream has the request."""
    seen = len(upstream.requests)
    upstream.enqueue(reply)
    await send_frame(ws, type="send", content=content)
    answer_id = (await frames_until(ws, "message_created"))[-1]["assistant_message"]["id"]
    await asyncio.to_thread(upstream.wait_for_requests, seen + 1)
    return answer_id


async def test_it_stops_on_worker_b_a_stream_running_on_worker_a(cluster, clients, project_id, cluster_upstream):
    a, b = cluster.workers
    async with open_socket(a, project_id, clients[0]) as on_a, open_socket(b, project_id, clients[1]) as on_b:
        answer_id = await start_answer(on_a, cluster_upstream, endless_reply(delay=0.005))
        request = cluster_upstream.requests[-1]
        before = await frames_until(on_a, "message_chunk")
        sent = time.monotonic()
        await send_frame(on_b, type="cancel", message_id=answer_id)
        on_b_event = (await frames_until(on_b, *TERMINAL))[-1]
        b_latency = time.monotonic() - sent
        rest = await frames_until(on_a, *TERMINAL)
    on_a_event = rest[-1]
    assert on_a_event["type"] == on_b_event["type"] == "stream_cancelled"
    assert on_a_event["content"] == on_b_event["content"] == chunks_text(before + rest)
    # Through the bus (about 30 ms here); the stored-request fallback alone would take up to a
    # flush interval (0.2 s) plus a read of the row (every 0.25 s).
    assert b_latency < BUDGET, f"cross-worker stop took {b_latency * 1000:.0f} ms"
    cluster_upstream.wait_closed(request, timeout=2)
    assert request.closed_early and request.closed_at - sent < BUDGET
    assert cluster.sql("select status, cancel_reason from chat_message where id = %s", answer_id) == [("cancelled", "user")]


async def test_it_stops_over_rest_on_worker_b(cluster, clients, project_id, cluster_upstream):
    a, _ = cluster.workers
    async with open_socket(a, project_id, clients[0]) as on_a:
        answer_id = await start_answer(on_a, cluster_upstream, endless_reply(delay=0.005))
        await frames_until(on_a, "message_chunk")
        response = await asyncio.to_thread(
            clients[1].post, f"/api/projects/{project_id}/chat/cancel", json={"message_id": answer_id}
        )
        event = (await frames_until(on_a, *TERMINAL))[-1]
    assert response.status_code == 200, response.text
    assert response.json()["partial_content"] == event["partial_content"]
    assert response.json()["status"] == "cancelled"


async def test_it_resumes_on_worker_b_after_the_socket_on_a_drops(cluster, clients, project_id, cluster_upstream):
    a, b = cluster.workers
    words = [f"w{i} " for i in range(80)]
    async with open_socket(a, project_id, clients[0]) as on_a:
        answer_id = await start_answer(on_a, cluster_upstream, chat_reply(words, delay=0.02))
        before = []
        while len(before) < 6:
            before += [f for f in await frames_until(on_a, "message_chunk")]
    async with open_socket(b, project_id, clients[1]) as on_b:
        asked = time.monotonic()
        await send_frame(on_b, type="resume", message_id=answer_id, after_seq=before[-1]["seq"])
        after = await frames_until(on_b, "message_chunk", *TERMINAL)
        resumed = time.monotonic() - asked
        if after[-1]["type"] not in TERMINAL:
            after += await frames_until(on_b, *TERMINAL, timeout=10)
    assert resumed < BUDGET, f"the first frame on worker B took {resumed:.2f}s"  # was 1.2 s with Redis' timeouts
    assert after[-1]["type"] == "stream_complete"
    assert_contiguous(before + after)
    assert chunks_text(before + after) == after[-1]["content"] == "".join(words)


async def test_text_postgresql_cannot_store_is_a_validation_error_and_the_socket_stays(cluster, clients, project_id,
                                                                                         cluster_upstream):
    a, _ = cluster.workers
    async with open_socket(a, project_id, clients[0]) as on_a:
        for content, problem in (("a\x00b", "NUL"), ("a\ud800b", "surrogate")):
            await send_frame(on_a, type="send", content=content)
            error = (await frames_until(on_a, "error"))[-1]
            assert error["code"] == "validation" and problem in error["detail"], error
        answer_id = await start_answer(on_a, cluster_upstream, chat_reply(["still ", "here"]))
        assert (await frames_until(on_a, *TERMINAL))[-1]["type"] == "stream_complete"
    assert answer_id and cluster.sql("select count(*) from chat_message where content like 'a_b'") == [(0,)]


async def test_it_honours_a_stop_whose_message_was_lost_within_a_flush(cluster, clients, project_id, cluster_upstream):
    a, _ = cluster.workers
    async with open_socket(a, project_id, clients[0]) as on_a:
        answer_id = await start_answer(on_a, cluster_upstream, endless_reply(delay=0.005))
        await frames_until(on_a, "message_chunk")
        # The stored half of a stop, without its pub/sub message: as if the message was dropped.
        cluster.sql("update chat_message set cancel_requested_at = now(), cancel_requested_reason = 'user' where id = %s", answer_id)
        stored = time.monotonic()
        event = (await frames_until(on_a, *TERMINAL))[-1]
        waited = time.monotonic() - stored
    assert (event["type"], event["reason"]) == ("stream_cancelled", "user")
    assert waited < 0.2 + BUDGET, f"the stored stop took {waited:.2f}s (flush interval 0.2s)"


async def test_it_caps_a_user_across_workers_under_concurrent_sends(cluster, clients, project_id, cluster_upstream):
    cluster.sql("update chat_message set status = 'cancelled', cancel_reason = 'user' where status in ('pending', 'streaming')")
    cap = 2
    cluster_upstream.set_default(endless_reply(delay=0.01))
    sockets = [open_socket(cluster.workers[i % 2], project_id, clients[i % 2]) for i in range(6)]
    opened = [await s.__aenter__() for s in sockets]
    try:
        async def send(ws):
            await send_frame(ws, type="send", content="race")
            return (await frames_until(ws, "message_created", "error"))[-1]

        answers = await asyncio.gather(*(send(ws) for ws in opened))
        created = [(ws, a) for ws, a in zip(opened, answers) if a["type"] == "message_created"]
        refused = [a for a in answers if a["type"] == "error"]
        assert len(created) == cap, answers
        assert {a["code"] for a in refused} == {"limit_exceeded"}
        for ws, answer in created:
            await send_frame(ws, type="cancel", message_id=answer["assistant_message"]["id"])
            await frames_until(ws, *TERMINAL)
    finally:
        cluster_upstream.set_default(chat_reply(["Hello", " world"]))
        for s in sockets:
            await s.__aexit__(None, None, None)


async def test_it_resumes_a_continuation_on_worker_b_without_gaps_once(cluster, clients, project_id, cluster_upstream):
    a, b = cluster.workers
    async with open_socket(a, project_id, clients[0]) as on_a:
        first_id = await start_answer(on_a, cluster_upstream, endless_reply(delay=0.005))
        await frames_until(on_a, "message_chunk")
        await send_frame(on_a, type="cancel", message_id=first_id)
        partial = (await frames_until(on_a, *TERMINAL))[-1]["content"]
        words = [f"w{i} " for i in range(40)]
        cluster_upstream.enqueue(chat_reply(words, delay=0.02))
        await send_frame(on_a, type="continue", message_id=first_id)
        created = (await frames_until(on_a, "message_created"))[-1]
        continuation_id = created["assistant_message"]["id"]
        assert created["assistant_message"]["continues"] == first_id
        before = []
        while len(before) < 5:
            before += await frames_until(on_a, "message_chunk")
    async with open_socket(b, project_id, clients[1]) as on_b:  # the tab reloads on the other worker
        await send_frame(on_b, type="resume", message_id=continuation_id, after_seq=before[-1]["seq"])
        after = await frames_until(on_b, *TERMINAL, timeout=10)
        with pytest.raises(TimeoutError):  # and nothing after its end: it ended once
            await asyncio.wait_for(on_b.recv(), 0.5)
    assert [f["type"] for f in after].count("stream_complete") == 1
    assert_contiguous(before + after)
    assert chunks_text(before + after) == after[-1]["content"] == "".join(words)
    rows = cluster.sql("select id, status, continues_id, content from chat_message where id in (%s, %s) order by id",
                       first_id, continuation_id)
    assert rows == [(first_id, "cancelled", None, partial), (continuation_id, "complete", first_id, "".join(words))]
