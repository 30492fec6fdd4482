"""Validation of client → server socket frames and of the SSE send body (PROTOCOL.md).

Everything is checked here, before it reaches the database: PostgreSQL cannot store
NUL, no database can store a lone surrogate, and deep JSON exhausts the parser's stack.
"""

import json

MAX_CONTENT = 32000
MAX_DEPTH = 32  # no frame of ours nests deeper than 3; this is only a sane bound
MAX_CONTEXT_FILES = 1000
MAX_FILE_NAME = 255  # ProjectFile.name
MAX_ID = 2**63 - 1  # the largest id a database row can have
NAMES_SHOWN = 3  # an error lists at most this many names
# The original ticket's clients send camelCase in the SSE body; both spellings are accepted.
CAMEL_CASE_FIELDS = {"includeContext": "include_context", "contextFiles": "context_files", "clientId": "client_id"}


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
    client_id = frame.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or len(client_id) > 200):
        raise FrameError("validation", "client_id must be a string of at most 200 characters.")
    return {
        "content": _text("content", content),
        "include_context": include_context,
        "context_files": context_files,
        "client_id": client_id if client_id is None else _text("client_id", client_id),
    }


def _message_id(frame):
    message_id = frame.get("message_id")
    if not _is_int(message_id) or message_id < 1:
        raise FrameError("validation", "message_id must be a positive integer.")
    if message_id > MAX_ID:  # no row can have it, and the database could not even look it up
        raise FrameError("not_found", f"No message {message_id} in this project.", message_id)
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


def _quote(value) -> str:
    text = repr(str(value)[:40])
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


VALIDATORS = {"send": _send, "cancel": _cancel, "resume": _resume, "ping": _ping}
