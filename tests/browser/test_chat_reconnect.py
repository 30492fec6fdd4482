"""The server side drops the page's socket mid-answer: the page reconnects, resumes, and shows the answer once."""

import json

from playwright.sync_api import expect

from tests.upstream import chat_reply

from .pages import create_project, send_prompt, sign_in, state_changes

WORDS = [f"word{n}" for n in range(1, 81)]
FIRST_RETRY_MS = 500  # chat.js BACKOFF_START_MS


def test_the_page_resumes_an_answer_after_its_socket_is_dropped(new_context, proxy, fake_upstream):
    page = new_context(base_url=proxy.url).new_page()
    sent = []  # the frames the page sent, one list per socket it opened

    def watch(ws):
        frames = []
        sent.append(frames)
        ws.on("framesent", lambda payload: frames.append(json.loads(payload)))

    page.on("websocket", watch)
    sign_in(page)
    create_project(page, "Dropped socket")
    fake_upstream.set_default(chat_reply([f"{word} " for word in WORDS], delay=0.04))
    answer = send_prompt(page, "Count to eighty")
    body = answer.locator(".message-body")
    expect(body).to_contain_text("word10")

    assert proxy.drop_websockets() == 1

    expect(answer).to_have_attribute("data-status", "complete")
    assert body.inner_text().split() == WORDS
    expect(page.locator("#messages article[data-role=assistant]")).to_have_count(1)
    banner = state_changes(page, "connection-banner")
    assert [state for state, _, _ in banner[-3:]] == ["connected", "reconnecting", "connected"]
    (_, _, dropped_at), (_, _, back_at) = banner[-2:]
    assert back_at - dropped_at >= FIRST_RETRY_MS * 0.9  # it waited out the backoff
    assert proxy.websockets_opened == len(sent) == 2
    resume = next(frame for frame in sent[1] if frame["type"] == "resume")
    assert resume["message_id"] == int(answer.get_attribute("data-message-id"))
    assert resume["after_seq"] > 0

    page.reload()  # what the server stored is what the page showed
    expect(page.locator("#messages article[data-role=assistant] .message-body")).to_have_text(" ".join(WORDS))
