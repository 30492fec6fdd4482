"""Small helpers shared by the socket tests."""

import asyncio
import json
import time

TERMINAL = {"stream_complete", "stream_cancelled", "stream_error"}


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


async def wait_for(predicate, timeout=5.0, interval=0.01):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)


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
