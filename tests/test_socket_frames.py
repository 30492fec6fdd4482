"""Who may open the socket, and how every malformed frame is answered (docs/protocol.md)."""

import json

import pytest
from channels.db import database_sync_to_async

from chat.models import Message, Project
from tests.helpers import receive_until, send_prompt

pytestmark = pytest.mark.django_db(transaction=True)


async def close_code(communicator):
    output = await communicator.receive_output(timeout=2)
    assert output["type"] == "websocket.close"
    return output.get("code")


async def test_it_closes_with_4401_for_an_anonymous_visitor(connect, project):
    ws = await connect(project)
    assert await close_code(ws) == 4401


async def test_it_closes_with_4404_for_somebody_elses_project(connect, project, other_user):
    ws = await connect(project, other_user)
    assert await close_code(ws) == 4404


async def test_it_closes_with_4404_for_an_unknown_project(connect, user):
    ws = await connect(Project(pk=999999), user)
    assert await close_code(ws) == 4404


async def test_it_refuses_a_foreign_origin(connect, project, user):
    ws = await connect(project, user, origin="http://evil.example")
    assert not ws.accepted


async def test_it_refuses_a_socket_without_an_origin(connect, project, user):
    ws = await connect(project, user, origin=None)
    assert not ws.accepted


@pytest.mark.parametrize("origin, host, accepted", [
    ("http://localhost:9999", "localhost", False),  # same host, another port
    ("http://localhost:9999", "localhost:8000", False),
    ("http://localhost:8000", "localhost:8000", True),
    ("http://localhost", "localhost:80", True),
    ("https://localhost", "localhost", True),
    ("https://localhost", "localhost:80", False),
    ("http://127.0.0.1:8000", "localhost:8000", False),  # another host name, though the same machine
    ("http://evil.example:8000", "evil.example:8000", False),  # not an allowed host
    ("null", "localhost", False),
    ("http://localhost:notaport", "localhost", False),
    ("http://trusted.example:3000", "localhost", True),  # listed in CSRF_TRUSTED_ORIGINS
])
async def test_it_accepts_only_an_origin_on_the_host_and_port_it_is_served_on(connect, project, user, settings,
                                                                           origin, host, accepted):
    settings.CSRF_TRUSTED_ORIGINS = ["http://trusted.example:3000"]
    ws = await connect(project, user, origin=origin, host=host)
    assert ws.accepted is accepted


async def test_it_answers_ping_with_pong(connect, project, user):
    ws = await connect(project, user)
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from() == {"type": "pong"}


BAD_FRAMES = [
    ("not json", "bad_frame"),
    ("[1, 2]", "bad_frame"),
    ('"send"', "bad_frame"),
    ("{}", "bad_frame"),
    ('{"type": "shout"}', "bad_frame"),
    ('{"type": 7}', "bad_frame"),
    ('{"type": "send"}', "validation"),
    ('{"type": "send", "content": ""}', "validation"),
    ('{"type": "send", "content": "   "}', "validation"),
    ('{"type": "send", "content": 42}', "validation"),
    (json.dumps({"type": "send", "content": "x" * 32001}), "validation"),
    ('{"type": "send", "content": "hi", "include_context": "yes"}', "validation"),
    ('{"type": "send", "content": "hi", "context_files": "a.txt"}', "validation"),
    ('{"type": "send", "content": "hi", "context_files": [1]}', "validation"),
    ('{"type": "send", "content": "hi", "context_files": ["missing.txt"]}', "validation"),
    ('{"type": "send", "content": "hi", "client_id": 5}', "validation"),
    ('{"type": "cancel"}', "validation"),
    ('{"type": "cancel", "message_id": "12"}', "validation"),
    ('{"type": "cancel", "message_id": true}', "validation"),
    ('{"type": "cancel", "message_id": -3}', "validation"),
    ('{"type": "cancel", "message_id": 1.5}', "validation"),
    ('{"type": "cancel", "message_id": 999999}', "not_found"),
    ('{"type": "resume"}', "validation"),
    ('{"type": "resume", "message_id": 1, "after_seq": -1}', "validation"),
    ('{"type": "resume", "message_id": 1, "after_seq": "3"}', "validation"),
    ('{"type": "resume", "message_id": 999999}', "not_found"),
]


async def test_it_answers_every_bad_frame_with_an_error_and_stays_usable(llm, connect, project, user):
    ws = await connect(project, user)
    for text, code in BAD_FRAMES:
        await ws.send_to(text_data=text)
        error = await ws.receive_json_from(timeout=2)
        assert (error["type"], error["code"]) == ("error", code), text
        assert error["detail"]
    await ws.send_to(bytes_data=b"\x00\x01")
    assert (await ws.receive_json_from())["code"] == "bad_frame"
    created = await send_prompt(ws, "still here?")
    assert created["type"] == "message_created"
    await receive_until(ws, "stream_complete")
    assert await database_sync_to_async(Message.objects.count)() == 2


async def test_it_keeps_the_content_exactly_as_sent_at_the_limit(llm, connect, project, user):
    ws = await connect(project, user)
    content = "é" * 32000
    created = await send_prompt(ws, content)
    assert created["user_message"]["content"] == content
    await receive_until(ws, "stream_complete")
