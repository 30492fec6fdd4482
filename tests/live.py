"""A real daphne process for end-to-end tests, with a signed-in HTTP and websocket client."""

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def manage(env: dict, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs `manage.py` in a process of its own, with `env` as its whole environment."""
    return subprocess.run([str(BIN / "python"), "manage.py", *args], cwd=ROOT, env=env, check=check,
                          capture_output=True, text=True, timeout=timeout)


class LiveServer:
    """`daphne chatproj.asgi:application` on its own SQLite file, as `make run` serves it."""

    def __init__(self, workdir: Path, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        inherited = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
        self.env = {
            **inherited,
            "DATABASE_URL": f"sqlite:///{workdir / 'live.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "chatproj.settings",
            "DEBUG": "1",
            **env,
        }
        self.log = open(workdir / f"daphne-{self.port}.log", "w+")
        self.process = None

    def manage(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return manage(self.env, *args, check=check)

    def start(self, prepare: bool = True) -> "LiveServer":
        if prepare:
            self.manage("migrate", "--no-input")
            self.manage("ensure_demo_user", "--username", "demo", "--password", "demo-password")
        self.process = subprocess.Popen(
            [str(BIN / "daphne"), "-b", "127.0.0.1", "-p", str(self.port), "chatproj.asgi:application"],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError(f"daphne did not start: {self.output()}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]


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


def open_socket(server: LiveServer, project_id: int, client: httpx.Client | None = None):
    headers = {"Origin": server.url}
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
