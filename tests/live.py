"""A real daphne process for end-to-end tests, with a signed-in HTTP and websocket client."""

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


class LiveServer:
    """`daphne chatproj.asgi:application` on its own SQLite file, as `make run` serves it."""

    def __init__(self, workdir: Path, env: dict):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{workdir / 'live.sqlite3'}",
            "DJANGO_SETTINGS_MODULE": "chatproj.settings",
            "DEBUG": "1",
            **env,
        }
        self.env.pop("REDIS_URL", None)
        self.log = open(workdir / "daphne.log", "w+")
        self.process = None

    def manage(self, *args: str) -> None:
        subprocess.run([str(BIN / "python"), "manage.py", *args], cwd=ROOT, env=self.env, check=True,
                       stdout=subprocess.DEVNULL)

    def start(self) -> "LiveServer":
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
            self.process.wait(10)
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
