"""Messages between server processes, over the channel layer.

Each process listens on its worker group for control messages (a stop request, a
socket of another process that wants to follow one of its answers) and hands them
to the handler the feature registered (`@bus.handles(kind)`: chat/answers.py and
chat/following.py). The terminal event of every answer is also published to the
message's group, so that whoever waits for it anywhere (a stop from another process,
a socket following it) learns it. The layer is never on the path of a socket in the
producing process.
"""

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

from streaming.worker import WORKER_ID

from . import protocol

log = logging.getLogger("chat.bus")

MEMBERSHIP_REFRESH = 1.0  # seconds between re-joins of this worker's group
PROBE_TIMEOUT = 1.0  # for each command of the pre-send check
RECENTLY_JOINED = 5.0  # a re-join this recent vouches for a layer whose check only timed out


def worker_group(worker: str) -> str:
    return "worker." + re.sub(r"[^a-zA-Z0-9_.-]", "-", worker)[:90]


def message_group(message_id: int) -> str:
    return f"message.{message_id}"


def event_message(message_id: int, text: str, final: bool, seq: int = 0) -> dict:
    """A frame of an answer, as a layer message to a socket of another process."""
    return {"type": "stream.event", "message_id": message_id, "text": text, "final": final, "seq": seq}


def terminal_message(event: dict) -> dict:
    """A terminal event as a layer message to its message's group."""
    return event_message(event["message_id"], protocol.ENCODER.final(event), True)


class Bus:
    def __init__(self):
        self._loop = None
        self._tasks: list[asyncio.Task] = []
        self._outbox: asyncio.Queue | None = None
        self._joined_at = float("-inf")  # loop time of the membership keeper's last success
        self._channel: asyncio.Future | None = None  # the listener's channel name, once it has one
        self._finals: dict[int, set[asyncio.Event]] = {}  # message id -> who waits for its terminal event
        self._handlers: dict[str, Callable[[dict], Awaitable[None] | None]] = {}

    def handles(self, kind: str):
        """Register the handler of a control message sent to this worker (`request`)."""
        def register(handler):
            self._handlers[kind] = handler
            return handler
        return register

    def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        self._outbox = asyncio.Queue()
        self._channel = loop.create_future()
        self._tasks = [loop.create_task(self._listen(), name="bus-listen"), loop.create_task(self._send_all(), name="bus-send")]

    async def stop(self) -> None:
        if self._loop is not asyncio.get_running_loop():  # its tasks ended with their loop
            self._tasks, self._loop = [], None
            return
        await self.drain()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks, self._loop = [], None

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until everything queued has been handed to the layer."""
        if self._outbox is not None:
            try:
                await asyncio.wait_for(self._outbox.join(), timeout)
            except asyncio.TimeoutError:
                log.warning("%d bus messages not sent", self._outbox.qsize())

    async def check(self) -> bool:
        """Whether the layer answers now (a new stream needs it for stops and watchers elsewhere).

        A layer that is down refuses at once; a command that only times out says as much
        about this process being busy (its loop late under load) as about the layer, so
        then the keeper's recent success decides: a loaded server must not turn its users
        away as "unavailable" while Redis is fine.
        """
        self.ensure_started()
        layer = get_channel_layer()
        # Twice: after a Redis restart the first command meets a dead pooled connection. One
        # command proves the layer answers; asyncio.timeout, unlike wait_for, adds no task
        # (each cost loop turns: tens of ms of a send's first chunk at 200 streams).
        for attempt in range(2):
            try:
                async with asyncio.timeout(PROBE_TIMEOUT):
                    await layer.group_discard("health", "health.probe")
                return True
            except asyncio.TimeoutError:
                if self._loop.time() - self._joined_at < RECENTLY_JOINED:
                    return True
                log.warning("channel layer check timed out")
            except Exception as error:
                log.warning("channel layer check failed: %s", type(error).__name__)
        return False

    # -- sending: one queue, so messages to one channel keep their order -----------------

    def send(self, channel: str, message: dict) -> None:
        self.ensure_started()
        self._outbox.put_nowait(("send", channel, message))

    def send_group(self, group: str, message: dict) -> None:
        self.ensure_started()
        self._outbox.put_nowait(("group_send", group, message))

    async def _send_all(self) -> None:
        layer = get_channel_layer()
        while True:
            method, target, message = await self._outbox.get()
            try:
                await getattr(layer, method)(target, message)
            except ChannelFull:
                log.warning("channel %s is full; a watcher fell behind and misses an event", target)
            except Exception as error:
                log.warning("could not %s to %s: %s", method, target, type(error).__name__)
            finally:
                self._outbox.task_done()

    async def request(self, worker: str, message: dict) -> bool:
        """Send a control message to a worker at once; False when the layer is unreachable."""
        try:
            await get_channel_layer().group_send(worker_group(worker), message)
            return True
        except Exception as error:
            log.warning("could not reach worker %s: %s", worker, type(error).__name__)
            return False

    def announce(self, event: dict) -> None:
        """Publish a terminal event to whoever waits on the message, in any process."""
        self.send_group(message_group(event["message_id"]), terminal_message(event))

    @contextlib.asynccontextmanager
    async def final_announced(self, message_id: int) -> AsyncIterator[asyncio.Event]:
        """An event set when any process publishes the terminal event of `message_id`
        while inside the block: enter it before asking another process to stop the
        message, so its answer cannot come before this process listens for it. When
        the layer is away the event is simply never set."""
        self.ensure_started()
        announced = asyncio.Event()
        self._finals.setdefault(message_id, set()).add(announced)
        layer, group = get_channel_layer(), message_group(message_id)
        joined = False
        try:
            with contextlib.suppress(Exception):
                channel = await asyncio.wait_for(asyncio.shield(self._channel), PROBE_TIMEOUT)
                await asyncio.wait_for(layer.group_add(group, channel), PROBE_TIMEOUT)
                joined = True
            yield announced
        finally:
            waiting = self._finals.get(message_id, set())
            waiting.discard(announced)
            if not waiting:
                self._finals.pop(message_id, None)
            if joined and not waiting:
                with contextlib.suppress(Exception):
                    await layer.group_discard(group, channel)

    # -- listening: stop requests and watchers for this worker's streams ------------------

    async def _listen(self) -> None:
        layer = get_channel_layer()
        # With the default prefix, as the sockets' channels have: channels_redis reads every
        # process-local channel through one blocking pop on one key per prefix, so a channel
        # of another prefix waits until that pop returns (up to its 5 s timeout).
        channel = await layer.new_channel()
        self._channel.set_result(channel)
        keeper = asyncio.get_running_loop().create_task(self._keep_membership(layer, channel))
        try:
            while True:
                try:
                    message = await layer.receive(channel)
                    await self._handle(message)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.warning("worker bus: a message could not be handled", exc_info=True)
                    await asyncio.sleep(0.1)
        finally:
            keeper.cancel()

    async def _keep_membership(self, layer, channel: str) -> None:
        # Re-joined every few seconds: a Redis restart forgets every group, and nothing
        # else would tell this worker that stops and watchers can no longer reach it.
        group = worker_group(WORKER_ID)
        while True:
            try:
                await layer.group_add(group, channel)
                self._joined_at = asyncio.get_running_loop().time()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("worker bus: cannot join %s (%s)", group, type(error).__name__)
            await asyncio.sleep(MEMBERSHIP_REFRESH)

    async def _handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "stream.event" and message.get("final"):
            for announced in self._finals.get(message.get("message_id"), ()):
                announced.set()
            return
        handler = self._handlers.get(kind)
        if handler is not None:
            result = handler(message)
            if asyncio.iscoroutine(result):
                await result


bus = Bus()
