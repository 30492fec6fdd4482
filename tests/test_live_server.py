"""End to end over real sockets: a daphne process, a websocket client and the fake upstream on loopback."""

import json
import time

import pytest
import websockets

from tests.helpers import BUDGET, TERMINAL
from tests.live import LiveServer, frames_until, next_frame, open_socket, upstream_fixture
from tests.live import client, project_id  # noqa: F401 (fixtures)
from tests.upstream import chat_reply, endless_reply

upstream_server = upstream_fixture()


@pytest.fixture(scope="module")
def server(tmp_path_factory, upstream_server):
    live = LiveServer(tmp_path_factory.mktemp("live"), {
        "LLM_PROVIDER": "openai", "LLM_BASE_URL": upstream_server.base_url, "LLM_API_KEY": "k",
        "STREAM_FLUSH_INTERVAL": "0.1", "STREAM_DISCONNECT_GRACE": "0",
    }).start()
    yield live
    live.stop()


async def test_it_streams_and_stops_over_a_real_socket(server, client, project_id, upstream_server):
    upstream_server.enqueue(chat_reply(["Hi", " there"], delay=0.01), endless_reply(delay=0.005))
    async with open_socket(server, project_id, client) as ws:
        await ws.send(json.dumps({"type": "send", "content": "hello"}))
        done = (await frames_until(ws, *TERMINAL))[-1]
        assert (done["type"], done["content"]) == ("stream_complete", "Hi there")

        await ws.send(json.dumps({"type": "send", "content": "go on forever"}))
        answer_id = (await frames_until(ws, "message_created"))[-1]["assistant_message"]["id"]
        before = await frames_until(ws, "message_chunk")
        request = upstream_server.requests[-1]
        sent = time.monotonic()
        await ws.send(json.dumps({"type": "cancel", "message_id": answer_id}))
        frames = await frames_until(ws, *TERMINAL)
        latency = time.monotonic() - sent
    cancelled = frames[-1]
    assert cancelled["type"] == "stream_cancelled" and cancelled["reason"] == "user"
    assert latency < BUDGET, f"stop took {latency * 1000:.0f} ms"
    upstream_server.wait_closed(request, timeout=2)
    assert request.closed_early and request.closed_at - sent < BUDGET
    text = "".join(f["delta"] for f in before + frames if f["type"] == "message_chunk")
    assert cancelled["content"] == text
    messages = client.get(f"/api/projects/{project_id}/messages/").json()["results"]
    stored = next(m for m in messages if m["id"] == answer_id)
    assert (stored["status"], stored["content"]) == ("cancelled", text)
    assert stored["display_content"].endswith("*[Response cancelled by user]*")


async def start_endless_answer(ws, upstream_server, prompt: str) -> int:
    """Send `prompt` for an answer that never ends; its id once its first chunk arrived."""
    upstream_server.enqueue(endless_reply(delay=0.005))
    await ws.send(json.dumps({"type": "send", "content": prompt}))
    answer_id = (await frames_until(ws, "message_created"))[-1]["assistant_message"]["id"]
    await frames_until(ws, "message_chunk")
    return answer_id


async def test_it_stops_over_real_http_with_the_rest_endpoint(server, client, project_id, upstream_server):
    async with open_socket(server, project_id, client) as ws:
        answer_id = await start_endless_answer(ws, upstream_server, "stop me over http")
        response = client.post(f"/api/projects/{project_id}/chat/cancel", json={"message_id": answer_id})
        cancelled = (await frames_until(ws, *TERMINAL))[-1]
    assert response.status_code == 200, response.text
    assert response.json()["partial_content"] == cancelled["partial_content"]
    assert client.post(f"/api/projects/{project_id}/chat/cancel", json={"message_id": answer_id}).status_code == 409


async def test_it_closes_an_anonymous_socket_with_4401(server, project_id):
    async with open_socket(server, project_id) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await next_frame(ws)
    assert closed.value.rcvd.code == 4401


async def test_it_refuses_a_socket_from_a_page_on_another_port_of_the_same_host(server, client, project_id):
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with open_socket(server, project_id, client, origin=f"http://127.0.0.1:{server.port + 1}"):
            pass
    assert refused.value.response.status_code == 403
    async with open_socket(server, project_id, client, origin=f"http://127.0.0.1:{server.port}") as ws:
        await ws.send(json.dumps({"type": "ping"}))
        assert (await next_frame(ws))["type"] == "pong"


async def test_it_serves_the_chat_page_to_a_signed_in_user(server, client, project_id):
    page = client.get(f"/projects/{project_id}/")
    assert page.status_code == 200 and "chat.js" in page.text
    assert client.get("/static/js/chat.js").status_code == 200


async def test_it_stops_a_running_stream_from_the_admin_action(server, client, project_id, upstream_server):
    async with open_socket(server, project_id, client) as ws:
        answer_id = await start_endless_answer(ws, upstream_server, "an operator will stop this")
        response = client.post("/admin/chat/message/", data={
            "action": "stop_streams", "_selected_action": [answer_id],
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        })
        cancelled = (await frames_until(ws, *TERMINAL))[-1]
    assert response.status_code == 302
    assert (cancelled["type"], cancelled["reason"]) == ("stream_cancelled", "admin")
    changelist = client.get("/admin/chat/message/", params={"status__exact": "cancelled"}).text
    assert f"/admin/chat/message/{answer_id}/change/" in changelist
