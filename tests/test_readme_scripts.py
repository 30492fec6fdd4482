"""The README's curl examples ("Scripts: the REST API with a token"), run as written against
a live server: only the address is the test's, and the answer's id the one just created."""

import json
import re
import shutil
import subprocess

import pytest

from tests.live import ROOT, LiveServer

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")]


def readme_commands() -> list[str]:
    """The logical commands of the section's sh block (continuation lines joined, comments left out)."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Scripts: the REST API with a token.*?```sh\n(.*?)```", text, re.S).group(1)
    commands, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = LiveServer(tmp_path_factory.mktemp("scripts"), {"LLM_PROVIDER": "demo", "LLM_DEMO_DELAY": "0.02"})
    yield live.start()
    live.stop()


def test_the_readmes_curl_examples_send_stop_and_list(server):
    setup, send, cancel, listing = (lambda c: (c[:3], c[3], c[4], c[5]))(readme_commands())
    assert setup[0].startswith("BASE=") and "issue_token demo" in setup[1]
    prelude = "\n".join([f"BASE={server.url}", *setup[1:]])

    def run(command: str, **popen):
        return subprocess.Popen(["bash", "-c", f"set -e\n{prelude}\n{command}"], cwd=ROOT, env=server.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)

    streaming = run(send)
    first = ""
    while not first.startswith("data: "):
        first = streaming.stdout.readline()
        assert first or streaming.poll() is None, streaming.stderr.read()
    created = json.loads(first[len("data: "):])
    assert created["type"] == "message_created"
    answer_id = created["assistant_message"]["id"]

    stop = run(cancel.replace('"message_id": 2', f'"message_id": {answer_id}'))
    stopped = json.loads(stop.communicate(timeout=30)[0])
    assert (stopped["status"], stopped["reason"]) == ("cancelled", "user")
    assert stopped["partial_content"].endswith("*[Response cancelled by user]*")

    rest, _ = streaming.communicate(timeout=30)
    events = [json.loads(line[len("data: "):]) for line in rest.splitlines() if line.startswith("data: ")]
    assert events[-1]["type"] == "stream_cancelled" and events[-1]["message_id"] == answer_id

    listed = json.loads(run(listing).communicate(timeout=30)[0])["results"]
    answer = next(m for m in listed if m["id"] == answer_id)
    assert (answer["status"], answer["display_content"]) == ("cancelled", stopped["partial_content"])


def test_a_request_with_a_bad_token_is_refused(server):
    for path in ("/api/projects/", "/api/projects/1/messages/"):
        done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                               "Authorization: Token not-a-token", server.url + path], capture_output=True, text=True)
        assert done.stdout == "403"
    chat = subprocess.run(["curl", "-s", "-w", "\n%{http_code}", "-H", "Authorization: Token nope", "-H",
                           "Content-Type: application/json", "-d", '{"content": "hi"}', server.url + "/api/projects/1/chat/"],
                          capture_output=True, text=True)
    assert chat.stdout.endswith("403") and "Invalid token" in chat.stdout
