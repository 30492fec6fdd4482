"""Validation of client → server socket frames (PROTOCOL.md)."""

import json

MAX_CONTENT = 32000


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
    try:
        frame = json.loads(text)
    except ValueError:
        raise FrameError("bad_frame", "The frame is not valid JSON.") from None
    if not isinstance(frame, dict):
        raise FrameError("bad_frame", "A frame is a JSON object.")
    kind = frame.get("type")
    check = VALIDATORS.get(kind) if isinstance(kind, str) else None
    if check is None:
        raise FrameError("bad_frame", f"Unknown frame type {str(kind)[:40]!r}.")
    return {"type": kind, **check(frame)}


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
    client_id = frame.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or len(client_id) > 200):
        raise FrameError("validation", "client_id must be a string of at most 200 characters.")
    return {"content": content, "include_context": include_context, "context_files": context_files, "client_id": client_id}


def _message_id(frame):
    message_id = frame.get("message_id")
    if not _is_int(message_id) or message_id < 1:
        raise FrameError("validation", "message_id must be a positive integer.")
    return message_id


def _cancel(frame):
    return {"message_id": _message_id(frame)}


def _resume(frame):
    after_seq = frame.get("after_seq", 0)
    if not _is_int(after_seq) or after_seq < 0:
        raise FrameError("validation", "after_seq must be a non-negative integer.")
    return {"message_id": _message_id(frame), "after_seq": after_seq}


def _ping(frame):
    return {}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


VALIDATORS = {"send": _send, "cancel": _cancel, "resume": _resume, "ping": _ping}
