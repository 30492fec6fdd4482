"""A user streams an answer and stops it: the page, the stored row and the upstream all agree."""

import re

from playwright.sync_api import expect

from tests.upstream import chat_reply, endless_reply

from .pages import (
    create_project, expect_stopped_by_user, screenshot, send_prompt, sign_in, state_changes, wait_for_text_growth,
)

ANSWER = """\
## Why a stopped answer keeps its text

When you press **Stop**, three things happen at once:

1. The server cancels the task that relays the model's stream.
2. The request to the model is closed, so no more tokens are paid for.
3. The text produced so far is saved, with a marker that says why it ended.

```python
await services.message_cancel(message=answer, reason="user")
```

A stopped answer can then be sent back as context, exactly as the model wrote it,
without the marker. Reloading the page shows the same partial text, because the
database row, not the socket, is the source of truth for every finished answer.
"""
ANSWER_CHUNKS = re.findall(r"\S+\s*", ANSWER)
GREETING_CHUNKS = re.findall(r"\S+\s*", "Hello! Ask me anything, and press Stop (or Esc) once you have read enough.")


def test_a_user_signs_in_streams_an_answer_stops_it_and_finds_it_after_a_reload(page, fake_upstream):
    sign_in(page)
    create_project(page, "Stop button, end to end")
    fake_upstream.set_default(chat_reply(GREETING_CHUNKS, delay=0.01))
    greeting = send_prompt(page, "Say hello")
    expect(greeting).to_have_attribute("data-status", "complete")
    expect(greeting.locator(".message-body")).to_have_text("".join(GREETING_CHUNKS))

    fake_upstream.set_default(chat_reply(ANSWER_CHUNKS, delay=0.04))
    answer = send_prompt(page, "What happens when I press Stop?")
    button = page.locator("#send-button")
    expect(button).to_have_text("Stop")
    shown = wait_for_text_growth(page, answer, 0)
    wait_for_text_growth(page, answer, shown)
    expect(answer).to_have_attribute("data-status", "streaming")
    expect(answer.locator(".message-body li").first).to_be_visible()
    screenshot(page, "chat-streaming.png")
    expect(answer.locator(".message-body pre")).to_be_visible()  # a stop with some code in the picture

    request = fake_upstream.requests[-1]
    button.click()
    expect_stopped_by_user(page, answer)
    # The button said "Stopping…" as soon as it was pressed, and only then went back to Send.
    button_changes = [change[:2] for change in state_changes(page, "send-button")]
    assert button_changes[-3:] == [("stop", "Stop"), ("stopping", "Stopping…"), ("send", "Send")]
    fake_upstream.wait_closed(request)
    assert request.closed_early and request.chunks_sent < len(ANSWER_CHUNKS)
    partial = answer.locator(".message-body").inner_text()
    assert partial and partial.split()[:4] == ["Why", "a", "stopped", "answer"]
    screenshot(page, "chat-stopped.png")

    page.reload()
    stored = page.locator(f'#messages article[data-message-id="{answer.get_attribute("data-message-id")}"]')
    expect(stored).to_have_attribute("data-status", "cancelled")
    expect(stored.locator(".message-body")).to_have_text(partial)
    expect(stored.locator("p.marker")).to_have_text("[Response cancelled by user]")
    expect(page.locator("#send-button")).to_have_attribute("data-state", "send")


def test_escape_stops_a_streaming_answer(page, fake_upstream):
    sign_in(page)
    create_project(page, "Escape key")
    fake_upstream.set_default(endless_reply(delay=0.02))
    answer = send_prompt(page, "Count forever")
    wait_for_text_growth(page, answer, 0)
    request = fake_upstream.requests[-1]

    page.keyboard.press("Escape")

    expect_stopped_by_user(page, answer)
    assert ("stopping", "Stopping…") in [change[:2] for change in state_changes(page, "send-button")]
    fake_upstream.wait_closed(request)
    assert request.closed_early
