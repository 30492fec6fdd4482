"""The original ticket's own client logic (tests/ticket_client/client.mjs, run by Node's
fetch) against a live daphne: it sends, streams, cancels with `{messageId}` and completes,
on both path forms (with and without the trailing slash), reading only the ticket's names."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_live_server import client, project_id, server, upstream_server  # noqa: F401 (fixtures)
from tests.upstream import chat_reply, endless_reply

NODE = shutil.which("node")
CLIENT = Path(__file__).parent / "ticket_client" / "client.mjs"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(NODE is None, reason="Node.js is not installed")]


def run_ticket_client(server, client, project_id, slash: bool, cancel_after_chunks: int = 0) -> dict:
    env = {**os.environ, "BASE_URL": server.url, "PROJECT_ID": str(project_id), "SLASH": "1" if slash else "0",
           "COOKIE": "; ".join(f"{name}={value}" for name, value in client.cookies.items()),
           "CSRF": client.cookies["csrftoken"], "CANCEL_AFTER_CHUNKS": str(cancel_after_chunks)}
    done = subprocess.run([NODE, str(CLIENT)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("slash", [False, True], ids=["without slash", "with slash"])
def test_the_tickets_client_streams_and_cancels_with_message_id(server, client, project_id, upstream_server, slash):
    upstream_server.enqueue(endless_reply(delay=0.01))
    result = run_ticket_client(server, client, project_id, slash, cancel_after_chunks=3)
    assert result["status"] == 200
    user, answer = result["messages"]
    assert (user["role"], user["content"]) == ("user", "Tell me a long story")
    created = result["seen"][0]
    assert created["assistantMessage"]["isLoading"] is True and created["assistantMessage"]["canCancel"] is True
    chunks = [e for e in result["seen"] if e["type"] == "message_chunk"]
    assert len(chunks) >= 3 and all(c["isStreaming"] and c["canCancel"] for c in chunks)
    assert all(c["content"] == "".join(d["delta"] for d in chunks[:i + 1]) for i, c in enumerate(chunks))
    cancelled = result["seen"][-1]
    assert cancelled["type"] == "stream_cancelled" and cancelled["messageId"] == answer["id"]
    assert answer["content"] == cancelled["partialContent"] == chunks[-1]["content"] + "\n\n*[Response cancelled by user]*"
    assert (answer["isLoading"], answer["isStreaming"], answer["canCancel"]) == (False, False, False)
    assert cancelled["errorType"] == "cancelled" and cancelled["error"] == "Response cancelled by user"
    body = result["cancelResponse"]["body"]
    assert result["cancelResponse"]["status"] == 200
    assert (body["success"], body["messageId"], body["message"]) == (True, answer["id"], "Stream cancelled successfully.")


@pytest.mark.parametrize("slash", [False, True], ids=["without slash", "with slash"])
def test_the_tickets_client_reads_a_completed_answers_final_content(server, client, project_id, upstream_server,
                                                                    slash):
    upstream_server.enqueue(chat_reply(["Once", " upon", " a", " time."], delay=0.01))
    result = run_ticket_client(server, client, project_id, slash)
    _, answer = result["messages"]
    complete = result["seen"][-1]
    assert complete["type"] == "stream_complete" and complete["finalContent"] == "Once upon a time."
    assert answer["content"] == "Once upon a time." and answer["isLoading"] is False


def test_a_cancel_of_a_finished_answer_is_409_with_success_false(server, client, project_id, upstream_server):
    upstream_server.enqueue(chat_reply(["done"]))
    answer_id = run_ticket_client(server, client, project_id, slash=False)["messages"][1]["id"]
    for path in ("cancel", "cancel/"):
        response = client.post(f"/api/projects/{project_id}/chat/{path}", json={"messageId": answer_id})
        assert response.status_code == 409
        assert response.json()["success"] is False and response.json()["error"] == "The answer is already complete."
