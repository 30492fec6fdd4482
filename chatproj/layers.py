"""The Redis channel layer, made to ride out a Redis outage."""

import asyncio
import logging

from channels_redis.core import RedisChannelLayer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("chat.layers")

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class ResilientRedisChannelLayer(RedisChannelLayer):
    """A receive that waits for Redis to come back instead of raising.

    Every consumer receives from the layer beside its socket; with the stock
    layer a Redis outage raises there and closes every socket, streams and
    all. Here the receive retries with backoff, so sockets stay open, running
    streams still finish and save, and only what needs Redis fails.
    """

    async def receive(self, channel):
        delay = 0.1
        while True:
            try:
                message = await super().receive(channel)
            except OUTAGE_ERRORS as error:
                log.warning("channel layer unreachable (%s); retrying in %.1fs", type(error).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            return message
