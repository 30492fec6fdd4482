"""Small helpers shared by the tests: one for each job."""

import asyncio
import json
import time

from channels.db import database_sync_to_async

TERMINAL = {"stream_complete", "stream_cancelled", "stream_error"}
# A bound for what takes milliseconds when all is well (a stop, a ping, the gap between two
# chunks), generous for a loaded 2-core machine shared with other processes. It catches a
# stop that waits for a flush, a lock or a timeout; the benchmark measures the real figures.
BUDGET = 1.0


async def receive_until(communicator, *types, timeout=5.0) -> list[dict]:
    """Frames received up to and including the first of `types`."""
    frames = []
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"no {types} within {timeout}s; got {frames}")
        frame = await communicator.receive_json_from(timeout=remaining)
        frames.append(frame)
        if frame["type"] in types:
            return frames


async def send_prompt(communicator, content="Hello there", **fields) -> dict:
    await communicator.send_json_to({"type": "send", "content": content, **fields})
    frames = await receive_until(communicator, "message_created", "error")
    return frames[-1]


async def wait_for(predicate, timeout: float = 5.0, what: str = "", interval: float = 0.01, in_thread: bool = False):
    """Until `predicate()` returns a truthy value, which it returns; `in_thread` runs a
    predicate that blocks (an HTTP call, a query) off the event loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(predicate) if in_thread else predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or 'the condition'}")
        await asyncio.sleep(interval)


async def row(message_id: int):
    """The message's row as the database has it now."""
    from chat.models import Message

    return await database_sync_to_async(Message.objects.get)(pk=message_id)


def chunks_text(frames) -> str:
    return "".join(f["delta"] for f in frames if f["type"] == "message_chunk")


def assert_contiguous(frames, start=1):
    seqs = [f["seq"] for f in frames if f["type"] == "message_chunk"]
    assert seqs == list(range(start, start + len(seqs))), seqs


class Inbox:
    """A watcher that keeps what it is given."""

    def __init__(self):
        self.events = []

    def deliver(self, frame):
        self.events.append((json.loads(frame.text), frame.final))

    def chunks(self):
        return [(e["seq"], e["delta"]) for e, _ in self.events if e["type"] == "message_chunk"]
