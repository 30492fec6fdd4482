"""Abuse limits and sessions: prompts per minute, sockets per user, and a socket whose session
ended (logout, expiry, a password change) that can no longer send."""

import pytest
from channels.db import database_sync_to_async
from django.contrib.sessions.models import Session
from django.test import Client

from chat.models import Message
from tests.conftest import ORIGIN, cookie_header
from tests.helpers import receive_until, send_prompt
from tests.upstream import chat_reply

pytestmark = pytest.mark.django_db(transaction=True)


async def close_code(ws, timeout=3):
    output = await ws.receive_output(timeout=timeout)
    assert output["type"] == "websocket.close", output
    return output.get("code")


async def test_it_refuses_prompts_past_the_rate_with_rate_limited_and_retry_after(llm, connect, project, user,
                                                                                 settings):
    settings.STREAM_SENDS_PER_MINUTE = 3
    ws = await connect(project, user)
    for i in range(3):
        llm.enqueue(chat_reply([f"answer {i}"]))
        assert (await send_prompt(ws, f"prompt {i}"))["type"] == "message_created"
        await receive_until(ws, "stream_complete")
    refused = await send_prompt(ws, "one more")
    assert (refused["type"], refused["code"]) == ("error", "rate_limited")
    assert 55 <= refused["retry_after"] <= 60 and "3 prompts" in refused["detail"]
    assert await database_sync_to_async(Message.objects.filter(role="user").count)() == 3


async def test_the_rate_applies_to_sse_as_a_429_with_retry_after(llm, api, project, settings):
    settings.STREAM_SENDS_PER_MINUTE = 1
    llm.enqueue(chat_reply(["ok"]))
    assert (await api.post(f"/api/projects/{project.pk}/chat/", json={"content": "one"})).status_code == 200
    response = await api.post(f"/api/projects/{project.pk}/chat/", json={"content": "two"})
    assert response.status_code == 429
    body = response.json()
    assert body["code"] == "rate_limited" and 55 <= body["retry_after"] <= 60
    assert response.headers["retry-after"] == str(body["retry_after"])


async def test_a_rate_of_zero_turns_the_limit_off(llm, connect, project, user, settings):
    settings.STREAM_SENDS_PER_MINUTE = 0
    ws = await connect(project, user)
    for i in range(40):
        llm.enqueue(chat_reply(["x"]))
        assert (await send_prompt(ws, f"p{i}"))["type"] == "message_created"
        await receive_until(ws, "stream_complete")


async def test_it_caps_the_open_sockets_of_one_user(connect, project, user, other_user, settings):
    settings.SOCKETS_MAX_PER_USER = 2
    first, second = await connect(project, user), await connect(project, user)
    third = await connect(project, user)
    assert await close_code(third) == 4429
    await first.send_json_to({"type": "ping"})
    assert await first.receive_json_from() == {"type": "pong"}
    await second.disconnect()
    again = await connect(project, user)
    await again.send_json_to({"type": "ping"})
    assert await again.receive_json_from() == {"type": "pong"}


def signed_in_client(user) -> Client:
    client = Client(enforce_csrf_checks=False)
    client.force_login(user)
    return client


async def open_with(client: Client, project):
    from channels.testing import WebsocketCommunicator

    from chatproj.asgi import application

    cookies = {"sessionid": client.cookies["sessionid"].value}
    ws = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/chat/", headers=[
        (b"host", b"localhost"), (b"origin", ORIGIN.encode()), (b"cookie", cookie_header(cookies))])
    connected, _ = await ws.connect()
    assert connected
    return ws


async def test_logging_out_closes_that_sessions_sockets_with_4401(llm, project, user):
    this_tab = await database_sync_to_async(signed_in_client)(user)
    other_device = await database_sync_to_async(signed_in_client)(user)
    ws, elsewhere = await open_with(this_tab, project), await open_with(other_device, project)
    response = await database_sync_to_async(this_tab.post)("/accounts/logout/")
    assert response.status_code == 302
    assert await close_code(ws) == 4401
    await elsewhere.send_json_to({"type": "ping"})  # another session of the same user goes on
    assert await elsewhere.receive_json_from() == {"type": "pong"}
    await elsewhere.disconnect()


@pytest.mark.parametrize("how", ["session deleted", "password changed"])
async def test_a_socket_whose_session_ended_cannot_send(llm, project, user, how):
    client = await database_sync_to_async(signed_in_client)(user)
    ws = await open_with(client, project)

    def end_the_session():
        if how == "session deleted":  # expired and cleared, or flushed by an operator: no logout signal
            Session.objects.all().delete()
        else:
            user.set_password("a-new-password-456")
            user.save()

    await database_sync_to_async(end_the_session)()
    await ws.send_json_to({"type": "send", "content": "still me?"})
    assert await close_code(ws) == 4401
    assert not await database_sync_to_async(Message.objects.exists)()
