"""The wire protocol (docs/protocol.md): client frames in, events out, error codes, and the
one table that maps what went wrong to a socket error code and an HTTP status.

Frames are checked here, before anything reaches the database: PostgreSQL cannot store
NUL, no database can store a lone surrogate, and deep JSON exhausts the parser's stack.
"""

import json

from streaming.ends import Ending
from streaming.relay import MAX_DELTA_CHARS

from .errors import (
    LimitExceeded, MessageAlreadyFinished, NotFound, RateLimited, ServiceError, SessionEnded, StreamUnavailable,
)
from .models import Message

# -- frames in --------------------------------------------------------------------------------

MAX_CONTENT = 32000
MAX_DEPTH = 32  # no frame of ours nests deeper than 3; this is only a sane bound
MAX_CONTEXT_FILES = 1000
MAX_FILE_NAME = 255  # ProjectFile.name
MAX_ID = 2**63 - 1  # the largest id a database row can have
NAMES_SHOWN = 3  # an error lists at most this many names
# The original ticket's clients send camelCase in the SSE body; both spellings are accepted.
CAMEL_CASE_FIELDS = {"includeContext": "include_context", "contextFiles": "context_files", "clientId": "client_id",
                     "editOf": "edit_of"}


class FrameError(Exception):
    def __init__(self, code: str, detail: str, message_id=None):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.message_id = message_id


def parse_frame(text) -> dict:
    """The frame as a dict with defaults filled in; FrameError `bad_frame` or `validation`."""
    if text is None:
        raise FrameError("bad_frame", "Frames are JSON text.")
    frame = _decode(text, "frame")
    kind = frame.get("type")
    check = VALIDATORS.get(kind) if isinstance(kind, str) else None
    if check is None:
        raise FrameError("bad_frame", f"Unknown frame type {_quote(kind)}.")
    return {"type": kind, **check(frame)}


def parse_send_body(raw: bytes) -> dict:
    """The body of `POST /api/projects/<id>/chat/` as a `send` frame."""
    fields = _decode(raw, "body")
    for camel, snake in CAMEL_CASE_FIELDS.items():
        if camel in fields:
            fields.setdefault(snake, fields.pop(camel))
    return {"type": "send", **_send(fields)}


def storable_problem(text: str) -> str | None:
    """Why the database could not store `text`, or None."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"contains a lone surrogate (U+{ord(text[error.start]):04X})"
    return None


def names_list(names: list[str]) -> str:
    """A few names for an error detail, and how many more there are."""
    shown = ", ".join(_quote(name) for name in names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _decode(raw, what: str) -> dict:
    try:
        value = json.loads(raw)
    except RecursionError:
        raise FrameError("bad_frame", f"The {what} is nested too deeply.") from None
    except ValueError:  # UnicodeDecodeError included
        raise FrameError("bad_frame", f"The {what} is not valid JSON.") from None
    if not isinstance(value, dict):
        raise FrameError("bad_frame", f"The {what} is a JSON object.")
    if _too_deep(value):
        raise FrameError("bad_frame", f"The {what} is nested more than {MAX_DEPTH} levels deep.")
    return value


def _too_deep(value) -> bool:
    level = [value]
    for _ in range(MAX_DEPTH):
        level = [child for node in level
                 for child in (node.values() if isinstance(node, dict) else node)
                 if isinstance(child, (dict, list))]
        if not level:
            return False
    return True


def _text(field: str, value: str) -> str:
    problem = storable_problem(value)
    if problem:
        raise FrameError("validation", f"{field} {problem}, which cannot be stored.")
    return value


def _send(frame):
    content = frame.get("content")
    if not isinstance(content, str) or not content.strip():
        raise FrameError("validation", "content must be a non-empty string.")
    if len(content) > MAX_CONTENT:
        raise FrameError("validation", f"content is limited to {MAX_CONTENT} characters.")
    include_context = frame.get("include_context", False)
    if not isinstance(include_context, bool):
        raise FrameError("validation", "include_context must be true or false.")
    context_files = frame.get("context_files", [])
    if not isinstance(context_files, list) or not all(isinstance(name, str) for name in context_files):
        raise FrameError("validation", "context_files must be a list of file names.")
    if len(context_files) > MAX_CONTEXT_FILES:
        raise FrameError("validation", f"context_files names at most {MAX_CONTEXT_FILES} files.")
    if any(len(name) > MAX_FILE_NAME for name in context_files):
        raise FrameError("validation", f"A file name in context_files is longer than {MAX_FILE_NAME} characters.")
    for name in context_files:
        _text("A file name in context_files", name)
    edit_of = frame.get("edit_of")
    return {
        "content": _text("content", content),
        "include_context": include_context,
        "context_files": context_files,
        "client_id": _client_id(frame),
        "edit_of": None if edit_of is None else _message_id({"message_id": edit_of}, "edit_of"),
    }


def _client_id(frame) -> str | None:
    client_id = frame.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or len(client_id) > 200):
        raise FrameError("validation", "client_id must be a string of at most 200 characters.")
    return client_id if client_id is None else _text("client_id", client_id)


def _message_id(frame, field: str = "message_id"):
    message_id = frame.get("message_id")
    if not _is_int(message_id) or message_id < 1:
        raise FrameError("validation", f"{field} must be a positive integer.")
    if message_id > MAX_ID:  # no row can have it, and the database could not even look it up
        raise FrameError("not_found", f"No message {message_id} in this project.", message_id)
    return message_id


def _cancel(frame):
    return {"message_id": _message_id(frame)}


def _another_answer(frame):
    """`continue` and `regenerate`: another answer to the prompt of the message named."""
    return {"message_id": _message_id(frame), "client_id": _client_id(frame)}


def _resume(frame):
    after_seq = frame.get("after_seq", 0)
    if not _is_int(after_seq) or after_seq < 0:
        raise FrameError("validation", "after_seq must be a non-negative integer.")
    return {"message_id": _message_id(frame), "after_seq": after_seq}


def _ping(frame):
    return {}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _quote(value) -> str:
    text = repr(str(value)[:40])
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


VALIDATORS = {"send": _send, "cancel": _cancel, "resume": _resume, "ping": _ping, "continue": _another_answer,
              "regenerate": _another_answer, "select_version": _cancel}


# -- events out ----------------------------------------------------------------------------

# Daphne's default websocket_max_message_size (1 MiB) applies to what it sends too,
# less room for the frame header.
MAX_MESSAGE_BYTES = 1024 * 1024 - 1024
assert 6 * MAX_DELTA_CHARS < MAX_MESSAGE_BYTES  # a chunk fits even with every character escaped


def dump(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


def message_dict(message: Message) -> dict:
    data = {"id": message.pk, "role": message.role, "content": message.content,
            "created_at": message.created_at.isoformat()}
    if message.role == Message.Role.ASSISTANT:
        data.update(status=message.status, reply_to=message.reply_to_id, continues=message.continues_id,
                    selected=message.selected, provider=message.provider, model=message.model)
    return data


def message_created(user_message: Message | None, assistant_message: Message, client_id=None,
                    superseded: list[int] = ()) -> dict:
    """A new answer: with its new prompt, or (Continue, Regenerate) `user_message` None; an
    edit also names the messages it replaced."""
    assistant = message_dict(assistant_message)
    del assistant["content"]
    event = {"type": "message_created", "user_message": message_dict(user_message) if user_message else None,
             "assistant_message": assistant, "client_id": client_id}
    if superseded:
        event["superseded"] = list(superseded)
    return event


def version_selected(version: Message) -> dict:
    return {"type": "version_selected", "message_id": version.pk, "reply_to": version.reply_to_id}


def usage(message: Message) -> dict | None:
    if message.prompt_tokens is None and message.completion_tokens is None:
        return None
    return {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens,
            "estimated": message.tokens_estimated}


def terminal(message: Message) -> dict:
    """The terminal event of a finished message."""
    event = {"message_id": message.pk, "content": message.content, "chunk_count": message.chunk_count,
             "usage": usage(message)}
    if message.status == Message.Status.COMPLETE:
        return {"type": "stream_complete", **event}
    if message.status == Message.Status.CANCELLED:
        return {"type": "stream_cancelled", **event, "reason": message.cancel_reason,
                "partial_content": message.display_content}
    if message.status == Message.Status.ERROR:
        return {"type": "stream_error", **event, "error": message.error_detail, "error_type": message.error_type,
                "partial_content": message.display_content}
    raise ValueError(f"message {message.pk} is still {message.status}")


def ending(message: Message) -> Ending:
    """What the engine is told of a finished row."""
    return Ending(status=message.status, detail=message.cancel_reason or message.error_type, event=terminal(message))


def error(code: str, detail: str, message_id=None, **extra) -> dict:
    event = {"type": "error", "code": code, "detail": detail, **extra}
    if message_id is not None:
        event["message_id"] = message_id
    return event


class WireEncoder:
    """The engine's frames as JSON text (streaming.relay.Encoder)."""

    def chunk(self, message_id: int, seq: int, delta: str) -> str:
        return dump({"type": "message_chunk", "message_id": message_id, "seq": seq, "delta": delta})

    def final(self, event: dict) -> str:
        """A terminal event; one too large for a websocket message goes without its text:
        `content` dropped, `partial_content` holding only the marker, `content_omitted: true`
        (its watchers have every delta; the row has the text). Decided from the length of the
        text where it can be, so a long answer is not serialized whole only to be thrown away."""
        content = event.get("content") or ""
        if 2 * len(content) <= MAX_MESSAGE_BYTES:  # content and partial_content, a byte a character at least
            text = dump(event)
            if len(text) * 4 <= MAX_MESSAGE_BYTES or len(text.encode()) <= MAX_MESSAGE_BYTES:
                return text
        slim = {key: value for key, value in event.items() if key != "content"}
        if "partial_content" in slim:
            slim["partial_content"] = slim["partial_content"][len(content):]
        slim["content_omitted"] = True
        return dump(slim)


ENCODER = WireEncoder()


class TicketEvents:
    """The events of one SSE response with the original ticket's names beside ours
    (docs/protocol-notes.md, "The ticket's client"): its client reads `messageId`,
    `userMessage` and `assistantMessage`, a chunk's whole text so far in `content`,
    `finalContent`, `partialContent`, `error` and `errorType`. The socket keeps its
    compact events; only SSE pays for the text so far, once per (coalesced) frame."""

    def __init__(self):
        self.text = ""  # the answer so far

    def encode(self, frame) -> str:
        if not frame.final and frame.seq:
            self.text += frame.delta
            return dump({"type": "message_chunk", "message_id": frame.message_id, "seq": frame.seq,
                         "delta": frame.delta, "messageId": frame.message_id, "content": self.text,
                         "isStreaming": True, "canCancel": True})
        event = dict(frame.event) if frame.event is not None else json.loads(frame.text)
        kind = event["type"]
        if kind == "message_created":
            user, answer = event["user_message"], event["assistant_message"]
            event["messageId"] = answer["id"]
            event["userMessage"] = user and {"id": user["id"], "content": user["content"], "role": "user",
                                             "timestamp": user["created_at"]}
            event["assistantMessage"] = {"id": answer["id"], "content": "", "role": "assistant",
                                         "timestamp": answer["created_at"], "isLoading": True, "canCancel": True}
            return dump(event)
        content = event.get("content", "")
        event.update(messageId=event["message_id"], isStreaming=False, canCancel=False)
        if kind == "stream_complete":
            event["finalContent"] = content
        elif kind in ("stream_cancelled", "stream_error"):
            marker = event["partial_content"][len(content):].strip()
            event.update(partialContent=event["partial_content"],
                         error=event.get("error") or marker.strip("*[]"),
                         errorType=event.get("error_type") or "cancelled")
        if 2 * len(content) > MAX_MESSAGE_BYTES:  # ours, as on the socket; the ticket's fields keep the text
            del event["content"]
            event["partial_content"] = event.get("partial_content", "")[len(content):]
            event["content_omitted"] = True
        return dump(event)

# -- errors: one table for the socket and for HTTP ----------------------------------------------------

# exception -> (socket error code, HTTP status); the first match wins, so subclasses come first.
ERRORS = [
    (NotFound, "not_found", 404),
    (SessionEnded, "validation", 403),  # the socket closes with 4401 instead
    (RateLimited, "rate_limited", 429),
    (LimitExceeded, "limit_exceeded", 429),
    (StreamUnavailable, "unavailable", 503),
    (ServiceError, "validation", 400),
    (MessageAlreadyFinished, "already_finished", 409),
]
UNEXPECTED = "The server could not handle this request; please try again."
EXPECTED = (FrameError, ServiceError, MessageAlreadyFinished)  # anything else is logged as a failure


def error_for(exc: Exception, message_id=None) -> tuple[dict, int]:
    """The `error` event for what went wrong, and the HTTP status that goes with it."""
    if isinstance(exc, FrameError):
        return error(exc.code, exc.detail, exc.message_id), 404 if exc.code == "not_found" else 400
    if isinstance(exc, RateLimited):
        return error("rate_limited", str(exc), message_id, retry_after=exc.retry_after), 429
    if isinstance(exc, MessageAlreadyFinished):
        detail = f"Message {exc.event['message_id']} is already {exc.status}."
        return error("already_finished", detail, exc.event["message_id"]), 409
    for kind, code, status in ERRORS:
        if isinstance(exc, kind):
            return error(code, str(exc), message_id), status
    return error("unavailable", UNEXPECTED, message_id), 503
