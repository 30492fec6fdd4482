"""Hostile or clumsy clients, against a real daphne process over real sockets.

What must hold, whatever a client sends:

- a clear answer: every frame the server can read is answered (an `error` frame with a
  code for bad ones; `stream_cancelled` or `already_finished` for a cancel; `not_found`
  for a message that is not the user's, in this project), never a closed socket;
- a frame daphne cannot read (beyond its 1 MiB message limit) costs only the socket
  that sent it: daphne 4.2 drops that connection (autobahn's failByDrop: the client sees
  1006 and no close frame; a daphne that sends a close frame would send 1009), the
  streams that socket watched go on under STREAM_DISCONNECT_GRACE, and the other
  sockets of the same user do not notice;
- what the server sends stays within daphne's 1 MiB too: chunk frames are split small,
  and an answer longer than that ends with its terminal event sent without its text
  (`content_omitted`: the socket has every delta); the socket keeps answering;
- other streams unaffected: they complete, every chunk in order, at their pace, and the
  server still answers a ping quickly;
- exactly one terminal state however many stops race: one row state, and every event
  and REST answer about it agrees with the row;
- no leaks: the registry is empty afterwards and every stopped upstream request closed.
"""

import asyncio
import contextlib
import json
import random
import time
from datetime import datetime, timezone

import pytest

from tests.helpers import BUDGET, wait_for
from tests.faults.support import (
    SocketReader, active_streams, assert_no_streams_left, async_client, max_gap, project_of, sign_in_other,
    sqlite_row, sqlite_rows, start_answer,
)
from tests.live import client, project_id  # noqa: F401 (fixtures)
from tests.upstream import chat_reply, endless_reply

GRACE = 2.0
MAX_MESSAGE = 1 << 20  # daphne's default websocket_max_message_size


@pytest.fixture(scope="module")
def server(live_servers, module_upstream):
    return live_servers(
        LLM_PROVIDER="openai", LLM_BASE_URL=module_upstream.base_url, LLM_API_KEY="k",
        STREAM_FLUSH_INTERVAL=0.1, STREAM_FRAME_INTERVAL=0.02, STREAM_DISCONNECT_GRACE=GRACE,
        STREAM_MAX_PER_USER=5,
    )


@pytest.fixture
async def sockets(server, client, project_id):
    """Opens signed-in sockets to the module's server (by default on demo's first project),
    read in the background."""
    async with contextlib.AsyncExitStack() as stack:
        async def open_one(as_client=client, project=None):
            if project is None:
                project = project_id if as_client is client else project_of(as_client)
            return await SocketReader.open(stack, server, project, as_client)
        yield open_one
    await assert_no_streams_left(client)


def frame_of_exactly(size: int) -> str:
    skeleton = json.dumps({"type": "send", "content": ""})
    return json.dumps({"type": "send", "content": "x" * (size - len(skeleton))})


async def test_it_answers_a_1_mib_frame_with_a_validation_error_and_keeps_the_socket(
        sockets, module_upstream):
    ws = await sockets()
    frame = frame_of_exactly(MAX_MESSAGE)
    assert len(frame.encode()) == MAX_MESSAGE
    await ws.ws.send(frame)
    error = (await ws.wait(lambda: ws.errors(), 10, "an error frame"))[0]
    assert (error["code"], error["detail"]) == ("validation", "content is limited to 32000 characters.")
    assert await ws.ping() < BUDGET
    answer_id = await start_answer(ws, module_upstream, chat_reply(["still", " here"]))
    assert (await ws.terminal(answer_id))["content"] == "still here"
    assert ws.closed is None


async def test_it_drops_only_the_socket_that_sends_an_oversized_frame(sockets, server, client, module_upstream):
    dropped, other = await sockets(), await sockets()
    watched_id = await start_answer(dropped, module_upstream, endless_reply(delay=0.01))
    watched_request = module_upstream.requests[-1]
    words = [f"o{i} " for i in range(40)]
    other_id = await start_answer(other, module_upstream, chat_reply(words, delay=0.04))
    await dropped.chunk_count_at_least(watched_id, 3)

    with contextlib.suppress(Exception):  # daphne may hang up while the frame is being sent
        await dropped.ws.send("x" * (MAX_MESSAGE + 1))
    closed = await dropped.wait_closed(timeout=5)
    closed_wall = time.time()
    code = closed.rcvd.code if closed.rcvd else 1006
    assert code in (1009, 1006), closed

    # Within the grace the watched stream still runs, without watchers.
    def watchers_of_watched():
        return [s["watchers"] for s in client.get("/api/streams/").json()["streams"] if s["message_id"] == watched_id]
    await wait_for(lambda: watchers_of_watched() == [0], GRACE / 2, "the stream to run on, unwatched", in_thread=True)
    assert await other.ping() < BUDGET
    completed = await other.terminal(other_id)
    assert completed["content"] == other.text(other_id) == "".join(words)
    assert other.seqs(other_id) == list(range(1, len(other.chunks(other_id)) + 1))
    assert max_gap([t for t, _ in other.chunks(other_id)]) < BUDGET

    # Then the grace ends it as `disconnect`, with everything the dropped socket saw and more.
    row = await _wait_for_final_row(server, watched_id, timeout=GRACE + 5)
    assert (row["status"], row["cancel_reason"]) == ("cancelled", "disconnect")
    assert row["content"].startswith(dropped.text(watched_id)) and len(row["content"]) > len(dropped.text(watched_id))
    finished = datetime.fromisoformat(row["finished_at"]).replace(tzinfo=timezone.utc).timestamp()  # stored in UTC
    assert finished - closed_wall > GRACE - 0.5, f"stopped {finished - closed_wall:.2f}s after the drop"
    await asyncio.to_thread(module_upstream.wait_closed, watched_request, 5)
    assert watched_request.closed_early


async def test_it_ends_an_answer_longer_than_1_mib_with_its_terminal_event_and_keeps_the_socket(
        server, client, project_id, module_upstream):
    async with contextlib.AsyncExitStack() as stack:
        ws = await SocketReader.open(stack, server, project_id, client, max_size=None)
        pieces = ["z" * 100_000] * 11
        answer_id = await start_answer(ws, module_upstream, chat_reply(pieces))
        await wait_for(lambda: active_streams(client) == 0, 10, "the answer to end", in_thread=True)
        row = await asyncio.to_thread(sqlite_row, server, answer_id)
        assert (row["status"], len(row["content"])) == ("complete", 1_100_000)  # saved whole: not the bug
        assert ws.text(answer_id) == row["content"]  # every chunk arrived: not the bug
        completed = await ws.terminal(answer_id, timeout=3)
        assert completed["type"] == "stream_complete" and completed["content_omitted"] is True
        assert "content" not in completed and completed["chunk_count"] == 11
        assert await ws.ping(timeout=3) < BUDGET


FLOOD = [
    ("not json", "bad_frame"),
    ("[1, 2]", "bad_frame"),
    ('{"type": "shout"}', "bad_frame"),
    ('{"type": 7}', "bad_frame"),
    ('{"type": "send", "content": ""}', "validation"),
    ('{"type": "send", "content": "hi", "context_files": [1]}', "validation"),
    ('{"type": "cancel", "message_id": "12"}', "validation"),
    ('{"type": "resume", "message_id": 1, "after_seq": -1}', "validation"),
    ('{"type": "cancel", "message_id": 987654321}', "not_found"),
    ('{"type": "resume", "message_id": 987654321}', "not_found"),
]


async def test_it_answers_each_of_1000_bad_frames_and_keeps_serving_everyone(sockets, module_upstream):
    flood, streamer, pinger = await sockets(), await sockets(), await sockets()
    words = [f"f{i} " for i in range(50)]
    answer_id = await start_answer(streamer, module_upstream, chat_reply(words, delay=0.04))
    await streamer.chunk_count_at_least(answer_id, 1)
    started = time.monotonic()

    frames = [FLOOD[i % len(FLOOD)] for i in range(1000)]
    for text, _ in frames:
        await flood.ws.send(text)
    round_trips = []
    while len(flood.errors()) < len(frames) and time.monotonic() - started < 20:
        round_trips.append(await pinger.ping())
        await asyncio.sleep(0.05)
    answers = await flood.wait(lambda: len(flood.errors()) >= len(frames) and flood.errors(), 20, "1000 answers")

    assert [a["code"] for a in answers] == [code for _, code in frames]
    assert all(a["detail"] for a in answers)
    assert flood.types().count("error") == len(frames)  # one answer each, nothing else
    assert await flood.ping() < BUDGET and flood.closed is None
    assert max(round_trips) < BUDGET, f"a ping took {max(round_trips) * 1000:.0f} ms during the flood"
    completed = await streamer.terminal(answer_id)
    assert completed["content"] == streamer.text(answer_id) == "".join(words)
    chunk_times = [t for t, _ in streamer.chunks(answer_id)]
    assert max_gap(chunk_times) < BUDGET, f"a chunk waited {max_gap(chunk_times) * 1000:.0f} ms"
    assert chunk_times[-1] - started < 50 * 0.04 + 1.5


async def test_it_ends_100_concurrent_cancels_of_one_answer_in_one_terminal_state(
        sockets, server, client, project_id, module_upstream):
    watching = await sockets()
    others = [await sockets() for _ in range(4)]
    answer_id = await start_answer(watching, module_upstream, endless_reply(delay=0.01))
    request = module_upstream.requests[-1]
    await watching.chunk_count_at_least(answer_id, 5)
    per_socket, over_rest = 16, 20  # 5 sockets x 16 + 20 = 100

    async def cancel_over_socket(ws):
        for _ in range(per_socket):
            await ws.send(type="cancel", message_id=answer_id)

    async with async_client(server, client) as http:
        url = f"/api/projects/{project_id}/chat/cancel"
        await http.get("/api/projects/")  # opens a connection now, so the posts start together
        results = await asyncio.gather(
            *(http.post(url, json={"message_id": answer_id}) for _ in range(over_rest)),
            *(cancel_over_socket(ws) for ws in [watching, *others]),
        )
    responses = results[:over_rest]
    for ws in [watching, *others]:
        await ws.ping(timeout=10)  # every cancel sent before it has been answered
    await watching.terminal(answer_id)

    row = await asyncio.to_thread(sqlite_row, server, answer_id)
    assert (row["status"], row["cancel_reason"]) == ("cancelled", "user")
    assert row["content"] == watching.text(answer_id)
    partial = row["content"] + "\n\n*[Response cancelled by user]*"
    expected_event = {"type": "stream_cancelled", "message_id": answer_id, "reason": "user",
                      "content": row["content"], "partial_content": partial, "chunk_count": row["chunk_count"]}
    for ws in [watching, *others]:
        about = [f for f in ws.of(answer_id) if f["type"] != "message_chunk"]
        cancelled = [f for f in about if f["type"] == "stream_cancelled"]
        finished = [f for f in about if f["type"] == "error" and f["code"] == "already_finished"]
        assert len(cancelled) + len(finished) == len(about), about  # nothing but these two answers
        assert all({k: v for k, v in f.items() if k != "usage"} == expected_event for f in cancelled)
        assert all(f["usage"]["estimated"] is True for f in cancelled)  # stopped before the server counted
        if ws is watching:  # its terminal event is the answer to one of its cancels, or comes on top
            assert len(cancelled) == 1 and len(finished) in (per_socket - 1, per_socket)
        else:
            assert len(cancelled) <= 1 and len(cancelled) + len(finished) == per_socket
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 409}, statuses
    for response in responses:
        ours = {k: v for k, v in response.json().items() if k not in ("success", "messageId", "message", "error")}
        if response.status_code == 200:
            assert ours == {"message_id": answer_id, "status": "cancelled", "reason": "user", "partial_content": partial}
        else:
            assert ours == {"message_id": answer_id, "status": "cancelled"}
    await asyncio.to_thread(module_upstream.wait_closed, request, 5)
    assert request.closed_early


async def test_it_answers_not_found_to_cancels_of_ids_that_are_not_the_users(
        sockets, server, client, project_id, module_upstream):
    other_client = await asyncio.to_thread(sign_in_other, server)
    try:
        theirs = await sockets(other_client)
        their_id = await start_answer(theirs, module_upstream, endless_reply(delay=0.02))
        their_request = module_upstream.requests[-1]
        await theirs.chunk_count_at_least(their_id, 2)

        second_project = client.post("/api/projects/", json={"name": "Another of mine"}).json()["id"]
        elsewhere = await sockets(project=second_project)
        mine_elsewhere = await start_answer(elsewhere, module_upstream, chat_reply(["elsewhere"]))
        await elsewhere.terminal(mine_elsewhere)

        mine = await sockets()
        own_ids = {m["id"] for m in client.get(f"/api/projects/{project_id}/messages/").json()["results"]}
        rng = random.Random(6)
        ids = [their_id, their_id - 1, mine_elsewhere, 2**53, 2**63 - 1, 2**63, 2**64 + 5]
        ids += [i for i in (rng.randrange(1, 2**31) for _ in range(60)) if i not in own_ids]
        for message_id in ids:
            await mine.send(type="cancel", message_id=message_id)
        answers = await mine.wait(lambda: len(mine.errors()) >= len(ids) and mine.errors(), 10, "every answer")
        assert [(a["code"], a["message_id"]) for a in answers] == [("not_found", i) for i in ids]
        assert await mine.ping() < BUDGET

        async with async_client(server, client) as http:
            url = f"/api/projects/{project_id}/chat/cancel"
            responses = await asyncio.gather(*(http.post(url, json={"message_id": i}) for i in ids[:20]))
        assert [r.status_code for r in responses] == [404] * 20

        # Their answer never noticed: still streaming, no stop stored, chunks still coming.
        row = await asyncio.to_thread(sqlite_row, server, their_id)
        assert (row["status"], row["cancel_requested_at"]) == ("streaming", None)
        seen = len(theirs.chunks(their_id))
        await theirs.chunk_count_at_least(their_id, seen + 3)
        assert active_streams(client) == 1
        await theirs.send(type="cancel", message_id=their_id)
        stopped = await theirs.terminal(their_id)
        assert (stopped["type"], stopped["reason"]) == ("stream_cancelled", "user")
        assert sqlite_rows(server, "select count(*) from chat_message where cancel_requested_at is not null"
                                   " and id in (?, ?)", mine_elsewhere, their_id - 1) == [(0,)]
        await asyncio.to_thread(module_upstream.wait_closed, their_request, 5)
    finally:
        other_client.close()


async def _wait_for_final_row(server, message_id, timeout):
    deadline = time.monotonic() + timeout
    while True:
        row = await asyncio.to_thread(sqlite_row, server, message_id)
        if row["status"] not in ("pending", "streaming"):
            return row
        assert time.monotonic() < deadline, f"message {message_id} is still {row['status']}"
        await asyncio.sleep(0.05)
