"""The chat socket: `/ws/projects/<project_id>/chat/` (docs/protocol.md).

Thin: frames in (chat/protocol.py), calls to the answer lifecycle (chat/answers.py),
events out through one outbox, in order (chat/outbox.py). Answers run as tasks of the process registry,
so a `cancel` frame is handled while chunks flow; answers of other processes are
followed by chat/following.py.
"""

import collections
import hashlib
import logging
import time

from asgiref.sync import async_to_sync
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http import Http404

from streaming.registry import registry
from streaming.relay import Frame

from . import answers, protocol, selectors, services
from .errors import SessionEnded, StopPending, StreamUnavailable
from .following import Following, follow_here
from .outbox import Outbox
from .models import Message

log = logging.getLogger("chat.consumers")

CLOSE_UNAUTHENTICATED = 4401  # also when the session ends (logout) while the socket is open
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_MANY = 4429  # more than SOCKETS_MAX_PER_USER sockets of one user in this process


def session_group(session_key: str) -> str:
    """The sockets opened with one session; the key itself stays out of Redis."""
    return "session." + hashlib.sha256(session_key.encode()).hexdigest()[:40]


@receiver(user_logged_out)
def _end_the_sessions_sockets(sender, request, user, **kwargs):
    key = request.session.session_key if request is not None else None
    if not key:
        return
    try:
        async_to_sync(get_channel_layer().group_send)(session_group(key), {"type": "session.ended"})
    except Exception as error:  # the layer is away: those sockets are refused at their next send
        log.warning("could not close the sockets of a session that logged out: %s", type(error).__name__)


class ChatConsumer(AsyncWebsocketConsumer):
    open_per_user: collections.Counter = collections.Counter()  # sockets of each user in this process

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = None  # set once the socket is accepted, and counted in open_per_user
        self.session_key = None
        self.project = None  # set once the socket is accepted for a project of its user
        self.watching: set[int] = set()  # answers whose terminal event this socket still awaits
        self.outbox = Outbox(lambda text: self.send(text_data=text))
        self.following = Following(self)
        self.frame_read_at = 0.0  # monotonic time the frame being handled was read

    async def dispatch(self, message):
        # Channels' own dispatch first closes stale database connections, on the one thread
        # every socket's sync calls share: a queue a cancel frame waited in (tens of ms at 200
        # streams). Our database calls need none of it: the lane keeps its own connection, and
        # each database_sync_to_async call closes stale connections itself.
        await getattr(self, get_handler_name(message))(message)

    async def connect(self):
        # Accept first: a close before the handshake would lose the close code.
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        try:
            self.project = await database_sync_to_async(selectors.project_get)(
                user=user, project_id=self.scope["url_route"]["kwargs"]["project_id"])
        except Http404:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if self.open_per_user[user.pk] >= settings.SOCKETS_MAX_PER_USER:
            await self.close(code=CLOSE_TOO_MANY)
            return
        self.open_per_user[user.pk] += 1
        self.user = user
        self.session_key = self.scope["session"].session_key
        try:
            await self.channel_layer.group_add(session_group(self.session_key), self.channel_name)
        except Exception as error:  # then a logout closes it at its next send
            log.warning("socket not tied to its session: %s", type(error).__name__)

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Also when daphne cancels the consumer at shutdown without a disconnect:
            # no task of this socket outlives it.
            await self._stop_tasks()

    async def disconnect(self, code):
        if self.user is not None:
            self.open_per_user[self.user.pk] -= 1
            if not self.open_per_user[self.user.pk]:
                del self.open_per_user[self.user.pk]
            self.user = None
            try:
                await self.channel_layer.group_discard(session_group(self.session_key), self.channel_name)
            except Exception:  # the layer is away; its groups expire on their own
                pass
        for message_id in self.watching:
            registry.detach(message_id, self, settings.STREAM_DISCONNECT_GRACE)
        self.watching.clear()
        await self.following.close()
        await self._stop_tasks()

    async def _stop_tasks(self) -> None:
        await self.outbox.close()

    # The engine's watcher interface: queue a frame, never block.
    def deliver(self, frame: Frame) -> None:
        if frame.final:
            self.watching.discard(frame.message_id)
        self.outbox.put(frame.text, frame.timeline)

    def push(self, event: dict) -> None:
        self.outbox.put(protocol.dump(event))

    async def receive(self, text_data=None, bytes_data=None):
        if self.project is None:
            return
        frame = {}
        self.frame_read_at = time.monotonic()
        try:
            frame = protocol.parse_frame(text_data)
            await getattr(self, f"on_{frame['type']}")(frame)
        except SessionEnded:
            await self.close(code=CLOSE_UNAUTHENTICATED)
        except Exception as error:
            # Bad input, a refusal, or a bug or a backing service gone: an error frame either
            # way, and this socket and the others keep working.
            if not isinstance(error, protocol.EXPECTED):
                log.exception("a %s frame could not be handled", frame.get("type", "socket"))
            self.push(protocol.error_for(error, frame.get("message_id"))[0])

    async def stream_event(self, message):
        """A frame of an answer of another process, through the layer."""
        self.following.on_layer_event(message)

    async def session_ended(self, message):
        """The session this socket was opened with logged out."""
        await self.close(code=CLOSE_UNAUTHENTICATED)

    # -- frames ------------------------------------------------------------------------------

    async def on_ping(self, frame):
        self.push({"type": "pong"})

    async def on_send(self, frame):
        await self._start(content=frame["content"], include_context=frame["include_context"],
                          context_files=frame["context_files"], edit_of=frame["edit_of"], client_id=frame["client_id"])

    async def on_continue(self, frame):
        await self._start(again_of=frame["message_id"], continuing=True, client_id=frame["client_id"])

    async def on_regenerate(self, frame):
        await self._start(again_of=frame["message_id"], continuing=False, client_id=frame["client_id"])

    async def _start(self, **request):
        answer = await answers.start(user=self.user, project=self.project, watcher=self, session_key=self.session_key,
                                     **request)
        self.watching.add(answer.pk)

    async def on_select_version(self, frame):
        version = await database_sync_to_async(services.version_select)(project=self.project,
                                                                         message_id=frame["message_id"])
        self.push(protocol.version_selected(version))

    async def on_cancel(self, frame):
        message_id = frame["message_id"]
        await self._check_owned(message_id)
        was_watching = message_id in self.watching
        try:
            stopped = await answers.stop(message_id=message_id, reason=Message.CancelReason.USER,
                                         requested_at=self.frame_read_at)
        except StopPending:
            if not was_watching:  # its terminal event reaches us when its process gets to it
                await self.following.await_end(message_id)
                self.watching.add(message_id)
            return
        if not was_watching:  # watchers got it from the stream itself
            self.outbox.put(protocol.ENCODER.final(stopped.event))

    async def on_resume(self, frame):
        message_id = frame["message_id"]
        await self._check_owned(message_id)
        self.watching.add(message_id)
        elsewhere = await follow_here(message_id=message_id, watcher=self, after_seq=frame["after_seq"])
        if elsewhere is None:
            return
        try:
            await self.following.follow(message=elsewhere, after_seq=frame["after_seq"])
        except StreamUnavailable:
            self.watching.discard(message_id)
            raise

    async def _check_owned(self, message_id: int) -> None:
        """NotFound unless the message is in this socket's project. One produced here is
        checked against its running stream, not read: no database round trip before a stop."""
        stream = registry.get(message_id)
        if stream is not None and (stream.project_id, stream.user_id) == (self.project.pk, self.user.pk):
            return
        await database_sync_to_async(selectors.message_get)(
            user=self.user, project_id=self.project.pk, message_id=message_id)


class NoRouteConsumer(AsyncWebsocketConsumer):
    """Any other websocket path: closed as not found (the router would raise and log a traceback)."""

    async def connect(self):
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND)
