import asyncio

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chat.bus import bus
from chat import writer
from chat.models import Project
from streaming.providers import aclose_clients
from streaming.registry import registry
from tests.upstream import running_upstream

ORIGIN = "http://localhost"

# A test that starts a process (daphne, manage.py, a database, redis-server) or a browser is
# `slow`: every one under these folders, and any that asks for one of these fixtures.
# `make test-fast` (pytest -m "not slow") leaves them out.
SLOW_FOLDERS = ("browser", "faults", "multi")
PROCESS_FIXTURES = {"server", "live_servers", "production_server", "browser", "cluster", "one_worker", "own_redis",
                    "pg_database"}


def pytest_collection_modifyitems(items):
    for item in items:
        folder = item.path.parent.name
        if folder in SLOW_FOLDERS or PROCESS_FIXTURES.intersection(item.fixturenames):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def upstream():
    with running_upstream() as server:
        yield server


@pytest.fixture
def llm(settings, upstream):
    """The server talks to the fake OpenAI-compatible upstream, with quick limits."""
    settings.LLM_PROVIDER = "openai"
    settings.LLM_BASE_URL = upstream.base_url
    settings.LLM_API_KEY = "test-key"
    settings.LLM_MODEL = "fake-model"
    settings.LLM_CONNECT_TIMEOUT = 2
    settings.LLM_READ_TIMEOUT = 5
    settings.STREAM_FLUSH_INTERVAL = 0.1
    settings.STREAM_FRAME_INTERVAL = 0.0
    settings.STREAM_DISCONNECT_GRACE = 0
    settings.STREAM_SENDS_PER_MINUTE = 0  # tests send quickly; tests/test_limits.py checks the limit
    return upstream


@pytest.fixture(autouse=True)
async def no_leaks():
    """Every test leaves no stream running and no upstream client behind."""
    yield
    for _ in range(200):
        if registry.active_count() == 0:
            break
        await asyncio.sleep(0.01)
    leaked = registry.stats()
    for stats in leaked:
        registry.stop(stats["message_id"], "shutdown")
    await bus.stop()
    await writer.close()
    await aclose_clients()
    assert leaked == [], f"streams left running: {leaked}"


@pytest.fixture
def user(django_user_model):
    return django_user_model.objects.create_user("alice", password="pw-alice-123")


@pytest.fixture
def other_user(django_user_model):
    return django_user_model.objects.create_user("mallory", password="pw-mallory-123")


@pytest.fixture
def project(user):
    return Project.objects.create(owner=user, name="Alice's project")


def session_cookies(user) -> dict:
    client = Client()
    client.force_login(user)
    return {"sessionid": client.cookies["sessionid"].value, "csrftoken": "x" * 32}


def cookie_header(cookies: dict) -> bytes:
    return "; ".join(f"{k}={v}" for k, v in cookies.items()).encode()


@pytest.fixture
async def connect():
    """Open chat sockets through the full ASGI stack (auth, origin check, routing)."""
    from chatproj.asgi import application

    opened = []

    async def open_socket(project, user=None, origin=ORIGIN, host="localhost"):
        headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin else [])
        if user is not None:
            headers.append((b"cookie", cookie_header(await database_sync_to_async(session_cookies)(user))))
        communicator = WebsocketCommunicator(application, f"/ws/projects/{project.pk}/chat/", headers=headers)
        communicator.accepted, _ = await communicator.connect()
        if communicator.accepted:
            opened.append(communicator)
        return communicator

    yield open_socket
    for communicator in opened:
        try:
            await communicator.disconnect()
        except (Exception, asyncio.CancelledError):  # already closed, or its test let it fail
            pass


@pytest.fixture
async def api(user):
    """An HTTP client signed in as `user`, through the ASGI app, with CSRF satisfied."""
    from chatproj.asgi import application

    cookies = await database_sync_to_async(session_cookies)(user)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url=ORIGIN,
        cookies=cookies, headers={"X-CSRFToken": cookies["csrftoken"], "Referer": ORIGIN + "/"},
    ) as client:
        yield client


@pytest.fixture(autouse=True)
def fast_password_hasher(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
