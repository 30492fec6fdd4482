"""Cancel racing completion always ends in exactly one terminal state, and row and events agree."""

import asyncio
import random

import pytest
from channels.db import database_sync_to_async

from chat.models import Message
from tests.helpers import TERMINAL, chunks_text, send_prompt
from tests.upstream import chat_reply

pytestmark = pytest.mark.django_db(transaction=True)


async def frames_until_quiet(ws, quiet=0.15) -> list[dict]:
    # (A receive that times out would cancel the consumer: wait for silence instead.)
    frames = []
    while not await ws.receive_nothing(timeout=quiet):
        frames.append(await ws.receive_json_from())
    return frames


async def test_it_ends_every_cancel_completion_race_in_one_terminal_state(llm, connect, project, user):
    rng = random.Random(20261127)
    ws = await connect(project, user)
    outcomes = set()
    for _ in range(40):
        llm.enqueue(chat_reply(["a", "b", "c", "d"], delay=0.002))
        answer_id = (await send_prompt(ws))["assistant_message"]["id"]
        await asyncio.sleep(rng.uniform(0, 0.03))
        await ws.send_json_to({"type": "cancel", "message_id": answer_id})
        frames = await frames_until_quiet(ws)
        terminal = [f for f in frames if f["type"] in TERMINAL]
        assert len(terminal) == 1, frames
        event = terminal[0]
        errors = [f for f in frames if f["type"] == "error"]
        message = await database_sync_to_async(Message.objects.get)(pk=answer_id)
        assert event["content"] == message.content == chunks_text(frames)
        if event["type"] == "stream_cancelled":
            assert (message.status, message.cancel_reason, errors) == ("cancelled", "user", [])
        else:
            assert event["type"] == "stream_complete" and message.status == "complete"
            assert [e["code"] for e in errors] == ["already_finished"]
        outcomes.add(event["type"])
    assert outcomes == {"stream_cancelled", "stream_complete"}, "the race was not exercised both ways"
