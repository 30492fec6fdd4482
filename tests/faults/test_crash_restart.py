"""A worker killed (kill -9) with a user at their cap of three answers, then restarted on
the same database, with the default liveness settings: the user can send again within
10 s of the restart, and the dead worker's answers are finalized as `orphaned` with the
text they had saved, by the new worker itself (no sweeper, no cron)."""

import asyncio
import contextlib
import signal
import time
from pathlib import Path

import pytest

from tests.faults.support import SocketReader, project_of, sqlite_row, start_answer
from tests.live import LiveServer, sign_in
from tests.upstream import chat_reply, endless_reply

pytestmark = pytest.mark.slow

CAP = 3
WITHIN = 10.0


async def test_a_user_at_the_cap_can_send_again_soon_after_their_worker_is_killed_and_restarted(
        live_servers, module_upstream):
    env = {"LLM_PROVIDER": "openai", "LLM_BASE_URL": module_upstream.base_url, "LLM_API_KEY": "k",
           "STREAM_MAX_PER_USER": CAP, "STREAM_FLUSH_INTERVAL": 0.2, "STREAM_DISCONNECT_GRACE": 30}
    first = live_servers(**env)
    client = sign_in(first)
    project_id = project_of(client)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(client.close)
        reader = await SocketReader.open(stack, first, project_id, client)
        answers = [await start_answer(reader, module_upstream, endless_reply(delay=0.02)) for _ in range(CAP)]
        for answer_id in answers:
            await reader.chunk_count_at_least(answer_id, 5)
        await reader.send(type="send", content="one too many")
        refused = await reader.wait(lambda: reader.errors("limit_exceeded"), what="the cap")
        assert "at most 3" in refused[0]["detail"]
        await asyncio.sleep(0.5)  # a flush or two
        first.process.send_signal(signal.SIGKILL)
        first.process.wait(5)
    saved = {answer_id: sqlite_row(first, answer_id) for answer_id in answers}
    assert {row["status"] for row in saved.values()} == {"streaming"}
    assert all(row["content"] for row in saved.values())

    workdir = Path(first.env["DATABASE_URL"].removeprefix("sqlite:///")).parent
    second = LiveServer(workdir, {key: str(value) for key, value in env.items()}).start(prepare=False)
    restarted = time.monotonic()
    try:
        client = sign_in(second)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(client.close)
            reader = await SocketReader.open(stack, second, project_id, client)
            accepted = None
            while accepted is None:
                assert time.monotonic() - restarted < WITHIN, "still refused 10 s after the restart"
                module_upstream.enqueue(chat_reply(["back", " again"]))
                start = len(reader.frames)
                await reader.send(type="send", content="am I back?")
                reply = await reader.wait(lambda: [f for _, f in reader.frames[start:]
                                                   if f["type"] in ("message_created", "error")])
                if reply[0]["type"] == "message_created":
                    accepted = reply[0]["assistant_message"]["id"]
                else:
                    assert reply[0]["code"] == "limit_exceeded", reply
                    await asyncio.sleep(0.5)
            sent_again_after = time.monotonic() - restarted
            assert (await reader.terminal(accepted))["content"] == "back again"

        def all_orphaned():
            rows = {answer_id: sqlite_row(second, answer_id) for answer_id in answers}
            return rows if all(row["status"] != "streaming" for row in rows.values()) else None

        deadline = restarted + WITHIN
        while not (rows := await asyncio.to_thread(all_orphaned)):
            assert time.monotonic() < deadline, "the dead worker's answers were not finalized within 10 s"
            await asyncio.sleep(0.2)
    finally:
        second.stop()
    for answer_id, row in rows.items():
        assert (row["status"], row["cancel_reason"], row["content"]) == (
            "cancelled", "orphaned", saved[answer_id]["content"])
    print(f"sent again {sent_again_after:.1f} s after the restart")
