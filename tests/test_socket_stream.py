"""A prompt over the socket streams its answer in; Stop stops it at once, keeping the partial."""

import time

import pytest
from channels.db import database_sync_to_async

from tests.helpers import BUDGET, assert_contiguous, chunks_text, receive_until, row, send_prompt, wait_for
from tests.upstream import chat_reply, endless_reply, stall_reply

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_streams_an_answer_to_completion(llm, connect, project, user):
    llm.enqueue(chat_reply(["Hel", "lo ", "world", "!"], delay=0.01))
    ws = await connect(project, user)
    created = await send_prompt(ws, "Say hello", client_id="c-1")
    assert created["client_id"] == "c-1"
    assert created["user_message"]["content"] == "Say hello"
    answer_id = created["assistant_message"]["id"]
    frames = await receive_until(ws, "stream_complete")
    done = frames[-1]
    assert chunks_text(frames) == "Hello world!" == done["content"]
    assert done["chunk_count"] == 4
    assert_contiguous(frames)
    message = await row(answer_id)
    assert (message.status, message.content, message.chunk_count) == ("complete", "Hello world!", 4)
    assert message.started_at and message.finished_at and message.provider == "openai"
    sent = llm.requests[0].json
    assert sent["stream"] is True and sent["messages"][-1] == {"role": "user", "content": "Say hello"}


async def test_it_stops_mid_stream_and_closes_the_upstream_at_once(llm, connect, project, user):
    llm.enqueue(endless_reply(delay=0.005))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    before = await receive_until(ws, "message_chunk")
    before += [await ws.receive_json_from() for _ in range(5)]
    started = time.monotonic()
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    frames = await receive_until(ws, "stream_cancelled")
    latency = time.monotonic() - started
    cancelled = frames[-1]
    assert latency < BUDGET, f"stop took {latency:.3f}s"
    assert cancelled["reason"] == "user"
    assert cancelled["content"] == chunks_text(before + frames) != ""
    assert cancelled["partial_content"] == cancelled["content"] + "\n\n*[Response cancelled by user]*"
    request = llm.requests[0]
    await wait_for(lambda: request.closed_at is not None, timeout=1)
    assert request.closed_early and not request.finished
    message = await row(answer_id)
    assert message.status == "cancelled" and message.cancel_reason == "user"
    assert message.content == cancelled["content"]
    assert message.chunk_count == cancelled["chunk_count"] >= len(before)
    await wait_for(lambda: llm.open_connections() == 0)


async def test_it_sends_an_event_when_stopped_before_the_first_chunk(llm, connect, project, user):
    llm.enqueue(stall_reply([]))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    await wait_for(lambda: len(llm.requests) == 1)
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    cancelled = (await receive_until(ws, "stream_cancelled"))[-1]
    assert cancelled["content"] == "" and cancelled["chunk_count"] == 0
    assert cancelled["partial_content"].endswith("*[Response cancelled by user]*")
    assert (await row(answer_id)).status == "cancelled"
    await wait_for(lambda: llm.requests[0].closed_at is not None, timeout=1)


async def test_it_answers_already_finished_for_a_completed_message(llm, connect, project, user):
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    await receive_until(ws, "stream_complete")
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    error = (await receive_until(ws, "error"))[-1]
    assert (error["code"], error["message_id"]) == ("already_finished", answer_id)
    assert (await row(answer_id)).status == "complete"


async def test_it_handles_a_double_cancel_with_one_terminal_event(llm, connect, project, user):
    llm.enqueue(endless_reply(delay=0.01))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    await receive_until(ws, "message_chunk")
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    frames = await receive_until(ws, "stream_cancelled")
    frames += await receive_until(ws, "error")
    assert [f["type"] for f in frames].count("stream_cancelled") == 1
    assert frames[-1]["code"] == "already_finished"
    assert await ws.receive_nothing(timeout=0.2)


async def test_it_does_not_find_another_users_message(llm, connect, project, user, other_user):
    llm.enqueue(endless_reply(delay=0.01))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    from chat.models import Project

    theirs = await database_sync_to_async(Project.objects.create)(owner=other_user, name="theirs")
    intruder = await connect(theirs, other_user)
    await intruder.send_json_to({"type": "cancel", "message_id": answer_id})
    error = (await receive_until(intruder, "error"))[-1]
    assert error["code"] == "not_found"
    await intruder.send_json_to({"type": "resume", "message_id": answer_id})
    assert (await receive_until(intruder, "error"))[-1]["code"] == "not_found"
    assert (await row(answer_id)).status == "streaming"
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    await receive_until(ws, "stream_cancelled")


async def test_it_feeds_every_tab_watching_the_stream(llm, connect, project, user):
    llm.enqueue(chat_reply([f"w{i} " for i in range(30)], delay=0.01))
    first = await connect(project, user)
    second = await connect(project, user)
    answer_id = (await send_prompt(first))["assistant_message"]["id"]
    await second.send_json_to({"type": "resume", "message_id": answer_id, "after_seq": 0})
    one = await receive_until(first, "stream_complete")
    two = await receive_until(second, "stream_complete")
    assert chunks_text(one) == chunks_text(two) == one[-1]["content"] == two[-1]["content"]
    assert_contiguous(two)
