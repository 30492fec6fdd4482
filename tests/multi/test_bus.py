"""The worker bus's pre-send check against a real Redis (a server of the test's own)."""

import asyncio
import time

import pytest
import redis
from channels.layers import channel_layers, get_channel_layer

from chat.bus import PROBE_TIMEOUT, Bus


@pytest.fixture
def redis_layer(settings, own_redis):
    settings.CHANNEL_LAYERS = {"default": {
        "BACKEND": "chatproj.layers.ResilientRedisChannelLayer",
        "CONFIG": {"hosts": [own_redis.url], "prefix": "bus-check"},
    }}
    channel_layers.backends.clear()
    yield own_redis
    channel_layers.backends.clear()


async def timed_check(bus: Bus) -> tuple[bool, float]:
    started = time.monotonic()
    return await bus.check(), time.monotonic() - started


async def test_a_slow_answer_is_not_taken_for_a_layer_that_is_down_but_a_stopped_one_is(redis_layer):
    bus = Bus()
    try:
        assert await timed_check(bus) == (True, pytest.approx(0, abs=PROBE_TIMEOUT))
        deadline = time.monotonic() + 5
        while bus._joined_at == float("-inf"):  # the worker has joined its group
            assert time.monotonic() < deadline, "the bus never joined its worker group"
            await asyncio.sleep(0.05)

        # Redis holds every command for a while, as a busy process's late loop would seem
        # to: the check times out, and the worker's recent re-join vouches for the layer.
        redis.Redis.from_url(redis_layer.url).execute_command("CLIENT", "PAUSE", int(PROBE_TIMEOUT * 3000))  # past both attempts
        ok, took = await timed_check(bus)
        assert ok and took >= PROBE_TIMEOUT

        # Stopped, it refuses connections: the check says so without waiting for timeouts.
        redis_layer.stop()
        ok, took = await timed_check(bus)
        assert not ok and took < PROBE_TIMEOUT
    finally:
        await bus.stop()


async def test_a_terminal_event_published_by_any_process_wakes_who_waits_for_it(redis_layer):
    from chat.bus import event_message, message_group

    bus, other_process = Bus(), Bus()
    try:
        async with bus.final_announced(42) as announced:
            await other_process.request("nobody", {"type": "noop"})  # the layer answers
            await get_channel_layer().group_send(message_group(42), event_message(42, "{}", True))
            await asyncio.wait_for(announced.wait(), 2)
        async with bus.final_announced(43) as announced:
            await get_channel_layer().group_send(message_group(43), event_message(43, "{}", False))
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(announced.wait(), 0.3)  # a chunk is not the end
    finally:
        await bus.stop()
        await other_process.stop()
