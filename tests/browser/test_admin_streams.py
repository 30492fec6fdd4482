"""An operator stops a user's answer from the admin, and finds it afterwards with its reason and partial."""

import re

from playwright.sync_api import expect

from tests.upstream import endless_reply

from .pages import create_project, expect_stopped_by_user, screenshot, send_prompt, sign_in, wait_for_text_growth


def test_an_operator_stops_a_stream_from_the_active_streams_page(new_context, fake_upstream):
    context = new_context()
    chat = context.new_page()
    sign_in(chat)  # the demo user is staff, so one sign-in serves both pages
    project_id = create_project(chat, "Watched by an operator")
    fake_upstream.set_default(endless_reply(delay=0.02))
    answer = send_prompt(chat, "Go on until somebody stops you")
    wait_for_text_growth(chat, answer, 0)
    message_id = answer.get_attribute("data-message-id")

    admin = context.new_page()
    admin.set_viewport_size({"width": 1400, "height": 800})  # an operator's desktop, for the wide tables
    admin.goto("/admin/")
    admin.get_by_role("link", name="Active streams").click()
    row = admin.locator(f'#active-streams tr[data-message-id="{message_id}"]')
    expect(row).to_contain_text("Watched by an operator")
    expect(row.locator("td.field-status")).to_have_text("streaming")
    screenshot(admin, "admin-active-streams.png")
    row.get_by_role("button", name="Stop").click()

    expect(admin.locator(".messagelist")).to_contain_text(f"Stopped message {message_id}.")
    expect(row).to_have_count(0)
    expect_stopped_by_user(chat, answer, marker="[Response stopped by an operator]")
    partial = answer.locator(".message-body").inner_text()

    admin.get_by_role("link", name="Messages").first.click()
    admin.locator("#changelist-filter").get_by_role("link", name="Cancelled").click()
    expect(admin).to_have_url(re.compile(r"status__exact=cancelled"))
    listed = admin.locator("#result_list tbody tr").filter(has=admin.get_by_role("link", name=message_id, exact=True))
    expect(listed.locator("td.field-cancel_reason")).to_have_text("Admin")
    expect(listed.locator("td.field-marker")).to_have_text("[Response stopped by an operator]")
    expect(listed.locator("td.field-preview")).to_contain_text(partial[:40])
    screenshot(admin, "admin-cancelled-messages.png")

    admin.goto(f"/admin/chat/project/{project_id}/change/")
    inline = admin.locator(".inline-group tbody tr").filter(has_text="cancelled")
    expect(inline.locator("td.field-marker")).to_have_text("[Response stopped by an operator]")
