"""Browser tests: Debian's Chromium driven by Playwright against a real daphne process.

One daphne and one fake upstream serve every test here; each test gets a
fresh browser context (its own cookies), signs in and makes its own project,
so tests share no conversation. The upstream's default reply is what the
next prompt gets: tests set it right before they send.
"""

import os
import shutil

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.live import LiveServer, upstream_fixture
from tests.upstream import chat_reply

from .pages import ARTIFACTS
from .proxy import TcpProxy

CHROMIUM = next((path for path in ("/usr/bin/chromium", shutil.which("chromium")) if path and os.access(path, os.X_OK)), None)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
CALL_FAILED = pytest.StashKey[bool]()

# Headroom for a loaded machine; a passing run waits far less.
expect.set_options(timeout=10_000)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed


@pytest.fixture(autouse=True)
def no_leaks():
    """Replaces the suite's async leak check, which watches this process: streams run in daphne here.

    It also could not run: between calls, Playwright's sync API marks its own
    event loop as running in this thread, so no other loop may start while a
    browser is open. That is also why the browser lives only as long as this package.
    """
    yield


@pytest.fixture(scope="package")
def browser():
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (`make test` installs it with apt-get when run as root)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


fake_upstream = upstream_fixture("package")


@pytest.fixture(scope="package")
def chat_server(browser, tmp_path_factory, fake_upstream):
    # Asks for the browser first, so that without Chromium no daphne is started for nothing.
    server = LiveServer(tmp_path_factory.mktemp("browser-server"), {
        "LLM_PROVIDER": "openai", "LLM_BASE_URL": fake_upstream.base_url, "LLM_API_KEY": "browser-test",
        "LLM_MODEL": "fake-model", "STREAM_FLUSH_INTERVAL": "0.1",
        # Long enough for the reconnect test to resume; every other test ends its own streams.
        "STREAM_DISCONNECT_GRACE": "10",
    }).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def default_reply(fake_upstream):
    """A short answer unless the test asks for another, whatever the previous test left."""
    fake_upstream.set_default(chat_reply(["Hello", " from", " the", " fake", " model."]))


@pytest.fixture
def new_context(browser, chat_server, request):
    """Make browser contexts (own cookies) against the server, or `base_url`; on failure, keep screenshots."""
    contexts = []

    def make(base_url=None):
        context = browser.new_context(base_url=base_url or chat_server.url, viewport={"width": 1000, "height": 760})
        context.set_default_timeout(10_000)
        # Keeps every change of a `data-state` (Send button, connection banner), even those
        # too quick for a polling assertion to see.
        context.add_init_script("""
            window.__states = [];
            new MutationObserver((records) => {
              for (const r of records) {
                window.__states.push([r.target.id, r.target.dataset.state, r.target.textContent.trim(), performance.now()]);
              }
            }).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-state"] });
        """)
        contexts.append(context)
        return context

    yield make
    failed = request.node.stash.get(CALL_FAILED, False)
    for n, context in enumerate(contexts):
        if failed:
            ARTIFACTS.mkdir(exist_ok=True)
            for m, page in enumerate(context.pages):
                page.screenshot(path=ARTIFACTS / f"failed-{request.node.name}-{n}-{m}.png")
        context.close()
    if failed:
        print(chat_server.output())


@pytest.fixture
def page(new_context):
    return new_context().new_page()


@pytest.fixture
def proxy(chat_server):
    proxy = TcpProxy(chat_server.port).start()
    yield proxy
    proxy.stop()
