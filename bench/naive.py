"""The seed-style relay: a baseline of the benchmark only, never a mode of the server.

`daphne bench.naive:application` serves the same socket URL and frames as the
real server, but relays the way a first version would: every upstream chunk
is written to the row (the whole content so far) and sent through the channel
layer as a `message_chunk` that carries the whole content so far. Rows,
prompts and the upstream client are the server's own (chat.services,
streaming.providers), so the difference measured is the relay alone.
"""

import asyncio
import contextlib
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproj.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.db import database_sync_to_async  # noqa: E402
from channels.generic.websocket import AsyncJsonWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from chat import protocol, services  # noqa: E402
from chat.models import Message, Project  # noqa: E402
from streaming.providers import get_provider  # noqa: E402
from streaming.ends import Outcome  # noqa: E402


def _write_content(message_id: int, content: str, chunk_count: int) -> None:
    Message.objects.filter(pk=message_id).update(content=content, chunk_count=chunk_count)


def _finalize(message_id: int, outcome: Outcome, content: str, chunk_count: int) -> dict:
    row, _ = services.message_finalize(message_id=message_id, outcome=outcome, content=content, chunk_count=chunk_count)
    return protocol.terminal(row)


class NaiveConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self):
        await self.accept()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.project = await database_sync_to_async(Project.objects.get)(
            pk=self.scope["url_route"]["kwargs"]["project_id"], owner=user)
        self.tasks: dict[int, asyncio.Task] = {}
        self.group = f"naive.{id(self)}"
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code):
        for task in getattr(self, "tasks", {}).values():
            task.cancel()

    async def receive_json(self, frame):
        if frame["type"] == "send":
            await self.on_send(frame)
        elif frame["type"] == "cancel":
            task = self.tasks.get(frame["message_id"])
            if task is None:
                await self.send_json({"type": "error", "code": "already_finished", "detail": "",
                                      "message_id": frame["message_id"]})
            else:
                task.cancel()

    async def on_send(self, frame):
        provider = get_provider()
        prompt = await database_sync_to_async(services.chat_prompt_create)(
            user=self.scope["user"], project=self.project, content=frame["content"], include_context=False,
            context_files=[], provider=provider.name, model=provider.model)
        await self.send_json(protocol.message_created(prompt.user_message, prompt.answer, frame.get("client_id")))
        self.tasks[prompt.answer.pk] = asyncio.get_running_loop().create_task(
            self.produce(prompt.answer.pk, provider, prompt.messages))

    async def produce(self, message_id: int, provider, prompt) -> None:
        group = self.group
        content, count, outcome = "", 0, Outcome("complete")
        await database_sync_to_async(services.message_start_many)(message_ids=[message_id])
        try:
            async with contextlib.aclosing(provider.stream(prompt)) as deltas:
                async for delta in deltas:
                    content += delta
                    count += 1
                    await database_sync_to_async(_write_content)(message_id, content, count)
                    await self.channel_layer.group_send(group, {
                        "type": "chunk.frame", "message_id": message_id, "seq": count, "content": content})
        except asyncio.CancelledError:
            outcome = Outcome("cancelled", reason="user")
        finally:
            self.tasks.pop(message_id, None)
            event = await asyncio.shield(database_sync_to_async(_finalize)(message_id, outcome, content, count))
            await self.send_json(event)

    async def chunk_frame(self, message):
        await self.send_json({"type": "message_chunk", "message_id": message["message_id"],
                              "seq": message["seq"], "content": message["content"]})


application = ProtocolTypeRouter({
    "http": django_asgi_app,
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter([
        path("ws/projects/<int:project_id>/chat/", NaiveConsumer.as_asgi()),
    ]))),
})
