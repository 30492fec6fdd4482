"""After a stop, the next step, in Chromium: Continue, Regenerate with its versions, Edit and
resend, Copy; the model's name, the tokens an answer cost, the Esc hint, the projects beside
the chat, and dark mode."""

import re

from playwright.sync_api import expect

from tests.upstream import chat_reply, endless_reply, error_reply

from .pages import (
    create_project, expect_stopped_by_user, run_django, screenshot, send_prompt, sign_in, wait_for_text_growth,
)

CODE_ANSWER = ["Here is how:\n\n", "```python\n", "def stop(stream):\n", "    stream.cancel()\n", "```\n", "\nDone."]


def stop_now(page, bubble, beyond=20):
    wait_for_text_growth(page, bubble, beyond)
    page.locator("#send-button").click()
    expect_stopped_by_user(page, bubble)


def test_stop_continue_the_answer_grows_then_stop_again(page, fake_upstream):
    sign_in(page)
    create_project(page, "Continue after a stop")
    fake_upstream.set_default(endless_reply(delay=0.03, word="first"))
    bubble = send_prompt(page, "Tell me a long story")
    expect(page.locator("#esc-hint")).to_be_visible()
    stop_now(page, bubble)
    expect(page.locator("#esc-hint")).to_be_hidden()
    before = len(bubble.locator(".message-body").inner_text())

    fake_upstream.set_default(endless_reply(delay=0.03, word="more"))
    bubble.get_by_role("button", name="Continue").click()
    expect(bubble).to_have_attribute("data-status", "streaming")
    expect(bubble.locator("p.marker")).to_have_count(0)  # the marker leaves while it goes on
    grown = wait_for_text_growth(page, bubble, before + 20)
    assert bubble.locator(".message-body").inner_text().startswith(
        bubble.locator(".message-body").inner_text()[:before])
    expect(bubble.locator(".message-body")).to_contain_text("more1")
    assert page.locator("#messages article[data-role=assistant]").count() == 1  # the same bubble
    page.keyboard.press("Escape")
    expect_stopped_by_user(page, bubble)
    assert len(bubble.locator(".message-body").inner_text()) >= grown
    expect(bubble.get_by_role("button", name="Continue")).to_be_visible()


def test_regenerate_shows_two_versions_and_switches_back(page, fake_upstream):
    sign_in(page)
    create_project(page, "Versions")
    fake_upstream.set_default(chat_reply(["The first", " answer."], delay=0.02))
    first = send_prompt(page, "Say something")
    expect(first).to_have_attribute("data-status", "complete")
    expect(first.locator(".answer-model")).to_have_text("openai · fake-model")

    fake_upstream.set_default(chat_reply(["The second", " answer."], delay=0.02))
    first.get_by_role("button", name="Regenerate").click()
    second = page.locator("#messages article[data-role=assistant]:not([hidden])")
    expect(second.locator(".message-body")).to_have_text("The second answer.")
    expect(second.locator(".version-label")).to_have_text("2 / 2")
    expect(first).to_be_hidden()

    second.get_by_role("button", name="Previous version").click()
    expect(first).to_be_visible()
    expect(first.locator(".version-label")).to_have_text("1 / 2")
    expect(first.locator(".message-body")).to_have_text("The first answer.")
    page.reload()  # the version shown is kept: later prompts see it too
    expect(page.locator("#messages article[data-role=assistant]:not([hidden]) .message-body")).to_have_text(
        "The first answer.")


def test_retry_after_an_error_answers_the_same_prompt_in_place(page, fake_upstream):
    sign_in(page)
    create_project(page, "Retry")
    fake_upstream.set_default(error_reply(503, {"error": {"message": "overloaded"}}))
    failed = send_prompt(page, "Try this")
    expect(failed).to_have_attribute("data-status", "error")

    fake_upstream.set_default(chat_reply(["It worked", " this time."], delay=0.02))
    failed.get_by_role("button", name="Retry").click()
    shown = page.locator("#messages article[data-role=assistant]:not([hidden])")
    expect(shown.locator(".message-body")).to_have_text("It worked this time.")
    expect(shown.locator(".version-label")).to_have_text("2 / 2")  # the failed one is kept, as a version
    expect(page.locator("#messages article[data-role=user]")).to_have_count(1)  # no second prompt
    expect(failed).to_be_hidden()


def test_edit_and_resend_replaces_the_exchange_and_what_follows(page, fake_upstream):
    sign_in(page)
    create_project(page, "Edits")
    fake_upstream.set_default(chat_reply(["Answer one."]))
    expect(send_prompt(page, "First question")).to_have_attribute("data-status", "complete")
    fake_upstream.set_default(chat_reply(["Answer two."]))
    expect(send_prompt(page, "Second question")).to_have_attribute("data-status", "complete")

    page.locator("#messages article[data-role=user]").first.get_by_role("button", name="Edit").click()
    expect(page.locator("#prompt")).to_have_value("First question")
    expect(page.locator("#edit-note")).to_be_visible()
    page.locator("#prompt").fill("First question, better put")
    fake_upstream.set_default(chat_reply(["A better answer."]))
    page.locator("#send-button").click()
    users = page.locator("#messages article[data-role=user] .message-body")
    expect(users).to_have_text(["First question, better put"])
    expect(page.locator("#messages article[data-role=assistant] .message-body")).to_have_text(["A better answer."])
    expect(page.locator("#edit-note")).to_be_hidden()
    page.reload()
    expect(page.locator("#messages article[data-role=user] .message-body")).to_have_text(["First question, better put"])


def test_copy_puts_the_answer_and_a_code_block_on_the_clipboard(new_context, fake_upstream):
    context = new_context()
    context.grant_permissions(["clipboard-read", "clipboard-write"])
    page = context.new_page()
    sign_in(page)
    create_project(page, "Copying")
    fake_upstream.set_default(chat_reply(CODE_ANSWER))
    answer = send_prompt(page, "Show me code")
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator("pre code.hljs .hljs-keyword").first).to_have_text("def")  # highlighted

    answer.locator(".message-actions").get_by_role("button", name="Copy").click()
    expect(answer.locator(".message-actions").get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == "".join(CODE_ANSWER)  # raw markdown, no marker
    answer.locator("pre").get_by_role("button", name="Copy code").click()
    assert page.evaluate("navigator.clipboard.readText()") == "def stop(stream):\n    stream.cancel()\n"


def test_a_stopped_answer_shows_what_it_cost_as_an_estimate(page, fake_upstream):
    sign_in(page)
    create_project(page, "Costs")
    fake_upstream.set_default(endless_reply(delay=0.03))
    bubble = send_prompt(page, "Count me")
    stop_now(page, bubble)
    usage = bubble.locator(".usage")
    expect(usage).to_have_text(re.compile(r"^≈ \d+ \+ \d+ tokens$"))
    assert "estimated" in usage.get_attribute("title")


def test_the_projects_are_listed_beside_the_chat_with_a_new_one_a_click_away(page):
    sign_in(page)
    first = create_project(page, "Alpha project")
    create_project(page, "Beta project")
    sidebar = page.get_by_role("navigation", name="Your projects")
    expect(sidebar.get_by_role("link", name="Beta project")).to_have_attribute("aria-current", "page")
    sidebar.get_by_role("link", name="Alpha project").click()
    expect(page).to_have_url(re.compile(rf"/projects/{first}/$"))
    page.get_by_role("navigation", name="Your projects").get_by_role("button", name="New").click()
    expect(page.get_by_role("heading", name="New project")).to_be_visible()


def test_screenshots_in_light_and_dark_mode(new_context, fake_upstream, chat_server):
    run_django(chat_server, "from chat import services; services.user_ensure(username='reader', "
                            "password='reader-password', staff=False)")
    for scheme in ("light", "dark"):
        context = new_context()
        page = context.new_page()
        page.emulate_media(color_scheme=scheme)
        sign_in(page, "reader", "reader-password")
        create_project(page, "Stopping streams")
        fake_upstream.set_default(chat_reply(CODE_ANSWER, delay=0.01))
        expect(send_prompt(page, "How do I stop a stream?")).to_have_attribute("data-status", "complete")
        fake_upstream.set_default(endless_reply(delay=0.03))
        stop_now(page, send_prompt(page, "And explain it at length"), beyond=120)
        expect(page.locator("#connection-banner")).to_be_hidden()
        background = page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
        assert (background == "rgb(17, 20, 24)") == (scheme == "dark"), background
        screenshot(page, f"chat-{scheme}.png")
