"""Upstream faults, end to end: a real daphne process, real websockets, the fake
OpenAI-compatible upstream on loopback.

For each way the model server can fail (429 and 500 with error bodies, a connection
refused, a stall past LLM_READ_TIMEOUT, a reset mid-stream, malformed SSE, an HTML page
instead of an event stream, a 10 MB single event), while a second answer of the same
user streams on another socket, what must hold:

- a clear error to the user: one `stream_error` with the right `error_type`, a short
  `error` that says what happened (the status) and nothing of what the upstream said
  (which may name a key or an account: that goes to the log and a staff-only field),
  and `partial_content` = content + the error marker;
- nothing lost: its `content` is exactly the text streamed before the failure;
- exactly one terminal state: one terminal event, and the row says the same thing;
- the other stream is unaffected: it completes, with every chunk, in order;
- the failing socket stays usable, and the server reads no more of a broken upstream
  than it must (a stalled, reset or oversized reply's connection is closed, and a
  10 MB event does not grow the process by 10 MB);
- no leaks: the registry (`GET /api/streams/` as staff) is empty afterwards.

The in-process versions of these cases are in tests/test_providers.py and
tests/test_socket_lifecycle.py.
"""

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass

import pytest

from tests.helpers import BUDGET
from tests.faults.support import (
    MB, RssSampler, SocketReader, assert_no_streams_left, project_of, sqlite_row, start_answer,
)
from tests.live import sign_in
from tests.upstream import Reply, chat_reply, error_reply, huge_event_reply, raw_reply, reset_reply, stall_reply

READ_TIMEOUT = 1


def chat_data(text: str) -> str:
    return "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]})


@dataclass
class Case:
    reply: Reply | None  # None: the upstream refuses the connection
    error_type: str
    says: list[str]  # what the user's error text must contain
    partial: str = ""
    hangs_up: bool = False  # the server must close the upstream connection itself
    other_lasts: float = 1.2  # how long the other stream runs, to overlap the failure


CASES = {
    "429 with a JSON error body": Case(
        error_reply(429, {"error": {"message": "Rate limit reached for requests", "type": "requests",
                                    "code": "rate_limit_exceeded"}}, headers={"retry-after": "2"}),
        "upstream", ["429", "busy or over its limits"]),
    "500 with a JSON error body": Case(
        error_reply(500, {"error": {"message": "The server had an error while processing your request."}}),
        "upstream", ["500", "The model server failed"]),
    "502 with an HTML body": Case(
        error_reply(502, "<html><body><h1>502 Bad Gateway</h1></body></html>"), "upstream", ["502"]),
    "connection refused": Case(None, "network", ["Could not connect"]),
    "stall past the read timeout": Case(
        stall_reply(["Partial", " answer"]), "timeout", [f"sent nothing for {READ_TIMEOUT} seconds"],
        partial="Partial answer", hangs_up=True, other_lasts=2.5),
    "reset mid-stream": Case(
        reset_reply(["Before", " the", " reset"]), "network", ["connection to the model server was lost"],
        partial="Before the reset"),
    "malformed SSE": Case(
        raw_reply([chat_data("Hel"), "", "data: {broken json", "", ": a comment", "no colon at all",
                   "data: [1, 2, 3]", "", "event: surprise", "data: null", "", chat_data("lo"), "",
                   "data: {\"choices\": \"not a list\"}", ""]),
        "protocol", ["ended before it was complete"], partial="Hello"),
    "an HTML page instead of an event stream": Case(
        raw_reply(["<html><body>Welcome to the captive portal</body></html>"], content_type="text/html"),
        "protocol", ["text/html", "instead of an event stream"]),
    "a 10 MB single event": Case(
        huge_event_reply(10 * MB), "protocol", ["larger than 1 MiB"], hangs_up=True),
}


@pytest.fixture(scope="module")
def server(live_servers, gated_upstream):
    return live_servers(
        LLM_PROVIDER="openai", LLM_BASE_URL=gated_upstream.base_url, LLM_API_KEY="k",
        LLM_CONNECT_TIMEOUT=2, LLM_READ_TIMEOUT=READ_TIMEOUT,
        STREAM_FLUSH_INTERVAL=0.1, STREAM_FRAME_INTERVAL=0.02, STREAM_DISCONNECT_GRACE=0,
    )


@pytest.fixture(scope="module")
def client(server):
    signed_in = sign_in(server)
    yield signed_in
    signed_in.close()


@pytest.mark.parametrize("name", CASES)
async def test_it_reports_an_upstream_failure_clearly_and_leaves_the_other_stream_alone(
        name, server, client, gated_upstream):
    case = CASES[name]
    project_id = project_of(client)
    words = [f"w{i} " for i in range(30)]
    refused = case.reply is None
    if refused:
        gated_upstream.drop_connections()  # no idle pooled connection to reuse: the next one is new
    try:
        async with contextlib.AsyncExitStack() as stack:
            failing_socket = await SocketReader.open(stack, server, project_id, client)
            other_socket = await SocketReader.open(stack, server, project_id, client)
            other_id = await start_answer(other_socket, gated_upstream,
                                          chat_reply(words, delay=case.other_lasts / len(words)))
            other_request = gated_upstream.requests[-1]
            await other_socket.chunk_count_at_least(other_id, 1)
            if refused:
                gated_upstream.refuse()
            with RssSampler(server.process.pid) as memory:
                if refused:
                    failing_id = await start_answer(failing_socket, gated_upstream)
                else:
                    failing_id = await start_answer(failing_socket, gated_upstream, case.reply)
                    request = gated_upstream.requests[-1]
                failed = await failing_socket.terminal(failing_id, timeout=10)
                failed_at = time.monotonic()
            completed = await other_socket.terminal(other_id, timeout=10)
            assert await failing_socket.ping() < BUDGET  # the failing socket is still usable
            await other_socket.ping()

            assert failed["type"] == "stream_error", failed
            assert failed["error_type"] == case.error_type, failed
            for part in case.says:
                assert part in failed["error"], failed["error"]
            assert not any(word in failed["error"] for word in ("Traceback", "httpx", "Exception", "127.0.0.1"))
            assert len(failed["error"]) <= 300
            assert failed["content"] == failing_socket.text(failing_id) == case.partial
            assert failed["partial_content"] == case.partial + f"\n\n*[Error: {failed['error']}]*"
            assert len(failing_socket.terminals(failing_id)) == 1

            assert completed["type"] == "stream_complete", completed
            assert completed["content"] == other_socket.text(other_id) == "".join(words)
            assert other_socket.seqs(other_id) == list(range(1, len(other_socket.chunks(other_id)) + 1))
            assert len(other_socket.terminals(other_id)) == 1 and not other_socket.errors()
            # the other stream was still running when the first one failed
            assert other_socket.chunks(other_id)[-1][0] > failed_at - 0.05
            assert other_request.finished
    finally:
        if refused:
            gated_upstream.accept()

    row = await asyncio.to_thread(sqlite_row, server, failing_id)
    assert (row["status"], row["error_type"], row["error_detail"], row["content"]) == (
        "error", case.error_type, failed["error"], failed["content"])
    other_row = await asyncio.to_thread(sqlite_row, server, other_id)
    assert (other_row["status"], other_row["content"]) == ("complete", "".join(words))
    if case.hangs_up:
        await asyncio.to_thread(gated_upstream.wait_closed, request, 5)
        assert request.closed_early
    if name == "a 10 MB single event":
        assert memory.growth < 8 * MB, f"the process grew by {memory.growth / MB:.1f} MB reading a 10 MB event"
    await assert_no_streams_left(client)
