"""`POST /api/projects/<id>/chat/`: a prompt answered as `text/event-stream`, and the same
for another answer to an answered prompt: `POST /api/projects/<id>/messages/<mid>/continue/`
and `.../regenerate/` (docs/protocol.md).

A plain async Django view, not DRF: DRF views are sync and would hold a
thread for as long as an answer streams.
"""

import asyncio
import logging

from channels.db import database_sync_to_async
from django.conf import settings
from django.http import Http404, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed

from streaming.registry import registry
from streaming.relay import Frame

from . import answers, protocol, selectors

log = logging.getLogger("chat.sse")

KEEP_ALIVE_AFTER = 15.0  # seconds of silence before a comment line, so proxies keep the connection


class QueueWatcher:
    """Follows one answer for one SSE response."""

    def __init__(self):
        self.queue: asyncio.Queue[Frame] = asyncio.Queue()

    def deliver(self, frame: Frame) -> None:
        self.queue.put_nowait(frame)


@csrf_exempt  # checked below for a session, as DRF does; a token needs none
async def chat_stream(request, project_id):
    return await _answer_stream(request, project_id, lambda: _send_fields(request.body))


@csrf_exempt
async def continue_stream(request, project_id, message_id):
    return await _answer_stream(request, project_id, lambda: {"again_of": message_id, "continuing": True})


@csrf_exempt
async def regenerate_stream(request, project_id, message_id):
    return await _answer_stream(request, project_id, lambda: {"again_of": message_id, "continuing": False})


def _send_fields(body: bytes) -> dict:
    frame = protocol.parse_send_body(body)
    del frame["type"]
    return frame


async def _answer_stream(request, project_id, fields):
    """Start an answer and stream its events, `message_created` first, the terminal event last.

    Errors before the stream starts, as JSON `{code, detail}` with the status of the one
    error table (chat/protocol.py): 400 bad_frame | validation, 404, 429 limit_exceeded |
    rate_limited (with `retry_after` and a Retry-After header), 503 unavailable; 403 for
    an anonymous client (a missing CSRF token is Django's own 403 page).
    """
    user, refused = await _authenticate(request)
    if refused is not None:
        return refused
    try:
        project = await database_sync_to_async(selectors.project_get)(user=user, project_id=project_id)
    except Http404:
        return JsonResponse({"detail": "Not found."}, status=404)
    try:
        body = await _start(user, project, fields())
    except Exception as error:
        if not isinstance(error, protocol.EXPECTED):
            log.exception("a send over SSE could not be handled")
        return error_response(error)
    response = StreamingHttpResponse(body, content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # nginx would otherwise hold the answer back
    return response


async def _authenticate(request):
    """(user, None), or (None, the response that refuses the request): by its token
    (scripts), or by its session, which must then carry the CSRF token as a form would."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Token "):
        try:
            user, _ = await database_sync_to_async(TokenAuthentication().authenticate_credentials)(header[6:].strip())
        except AuthenticationFailed as failed:
            return None, JsonResponse({"detail": str(failed.detail)}, status=403)  # as the REST API answers
        return user, None
    user = await request.auser()
    if not user.is_authenticated:
        return None, JsonResponse({"detail": "Authentication credentials were not provided."}, status=403)
    refused = CsrfViewMiddleware(lambda request: None).process_view(request, None, (), {})
    return (None, refused) if refused is not None else (user, None)


def error_response(error: Exception) -> JsonResponse:
    event, status = protocol.error_for(error)
    body = {key: value for key, value in event.items() if key != "type"}
    response = JsonResponse(body, status=status)
    if "retry_after" in body:
        response["Retry-After"] = str(body["retry_after"])
    return response


async def _start(user, project, frame: dict):
    """The answer's events as a started generator."""
    watcher = QueueWatcher()
    answer = await answers.start(user=user, project=project, watcher=watcher, **frame)
    body = _event_stream(watcher, answer.pk)
    # Started with no await since the answer began: asyncio closes a started async generator
    # that is dropped, running its `finally`, so a response Django never sends (the client
    # left first) still lets go of the answer. An unstarted one would just be forgotten.
    await anext(body)
    return body


async def _event_stream(watcher: QueueWatcher, message_id: int):
    events = protocol.TicketEvents()
    try:
        yield ""  # where _start leaves it; Django never sees this
        while True:
            try:
                frame = await asyncio.wait_for(watcher.queue.get(), KEEP_ALIVE_AFTER)
            except TimeoutError:
                yield ": keep-alive\n\n"
                continue
            yield f"data: {events.encode(frame)}\n\n"
            if frame.final:
                return
    finally:
        # Reached after the terminal event, and when Django's ASGI handler cancels the
        # response because the client went away: then it is a socket that closed.
        registry.detach(message_id, watcher, settings.STREAM_DISCONNECT_GRACE)
