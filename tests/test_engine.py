"""The engine on its own: the registry lets go of every stream, the relay joins and replays frames."""

import asyncio
import json

import pytest

from streaming.registry import Registry, Stream
from chat.protocol import ENCODER, MAX_MESSAGE_BYTES
from streaming.relay import Relay
from tests.helpers import Inbox


def make_stream(message_id=1, user_id=7, interval=0.0):
    return Stream(message_id=message_id, user_id=user_id, project_id=1, relay=Relay(message_id, interval, ENCODER))


async def test_it_forgets_a_stream_when_it_ends_however_it_ends():
    registry = Registry()

    async def fails():
        raise RuntimeError("boom")

    ok, bad = make_stream(1), make_stream(2)
    registry.start(ok, asyncio.sleep(0))
    registry.start(bad, fails())
    assert registry.active_count() == 2
    await asyncio.gather(ok.task, bad.task, return_exceptions=True)
    assert registry.active_count() == 0 and registry.stats() == []


async def test_it_stops_once_with_the_first_reason():
    registry = Registry()
    stream = make_stream()
    registry.start(stream, asyncio.sleep(10))
    assert registry.stop(1, "user") is True
    assert registry.stop(1, "limit") is True
    assert stream.stop_reason == "user"
    with pytest.raises(asyncio.CancelledError):
        await stream.task
    assert registry.stop(1, "user") is False
    assert not registry.is_active(1)


async def test_it_refuses_to_run_one_message_twice():
    registry = Registry()
    registry.start(make_stream(), asyncio.sleep(0.01))
    with pytest.raises(ValueError):
        registry.start(make_stream(), asyncio.sleep(0))
    await asyncio.sleep(0.05)
    assert registry.active_count() == 0


async def test_it_cancels_a_stream_nobody_watches_after_the_grace():
    registry = Registry()
    stream = make_stream()
    watcher = Inbox()
    stream.relay.attach(watcher)
    registry.start(stream, asyncio.sleep(10))
    registry.detach(1, watcher, grace=0.05)
    await asyncio.sleep(0.01)
    assert registry.attach(1, watcher)  # came back in time: the timer is off
    await asyncio.sleep(0.08)
    assert registry.is_active(1)
    registry.detach(1, watcher, grace=0.05)
    await asyncio.sleep(0.08)
    assert stream.stop_reason == "disconnect" and not registry.is_active(1)


async def test_it_joins_deltas_within_the_frame_interval_and_keeps_their_text():
    relay = Relay(5, frame_interval=0.05, encoder=ENCODER)
    watcher = Inbox()
    relay.attach(watcher)
    for piece in ["a", "b", "c"]:
        relay.add(piece)
    await asyncio.sleep(0.08)
    relay.add("d")
    relay.finish({"type": "stream_complete", "message_id": 5, "content": relay.text()})
    assert watcher.chunks() == [(1, "a"), (2, "bc"), (3, "d")]
    assert watcher.events[-1] == ({"type": "stream_complete", "message_id": 5, "content": "abcd"}, True)


async def test_it_replays_exactly_the_missed_frames_to_a_late_watcher():
    relay = Relay(5, frame_interval=0, encoder=ENCODER)
    for piece in ["a", "b", "c", "d"]:
        relay.add(piece)
    late = Inbox()
    relay.attach(late, after_seq=2)
    relay.add("e")
    assert late.chunks() == [(3, "c"), (4, "d"), (5, "e")]
    relay.close()


@pytest.mark.parametrize("text, omitted", [
    ("short answer", False),
    ("a" * 400_000, False),  # twice in the event, still under 1 MiB
    ("a" * 600_000, True),
    ("\u00e9" * 300_000, True),  # 600k characters in the event, 1.2 MB of UTF-8
    ("\u00e9" * 200_000, False),
])
def test_a_terminal_event_too_large_for_one_socket_message_goes_without_its_text(text, omitted):
    event = {"type": "stream_cancelled", "message_id": 3, "content": text, "chunk_count": 9, "reason": "user",
             "partial_content": text + "\n\n[cancelled]"}
    sent = ENCODER.final(event)
    assert len(sent.encode()) <= MAX_MESSAGE_BYTES
    if omitted:
        assert json.loads(sent) == {"type": "stream_cancelled", "message_id": 3, "chunk_count": 9, "reason": "user",
                                    "partial_content": "\n\n[cancelled]", "content_omitted": True}
    else:
        assert json.loads(sent) == event


async def test_it_serves_flushes_queued_meanwhile_with_one_call_each_time():
    from streaming.batch import Batcher

    calls = []

    async def run_many(items):
        calls.append(list(items))
        await asyncio.sleep(0.01)
        return [item * 10 for item in items]

    batcher = Batcher(run_many)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(1, 6)))
    assert results == [10, 20, 30, 40, 50]
    assert calls == [[1, 2, 3, 4, 5]]


async def test_it_hands_a_failed_batch_to_every_caller_and_goes_on():
    from streaming.batch import Batcher

    async def run_many(items):
        if 0 in items:
            raise RuntimeError("database away")
        return items

    batcher = Batcher(run_many)
    failed = await asyncio.gather(batcher.submit(0), batcher.submit(1), return_exceptions=True)
    assert all(isinstance(result, RuntimeError) for result in failed)
    assert await batcher.submit(2) == 2


async def test_the_database_lane_serves_a_stop_before_the_writes_queued_ahead_of_it():
    import threading

    from chat import writer

    served, gate = [], threading.Event()

    def write(name):
        gate.wait(5)  # holds the lane while the others queue up
        served.append(name)

    first = asyncio.ensure_future(writer.run(write, name="flush 1"))
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(writer.run(write, name=f"flush {i}")) for i in (2, 3)]
    queued.append(asyncio.ensure_future(writer.run(write, priority=writer.STOPS, name="finalize")))
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(first, *queued)
    assert served == ["flush 1", "finalize", "flush 2", "flush 3"]
