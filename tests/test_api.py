"""The HTTP API: projects, messages, cancel, streams and health (docs/protocol.md)."""

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat.models import Message, Project
from streaming.registry import registry
from tests.helpers import receive_until, send_prompt, wait_for
from tests.upstream import endless_reply

pytestmark = pytest.mark.django_db(transaction=True)


async def test_it_cancels_a_stream_over_rest_with_the_partial(llm, api, connect, project, user):
    llm.enqueue(endless_reply(delay=0.005))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    await receive_until(ws, "message_chunk")
    response = await api.post(f"/api/projects/{project.pk}/chat/cancel", json={"message_id": answer_id})
    assert response.status_code == 200, response.text
    body = response.json()
    cancelled = (await receive_until(ws, "stream_cancelled"))[-1]
    assert body == {
        "message_id": answer_id, "status": "cancelled", "reason": "user",
        "partial_content": cancelled["partial_content"],
        "success": True, "messageId": answer_id, "message": "Stream cancelled successfully.",  # the ticket's names
    }
    assert body["partial_content"].endswith("*[Response cancelled by user]*")
    await wait_for(lambda: llm.requests[0].closed_early)
    message = await database_sync_to_async(Message.objects.get)(pk=answer_id)
    assert message.status == "cancelled" and message.display_content == body["partial_content"]
    again = await api.post(f"/api/projects/{project.pk}/chat/cancel", json={"messageId": answer_id})
    assert (again.status_code, again.json()) == (409, {
        "message_id": answer_id, "status": "cancelled",
        "success": False, "messageId": answer_id, "error": "The answer is already cancelled."})


@pytest.mark.parametrize("body", [{}, {"message_id": "abc"}, {"message_id": "5"}, {"message_id": True}, {"message_id": 1.5}, []])
async def test_it_answers_400_for_a_missing_or_bad_id(api, project, body):
    response = await api.post(f"/api/projects/{project.pk}/chat/cancel", json=body)
    assert response.status_code == 400


async def test_it_answers_400_for_a_body_that_is_not_json(api, project):
    response = await api.post(
        f"/api/projects/{project.pk}/chat/cancel", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


async def test_it_answers_404_for_another_users_message_and_leaves_it_running(llm, api, connect, other_user):
    theirs = await database_sync_to_async(Project.objects.create)(owner=other_user, name="theirs")
    llm.enqueue(endless_reply(delay=0.01))
    ws = await connect(theirs, other_user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    for path in (f"/api/projects/{theirs.pk}/chat/cancel", "/api/projects/999999/chat/cancel"):
        response = await api.post(path, json={"message_id": answer_id})
        assert response.status_code == 404
    assert registry.is_active(answer_id)
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    await receive_until(ws, "stream_cancelled")


async def test_it_answers_404_for_an_unknown_message(api, project):
    response = await api.post(f"/api/projects/{project.pk}/chat/cancel", json={"message_id": 424242})
    assert response.status_code == 404


async def test_it_answers_409_for_a_finished_message(llm, api, connect, project, user):
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    await receive_until(ws, "stream_complete")
    response = await api.post(f"/api/projects/{project.pk}/chat/cancel", json={"message_id": answer_id})
    assert response.status_code == 409
    assert {k: response.json()[k] for k in ("message_id", "status", "success")} == (
        {"message_id": answer_id, "status": "complete", "success": False})


async def test_it_refuses_anonymous_and_csrf_less_cancels(project):
    import httpx

    from chatproj.asgi import application

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://localhost") as anon:
        response = await anon.post(f"/api/projects/{project.pk}/chat/cancel", json={"message_id": 1})
        assert response.status_code == 403


async def test_it_lists_and_creates_only_the_users_projects(api, project, other_user):
    await database_sync_to_async(Project.objects.create)(owner=other_user, name="not mine")
    created = await api.post("/api/projects/", json={"name": "  New one "})
    assert created.status_code == 201 and created.json()["name"] == "New one"
    listed = (await api.get("/api/projects/")).json()
    assert sorted(p["name"] for p in listed["results"]) == ["Alice's project", "New one"]
    assert (await api.post("/api/projects/", json={"name": ""})).status_code == 400


async def test_it_lists_a_projects_messages_oldest_first_with_markers(api, project, other_user):
    def make():
        Message.objects.create(project=project, role="user", content="first")
        Message.objects.create(project=project, role="assistant", status="cancelled", cancel_reason="user", content="half")
        return Project.objects.create(owner=other_user, name="theirs")

    theirs = await database_sync_to_async(make)()
    body = (await api.get(f"/api/projects/{project.pk}/messages/")).json()
    assert [m["content"] for m in body["results"]] == ["first", "half"]
    assert body["results"][1]["display_content"] == "half\n\n*[Response cancelled by user]*"
    assert (await api.get(f"/api/projects/{theirs.pk}/messages/")).status_code == 404


async def test_it_shows_active_streams_to_staff_only(llm, api, connect, project, user):
    assert (await api.get("/api/streams/")).status_code == 403
    await database_sync_to_async(type(user).objects.filter(pk=user.pk).update)(is_staff=True)
    llm.enqueue(endless_reply(delay=0.01))
    ws = await connect(project, user)
    answer_id = (await send_prompt(ws))["assistant_message"]["id"]
    await receive_until(ws, "message_chunk")
    await asyncio.sleep(0.05)
    body = (await api.get("/api/streams/")).json()
    assert body["count"] == 1
    stream = body["streams"][0]
    assert stream["message_id"] == answer_id and stream["chunk_count"] >= 1 and stream["age"] > 0 and stream["worker"]
    await ws.send_json_to({"type": "cancel", "message_id": answer_id})
    await receive_until(ws, "stream_cancelled")


async def test_it_reports_health(api):
    response = await api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "channel_layer": "ok"}


async def test_it_answers_202_when_another_live_process_has_not_confirmed_the_stop(api, project, monkeypatch):
    from chat import answers
    from chat.models import Worker

    monkeypatch.setattr(answers, "STOP_WAIT", 0.1)

    def remote_stream():
        from django.utils import timezone

        Worker.objects.create(id="another-host:1:1")  # alive: a fresh heartbeat
        return Message.objects.create(
            project=project, role="assistant", status="streaming", content="so far",
            worker="another-host:1:1", started_at=timezone.now(), last_chunk_at=timezone.now(),
        )

    message = await database_sync_to_async(remote_stream)()
    response = await api.post(f"/api/projects/{project.pk}/chat/cancel", json={"message_id": message.pk})
    assert response.status_code == 202
    assert response.json() == {
        "message_id": message.pk, "status": "streaming", "reason": "user", "cancel_requested": True,
        "partial_content": "so far",
        "success": True, "messageId": message.pk, "message": "Stream cancellation requested.",
    }
    row = await database_sync_to_async(Message.objects.get)(pk=message.pk)
    assert row.cancel_requested_at is not None and row.cancel_requested_reason == "user"
