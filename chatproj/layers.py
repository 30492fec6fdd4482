"""The Redis channel layer, made to ride out a Redis outage and to end with the server."""

import asyncio
import logging

from channels_redis.core import RedisChannelLayer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger("chat.layers")

OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)
# Above channels-redis's blocking pop (5 s): a read that waits for the pop is not a timeout.
SOCKET_TIMEOUT = RedisChannelLayer.brpop_timeout + 5
CONNECT_TIMEOUT = 3


def redis_hosts(url: str) -> list[dict]:
    """The layer's `hosts` setting for one Redis URL, with socket timeouts that suit the layer."""
    return [{"address": url, "socket_timeout": SOCKET_TIMEOUT, "socket_connect_timeout": CONNECT_TIMEOUT,
             "socket_keepalive": True}]


class ResilientRedisChannelLayer(RedisChannelLayer):
    """A receive that waits for Redis to come back instead of raising.

    Every consumer receives from the layer beside its socket; with the stock
    layer a Redis outage raises there and closes every socket, streams and
    all. Here the receive retries with backoff, so sockets stay open, running
    streams still finish and save, and only what needs Redis fails.

    A receive that is being cancelled, or that runs once the server stops, never
    retries: redis-py turns a cancellation that meets its socket timeout into a
    TimeoutError, and a retry there outlived the server (daphne waits for every
    cancelled consumer before it exits).
    """

    stopping = False  # set by the server's shutdown

    async def receive(self, channel):
        delay = 0.1
        while True:
            try:
                return await super().receive(channel)
            except OUTAGE_ERRORS as error:
                if asyncio.current_task().cancelling() or self.stopping:
                    raise asyncio.CancelledError() from error
                log.warning("channel layer unreachable (%s); retrying in %.1fs", type(error).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
