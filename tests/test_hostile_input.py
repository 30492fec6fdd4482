"""Input a hostile or careless client sends: every frame and body gets a clear error, never a
closed socket (1011) or a 500, and nothing reaches the database that it cannot store."""

import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from chat.protocol import FrameError, parse_frame, parse_send_body
from chat.models import Message, ProjectFile
from tests.helpers import receive_until, send_prompt

db = pytest.mark.django_db(transaction=True)

NESTED = "[" * 100_000 + "]" * 100_000

HOSTILE_FRAMES = [
    # (frame text, error code, a word the detail must contain)
    (json.dumps({"type": "send", "content": "a\x00b"}), "validation", "NUL"),
    ('{"type": "send", "content": "a\\ud800b"}', "validation", "surrogate"),
    ('{"type": "send", "content": "\\udfff"}', "validation", "surrogate"),
    ('{"type": "send", "content": "hi", "context_files": ["a\\u0000.txt"]}', "validation", "NUL"),
    ('{"type": "send", "content": "hi", "context_files": ["\\ud83d.txt"]}', "validation", "surrogate"),
    ('{"type": "send", "content": "hi", "client_id": "\\ud800"}', "validation", "surrogate"),
    ('{"type": "send", "content": "hi", "client_id": "x\\u0000"}', "validation", "NUL"),
    ('{"type": "send", "content": "hi", "extra": ' + NESTED + "}", "bad_frame", "nested"),
    ('{"type": "ping", "x": ' + "[" * 40 + "]" * 40 + "}", "bad_frame", "nested"),
    ('{"type": "cancel", "message_id": 99999999999999999999999}', "not_found", "No message"),
    ('{"type": "resume", "message_id": 99999999999999999999999, "after_seq": 2}', "not_found", "No message"),
    ('{"type": "send", "content": "hi", "context_files": ' + json.dumps(["f"] * 1001) + "}", "validation", "1000"),
    ('{"type": "send", "content": "hi", "context_files": ["' + "n" * 256 + '"]}', "validation", "255"),
]


@db
@pytest.mark.parametrize("text, code, word", HOSTILE_FRAMES)
async def test_it_answers_a_hostile_frame_with_an_error_and_keeps_the_socket(llm, connect, project, user,
                                                                           text, code, word):
    ws = await connect(project, user)
    await ws.send_to(text_data=text)
    error = await ws.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", code)
    assert word in error["detail"]
    assert len(error["detail"]) < 300
    created = await send_prompt(ws, "still here?")
    assert created["type"] == "message_created"
    await receive_until(ws, "stream_complete")
    assert await database_sync_to_async(Message.objects.count)() == 2


@db
async def test_it_names_only_a_few_of_many_unknown_context_files(llm, connect, project, user):
    await database_sync_to_async(ProjectFile.objects.create)(project=project, name="real.txt", content="x")
    ws = await connect(project, user)
    names = [f"missing-{i}.txt" for i in range(1000)]
    await ws.send_json_to({"type": "send", "content": "hi", "context_files": names})
    error = await ws.receive_json_from(timeout=5)
    assert error["code"] == "validation"
    assert "missing-0.txt" in error["detail"] and "997 more" in error["detail"]
    assert len(error["detail"]) < 300


@db
async def test_it_closes_a_socket_on_a_path_with_no_route_cleanly(user, caplog):
    from chatproj.asgi import application

    for path in ("/ws/projects/-1/chat/", "/ws/nothing/here/", "/ws/projects/abc/chat/"):
        communicator = WebsocketCommunicator(application, path, headers=[(b"origin", b"http://localhost"),
                                                                        (b"host", b"localhost")])
        connected, code = await communicator.connect()
        if connected:
            output = await communicator.receive_output(timeout=2)
            assert (output["type"], output.get("code")) == ("websocket.close", 4404)
        else:
            assert code == 4404
        await communicator.disconnect()
    assert "Traceback" not in caplog.text and "No route found" not in caplog.text


@db
class TestSSE:
    @pytest.mark.parametrize("body, code, word", [
        (json.dumps({"content": "a\x00b"}).encode(), "validation", "NUL"),
        (b'{"content": "\\ud800"}', "validation", "surrogate"),
        (b'{"content": "hi", "x": ' + NESTED.encode() + b"}", "bad_frame", "nested"),
        (b'{"content": "hi", "contextFiles": ["\\u0000"]}', "validation", "NUL"),
        (b"\xff\xfe{not utf-8", "bad_frame", "JSON"),
        (b'{"content": "hi", "context_files": ' + json.dumps([f"m{i}" for i in range(900)]).encode() + b"}",
         "validation", "more"),
    ])
    async def test_it_answers_400_to_a_hostile_body(self, api, project, body, code, word):
        response = await api.post(f"/api/projects/{project.pk}/chat/", content=body,
                                  headers={"content-type": "application/json"})
        assert response.status_code == 400, response.text
        assert response.json()["code"] == code and word in response.json()["detail"]
        assert len(response.text) < 400
        assert not await database_sync_to_async(Message.objects.exists)()


# -- properties: whatever arrives, the parsers answer a frame or a FrameError ------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["send", "cancel", "resume", "ping", "other"])},
    optional={
        "content": st.text() | json_values,
        "message_id": st.integers() | json_values,
        "after_seq": st.integers() | json_values,
        "context_files": st.lists(st.text(), max_size=5) | json_values,
        "include_context": st.booleans() | json_values,
        "client_id": st.text() | json_values,
    },
)


def assert_parsed_or_refused(parse, raw):
    try:
        frame = parse(raw)
    except FrameError as error:
        assert error.code in {"bad_frame", "validation", "not_found"} and error.detail
        return
    for value in frame.values():
        if isinstance(value, str):
            value.encode("utf-8")  # storable: no lone surrogate
            assert "\x00" not in value
    if frame["type"] == "send":
        assert frame["content"].strip() and all("\x00" not in name for name in frame["context_files"])


@hypothesis_settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(st.text())
def test_parse_frame_answers_any_text_with_a_frame_or_a_frame_error(text):
    assert_parsed_or_refused(parse_frame, text)


@hypothesis_settings(max_examples=300, deadline=None)
@given(frame_like)
def test_parse_frame_answers_any_frame_shaped_json_with_a_frame_or_a_frame_error(frame):
    assert_parsed_or_refused(parse_frame, json.dumps(frame))


@hypothesis_settings(max_examples=300, deadline=None)
@given(st.binary() | frame_like.map(lambda frame: json.dumps(frame).encode()))
def test_the_sse_body_parser_answers_any_bytes_with_a_frame_or_a_frame_error(raw):
    assert_parsed_or_refused(parse_send_body, raw)


@db
async def test_an_unexpected_failure_of_a_send_is_an_error_frame_not_a_closed_socket(connect, project, user,
                                                                                     monkeypatch):
    from chat import answers

    async def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(answers, "start", broken)
    ws = await connect(project, user)
    await ws.send_json_to({"type": "send", "content": "hi"})
    error = await ws.receive_json_from(timeout=5)
    assert (error["type"], error["code"]) == ("error", "unavailable") and "a bug" not in error["detail"]
    await ws.send_json_to({"type": "ping"})
    assert await ws.receive_json_from(timeout=5) == {"type": "pong"}


@db
async def test_an_unexpected_failure_of_an_sse_send_is_a_503_with_json(api, project, monkeypatch):
    from chat import answers

    async def broken(**kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(answers, "start", broken)
    response = await api.post(f"/api/projects/{project.pk}/chat/", json={"content": "hi"})
    assert response.status_code == 503 and response.json()["code"] == "unavailable"
    assert "a bug" not in response.text
