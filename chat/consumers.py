"""The chat socket: `/ws/projects/<project_id>/chat/` (PROTOCOL.md).

Thin: it validates frames and hands them to chat.streams / chat.services.
Streams run as tasks of the process registry, so a `cancel` frame is handled
while chunks flow. Every frame to the client goes through one outbox, in order.
"""

import asyncio
import contextlib
import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer, AsyncWebsocketConsumer
from django.conf import settings
from django.http import Http404

from streaming.registry import registry
from streaming.relay import dump, dump_terminal

from . import events, selectors, services, streams
from .bus import bus, message_group
from .frames import FrameError, parse_frame
from .models import Message

log = logging.getLogger("chat.consumers")

CLOSE_UNAUTHENTICATED = 4401
CLOSE_NOT_FOUND = 4404
WATCH_RETRIES = 5
WATCH_RETRY_AFTER = 1.0  # seconds without a frame before asking the producing worker again
FOLLOW_CHECK = 2.0  # seconds between checks of the answers followed through the layer


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        self.project = None
        self.watching: set[int] = set()
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.writer = None
        self.remote: dict[int, str] = {}  # message id -> worker of the answers followed through the layer
        self.remote_seq: dict[int, int] = {}  # message id -> last seq received through the layer
        self.background: set[asyncio.Task] = set()  # re-asks and the follower below
        self.followed: set[int] = set()  # answers of other processes whose group this socket joined
        self.follower = None
        user = self.scope.get("user")
        # Accept first: a close before the handshake would lose the close code.
        await self.accept()
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            self.project = await database_sync_to_async(selectors.project_get)(
                user=user, project_id=self.scope["url_route"]["kwargs"]["project_id"]
            )
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.writer = asyncio.get_running_loop().create_task(self._write())

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when daphne cancels the consumer at shutdown without a disconnect:
            # no task of this socket outlives it (one left waiting would be collected
            # after its loop is gone).
            await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        tasks = [task for task in (getattr(self, "writer", None), *getattr(self, "background", ())) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def disconnect(self, code):
        for message_id in self.watching:
            registry.detach(message_id, self, settings.STREAM_DISCONNECT_GRACE)
        for message_id, worker in self.remote.items():
            if message_id in self.watching:
                unwatch = {"type": "stream.unwatch", "message_id": message_id, "channel": self.channel_name}
                await bus.request(worker, unwatch)
        self.watching.clear()
        for message_id in self.followed:
            try:
                await self.channel_layer.group_discard(message_group(message_id), self.channel_name)
            except Exception:  # the layer is away; its groups expire on their own
                break
        await self._stop_tasks()

    # The engine's watcher interface: queue a serialized event, never block.
    def deliver(self, message_id: int, text: str, final: bool) -> None:
        if final:
            self.watching.discard(message_id)
        self.outbox.put_nowait(text)

    def push(self, event: dict) -> None:
        self.outbox.put_nowait(dump(event))

    async def _write(self):
        while True:
            await self.send(text_data=await self.outbox.get())

    async def receive(self, text_data=None, bytes_data=None):
        if self.project is None:
            return
        try:
            frame = parse_frame(text_data)
            await getattr(self, f"on_{frame['type']}")(frame)
        except FrameError as error:
            self.push(events.error(error.code, error.detail, error.message_id))
        except Exception:
            # A bug or a backing service gone: this socket and the others keep working.
            log.exception("a frame could not be handled")
            self.push(events.error("unavailable", "The server could not handle this request; please try again."))

    async def on_ping(self, frame):
        self.push({"type": "pong"})

    async def on_send(self, frame):
        user = self.scope["user"]
        try:
            answer = await streams.answer_prompt(
                user=user, project=self.project, content=frame["content"],
                include_context=frame["include_context"], context_files=frame["context_files"],
                client_id=frame["client_id"], watcher=self,
            )
        except services.LimitExceeded as error:
            raise FrameError("limit_exceeded", str(error)) from None
        except services.StreamUnavailable as error:
            raise FrameError("unavailable", str(error)) from None
        except services.ServiceError as error:
            raise FrameError("validation", str(error)) from None
        self.watching.add(answer.pk)

    async def on_cancel(self, frame):
        message = await self._message_to_stop(frame["message_id"])
        message_id = message.pk
        was_watching = message_id in self.watching
        try:
            event = await services.message_cancel(message=message, reason=Message.CancelReason.USER)
        except services.MessageAlreadyFinished as finished:
            raise FrameError("already_finished", f"Message {message_id} is already {finished.status}.", message_id) from None
        except services.CancelPending:
            if not was_watching:  # its terminal event reaches us when its process gets to it
                await self._follow_elsewhere(message_id)
            return
        if not was_watching:
            self.outbox.put_nowait(dump_terminal(event))  # watchers got it from the stream itself

    async def on_resume(self, frame):
        message = await self._message(frame["message_id"])
        self.watching.add(message.pk)
        elsewhere = await streams.watch(message=message, watcher=self, after_seq=frame["after_seq"])
        if elsewhere is None:
            return
        await self._follow_elsewhere(message.pk)
        self.remote[message.pk] = elsewhere.worker
        self.remote_seq[message.pk] = frame["after_seq"]
        if not await self._ask_to_watch(message.pk):
            self.watching.discard(message.pk)
            raise FrameError("unavailable", "The server producing this answer cannot be reached.", message.pk)
        self._in_background(self._ask_again_if_silent(message.pk, frame["after_seq"]))

    def _in_background(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def _ask_to_watch(self, message_id: int) -> bool:
        watch = {"type": "stream.watch", "message_id": message_id, "channel": self.channel_name,
                 "after_seq": self.remote_seq[message_id]}
        return await bus.request(self.remote[message_id], watch)

    async def _ask_again_if_silent(self, message_id: int, after_seq: int):
        # A request that lands while the layer has just lost its groups (a Redis restart) is
        # dropped; the producer re-joins within seconds. Duplicates are dropped by seq.
        for _ in range(WATCH_RETRIES):
            await asyncio.sleep(WATCH_RETRY_AFTER)
            if message_id not in self.watching or self.remote_seq.get(message_id, 0) > after_seq:
                return
            await self._ask_to_watch(message_id)

    async def _follow_elsewhere(self, message_id: int):
        """Receive the events of an answer of another process (its terminal one, at least)."""
        self.watching.add(message_id)
        try:
            await self.channel_layer.group_add(message_group(message_id), self.channel_name)
        except Exception:
            self.watching.discard(message_id)
            raise FrameError("unavailable", "The message bus is unavailable.", message_id) from None
        self.followed.add(message_id)
        if self.follower is None or self.follower.done():
            self.follower = self._in_background(self._keep_following())

    async def _keep_following(self):
        """While answers of other processes are followed: re-join their groups (a Redis
        restart forgets them) and read their rows, so that an answer whose terminal event
        was lost on the way (the layer was down) still ends on this socket, once."""
        while self.followed & self.watching:
            await asyncio.sleep(FOLLOW_CHECK)
            pending = self.followed & self.watching
            for row in await database_sync_to_async(selectors.finished_messages)(ids=list(pending)):
                if row.pk in self.watching:  # the terminal event did not come first
                    self.deliver(row.pk, dump_terminal(events.terminal(row)), True)
            for message_id in self.followed & self.watching:
                with contextlib.suppress(Exception):  # the layer is away: the rows still tell
                    await asyncio.wait_for(
                        self.channel_layer.group_add(message_group(message_id), self.channel_name), FOLLOW_CHECK)

    async def stream_event(self, message):
        """An event of a stream followed through the layer; duplicates are dropped."""
        message_id = message["message_id"]
        if message_id not in self.watching:
            return
        if not message["final"] and message_id in self.remote_seq:
            seq = json.loads(message["text"]).get("seq", 0)
            if seq <= self.remote_seq[message_id]:
                return
            self.remote_seq[message_id] = seq
        self.deliver(message_id, message["text"], message["final"])

    async def _message_to_stop(self, message_id: int) -> Message:
        """A message of this socket's project. One produced here is checked against its
        running stream and not read (no database round trip before a stop)."""
        stream = registry.get(message_id)
        if stream is not None and (stream.project_id, stream.user_id) == (self.project.pk, self.scope["user"].pk):
            return Message(pk=message_id, project=self.project, role=Message.Role.ASSISTANT)
        return await self._message(message_id)

    async def _message(self, message_id: int) -> Message:
        try:
            return await database_sync_to_async(selectors.message_get)(
                user=self.scope["user"], project_id=self.project.pk, message_id=message_id
            )
        except Message.DoesNotExist:
            raise FrameError("not_found", f"No message {message_id} in this project.", message_id) from None


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Any other websocket path: closed as not found (the router would raise and log a traceback)."""

    async def connect(self):
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)
