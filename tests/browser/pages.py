"""What a user does on the pages, and what the tests read back from them."""

import re
import subprocess

from playwright.sync_api import Locator, Page, expect

from tests.live import BIN, ROOT, LiveServer

ARTIFACTS = ROOT / "test-artifacts"
DEMO_USER = ("demo", "demo-password")  # what LiveServer's ensure_demo_user creates


def sign_in(page: Page, username: str = DEMO_USER[0], password: str = DEMO_USER[1]) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your projects")).to_be_visible()


def create_project(page: Page, name: str) -> int:
    """From the project list: a new project, whose chat page is then open and connected."""
    page.goto("/")
    page.get_by_label("Project name").fill(name)
    page.get_by_role("button", name="Create project").click()
    expect(page).to_have_url(re.compile(r"/projects/\d+/$"))
    expect(page.locator("#connection-banner")).to_have_attribute("data-state", "connected")
    return int(re.search(r"/projects/(\d+)/", page.url).group(1))


def send_prompt(page: Page, text: str) -> Locator:
    """Type and send a prompt; the new answer's bubble, once the server created it."""
    answers_before = page.locator("#messages article.message[data-role=assistant]").count()
    page.locator("#prompt").fill(text)
    page.locator("#send-button").click()
    answer = page.locator("#messages article.message[data-role=assistant]").nth(answers_before)
    expect(answer).to_have_attribute("data-message-id", re.compile(r"\d+"))
    return page.locator(f'#messages article[data-message-id="{answer.get_attribute("data-message-id")}"]')


def wait_for_text_growth(page: Page, bubble: Locator, beyond: int) -> int:
    """Wait until the bubble shows more than `beyond` characters; how many it shows then."""
    body = bubble.locator(".message-body").element_handle()
    page.wait_for_function("([body, n]) => body.textContent.length > n", arg=[body, beyond])
    return len(body.text_content())


def state_changes(page: Page, element_id: str) -> list[tuple[str, str, float]]:
    """Every (data-state, text, milliseconds since the page loaded) the element went
    through, as the page saw it; repeats folded."""
    changes = []
    for target, state, text, at in page.evaluate("window.__states"):
        if target == element_id and (not changes or changes[-1][:2] != (state, text)):
            changes.append((state, text, at))
    return changes


def expect_stopped_by_user(page: Page, bubble: Locator, marker: str = "[Response cancelled by user]") -> None:
    expect(bubble).to_have_attribute("data-status", "cancelled")
    expect(bubble.locator("p.marker")).to_have_text(marker)
    expect(page.locator("#send-button")).to_have_attribute("data-state", "send")
    expect(page.locator("#send-button")).to_have_text("Send")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / name)


def run_django(server: LiveServer, code: str) -> str:
    """Run Python against the server's database (manage.py shell); what it printed."""
    done = subprocess.run([str(BIN / "python"), "manage.py", "shell", "-c", code], cwd=ROOT, env=server.env,
                          check=True, capture_output=True, text=True)
    return done.stdout.strip()
