"""Helpers of the fault suite: live servers from a prepared database, a socket reader
that keeps every frame with its arrival time, a raw websocket that never reads, an
upstream that can refuse connections, and the process's resident memory."""

import asyncio
import base64
import contextlib
import json
import os
import shutil
import socket
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import websockets

from tests.helpers import TERMINAL, wait_for
from tests.live import LiveServer, manage, project_of, sign_in  # noqa: F401 (project_of, for the fault tests)
from tests.upstream import FakeUpstream

OTHER_USER = ("mallory", "pw-mallory-123")


# -- servers ------------------------------------------------------------------------------

# Without DEBUG (as in production) the pages need collected static files, so a test signs in
# with a session made in advance; it is valid on every server that shares this key.
PRODUCTION = {"DEBUG": "0", "SECRET_KEY": "fault-suite-" + "k" * 50, "ALLOWED_HOSTS": "127.0.0.1,localhost"}
MAKE_SESSION = ("from django.test import Client; from django.contrib.auth import get_user_model; c = Client();"
                " c.force_login(get_user_model().objects.get(username='demo')); print(c.cookies['sessionid'].value)")


@dataclass(frozen=True)
class Template:
    database: Path
    demo_session: str  # a session of the staff user `demo`, for servers run with PRODUCTION settings


def prepare_database(workdir: Path) -> Template:
    """Migrates a SQLite database once and adds the staff user `demo` and a second user;
    every live server of the suite starts from a copy (migrating costs seconds)."""
    server = LiveServer(workdir, {})
    server.manage("migrate", "--no-input")
    server.manage("ensure_demo_user", "--username", "demo", "--password", "demo-password")
    server.manage("ensure_demo_user", "--username", OTHER_USER[0], "--password", OTHER_USER[1])
    session = manage({**server.env, **PRODUCTION}, "shell", "-c", MAKE_SESSION).stdout.split()[-1]
    server.log.close()
    database = workdir / "live.sqlite3"
    with contextlib.closing(sqlite3.connect(database)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the file itself, for copying
    return Template(database, session)


def start_live_server(workdir: Path, template: Template, env: dict, kind: str = "daphne") -> LiveServer:
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(template.database, workdir / "live.sqlite3")
    return LiveServer(workdir, {k: str(v) for k, v in env.items()}, kind=kind).start(prepare=False)


def session_client(server: LiveServer, session: str) -> httpx.Client:
    """A client of `demo` on a server without DEBUG (no CSRF: for reads and the socket)."""
    return httpx.Client(base_url=server.url, cookies={"sessionid": session}, timeout=10)


def sqlite_rows(server: LiveServer, query: str, *params) -> list[tuple]:
    """Reads the server's own SQLite database (WAL mode: readers never block it)."""
    path = server.env["DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10) as conn:
        return conn.execute(query, params).fetchall()


def sqlite_row(server: LiveServer, message_id: int) -> dict:
    [row] = sqlite_rows(server, "select status, cancel_reason, error_type, error_detail, content, chunk_count,"
                                " cancel_requested_at, finished_at from chat_message where id = ?", message_id)
    keys = ("status", "cancel_reason", "error_type", "error_detail", "content", "chunk_count",
            "cancel_requested_at", "finished_at")
    return dict(zip(keys, row))


def active_streams(client: httpx.Client) -> int:
    """`GET /api/streams/` as staff: the streams the server process has in its registry."""
    response = client.get("/api/streams/")
    assert response.status_code == 200, response.text
    return response.json()["count"]


async def assert_no_streams_left(client: httpx.Client, timeout: float = 5.0) -> None:
    await wait_for(lambda: active_streams(client) == 0, timeout, "the registry to be empty", 0.05, in_thread=True)


def async_client(server: LiveServer, signed_in: httpx.Client) -> httpx.AsyncClient:
    """An async HTTP client with the session, CSRF cookie and header of `signed_in`."""
    return httpx.AsyncClient(base_url=server.url, cookies=dict(signed_in.cookies.items()),
                             headers=dict(signed_in.headers), timeout=20)


def sign_in_other(server: LiveServer) -> httpx.Client:
    return sign_in(server, *OTHER_USER)


# -- sockets ---------------------------------------------------------------------------------

class SocketReader:
    """Reads every frame of a real socket in the background, with its arrival time."""

    def __init__(self, ws):
        self.ws = ws
        self.frames: list[tuple[float, dict]] = []
        self.closed: websockets.ConnectionClosed | None = None
        self.closed_at: float | None = None
        self._changed = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def open(cls, stack, server: LiveServer, project_id: int, client: httpx.Client,
                   max_size: int | None = 1 << 20) -> "SocketReader":
        """Opens a socket within `stack` (an AsyncExitStack) and starts reading it; frames
        over `max_size` bytes make the client close it with 1009 (None: no limit)."""
        headers = {"Origin": server.url,
                   "Cookie": "; ".join(f"{name}={value}" for name, value in client.cookies.items())}
        connection = websockets.connect(f"ws://127.0.0.1:{server.port}/ws/projects/{project_id}/chat/",
                                        additional_headers=headers, max_size=max_size)
        reader = cls(await stack.enter_async_context(connection))
        stack.push_async_callback(reader.stop)
        return reader

    async def _read(self):
        try:
            while True:
                text = await self.ws.recv()
                self.frames.append((time.monotonic(), json.loads(text)))
                self._changed.set()
        except websockets.ConnectionClosed as closed:
            self.closed, self.closed_at = closed, time.monotonic()
            self._changed.set()

    async def stop(self):
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def send(self, **frame) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait(self, predicate, timeout: float = 5.0, what: str = ""):
        """Until `predicate()` holds (it is checked after each frame); its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            remaining = deadline - time.monotonic()
            if self.closed is not None:
                raise AssertionError(f"socket closed ({self.closed!r}) waiting for {what or predicate}")
            if remaining <= 0:
                raise AssertionError(f"not within {timeout}s: {what or predicate}; last frames {self.types()[-8:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass

    async def wait_closed(self, timeout: float = 5.0) -> websockets.ConnectionClosed:
        await asyncio.wait_for(asyncio.shield(self._task), timeout)
        return self.closed

    def types(self) -> list[str]:
        return [f["type"] for _, f in self.frames]

    def of(self, message_id: int) -> list[dict]:
        return [f for _, f in self.frames if f.get("message_id") == message_id]

    def chunks(self, message_id: int) -> list[tuple[float, dict]]:
        return [(t, f) for t, f in self.frames if f["type"] == "message_chunk" and f["message_id"] == message_id]

    def text(self, message_id: int) -> str:
        return "".join(f["delta"] for _, f in self.chunks(message_id))

    def seqs(self, message_id: int) -> list[int]:
        return [f["seq"] for _, f in self.chunks(message_id)]

    def terminals(self, message_id: int) -> list[dict]:
        return [f for f in self.of(message_id) if f["type"] in TERMINAL]

    def errors(self, code: str | None = None) -> list[dict]:
        return [f for _, f in self.frames if f["type"] == "error" and (code is None or f["code"] == code)]

    async def terminal(self, message_id: int, timeout: float = 10.0) -> dict:
        found = await self.wait(lambda: self.terminals(message_id), timeout, f"the end of message {message_id}")
        return found[0]

    async def chunk_count_at_least(self, message_id: int, n: int, timeout: float = 5.0) -> None:
        await self.wait(lambda: len(self.chunks(message_id)) >= n, timeout, f"{n} chunks of message {message_id}")

    async def prompt(self, content: str = "hello", timeout: float = 5.0) -> int:
        """Sends a prompt; the id of its answer (matched by client_id)."""
        client_id = f"c{time.monotonic_ns()}"
        start = len(self.frames)
        await self.send(type="send", content=content, client_id=client_id)

        def created():
            for _, f in self.frames[start:]:
                if f["type"] == "message_created" and f["client_id"] == client_id:
                    return f["assistant_message"]["id"]
                assert f["type"] != "error" or "message_id" in f, f"the prompt was refused: {f}"
            return None

        return await self.wait(created, timeout, f"message_created for {client_id}")

    async def ping(self, timeout: float = 5.0) -> float:
        """Round trip of a ping, in seconds."""
        count = self.types().count("pong")
        sent = time.monotonic()
        await self.send(type="ping")
        await self.wait(lambda: self.types().count("pong") > count, timeout, "pong")
        return time.monotonic() - sent


async def start_answer(reader: SocketReader, upstream: FakeUpstream, *replies, content: str = "hello") -> int:
    """Sends a prompt answered by `replies[0]` (none: the upstream's default or a refusal) and
    returns its answer id once the upstream has its request (when one is expected)."""
    seen = len(upstream.requests)
    upstream.enqueue(*replies)
    answer_id = await reader.prompt(content)
    if replies:
        await asyncio.to_thread(upstream.wait_for_requests, seen + 1)
    return answer_id


def max_gap(times: list[float]) -> float:
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


class RawWebSocket:
    """A websocket client on a plain TCP socket: it completes the handshake, can send text
    frames, and reads nothing unless told to. Its receive buffer is made small, so what the
    server writes to it piles up in the server, not in this kernel."""

    def __init__(self, server: LiveServer, project_id: int, client: httpx.Client, receive_buffer: int = 4096):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        cookies = "; ".join(f"{name}={value}" for name, value in client.cookies.items())
        self.sock.sendall((
            f"GET /ws/projects/{project_id}/chat/ HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {server.url}\r\nCookie: {cookies}\r\n\r\n"
        ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(1)  # byte by byte: nothing past the handshake is read
            assert data, "the server closed the socket during the handshake"
            head += data
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = bytes([0x81, 0x80 | n])
        elif n < 1 << 16:
            header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
        else:
            header = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def abort(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# -- the upstream ---------------------------------------------------------------------------------

class GatedUpstream(FakeUpstream):
    """The fake upstream, plus a listening socket that can be closed and reopened on the
    same port: connections opened before keep going, new ones are refused."""

    def _call(self, fn):
        async def run():
            return fn()
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(5)

    def drop_connections(self) -> None:
        """Closes every connection (the server's idle pooled ones too)."""
        def drop():
            for conn in list(self._connections):
                conn.close()
        self._call(drop)

    def refuse(self) -> None:
        self._call(self._server.close)

    def accept(self) -> None:
        port = int(self.base_url.rsplit(":", 1)[1].split("/")[0])

        async def listen():
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", port, reuse_address=True)
        asyncio.run_coroutine_threadsafe(listen(), self._loop).result(5)


# -- memory ---------------------------------------------------------------------------------------

def _status_bytes(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for process {pid}")


def rss_bytes(pid: int) -> int:
    return _status_bytes(pid, "VmRSS")


class RssSampler:
    """The peak resident memory of a process over a block: its VmHWM, reset at the start
    through /proc/<pid>/clear_refs (exact, so no sampling can miss a short peak), and
    samples of VmRSS where that reset is not allowed."""

    def __init__(self, pid: int, interval: float = 0.02):
        self.pid, self.interval = pid, interval
        self.exact = False
        self.baseline = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as clear_refs:
                clear_refs.write("5")  # resets the peak to the current resident size
            self.exact = True
        except OSError:
            pass
        self.baseline = self.peak = rss_bytes(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sample()

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self):
        try:
            self.peak = max(self.peak, _status_bytes(self.pid, "VmHWM" if self.exact else "VmRSS"))
        except (OSError, AssertionError):  # the process is gone
            pass

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


MB = 1 << 20
