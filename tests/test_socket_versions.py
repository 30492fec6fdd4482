"""After a stop, the next step: Continue, Regenerate (versions), Edit and resend, over the
socket; each new answer keeps every guarantee of the first (one terminal event, rows agree)."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from streaming.providers.base import CONTINUE_INSTRUCTION
from tests.helpers import TERMINAL, chunks_text, receive_until, row, send_prompt
from tests.upstream import chat_reply, endless_reply

pytestmark = pytest.mark.django_db(transaction=True)


async def start(ws, kind: str, message_id: int) -> dict:
    await ws.send_json_to({"type": kind, "message_id": message_id, "client_id": f"{kind}-{message_id}"})
    return (await receive_until(ws, "message_created", "error"))[-1]


async def request_number(upstream, n: int):
    """The upstream's n-th request, once it has arrived."""
    await asyncio.to_thread(upstream.wait_for_requests, n)
    return upstream.requests[n - 1]


async def stop(ws, message_id: int) -> list[dict]:
    """Every frame of the answer, from its first chunk to its end, stopped after that chunk."""
    before = await receive_until(ws, "message_chunk")
    await ws.send_json_to({"type": "cancel", "message_id": message_id})
    return before + await receive_until(ws, *TERMINAL)


async def test_stop_continue_stop_again_then_later_prompts_see_the_joined_text(llm, connect, project, user):
    ws = await connect(project, user)
    llm.enqueue(endless_reply(delay=0.005, word="first"))
    first_id = (await send_prompt(ws, "Tell me everything"))["assistant_message"]["id"]
    first = await stop(ws, first_id)
    partial = first[-1]["content"]
    assert partial and first[-1]["reason"] == "user"

    llm.enqueue(endless_reply(delay=0.005, word="more"))
    created = await start(ws, "continue", first_id)
    assert created["user_message"] is None and created["client_id"] == f"continue-{first_id}"
    more_id = created["assistant_message"]["id"]
    assert created["assistant_message"]["continues"] == first_id
    sent = (await request_number(llm, 2)).json["messages"]
    assert sent[0] == {"role": "system", "content": CONTINUE_INSTRUCTION}
    assert sent[-2:] == [{"role": "user", "content": "Tell me everything"}, {"role": "assistant", "content": partial}]

    frames = await stop(ws, more_id)  # a stop during the continuation
    terminals = [f for f in frames if f["type"] in TERMINAL]
    assert len(terminals) == 1 and terminals[0]["message_id"] == more_id and terminals[0]["reason"] == "user"
    assert terminals[0]["content"] == chunks_text(frames) and terminals[0]["content"].startswith("more1 ")
    continuation = await row(more_id)
    assert (continuation.status, continuation.continues_id, continuation.content) == (
        "cancelled", first_id, terminals[0]["content"])

    llm.enqueue(chat_reply(["ok"]))
    await send_prompt(ws, "And?")
    await receive_until(ws, "stream_complete")
    history = llm.requests[-1].json["messages"]
    assert history[1] == {"role": "assistant", "content": partial + terminals[0]["content"]}  # joined, no markers


async def test_regenerate_makes_a_version_and_select_version_brings_the_first_back(llm, connect, project, user):
    ws = await connect(project, user)
    llm.enqueue(chat_reply(["First", " answer"]))
    first_id = (await send_prompt(ws, "Question"))["assistant_message"]["id"]
    await receive_until(ws, "stream_complete")
    llm.enqueue(chat_reply(["Second", " answer"]))
    created = await start(ws, "regenerate", first_id)
    second_id = created["assistant_message"]["id"]
    assert created["assistant_message"]["reply_to"] == (await row(first_id)).reply_to_id
    assert created["assistant_message"]["selected"] is True and created["assistant_message"]["continues"] is None
    assert (await request_number(llm, 2)).json["messages"][-1] == {"role": "user", "content": "Question"}
    assert (await receive_until(ws, "stream_complete"))[-1]["content"] == "Second answer"
    assert not (await row(first_id)).selected and (await row(second_id)).selected

    await ws.send_json_to({"type": "select_version", "message_id": first_id})
    selected = await ws.receive_json_from(timeout=5)
    assert selected == {"type": "version_selected", "message_id": first_id, "reply_to": created["assistant_message"]["reply_to"]}
    llm.enqueue(chat_reply(["ok"]))
    await send_prompt(ws, "Then?")
    await receive_until(ws, "stream_complete")
    assert llm.requests[-1].json["messages"][1] == {"role": "assistant", "content": "First answer"}


async def test_an_edit_replaces_the_exchange_and_what_follows(llm, connect, project, user):
    ws = await connect(project, user)
    ids = []
    for text in ("One", "Two"):
        llm.enqueue(chat_reply([f"answer to {text}"]))
        created = await send_prompt(ws, text)
        ids += [created["user_message"]["id"], created["assistant_message"]["id"]]
        await receive_until(ws, "stream_complete")
    llm.enqueue(chat_reply(["a better answer"]))
    await ws.send_json_to({"type": "send", "content": "One, edited", "edit_of": ids[0]})
    created = (await receive_until(ws, "message_created"))[-1]
    assert sorted(created["superseded"]) == sorted(ids)
    assert (await request_number(llm, 3)).json["messages"] == [{"role": "user", "content": "One, edited"}]
    await receive_until(ws, "stream_complete")
    old = await database_sync_to_async(list)(Message.objects.filter(pk__in=ids).values_list("superseded_at", flat=True))
    assert all(old)  # kept, marked


async def test_a_regenerate_racing_a_cancel_from_another_tab_ends_each_answer_once(llm, connect, project, user):
    tab1, tab2 = await connect(project, user), await connect(project, user)
    for attempt in range(6):
        llm.enqueue(endless_reply(delay=0.005), endless_reply(delay=0.005))
        answer_id = (await send_prompt(tab1, f"race {attempt}"))["assistant_message"]["id"]
        await receive_until(tab1, "message_chunk")
        await asyncio.gather(tab1.send_json_to({"type": "cancel", "message_id": answer_id}),
                             tab2.send_json_to({"type": "regenerate", "message_id": answer_id}))
        first_end = await receive_until(tab1, *TERMINAL)
        assert [f["type"] for f in first_end if f["type"] in TERMINAL] == ["stream_cancelled"]
        reply = (await receive_until(tab2, "message_created", "error"))[-1]
        if reply["type"] == "error":  # the regenerate came before the stop was final
            assert reply["code"] == "validation" and "stop it first" in reply["detail"]
            continue
        new_id = reply["assistant_message"]["id"]
        await tab2.send_json_to({"type": "cancel", "message_id": new_id})
        ends = [f for f in await receive_until(tab2, *TERMINAL) if f["type"] in TERMINAL]
        assert len(ends) == 1 and ends[0]["message_id"] == new_id
        assert (await row(new_id)).status == "cancelled"
    assert await tab1.receive_nothing(timeout=0.2)  # no second end of anything on the first tab
