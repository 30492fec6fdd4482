"""The load generator's websocket clients: one signed-in socket each, the streams it
runs, and what each stream saw (frames, times, bytes on the wire)."""

import asyncio
import json
import time

from websockets.asyncio.client import connect


TERMINAL = {"stream_complete", "stream_cancelled", "stream_error"}


def ws_header_bytes(size: int) -> int:
    return 2 if size < 126 else 4 if size < 65536 else 10


def prompt(tag: str, chunks: int, rate: float, clock: str = "aligned") -> str:
    """A prompt the fake upstream reads its workload from (bench/upstream.py)."""
    return f"bench tag={tag} chunks={chunks} rate={rate:g} clock={clock}"


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

    def __init__(self, ws, window: Window, keep_text: bool = False, clock: str = "aligned"):
        self.ws = ws
        self.clock = clock  # of the upstream's replies to this client's prompts
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
        await self.ws.send(json.dumps({"type": "send", "content": prompt(tag, chunks, rate, self.clock)}))
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
        return Client(ws, window, keep_text, job.get("clock", "aligned"))

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
