"""What each answer cost: the model server's token counts when it gave them, an estimate
(marked) when a stop or an error left none; on the row, in the events, in the API, in /metrics."""

import math

import pytest
from prometheus_client import REGISTRY

from tests.helpers import receive_until, row, send_prompt
from tests.upstream import anthropic_reply, chat_reply, endless_reply

pytestmark = pytest.mark.django_db(transaction=True)


def tokens_total(kind: str, status: str) -> float:
    return REGISTRY.get_sample_value("stopchat_tokens_total", {"kind": kind, "status": status}) or 0.0


async def test_a_complete_answer_keeps_the_model_servers_own_counts(llm, connect, project, user, api):
    before = tokens_total("completion", "complete")
    llm.enqueue(chat_reply(["Hello", " there"], usage={"prompt_tokens": 21, "completion_tokens": 2, "total_tokens": 23}))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    done = (await receive_until(ws, "stream_complete"))[-1]
    assert done["usage"] == {"prompt_tokens": 21, "completion_tokens": 2, "estimated": False}
    message = await row(answer_id)
    assert (message.prompt_tokens, message.completion_tokens, message.tokens_estimated) == (21, 2, False)
    listed = next(m for m in (await api.get(f"/api/projects/{project.pk}/messages/")).json()["results"]
                  if m["id"] == answer_id)
    assert (listed["prompt_tokens"], listed["completion_tokens"], listed["tokens_estimated"]) == (21, 2, False)
    assert tokens_total("completion", "complete") == before + 2


async def test_a_stopped_answer_gets_an_estimate_marked_as_such(llm, connect, project, user):
    before = tokens_total("completion", "cancelled")
    llm.enqueue(endless_reply(delay=0.005))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws, "x" * 400))["assistant_message"]["id"]
    await receive_until(ws, "message_chunk")
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    cancelled = (await receive_until(ws, "stream_cancelled"))[-1]
    expected = math.ceil(len(cancelled["content"]) / 4)
    assert cancelled["usage"] == {"prompt_tokens": 100, "completion_tokens": expected, "estimated": True}
    message = await row(answer_id)
    assert (message.completion_tokens, message.tokens_estimated) == (expected, True)
    assert tokens_total("completion", "cancelled") == before + expected


async def test_a_stopped_anthropic_answer_keeps_the_counted_prompt_and_estimates_the_rest(llm, settings, connect,
                                                                                         project, user):
    settings.LLM_PROVIDER = "anthropic"
    llm.enqueue(anthropic_reply(["word "] * 5000, delay=0.005, input_tokens=57))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    await receive_until(ws, "message_chunk")
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    cancelled = (await receive_until(ws, "stream_cancelled"))[-1]
    assert cancelled["usage"]["prompt_tokens"] == 57 and cancelled["usage"]["estimated"] is True
    assert cancelled["usage"]["completion_tokens"] == math.ceil(len(cancelled["content"]) / 4)
