"""A real daphne process for end-to-end tests, with a signed-in HTTP and websocket client,
and the module fixtures that share them (and a fake upstream) between the tests of a module."""

import asyncio
import json
import os
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets

from harness.processes import BIN, LOG_TAIL, free_port, log_tail, start_server, stop_server
from tests.upstream import running_upstream

ROOT = Path(__file__).resolve().parent.parent


def manage(env: dict, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `manage.py` in a process of its own, with `env` as its whole environment."""
    return subprocess.run([str(BIN / "python"), "manage.py", *args], cwd=ROOT, env=env, check=check,
                          capture_output=True, text=True, timeout=timeout)


class LiveServer:
    """`daphne chatproj.asgi:application` on its own SQLite file, as `make run` serves it
    (or the same application under uvicorn: `kind`)."""

    def __init__(self, workdir: Path, env: dict, kind: str = "daphne"):
        self.kind = kind
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        self.env = {
            **inherited,
            "DATABASE_URL": f"sqlite:///{workdir / 'live.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "chatproj.settings",
            "DEBUG": "1",
            "STREAM_SENDS_PER_MINUTE": "0",  # tests send quickly; tests/test_limits.py checks the limit
            **env,
        }
        self.log = open(workdir / f"{kind}-{self.port}.log", "w")
        self.process = None

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return manage(self.env, *args, check=check)

    def start(self, prepare: bool = True) -> "LiveServer":
        if prepare:
            self.manage("migrate", "--no-input")
            self.manage("ensure_demo_user", "--username", "demo", "--password", "demo-password")
        self.process = start_server("chatproj.asgi:application", self.port, self.env, ROOT, self.log, timeout=20,
                                    kind=self.kind)
        return self

    def stop(self) -> None:
        if self.process:
            stop_server(self.process, 15)
        self.log.close()

    def output(self, chars: int = LOG_TAIL) -> str:
        """The end of the server's log."""
        self.log.flush()
        return log_tail(self.log.name, chars)


def sign_in(server: LiveServer, username="demo", password="demo-password") -> httpx.Client:
    """Signs in through the real login form; the client carries the session and CSRF cookies."""
    client = httpx.Client(base_url=server.url, timeout=10)
    page = client.get("/accounts/login/")
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
    response = client.post("/accounts/login/", data={
        "username": username, "password": password, "csrfmiddlewaretoken": token,
    }, headers={"Referer": f"{server.url}/accounts/login/"})
    assert response.status_code == 302, response.text[:500]
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    client.headers["Referer"] = f"{server.url}/"
    return client


def project_of(client: httpx.Client) -> int:
    """The first project of a signed-in user (`ensure_demo_user` makes one with each user)."""
    return client.get("/api/projects/").json()["results"][0]["id"]


def open_socket(server: LiveServer, project_id: int, client: httpx.Client | None = None, origin: str | None = None):
    headers = {"Origin": origin or server.url}
    if client is not None:
        headers["Cookie"] = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
    return websockets.connect(
        f"ws://127.0.0.1:{server.port}/ws/projects/{project_id}/chat/", additional_headers=headers
    )


async def next_frame(ws, timeout: float = 5.0) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def frames_until(ws, *types: str, timeout: float = 5.0) -> list[dict]:
    """Frames from a real socket up to and including the first of `types`."""
    frames = []
    while not frames or frames[-1]["type"] not in types:
        frames.append(await next_frame(ws, timeout))
    return frames


async def send_frame(ws, **frame) -> None:
    await ws.send(json.dumps(frame))


# -- fixtures ---------------------------------------------------------------------------------
# A test module that defines a `server` fixture imports `client` and `project_id` from here;
# a module or conftest makes its fake upstream with `upstream_fixture`.

@pytest.fixture(scope="module")
def client(server):
    """`demo`, signed in to the module's `server` once for all its tests."""
    signed_in = sign_in(server)
    yield signed_in
    signed_in.close()


@pytest.fixture(scope="module")
def project_id(client):
    return project_of(client)


def upstream_fixture(scope: str = "module"):
    """A fixture that runs one fake upstream (tests/upstream.py) for a whole `scope`, so the daphne
    processes started once for that scope can be pointed at it; it takes the name it is assigned to."""
    @pytest.fixture(scope=scope)
    def fake_upstream():
        with running_upstream() as upstream:
            yield upstream

    return fake_upstream
