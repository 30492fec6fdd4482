"""A scriptable fake OpenAI/Anthropic server over real TCP, for tests.

It runs its own event loop in a background thread, so the client under test
may live in the test's loop or in another process (daphne). Replies are
sent with chunked transfer encoding on keep-alive connections, like the real
APIs; a connection that finished its reply stays open in the client's pool.
Every request is recorded along with whether (and when) the client hung up
before the reply was complete.

The wait_* methods block the calling thread: from a test whose event loop
also runs the client, call them through `await asyncio.to_thread(...)`.
"""

import asyncio
import itertools
import json
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# One piece of a scripted body: (seconds to wait first, bytes, is a content event).
Piece = tuple[float, bytes, bool]


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    # A factory, so one Reply (the default) can serve many requests, endlessly if need be.
    body: Callable[[], Iterable[Piece]] = lambda: ()
    end: str = "finish"  # finish | stall (wait for the client to hang up) | reset (TCP RST)


@dataclass
class RecordedRequest:
    path: str
    headers: dict
    json: dict | None
    received_at: float
    chunks_sent: int = 0
    finished: bool = False
    closed_early: bool = False
    closed_at: float | None = None


def _sse(payload: object, event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"{head}data: {data}\n\n".encode()


def _chat_chunk(delta: dict, finish_reason: str | None = None) -> bytes:
    return _sse({
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    })


def _chat_pieces(chunks: list[str], delay: float, first_delay: float, done: bool,
                 usage: dict | None = None) -> Iterator[Piece]:
    # Like the real API: a role-only first delta, content, an empty final delta, and (when the
    # request asked for stream_options.include_usage) a last chunk with no choices but the usage.
    yield 0.0, _chat_chunk({"role": "assistant", "content": ""}), False
    for i, chunk in enumerate(chunks):
        yield (first_delay if i == 0 else delay), _chat_chunk({"content": chunk}), True
    yield 0.0, _chat_chunk({}, "stop"), False
    if usage is not None:
        yield 0.0, _sse({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "choices": [], "usage": usage}), False
    if done:
        yield 0.0, _sse("[DONE]"), False


def _content_pieces(chunks: list[str], delay: float = 0.0) -> Iterator[Piece]:
    return (piece for piece in _chat_pieces(chunks, delay, 0.0, False) if piece[2])


def _sse_reply(body: Callable[[], Iterable[Piece]], end: str = "finish") -> Reply:
    return Reply(headers={"content-type": "text/event-stream"}, body=body, end=end)


def chat_reply(chunks: list[str], delay: float = 0.0, first_delay: float = 0.0, done: bool = True,
               usage: dict | None = None) -> Reply:
    return _sse_reply(lambda: _chat_pieces(chunks, delay, first_delay, done, usage))


def endless_reply(delay: float = 0.01, word: str = "tok") -> Reply:
    def pieces() -> Iterator[Piece]:
        for i in itertools.count(1):
            yield (delay if i > 1 else 0.0), _chat_chunk({"content": f"{word}{i} "}), True

    return _sse_reply(pieces)


def stall_reply(chunks: list[str], then_stall: bool = True, delay: float = 0.0) -> Reply:
    """Send `chunks` (`delay` apart), then go silent until the client hangs up (or finish normally)."""
    if not then_stall:
        return chat_reply(chunks, delay=delay)
    return _sse_reply(lambda: _content_pieces(chunks, delay), end="stall")


def reset_reply(chunks: list[str]) -> Reply:
    """Send `chunks`, then abort the connection with a TCP RST."""
    return _sse_reply(lambda: _content_pieces(chunks), end="reset")


def error_reply(status: int, body: dict | str, headers: dict | None = None) -> Reply:
    if isinstance(body, str):
        content_type, raw = "text/plain; charset=utf-8", body.encode()
    else:
        content_type, raw = "application/json", json.dumps(body).encode()
    return Reply(
        status=status,
        headers={"content-type": content_type, **(headers or {})},
        body=lambda: [(0.0, raw, False)],
    )


def raw_reply(body_lines: list[str], content_type: str = "text/event-stream", delay: float = 0.0) -> Reply:
    """Each line is sent as given plus "\\n"; data lines count as content events."""
    def pieces() -> Iterator[Piece]:
        for i, line in enumerate(body_lines):
            yield (delay if i else 0.0), f"{line}\n".encode(), line.startswith("data:")

    return Reply(headers={"content-type": content_type}, body=pieces)


def anthropic_reply(chunks: list[str], delay: float = 0.0, input_tokens: int = 1) -> Reply:
    def pieces() -> Iterator[Piece]:
        message = {"id": "msg_fake", "type": "message", "role": "assistant", "content": [],
                   "model": "fake", "stop_reason": None, "usage": {"input_tokens": input_tokens, "output_tokens": 1}}
        yield 0.0, _sse({"type": "message_start", "message": message}, "message_start"), False
        block = {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        yield 0.0, _sse(block, "content_block_start"), False
        yield 0.0, _sse({"type": "ping"}, "ping"), False
        for i, chunk in enumerate(chunks):
            delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": chunk}}
            yield (delay if i else 0.0), _sse(delta, "content_block_delta"), True
        yield 0.0, _sse({"type": "content_block_stop", "index": 0}, "content_block_stop"), False
        stop = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": len(chunks)}}
        yield 0.0, _sse(stop, "message_delta"), False
        yield 0.0, _sse({"type": "message_stop"}, "message_stop"), False

    return _sse_reply(pieces)


def huge_event_reply(size_bytes: int) -> Reply:
    """One `data:` line of exactly `size_bytes` bytes (newline excluded), valid JSON."""
    def pieces() -> Iterator[Piece]:
        head, tail = 'data: {"choices":[{"index":0,"delta":{"content":"', '"}}]}'
        padding = "x" * max(0, size_bytes - len(head) - len(tail))
        yield 0.0, f"{head}{padding}{tail}\n\n".encode(), True
        yield 0.0, _sse("[DONE]"), False

    return _sse_reply(pieces)


class _Connection:
    """One client connection: a pump reads ahead so a hang-up is seen at once."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.inbox = bytearray()
        self.arrived = asyncio.Event()
        self.hung_up = asyncio.Event()  # the connection is gone; wakes every wait
        self.hung_up_at: float | None = None  # set only when the client was the one to go
        self.closing = False  # we are closing it ourselves (reset, stop)
        self.records: list[RecordedRequest] = []
        self.handler = asyncio.current_task()
        self.pump = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while data := await self.reader.read(65536):
                self.inbox += data
                self.arrived.set()
        except OSError:
            pass
        if not self.closing:
            self.hung_up_at = time.monotonic()
        self.hung_up.set()
        self.arrived.set()

    async def _more(self) -> bool:
        if self.hung_up.is_set():
            return False
        self.arrived.clear()
        await self.arrived.wait()
        return True

    async def read_request(self) -> tuple[str, dict, bytes] | None:
        while (end := self.inbox.find(b"\r\n\r\n")) < 0:
            if not await self._more():
                return None
        head = self.inbox[:end].decode("latin-1").split("\r\n")
        del self.inbox[: end + 4]
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length") or 0)
        while len(self.inbox) < length:
            if not await self._more():
                return None
        body = bytes(self.inbox[:length])
        del self.inbox[:length]
        path = head[0].split(" ")[1] if head[0].count(" ") >= 2 else "/"
        return path, headers, body

    async def send(self, data: bytes) -> bool:
        """Write and flush; False once the client is gone."""
        if self.hung_up.is_set():
            return False
        try:
            self.writer.write(data)
            await self.writer.drain()
        except OSError:
            return False
        return not self.hung_up.is_set()

    async def pause(self, seconds: float) -> bool:
        """Sleep, but wake up as soon as the client hangs up; False if it did."""
        try:
            await asyncio.wait_for(self.hung_up.wait(), seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.closing = True
        self.writer.transport.abort()

    def reset(self) -> None:
        # Linger 0 turns the close into an RST instead of a FIN.
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeUpstream:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls  # a server context: then it speaks HTTPS
        self.requests: list[RecordedRequest] = []
        self.base_url = ""
        self._queue: list[Reply] = []
        self._default = chat_reply(["Hello", " world"])
        self._connections: set[_Connection] = set()
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- control, from any thread -------------------------------------------------

    def start(self) -> "FakeUpstream":
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(5):
            raise RuntimeError("fake upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    def enqueue(self, *replies: Reply) -> None:
        with self._changed:
            self._queue.extend(replies)

    def set_default(self, reply: Reply) -> None:
        with self._changed:
            self._default = reply

    def open_connections(self) -> int:
        with self._changed:
            return len(self._connections)

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.requests) >= n, timeout):
                raise AssertionError(f"expected {n} requests, got {len(self.requests)}")

    def wait_closed(self, request: RecordedRequest, timeout: float = 5.0) -> None:
        with self._changed:
            if not self._changed.wait_for(lambda: request.closed_at is not None, timeout):
                raise AssertionError(f"connection of the request to {request.path} is still open")

    # -- the server, in its own thread and loop ----------------------------------------

    def _run(self, ready: threading.Event) -> None:
        self._loop = loop = asyncio.new_event_loop()
        server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls))
        self._server = server
        scheme = "https" if self.tls else "http"
        self.base_url = f"{scheme}://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        connections = list(self._connections)
        for conn in connections:
            conn.close()
        await asyncio.gather(*(conn.handler for conn in connections), return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(reader, writer)
        with self._changed:
            self._connections.add(conn)
        try:
            while request := await conn.read_request():
                if not await self._respond(conn, self._record(conn, *request)):
                    break
        finally:
            conn.pump.cancel()
            conn.close()
            closed_at = conn.hung_up_at or time.monotonic()
            with self._changed:
                for record in conn.records:
                    record.closed_early = not record.finished and conn.hung_up_at is not None
                    record.closed_at = closed_at
                self._connections.discard(conn)
                self._changed.notify_all()

    def _record(self, conn: _Connection, path: str, headers: dict, body: bytes) -> RecordedRequest:
        try:
            payload = json.loads(body) if body else None
        except ValueError:
            payload = None
        record = RecordedRequest(path=path, headers=headers, json=payload, received_at=time.monotonic())
        conn.records.append(record)
        with self._changed:
            self.requests.append(record)
            self._changed.notify_all()
        return record

    async def _respond(self, conn: _Connection, record: RecordedRequest) -> bool:
        """Play the next reply; True if the connection can serve another request."""
        with self._changed:
            reply = self._queue.pop(0) if self._queue else self._default
        head = [f"HTTP/1.1 {reply.status} Fake", "Transfer-Encoding: chunked"]
        head += [f"{name}: {value}" for name, value in reply.headers.items()]
        if not await conn.send(("\r\n".join(head) + "\r\n\r\n").encode("latin-1")):
            return False
        for delay, data, is_event in reply.body():
            if delay and not await conn.pause(delay):
                return False
            if not await conn.send(_chunk(data)):
                return False
            record.chunks_sent += is_event
        if reply.end == "stall":
            await conn.hung_up.wait()
            return False
        if reply.end == "reset":
            # Linux still delivers the bytes queued before an RST, so the client
            # gets every chunk and then ECONNRESET.
            conn.reset()
            return False
        if not await conn.send(b"0\r\n\r\n"):
            return False
        record.finished = True
        return True


@contextmanager
def running_upstream(tls: ssl.SSLContext | None = None) -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(tls).start()
    try:
        yield upstream
    finally:
        upstream.stop()
