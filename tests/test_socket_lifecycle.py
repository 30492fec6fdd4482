"""Disconnects, resumes, caps, timers and upstream failures, end to end over the socket."""

import json
import time

import pytest
from channels.db import database_sync_to_async

from chat import answers
from chat.models import Message
from streaming.registry import registry
from tests.helpers import Inbox, assert_contiguous, chunks_text, receive_until, row, send_prompt, wait_for
from tests.upstream import chat_reply, endless_reply, error_reply, raw_reply, reset_reply, stall_reply

pytestmark = pytest.mark.django_db(transaction=True)


async def count_messages() -> int:
    return await database_sync_to_async(Message.objects.count)()


async def test_it_cancels_with_disconnect_after_the_grace_period(llm, settings, connect, project, user):
    settings.STREAM_DISCONNECT_GRACE = 0.3
    llm.enqueue(endless_reply(delay=0.01))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    received = await receive_until(ws, "message_chunk")
    await ws.disconnect()
    gone = time.monotonic()
    await wait_for(lambda: not registry.is_active(answer_id), timeout=3)
    assert time.monotonic() - gone >= 0.25
    message = await row(answer_id)
    assert (message.status, message.cancel_reason) == ("cancelled", "disconnect")
    assert message.content.startswith(chunks_text(received))
    await wait_for(lambda: llm.requests[0].closed_early)


async def test_it_cancels_at_once_when_the_grace_is_zero(llm, connect, project, user):
    llm.enqueue(endless_reply(delay=0.01))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    await receive_until(ws, "message_chunk")
    await ws.disconnect()
    await wait_for(lambda: not registry.is_active(answer_id), timeout=0.5)
    assert (await row(answer_id)).cancel_reason == "disconnect"


async def test_it_resumes_within_the_grace_without_gaps_or_duplicates(llm, settings, connect, project, user):
    settings.STREAM_DISCONNECT_GRACE = 5
    llm.enqueue(chat_reply([f"w{i} " for i in range(60)], delay=0.01))
    first = await connect(project, user)
    answer_id = (await send_prompt(first))["assistant_message"]["id"]
    before = [await first.receive_json_from() for _ in range(10)]
    await first.disconnect()
    second = await connect(project, user)
    await second.send_json_to({"type": "resume", "message_id": answer_id, "after_seq": before[-1]["seq"]})
    after = await receive_until(second, "stream_complete")
    assert_contiguous(before + after)
    assert chunks_text(before + after) == after[-1]["content"] == "".join(f"w{i} " for i in range(60))
    assert (await row(answer_id)).status == "complete"


async def test_it_replays_a_finished_answer_as_its_terminal_event(llm, connect, project, user):
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    done = (await receive_until(ws, "stream_complete"))[-1]
    await ws.send_json_to({"type": "resume", "message_id": answer_id, "after_seq": 0})
    assert await ws.receive_json_from() == done


async def test_it_rejects_a_send_over_the_user_cap(llm, settings, connect, project, user):
    settings.STREAM_MAX_PER_USER = 2
    llm.set_default(endless_reply(delay=0.02))
    ws = await connect(project, user)
    first = (await send_prompt(ws))["assistant_message"]["id"]
    second = (await send_prompt(ws))["assistant_message"]["id"]
    error = await send_prompt(ws)
    assert error["code"] == "limit_exceeded" and "per user" in error["detail"]
    assert await count_messages() == 4
    for message_id in (first, second):
        await ws.send_json_to({"type": "cancel", "message_id": message_id})
        await receive_until(ws, "stream_cancelled")


async def test_it_cancels_the_users_oldest_answer_under_cancel_oldest(llm, settings, connect, project, user):
    settings.STREAM_MAX_PER_USER = 2
    settings.STREAM_LIMIT_POLICY = "cancel_oldest"
    llm.set_default(endless_reply(delay=0.02))
    ws = await connect(project, user)
    first = (await send_prompt(ws))["assistant_message"]["id"]
    second = (await send_prompt(ws))["assistant_message"]["id"]
    await ws.send_json_to({"type": "send", "content": "third"})
    frames = await receive_until(ws, "message_created")
    evicted = [f for f in frames if f["type"] == "stream_cancelled"]
    assert [(f["message_id"], f["reason"]) for f in evicted] == [(first, "limit")]
    assert (await row(first)).cancel_reason == "limit"
    third = frames[-1]["assistant_message"]["id"]
    assert registry.is_active(second) and registry.is_active(third)
    for message_id in (second, third):
        await ws.send_json_to({"type": "cancel", "message_id": message_id})
        await receive_until(ws, "stream_cancelled")


async def test_it_applies_the_process_cap_under_both_policies(llm, settings, connect, project, user):
    settings.STREAM_MAX_PER_PROCESS = 1
    llm.set_default(endless_reply(delay=0.02))
    ws = await connect(project, user)
    first = (await send_prompt(ws))["assistant_message"]["id"]
    error = await send_prompt(ws)
    assert error["code"] == "limit_exceeded" and "server" in error["detail"]
    settings.STREAM_LIMIT_POLICY = "cancel_oldest"
    await ws.send_json_to({"type": "send", "content": "again"})
    frames = await receive_until(ws, "message_created")
    assert any(f["type"] == "stream_cancelled" and f["message_id"] == first and f["reason"] == "limit" for f in frames)
    second = frames[-1]["assistant_message"]["id"]
    await ws.send_json_to({"type": "cancel", "message_id": second})
    await receive_until(ws, "stream_cancelled")


async def test_it_stops_an_answer_older_than_the_max_age(llm, settings, connect, project, user):
    settings.STREAM_MAX_AGE = 0.4
    llm.enqueue(endless_reply(delay=0.01))
    ws = await connect(project, user)
    await send_prompt(ws)
    cancelled = (await receive_until(ws, "stream_cancelled"))[-1]
    assert cancelled["reason"] == "timeout" and cancelled["content"]
    assert cancelled["partial_content"].endswith("*[Response stopped: timeout]*")
    await wait_for(lambda: llm.requests[0].closed_early)


async def test_it_stops_an_answer_with_no_upstream_progress(llm, settings, connect, project, user):
    settings.STREAM_STALE_AFTER = 0.3
    llm.enqueue(stall_reply(["partial "]))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    cancelled = (await receive_until(ws, "stream_cancelled"))[-1]
    assert (cancelled["reason"], cancelled["content"]) == ("stale", "partial ")
    message = await row(answer_id)
    assert (message.status, message.cancel_reason, message.content) == ("cancelled", "stale", "partial ")


FAILURES = [
    (error_reply(429, {"error": {"message": "Rate limit reached"}}), "upstream", "busy or over its limits (429)", ""),
    (error_reply(500, {"error": {"message": "The server had an error"}}), "upstream", "500", ""),
    (reset_reply(["half ", "an "]), "network", "lost", "half an "),
    (raw_reply(['data: {"choices":[{"delta":{"content":"cut"}}]}']), "protocol", "", "cut"),
    (stall_reply(["slow"]), "timeout", "", "slow"),
]


@pytest.mark.parametrize("reply,error_type,detail_part,partial", FAILURES)
async def test_it_reports_an_upstream_failure_as_a_stream_error(
    llm, settings, connect, project, user, reply, error_type, detail_part, partial
):
    settings.LLM_READ_TIMEOUT = 0.3
    llm.enqueue(reply)
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    frames = await receive_until(ws, "stream_error")
    error = frames[-1]
    assert error["error_type"] == error_type and detail_part in error["error"]
    assert "Traceback" not in error["error"] and len(error["error"]) < 300
    assert error["content"] == partial == chunks_text(frames)
    assert error["partial_content"] == f"{partial}\n\n*[Error: {error['error']}]*"
    message = await row(answer_id)
    assert (message.status, message.error_type, message.error_detail) == ("error", error_type, error["error"])


async def test_it_reports_an_unreachable_upstream_as_a_network_error(llm, settings, connect, project, user):
    settings.LLM_BASE_URL = "http://127.0.0.1:9/v1"  # discard port: nothing listens
    ws = await connect(project, user)
    await send_prompt(ws)
    error = (await receive_until(ws, "stream_error"))[-1]
    assert error["error_type"] == "network" and error["content"] == ""


async def test_it_finalizes_an_answer_cancelled_before_its_task_first_ran(llm, project, user):
    llm.enqueue(endless_reply(delay=0.01))
    inbox = Inbox()
    answer = await answers.start(
        user=user, project=project, content="hi", include_context=False, context_files=[], client_id=None, watcher=inbox,
    )
    assert registry.stop(answer.pk, "shutdown")
    event = (await registry.wait(answer.pk)).event
    assert (event["type"], event["reason"], event["content"]) == ("stream_cancelled", "shutdown", "")
    message = await row(answer.pk)
    assert (message.status, message.cancel_reason) == ("cancelled", "shutdown")
    assert inbox.events[-1] == (event, True)


async def test_a_rejected_key_reaches_the_user_as_a_short_safe_text_and_staff_with_the_key_redacted(
        llm, connect, project, user, caplog, api):
    llm.enqueue(error_reply(401, {"error": {"message": "Incorrect API key provided: Bearer test-key. See docs."}}))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    error = (await receive_until(ws, "stream_error"))[-1]
    assert error["error"] == "The model server rejected the request (401)."
    assert "test-key" not in json.dumps(error) and "Incorrect" not in json.dumps(error)
    message = await row(answer_id)
    assert message.error_internal == "401 from 127.0.0.1: Incorrect API key provided: Bearer [redacted]. See docs."
    assert "Bearer [redacted]" in caplog.text and "test-key" not in caplog.text
    listed = (await api.get(f"/api/projects/{project.pk}/messages/")).text
    assert "Incorrect" not in listed and "test-key" not in listed
