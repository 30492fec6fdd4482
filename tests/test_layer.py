"""The Redis channel layer's receive: it waits out an outage, and it ends when asked to."""

import asyncio

import pytest
from channels_redis.core import RedisChannelLayer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from chatproj.layers import SOCKET_TIMEOUT, ResilientRedisChannelLayer, redis_hosts


@pytest.fixture
def layer():
    return ResilientRedisChannelLayer(hosts=redis_hosts("redis://127.0.0.1:1/0"))


async def test_a_cancelled_receive_ends_even_when_redis_py_turns_the_cancel_into_a_timeout(layer, monkeypatch):
    async def receive_that_times_out_when_cancelled(self, channel):
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            # What redis-py does when the cancel meets its socket timeout.
            raise RedisTimeoutError("Timeout reading from 127.0.0.1:6379") from None

    monkeypatch.setattr(RedisChannelLayer, "receive", receive_that_times_out_when_cancelled)
    receiving = asyncio.create_task(layer.receive("specific.abc!def"))
    await asyncio.sleep(0.01)
    receiving.cancel()
    done, _ = await asyncio.wait({receiving}, timeout=2)
    assert receiving in done and receiving.cancelled()


async def test_a_receive_retries_through_an_outage_and_stops_retrying_when_the_server_stops(layer, monkeypatch):
    calls = []

    async def receive_while_redis_is_down(self, channel):
        calls.append(channel)
        if len(calls) < 3:
            raise RedisConnectionError("Connection refused")
        return {"type": "back"}

    monkeypatch.setattr(RedisChannelLayer, "receive", receive_while_redis_is_down)
    assert await layer.receive("specific.abc!def") == {"type": "back"} and len(calls) == 3

    calls.clear()
    layer.stopping = True
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(layer.receive("specific.abc!def"), 2)
    assert len(calls) == 1


def test_its_socket_timeout_is_above_the_blocking_pop():
    assert SOCKET_TIMEOUT > RedisChannelLayer.brpop_timeout
    assert redis_hosts("redis://x:6379/0")[0]["socket_timeout"] == SOCKET_TIMEOUT
