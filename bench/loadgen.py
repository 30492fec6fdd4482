"""The load generator: real websocket clients (or, as a baseline, direct upstream readers)
in a process of their own.

`python -m bench.loadgen` reads one job (a JSON line) on stdin, opens its
connections, prints `READY`, waits for a `{"go": <monotonic time>}` line, runs
the job and prints `RESULT <json>`. Times are CLOCK_MONOTONIC, shared by every
process of the machine, so the orchestrator can sample CPU over the same window.

Jobs: `streams` (N concurrent streams: a steady window, then cancels at random
points with a new stream after each), `direct` (the same clients reading the
upstream themselves), `lengths` (one answer of each length), `storm` (sends and
cancels in quick succession), `churn` (many short streams, half cancelled).
"""

import asyncio
import itertools
import json
import random
import sys
import time

import httpx
from websockets.asyncio.client import connect

from bench.upstream import TOKEN

TERMINAL = {"stream_complete", "stream_cancelled", "stream_error"}


def ws_header_bytes(size: int) -> int:
    return 2 if size < 126 else 4 if size < 65536 else 10


def prompt(tag: str, chunks: int, rate: float) -> str:
    return f"bench tag={tag} chunks={chunks} rate={rate:g}"


class Refused(Exception):
    """The server answered a `send` with an error frame (a cap, a service it deems down)."""


class Window:
    """The measurement window: it opens `warmup` seconds after every stream has had its first
    chunk (so no stream start falls inside it), or at `latest` if some never do, and is
    announced on stdout (`WINDOW start end`) for the orchestrator to sample CPU over."""

    def __init__(self, job: dict | None = None):
        self.start, self.end = float("inf"), float("inf")
        self.job = job
        self.waiting = job["clients"] if job else 0
        self.opened = asyncio.Event()
        self.all_started = True

    def __contains__(self, t: float) -> bool:
        return self.start <= t < self.end

    def first_chunk(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.open()

    def open(self) -> None:
        if self.opened.is_set():
            return
        self.all_started = self.waiting <= 0
        self.start = time.monotonic() + self.job["warmup"]
        self.end = self.start + self.job["window"]
        print(f"WINDOW {self.start} {self.end}", flush=True)
        self.opened.set()

    async def open_by(self, latest: float) -> None:
        try:
            await asyncio.wait_for(self.opened.wait(), max(0.0, latest - time.monotonic()))
        except TimeoutError:
            self.open()
        await sleep_until(self.end)


class Stream:
    """One answer as one client sees it."""

    __slots__ = ("tag", "sent_at", "message_id", "first_chunk_at", "chars", "deltas", "seqs", "terminal",
                 "terminal_at", "cancel_at", "cancel_reply", "events", "wire", "counts_for_window")

    def __init__(self, tag: str):
        self.tag = tag
        self.sent_at = time.monotonic()
        self.message_id = None
        self.first_chunk_at = None
        self.chars = 0
        self.deltas: list[str] | None = None
        self.seqs: list[int] = []
        self.terminal: dict | None = None
        self.terminal_at = None
        self.cancel_at = None
        self.cancel_reply = None
        self.events = []
        self.wire = 0
        self.counts_for_window = False


class Client:
    """One signed-in socket; frames are dispatched to the streams it started."""

    def __init__(self, ws, window: Window, keep_text: bool = False):
        self.ws = ws
        self.window = window
        self.keep_text = keep_text
        self.by_id: dict[int, Stream] = {}
        self.created: asyncio.Queue[Stream] = asyncio.Queue()
        self.unclaimed: list[Stream] = []  # sent, waiting for their message_created
        self.done = asyncio.Condition()
        self.wire = 0
        self.window_chars = 0
        self.window_wire = 0
        self.errors: list[dict] = []
        self.reader = asyncio.get_running_loop().create_task(self.read())

    async def read(self) -> None:
        window = self.window
        async for text in self.ws:
            now = time.monotonic()
            size = len(text) if text.isascii() else len(text.encode())
            size += ws_header_bytes(size)
            self.wire += size
            in_window = now in window
            if in_window:
                self.window_wire += size
            frame = json.loads(text)
            kind = frame["type"]
            if kind == "message_chunk":
                stream = self.by_id.get(frame["message_id"])
                if stream is None:
                    continue
                stream.wire += size
                delta = frame.get("delta")
                if delta is None:  # the seed-style relay sends the whole content
                    grown = len(frame["content"]) - stream.chars
                else:
                    grown = len(delta)
                    if stream.deltas is not None:
                        stream.deltas.append(delta)
                stream.chars += grown
                stream.seqs.append(frame["seq"])
                if in_window:
                    self.window_chars += grown
                if stream.first_chunk_at is None:
                    stream.first_chunk_at = now
                    if stream.counts_for_window:
                        window.first_chunk()
            elif kind == "message_created":
                stream = self.unclaimed.pop(0)
                stream.message_id = frame["assistant_message"]["id"]
                stream.wire += size
                self.by_id[stream.message_id] = stream
                self.created.put_nowait(stream)
            elif kind in TERMINAL:
                stream = self.by_id.get(frame["message_id"])
                if stream is None:
                    continue
                stream.wire += size
                stream.events.append(kind)
                if stream.terminal is None:
                    stream.terminal, stream.terminal_at = frame, now
                async with self.done:
                    self.done.notify_all()
            elif kind == "error":
                stream = self.by_id.get(frame.get("message_id"))
                if stream is not None and stream.cancel_at is not None:
                    stream.cancel_reply = frame["code"]
                    async with self.done:
                        self.done.notify_all()
                else:
                    self.errors.append(frame)
                    if self.unclaimed and frame["code"] in ("limit_exceeded", "unavailable", "validation"):
                        self.unclaimed.pop(0).terminal = frame
                        self.created.put_nowait(None)

    async def send(self, tag: str, chunks: int, rate: float, counts_for_window: bool = False) -> Stream:
        stream = Stream(tag)
        stream.counts_for_window = counts_for_window
        if self.keep_text:
            stream.deltas = []
        self.unclaimed.append(stream)
        await self.ws.send(json.dumps({"type": "send", "content": prompt(tag, chunks, rate)}))
        created = await asyncio.wait_for(self.created.get(), 120)
        if created is None:
            raise Refused(self.errors[-1]["code"])
        return created

    async def cancel(self, stream: Stream) -> None:
        stream.cancel_at = time.monotonic()
        await self.ws.send(json.dumps({"type": "cancel", "message_id": stream.message_id}))

    async def until_finished(self, stream: Stream, timeout: float = 60) -> None:
        async with self.done:
            await asyncio.wait_for(self.done.wait_for(lambda: stream.terminal is not None), timeout)

    async def until_cancel_answered(self, stream: Stream, timeout: float = 10) -> None:
        """A cancel that raced the end of its answer gets `already_finished` after the terminal event."""
        async with self.done:
            await asyncio.wait_for(self.done.wait_for(lambda: stream.cancel_reply is not None), timeout)


async def open_clients(job: dict, window: Window, keep_text: bool = False) -> list[Client]:
    gate = asyncio.Semaphore(32)

    async def open_one(i: int) -> Client:
        user = job["users"][i % len(job["users"])]
        server = job["servers"][i % len(job["servers"])]
        async with gate:
            ws = await connect(
                f"ws://{server}/ws/projects/{user['projects'][job['slot']]}/chat/",
                additional_headers={"Origin": f"http://{server}", "Cookie": f"sessionid={user['session']}"},
                compression=None, max_size=None, ping_interval=None, open_timeout=60, close_timeout=5,
            )
        return Client(ws, window, keep_text)

    return await asyncio.gather(*(open_one(i) for i in range(job["clients"])))


async def close_clients(clients: list[Client]) -> None:
    await asyncio.gather(*(client.ws.close() for client in clients), return_exceptions=True)
    for client in clients:
        client.reader.cancel()


def stream_record(stream: Stream) -> dict:
    return {
        "tag": stream.tag, "message_id": stream.message_id, "sent_at": stream.sent_at,
        "first_chunk_at": stream.first_chunk_at, "cancel_at": stream.cancel_at, "terminal_at": stream.terminal_at,
        "terminal": stream.terminal["type"] if stream.terminal else None, "chars": stream.chars,
        "wire": stream.wire, "frames": len(stream.seqs), "cancel_reply": stream.cancel_reply,
    }


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


# -- jobs -------------------------------------------------------------------------------------------


async def streams_job(job: dict, go_wait) -> dict:
    """N streams at `rate`: ramp, steady window (no cancels), then cancels at random points."""
    n, rate, rng = job["clients"], job["rate"], random.Random(job.get("seed", 1))
    window = Window(job)
    clients = await open_clients(job, window)
    go = await go_wait()
    streams: list[Stream] = []
    counter = itertools.count()

    refused, unstopped = [], []

    async def run(i: int, client: Client) -> None:
        await sleep_until(go + job["ramp"] * i / n)
        try:
            stream = await client.send(f"{job['name']}-{next(counter)}", 0, rate, counts_for_window=True)
        except Refused as error:
            refused.append(str(error))
            window.first_chunk()  # not one to wait for
            return
        streams.append(stream)
        await window.open_by(go + job["ramp"] + job["max_start"])
        cancel_end = window.end + job["cancel_phase"]
        low, high = job["cancel_gap"]
        while job["cancel_phase"] > 0:
            await asyncio.sleep(rng.uniform(low, high))
            if time.monotonic() >= cancel_end:
                break
            await client.cancel(stream)
            await client.until_finished(stream)
            try:
                stream = await client.send(f"{job['name']}-{next(counter)}", 0, rate)
            except Refused as error:
                refused.append(str(error))
                return
            streams.append(stream)
        stream.cancel_at = None  # the last cancel is a cleanup, not a sample
        await client.ws.send(json.dumps({"type": "cancel", "message_id": stream.message_id}))
        try:
            await client.until_finished(stream, timeout=120)
        except TimeoutError:  # reported (the seed-style baseline falls that far behind)
            unstopped.append(stream.message_id)

    await asyncio.gather(*(run(i, client) for i, client in enumerate(clients)))
    result = {
        "window": [window.start, window.end], "all_started_before_window": window.all_started,
        "window_chars": sum(c.window_chars for c in clients),
        "window_wire": sum(c.window_wire for c in clients),
        "streams": [stream_record(s) for s in streams],
        "errors": [e for c in clients for e in c.errors][:20], "refused": refused,
        "not_stopped_within_120s": len(unstopped),
    }
    await close_clients(clients)
    return result


async def direct_job(job: dict, go_wait) -> dict:
    """The same clients reading the upstream themselves, over one httpx client."""
    n, rate = job["clients"], job["rate"]
    window = Window(job)
    state = {"chars": 0}
    samples = []
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(30.0)) as client:
        warm = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": prompt("warm", 1, 1000)}]}
        await client.post(job["upstream"] + "/chat/completions", json=warm)  # the client's first-use costs
        go = await go_wait()

        async def run(i: int) -> None:
            await sleep_until(go + job["ramp"] * i / n)
            body = {"model": "bench", "stream": True,
                    "messages": [{"role": "user", "content": prompt(f"{job['name']}-{i}", 0, rate)}]}
            sent_at = time.monotonic()
            first = None
            async with client.stream("POST", job["upstream"] + "/chat/completions", json=body) as response:
                pending = b""
                async for data in response.aiter_bytes():
                    pending += data
                    *events, pending = pending.split(b"\n\n")
                    now = time.monotonic()
                    for event in events:
                        if not event.startswith(b"data: {"):
                            continue
                        content = json.loads(event[6:])["choices"][0]["delta"].get("content")
                        if content:
                            if first is None:
                                first = now
                                samples.append(first - sent_at)
                                window.first_chunk()
                            if now in window:
                                state["chars"] += len(content)
                    if now >= window.end:
                        break

        await asyncio.gather(*(run(i) for i in range(n)))
    return {"window": [window.start, window.end], "all_started_before_window": window.all_started,
            "window_chars": state["chars"], "ttfc": samples}


async def lengths_job(job: dict, go_wait) -> dict:
    """One answer of each length, one after the other, on one socket."""
    clients = await open_clients({**job, "clients": 1}, Window())
    client = clients[0]
    await go_wait()
    results = []
    for chunks in job["lengths"]:
        stream = await client.send(f"{job['name']}-{chunks}", chunks, job["rate"])
        await client.until_finished(stream, timeout=job.get("timeout", 300))
        record = stream_record(stream)
        record["chunks"] = chunks
        record["content_bytes"] = len((stream.terminal or {}).get("content", "").encode())
        record["chunk_count"] = (stream.terminal or {}).get("chunk_count")
        results.append(record)
    await close_clients(clients)
    return {"lengths": results}


async def storm_job(job: dict, go_wait) -> dict:
    """Sends and cancels in quick succession; every answer must end exactly once."""
    rng = random.Random(job.get("seed", 7))
    clients = await open_clients(job, Window(), keep_text=True)
    await go_wait()
    streams: list[Stream] = []
    cancels = []

    async def run(ci: int, client: Client) -> None:
        mine = []
        for k in range(job["sends"]):
            try:
                stream = await client.send(f"storm-{ci}-{k}", rng.randint(5, 40), job["rate"])
            except Refused:
                continue  # counted with the error frames
            mine.append(stream)
            cancels.append(asyncio.get_running_loop().create_task(cancel_later(client, stream, rng.uniform(0, job["cancel_within"]))))
            await asyncio.sleep(rng.uniform(0, 0.02))
        streams.extend(mine)

    async def cancel_later(client: Client, stream: Stream, delay: float) -> None:
        await asyncio.sleep(delay)
        await client.cancel(stream)

    await asyncio.gather(*(run(i, c) for i, c in enumerate(clients)))
    await asyncio.gather(*cancels)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(s.terminal is None or (s.cancel_at and s.cancel_reply is None and s.terminal["type"] != "stream_cancelled") for s in streams):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # any duplicate terminal event would arrive meanwhile
    records = []
    for s in streams:
        record = stream_record(s)
        record.update(events=s.events, content=(s.terminal or {}).get("content"), reason=(s.terminal or {}).get("reason"),
                      deltas="".join(s.deltas or []), seqs_ok=s.seqs == list(range(1, len(s.seqs) + 1)))
        records.append(record)
    errors = [e for c in clients for e in c.errors]
    await close_clients(clients)
    return {"streams": records, "errors": errors[:20], "error_count": len(errors)}


async def churn_job(job: dict, go_wait) -> dict:
    """`total` short streams over `clients` sockets; every other one cancelled at a random point."""
    rng = random.Random(job.get("seed", 11))
    clients = await open_clients(job, Window())
    await go_wait()
    counter = itertools.count()
    outcomes: dict[str, int] = {}
    chunks, rate = job["chunks"], job["rate"]

    async def run(client: Client) -> None:
        while (i := next(counter)) < job["total"]:
            try:
                stream = await client.send(f"churn-{i}", chunks, rate)
            except Refused as error:
                outcomes[f"refused ({error})"] = outcomes.get(f"refused ({error})", 0) + 1
                continue
            if i % 2:
                await asyncio.sleep(rng.uniform(0, chunks / rate))
                await client.cancel(stream)
            await client.until_finished(stream)
            if stream.cancel_at is not None and stream.terminal["type"] != "stream_cancelled":
                await client.until_cancel_answered(stream)
            key = stream.terminal["type"] if stream.cancel_reply is None else f"{stream.terminal['type']} (cancel: {stream.cancel_reply})"
            outcomes[key] = outcomes.get(key, 0) + 1
            client.by_id.pop(stream.message_id, None)

    await asyncio.gather(*(run(c) for c in clients))
    errors = [e for c in clients for e in c.errors]
    await close_clients(clients)
    return {"outcomes": outcomes, "errors": errors[:20], "error_count": len(errors)}


JOBS = {"streams": streams_job, "direct": direct_job, "lengths": lengths_job, "storm": storm_job, "churn": churn_job}


async def main() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**28)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    job = json.loads(await reader.readline())

    async def go_wait() -> float:
        print("READY", flush=True)
        go = json.loads(await reader.readline())["go"]
        await sleep_until(go)
        return go

    result = await JOBS[job["kind"]](job, go_wait)
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
