"""The pages work under the Content-Security-Policy: no violation on the chat page while an
answer streams, nor on the admin pages an operator uses."""

from playwright.sync_api import expect

from .pages import create_project, send_prompt, sign_in
from tests.upstream import chat_reply

RECORD_VIOLATIONS = """
    window.__violations = [];
    document.addEventListener("securitypolicyviolation",
        (e) => window.__violations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`));
"""


def test_the_chat_page_and_the_admin_raise_no_policy_violation(new_context, fake_upstream):
    context = new_context()
    context.add_init_script(RECORD_VIOLATIONS)
    page = context.new_page()
    console = []
    page.on("console", lambda message: console.append(message.text))
    seen = []

    def visit(path=None):
        if path:
            page.goto(path)
        seen.extend(page.evaluate("window.__violations"))

    sign_in(page)
    visit()
    create_project(page, "Under a policy")
    fake_upstream.set_default(chat_reply(["# Title\n\n", "Some **bold** text and `code`.\n\n", "- a\n- b"]))
    answer = send_prompt(page, "Show me markdown")
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator("h1")).to_have_text("Title")
    visit()
    answer_id = answer.get_attribute("data-message-id")
    for path in ("/admin/", "/admin/chat/message/", f"/admin/chat/message/{answer_id}/change/",
                 "/admin/chat/message/active/", "/admin/chat/project/", "/admin/auth/user/",
                 "/admin/auth/user/add/", "/admin/auth/user/1/change/", "/admin/chat/project/1/change/",
                 "/admin/chat/projectfile/add/"):
        visit(path)
    assert seen == [] and not [text for text in console if "Content Security Policy" in text], (seen, console)
