"""`POST /api/projects/<id>/chat/`: a prompt answered as `text/event-stream` (PROTOCOL.md).

A plain async Django view, not DRF: DRF views are sync and would hold a
thread for as long as an answer streams.
"""

import asyncio
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import Http404, JsonResponse, StreamingHttpResponse

from streaming.registry import registry

from . import selectors, services, streams
from .frames import FrameError, parse_send_body

log = logging.getLogger("chat.sse")

KEEP_ALIVE_AFTER = 15.0  # seconds of silence before a comment line, so proxies keep the connection


class QueueWatcher:
    """Follows one answer for one SSE response."""

    def __init__(self):
        self.queue: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()

    def deliver(self, message_id: int, text: str, final: bool) -> None:
        self.queue.put_nowait((text, final))


async def chat_stream(request, project_id):
    """Start an answer and stream its events, `message_created` first, the terminal event last.

    Errors, as JSON: 403 anonymous (a missing CSRF token is Django's own 403 page);
    404 not a project of this user; 400 {code: bad_frame | validation, detail} for a body
    that is not a JSON object, bad `send` fields or an unknown context file;
    429 {code: limit_exceeded, detail} at a concurrency cap; 503 {code: unavailable, detail}.
    """
    user = await request.auser()
    if not user.is_authenticated:
        return JsonResponse({"detail": "Authentication credentials were not provided."}, status=403)
    try:
        project = await database_sync_to_async(selectors.project_get)(user=user, project_id=project_id)
    except Http404:
        return JsonResponse({"detail": "Not found."}, status=404)
    try:
        frame = parse_send_body(request.body)
    except FrameError as error:
        return _error(error.code, error.detail, 400)
    try:
        body = await _start(user, project, frame)
    except services.LimitExceeded as error:
        return _error("limit_exceeded", str(error), 429)
    except services.StreamUnavailable as error:
        return _error("unavailable", str(error), 503)
    except services.ServiceError as error:
        return _error("validation", str(error), 400)
    except Exception:
        log.exception("a send over SSE could not be handled")
        return _error("unavailable", "The server could not handle this request; please try again.", 503)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold the answer back
    return response


def _error(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)


async def _start(user, project, frame: dict):
    """The answer's events as a started generator."""
    watcher = QueueWatcher()
    answer = await streams.answer_prompt(
        user=user, project=project, content=frame["content"], include_context=frame["include_context"],
        context_files=frame["context_files"], client_id=frame["client_id"], watcher=watcher,
    )
    body = _event_stream(watcher, answer.pk)
    # Started with no await since the answer began: asyncio closes a started async generator
    # that is dropped, running its `finally`, so a response Django never sends (the client
    # left first) still lets go of the answer. An unstarted one would just be forgotten.
    await anext(body)
    return body


async def _event_stream(watcher: QueueWatcher, message_id: int):
    try:
        yield ""  # where _start leaves it; Django never sees this
        while True:
            try:
                text, final = await asyncio.wait_for(watcher.queue.get(), KEEP_ALIVE_AFTER)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield f"data: {text}\n\n"
            if final:
                return
    finally:
        # Reached after the terminal event, and when Django's ASGI handler cancels the
        # response because the client went away: then it is a socket that closed.
        registry.detach(message_id, watcher, settings.STREAM_DISCONNECT_GRACE)
