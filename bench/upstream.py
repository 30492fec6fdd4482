"""A lean fake OpenAI-compatible upstream for the benchmark, in a process of its own.

`python -m bench.upstream` prints its port and serves until stdin closes.

One asyncio Protocol per connection and one scheduler for every reply, so a
chunk costs a heap operation and a socket write, not a task wake-up: the
upstream must not be what limits the server under test (its own CPU is
measured and reported). Each request's workload is read from its last user
message (`tag=... chunks=N rate=R clock=C`), so clients configure their own streams:
`chunks=0` streams until the client hangs up; `rate` is chunks per second; `clock`
is when the chunks after the first (which comes at once) fall: `aligned` on one grid
shared by every reply (all streams at a rate get their chunk in the same instant: the
worst case for the server's event loop), `spread` each on a clock of its own with a
random phase (seeded by the tag, so runs repeat).

Every content chunk carries TOKEN, so a client counts chunks by text length.
The time a client hangs up before its reply ended is recorded by tag:
`GET /stats` answers counters, open connections and replies still in flight
(`GET /stats?closed=1` adds the hang-ups: {tag: monotonic time}); `GET /reset`
forgets the hang-ups. Monotonic times are CLOCK_MONOTONIC, the same in every
process of the machine.
"""

import asyncio
import heapq
import json
import math
import os
import random
import re
import sys
import time

TOKEN = "tok "
PARAM = re.compile(r"(\w+)=([\w.:-]+)")


def chunk_event(content: str | None, finish: str | None = None, role: bool = False) -> bytes:
    delta = {"role": "assistant", "content": ""} if role else ({"content": content} if content is not None else {})
    payload = {
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000,
        "model": "bench-model", "system_fingerprint": "fp_bench",
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CONTENT = chunk_event(TOKEN)
CONTENT_CHUNKED = http_chunk(CONTENT)
HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
        b"transfer-encoding: chunked\r\n\r\n") + http_chunk(chunk_event(None, role=True))
TAIL = http_chunk(chunk_event(None, "stop") + b"data: [DONE]\n\n") + b"0\r\n\r\n"


def workload(body: bytes) -> dict:
    try:
        messages = json.loads(body).get("messages") or []
        text = next((m.get("content", "") for m in reversed(messages) if m.get("role") == "user"), "")
    except (ValueError, AttributeError):
        text = ""
    params = dict(PARAM.findall(text))
    return {"tag": params.get("tag", ""), "chunks": int(params.get("chunks", 20)), "rate": float(params.get("rate", 25)),
            "clock": params.get("clock", "aligned")}


def second_due(now: float, interval: float, clock: str, tag: str) -> float:
    """When a reply's second content chunk falls, which sets its clock (the module's docstring)."""
    if clock == "spread":
        return now + random.Random(tag).uniform(0, interval)
    return (math.floor(now / interval) + 1) * interval


class Reply:
    __slots__ = ("conn", "tag", "left", "interval", "clock", "due", "sent", "done")

    def __init__(self, conn, tag, chunks, rate, clock, now):
        self.conn, self.tag = conn, tag
        self.left = chunks if chunks > 0 else -1  # -1: endless
        self.interval = 1.0 / max(rate, 0.001)
        self.clock = clock
        self.due = now  # the first content chunk at once
        self.sent = 0
        self.done = False


class Upstream:
    def __init__(self):
        self.loop = asyncio.get_running_loop()
        self.heap: list[tuple[float, int, Reply]] = []
        self.seq = 0
        self.wake = asyncio.Event()
        self.connections = set()
        self.active = 0
        self.requests = 0
        self.chunks = 0
        self.closed: dict[str, float] = {}
        self.loop.create_task(self.schedule())

    def start_reply(self, conn, body: bytes) -> Reply:
        params = workload(body)
        reply = Reply(conn, params["tag"], params["chunks"], params["rate"], params["clock"], time.monotonic())
        self.requests += 1
        self.active += 1
        conn.transport.write(HEAD)
        self.push(reply)
        return reply

    def push(self, reply: Reply) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (reply.due, self.seq, reply))
        self.wake.set()

    def end_reply(self, reply: Reply, hung_up: bool) -> None:
        if reply.done:
            return
        reply.done = True
        self.active -= 1
        if hung_up and reply.tag:
            self.closed[reply.tag] = time.monotonic()

    async def schedule(self) -> None:
        heap = self.heap
        while True:
            now = time.monotonic()
            while heap and heap[0][0] <= now:
                _, _, reply = heapq.heappop(heap)
                if reply.done:
                    continue
                # Behind by several intervals (a fast rate): send them in one write.
                count = int((now - reply.due) / reply.interval) + 1
                if reply.left >= 0:
                    count = min(count, reply.left)
                    reply.left -= count
                reply.sent += count
                self.chunks += count
                data = CONTENT_CHUNKED * count
                if reply.left == 0:
                    data += TAIL
                    reply.conn.transport.write(data)
                    self.end_reply(reply, hung_up=False)
                    reply.conn.reply = None
                    reply.conn.serve_buffered()
                    continue
                reply.conn.transport.write(data)
                if reply.sent == count:  # the first: the next falls on the reply's clock
                    reply.due = second_due(now, reply.interval, reply.clock, reply.tag)
                else:
                    reply.due += count * reply.interval
                self.push(reply)
            self.wake.clear()
            if heap:
                delay = heap[0][0] - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self.wake.wait(), max(delay, 0.0005))
                    except TimeoutError:
                        pass
                else:
                    await asyncio.sleep(0)
            else:
                await self.wake.wait()

    def stats(self, closed: bool) -> dict:
        cpu = os.times()
        data = {"open_connections": len(self.connections), "active_replies": self.active, "requests": self.requests,
                "chunks": self.chunks, "cpu_s": cpu.user + cpu.system, "now": time.monotonic()}
        if closed:
            data["closed"] = self.closed
        return data


class Connection(asyncio.Protocol):
    def __init__(self, upstream: Upstream):
        self.upstream = upstream
        self.buffer = bytearray()
        self.reply: Reply | None = None
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.upstream.connections.add(self)

    def data_received(self, data):
        self.buffer += data
        if self.reply is None:
            self.serve_buffered()

    def serve_buffered(self) -> None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self.buffer) < end + 4 + length:
            return
        body = bytes(self.buffer[end + 4:end + 4 + length])
        del self.buffer[:end + 4 + length]
        method, path = (head[0].split(" ") + ["", ""])[:2]
        if method == "GET":
            self.answer_stats(path)
        else:
            self.reply = self.upstream.start_reply(self, body)

    def answer_stats(self, path: str) -> None:
        if path.startswith("/reset"):
            self.upstream.closed.clear()
        body = json.dumps(self.upstream.stats("closed=1" in path)).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(body), body))
        self.serve_buffered()

    def eof_received(self):
        return False  # close our side too

    def connection_lost(self, exc):
        self.upstream.connections.discard(self)
        if self.reply is not None:
            self.upstream.end_reply(self.reply, hung_up=True)
            self.reply = None


async def main() -> None:
    upstream = Upstream()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Connection(upstream), "127.0.0.1", 0, backlog=2048)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Serve until the parent closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
