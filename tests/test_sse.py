"""`POST /api/projects/<id>/chat/`: an answer as server-sent events (docs/protocol.md, HTTP API).

httpx's ASGITransport runs the app to the end before returning the body, so
mid-stream behaviour (cancel, client leaving) is checked against a real daphne.
"""

import asyncio
import gc
import json
import time

import httpx
import pytest
from channels.db import database_sync_to_async

from chat import answers, sse
from chat.models import Message, Project
from streaming.registry import registry
from streaming.worker import WORKER_ID
from tests.conftest import ORIGIN, cookie_header, session_cookies
from tests.helpers import TERMINAL, assert_contiguous, chunks_text, wait_for
# A daphne of this module's own, with STREAM_DISCONNECT_GRACE=0, signed in.
from tests.test_live_server import client, project_id, server, upstream_server  # noqa: F401
from tests.upstream import chat_reply, endless_reply, reset_reply


def chat_url(project_id) -> str:
    return f"/api/projects/{project_id}/chat/"


def parse_sse(body: str) -> list[dict]:
    return [json.loads(line[len("data: "):]) for line in body.split("\n") if line.startswith("data: ")]


def iter_events(response: httpx.Response):
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield json.loads(line[len("data: "):])


def assert_a_whole_answer(events: list[dict]) -> None:
    assert events[0]["type"] == "message_created"
    assert [e["type"] for e in events[1:-1]] == ["message_chunk"] * (len(events) - 2)
    assert_contiguous(events)
    assert events[-1]["type"] == "stream_complete" and events[-1]["content"] == chunks_text(events)


class TestInProcess:
    pytestmark = pytest.mark.django_db(transaction=True)

    async def test_it_streams_the_same_events_as_the_socket(self, llm, api, project):
        llm.enqueue(chat_reply(["Hel", "lo", " there"]))
        response = await api.post(chat_url(project.pk), json={"content": "hi", "clientId": "c-1"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "text/event-stream"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert response.text.endswith("\n\n")
        events = parse_sse(response.text)
        assert_a_whole_answer(events)
        assert events[0]["client_id"] == "c-1" and events[-1]["content"] == "Hello there"
        answer = await database_sync_to_async(Message.objects.get)(pk=events[0]["assistant_message"]["id"])
        assert (answer.status, answer.content) == ("complete", "Hello there")

    async def test_a_failed_answer_carries_the_tickets_error_fields_beside_ours(self, llm, api, project):
        llm.enqueue(reset_reply(["Half an ", "answer"]))
        response = await api.post(chat_url(project.pk), json={"content": "hi"})
        failed = parse_sse(response.text)[-1]
        assert failed["type"] == "stream_error" and failed["messageId"] == failed["message_id"]
        assert failed["errorType"] == failed["error_type"] == "network"
        assert failed["error"] and "127.0.0.1" not in failed["error"]  # ours and the ticket's: the safe text
        assert failed["partialContent"] == failed["partial_content"]
        assert failed["partialContent"].startswith("Half an answer\n\n*[") and failed["partialContent"].endswith("]*")
        assert (failed["isStreaming"], failed["canCancel"]) == (False, False)

    async def test_it_keeps_a_silent_connection_alive_with_comments(self, llm, api, project, monkeypatch):
        monkeypatch.setattr(sse, "KEEP_ALIVE_AFTER", 0.05)
        llm.enqueue(chat_reply(["late"], first_delay=0.3))
        response = await api.post(chat_url(project.pk), json={"content": "take your time"})
        created, first_chunk = response.text.index("message_created"), response.text.index("message_chunk")
        assert ": keep-alive\n\n" in response.text[created:first_chunk]
        assert parse_sse(response.text)[-1]["content"] == "late"

    async def test_it_answers_403_to_an_anonymous_client(self, project):
        from chatproj.asgi import application

        csrf = "y" * 32
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url=ORIGIN,
                                     cookies={"csrftoken": csrf}, headers={"X-CSRFToken": csrf}) as anonymous:
            response = await anonymous.post(chat_url(project.pk), json={"content": "hi"})
        assert response.status_code == 403 and "detail" in response.json()

    async def test_it_answers_403_without_a_csrf_token(self, api, project):
        response = await api.post(chat_url(project.pk), json={"content": "hi"}, headers={"X-CSRFToken": ""})
        assert response.status_code == 403
        assert not await database_sync_to_async(Message.objects.exists)()

    async def test_it_answers_404_for_another_users_or_a_missing_project(self, api, other_user):
        theirs = await database_sync_to_async(Project.objects.create)(owner=other_user, name="theirs")
        for project_id in (theirs.pk, 999999):
            response = await api.post(chat_url(project_id), json={"content": "hi"})
            assert (response.status_code, response.json()) == (404, {"detail": "Not found."})

    @pytest.mark.parametrize("body, code", [
        (b"{nope", "bad_frame"),
        (b"[1, 2]", "bad_frame"),
        (b'{"content": ""}', "validation"),
        (b'{"content": "   "}', "validation"),
        (b'{"content": "hi", "context_files": "notes.txt"}', "validation"),
        (b'{"content": "hi", "contextFiles": [1]}', "validation"),
        (b'{"content": "hi", "includeContext": "yes"}', "validation"),
        (b'{"content": "hi", "context_files": ["no-such-file.txt"]}', "validation"),
    ])
    async def test_it_answers_400_for_a_bad_body(self, api, project, body, code):
        response = await api.post(chat_url(project.pk), content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["code"] == code and response.json()["detail"]

    async def test_it_answers_429_at_the_per_user_cap(self, api, project, settings):
        settings.STREAM_MAX_PER_USER = 1
        await database_sync_to_async(Message.objects.create)(  # produced by this (live) process
            project=project, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING, worker=WORKER_ID,
        )
        response = await api.post(chat_url(project.pk), json={"content": "one more"})
        assert response.status_code == 429
        assert response.json()["code"] == "limit_exceeded" and "at most 1" in response.json()["detail"]

    async def test_it_answers_503_when_the_message_bus_is_down(self, api, project, monkeypatch):
        async def layer_down():
            return False

        monkeypatch.setattr(answers.bus, "check", layer_down)
        response = await api.post(chat_url(project.pk), json={"content": "hi"})
        assert response.status_code == 503 and response.json()["code"] == "unavailable"

    async def test_it_lets_go_of_the_answer_when_the_client_leaves_before_the_body_is_sent(self, llm, user, project):
        """Django then drops the response unread, inside a reference cycle (the RequestAborted's
        traceback holds its handler's frame); once collected, asyncio closes the started body."""
        from chatproj.asgi import application

        llm.enqueue(endless_reply(delay=0.01))
        cookies = await database_sync_to_async(session_cookies)(user)
        headers_sent = asyncio.Event()
        request = [{"type": "http.request", "body": json.dumps({"content": "bye"}).encode(), "more_body": False}]

        async def receive():
            if request:
                return request.pop()
            await headers_sent.wait()
            return {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                headers_sent.set()
                await asyncio.Event().wait()  # a client that reads nothing more

        await application({
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": chat_url(project.pk), "raw_path": chat_url(project.pk).encode(),
            "query_string": b"", "root_path": "", "server": ("localhost", 80), "client": ("127.0.0.1", 1),
            "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"),
                        (b"cookie", cookie_header(cookies)), (b"x-csrftoken", cookies["csrftoken"].encode())],
        }, receive, send)
        gc.collect()

        await wait_for(lambda: registry.active_count() == 0)
        answer = await database_sync_to_async(Message.objects.get)(role=Message.Role.ASSISTANT)
        assert (answer.status, answer.cancel_reason) == ("cancelled", "disconnect")
        # It may have been stopped before it reached the upstream; if it did, that was hung up.
        await wait_for(lambda: all(request.closed_early for request in llm.requests))


# Over real sockets: daphne, an HTTP client reading the stream as it comes, the fake upstream.


def stored(client, project_id, message_id) -> dict:
    messages = client.get(f"/api/projects/{project_id}/messages/").json()["results"]
    return next(m for m in messages if m["id"] == message_id)


def test_it_streams_to_completion_over_real_http(server, client, project_id, upstream_server):
    upstream_server.enqueue(chat_reply(["Hi", " there", "!"], delay=0.02))
    with client.stream("POST", chat_url(project_id), json={"content": "hello", "client_id": "live"}) as response:
        assert response.status_code == 200 and response.headers["content-type"] == "text/event-stream"
        events = list(iter_events(response))
    assert_a_whole_answer(events)
    assert events[-1]["content"] == "Hi there!"
    assert stored(client, project_id, events[0]["assistant_message"]["id"])["status"] == "complete"


def test_it_ends_the_event_stream_when_the_answer_is_cancelled_over_rest(server, client, project_id, upstream_server):
    upstream_server.enqueue(endless_reply(delay=0.005))
    with client.stream("POST", chat_url(project_id), json={"content": "go on forever"}) as response:
        events = iter_events(response)
        answer_id = next(events)["assistant_message"]["id"]
        seen = [next(events)]
        request = upstream_server.requests[-1]
        cancel = client.post(f"/api/projects/{project_id}/chat/cancel", json={"message_id": answer_id})
        seen += list(events)  # ends on its own: the server closes the body after the terminal event
    assert cancel.status_code == 200, cancel.text
    assert (seen[-1]["type"], seen[-1]["reason"]) == ("stream_cancelled", "user")
    assert [e["type"] for e in seen].count("stream_cancelled") == 1 and not TERMINAL & {e["type"] for e in seen[:-1]}
    assert seen[-1]["content"] == chunks_text(seen) and seen[-1]["partial_content"] == cancel.json()["partial_content"]
    upstream_server.wait_closed(request, timeout=2)
    assert request.closed_early


def test_it_cancels_the_answer_when_the_client_hangs_up(server, client, project_id, upstream_server):
    upstream_server.enqueue(endless_reply(delay=0.005))
    with client.stream("POST", chat_url(project_id), json={"content": "I will leave"}) as response:
        events = iter_events(response)
        answer_id = next(events)["assistant_message"]["id"]
        assert next(events)["type"] == "message_chunk"
        request = upstream_server.requests[-1]
        hung_up = time.monotonic()
    # Leaving the block mid-body closes the TCP connection (it cannot go back to the pool).
    upstream_server.wait_closed(request, timeout=2)
    assert request.closed_early and request.closed_at - hung_up < 0.5
    answer = stored(client, project_id, answer_id)
    assert (answer["status"], answer["cancel_reason"]) == ("cancelled", "disconnect")
    assert answer["display_content"].endswith("*[Response stopped: disconnect]*")


class TestNextStepsOverHTTP:
    pytestmark = pytest.mark.django_db(transaction=True)

    async def test_continue_regenerate_and_select_over_the_rest_api(self, llm, api, project):
        llm.enqueue(chat_reply(["Once", " upon"], done=False))  # cut short: a protocol error keeps the text
        first = parse_sse((await api.post(chat_url(project.pk), json={"content": "A story"})).text)
        first_id = first[0]["assistant_message"]["id"]
        assert first[-1]["type"] == "stream_error" and first[-1]["content"] == "Once upon"

        llm.enqueue(chat_reply([" a time."]))
        more = parse_sse((await api.post(f"/api/projects/{project.pk}/messages/{first_id}/continue/")).text)
        assert more[0]["user_message"] is None and more[0]["assistant_message"]["continues"] == first_id
        assert more[-1]["type"] == "stream_complete" and more[-1]["content"] == " a time."
        assert llm.requests[-1].json["messages"][-1] == {"role": "assistant", "content": "Once upon"}

        llm.enqueue(chat_reply(["Another story."]))
        again = parse_sse((await api.post(f"/api/projects/{project.pk}/messages/{first_id}/regenerate/")).text)
        second_id = again[0]["assistant_message"]["id"]
        assert again[-1]["content"] == "Another story." and again[0]["assistant_message"]["selected"] is True

        selected = await api.post(f"/api/projects/{project.pk}/messages/{first_id}/select/")
        assert selected.status_code == 200 and selected.json()["message_id"] == first_id
        listed = {m["id"]: m for m in (await api.get(f"/api/projects/{project.pk}/messages/")).json()["results"]}
        assert listed[first_id]["selected"] and not listed[second_id]["selected"]

        refused = await api.post(f"/api/projects/{project.pk}/messages/{second_id}/continue/")
        assert refused.status_code == 400 and "stopped or failed" in refused.json()["detail"]
        missing = await api.post(f"/api/projects/{project.pk}/messages/999999/regenerate/")
        assert missing.status_code == 404

    async def test_an_edit_over_the_rest_api(self, llm, api, project):
        llm.enqueue(chat_reply(["one"]))
        first = parse_sse((await api.post(chat_url(project.pk), json={"content": "First"})).text)
        llm.enqueue(chat_reply(["better"]))
        edited = parse_sse((await api.post(chat_url(project.pk), json={
            "content": "First, edited", "editOf": first[0]["user_message"]["id"]})).text)
        assert sorted(edited[0]["superseded"]) == sorted([first[0]["user_message"]["id"],
                                                          first[0]["assistant_message"]["id"]])
