"""The server → client events of PROTOCOL.md, built from rows."""

import json

from streaming.relay import dump
from streaming.runner import TERMINAL_STATUS

from .models import Message

__all__ = ["TERMINAL_STATUS", "error", "fit_for_socket", "message_created", "message_dict", "terminal"]

# daphne's default websocket_max_message_size (1 MiB) applies to what it sends too,
# less room for the frame header.
MAX_SOCKET_MESSAGE = 1024 * 1024 - 1024


def message_dict(message: Message) -> dict:
    data = {"id": message.pk, "role": message.role, "content": message.content, "created_at": message.created_at.isoformat()}
    if message.role == Message.Role.ASSISTANT:
        data["status"] = message.status
    return data


def message_created(user_message: Message, assistant_message: Message, client_id=None) -> dict:
    assistant = message_dict(assistant_message)
    del assistant["content"]
    return {
        "type": "message_created",
        "user_message": message_dict(user_message),
        "assistant_message": assistant,
        "client_id": client_id,
    }


def terminal(message: Message) -> dict:
    """The terminal event of a finished message."""
    event = {"message_id": message.pk, "content": message.content, "chunk_count": message.chunk_count}
    if message.status == Message.Status.COMPLETE:
        return {"type": "stream_complete", **event}
    if message.status == Message.Status.CANCELLED:
        return {"type": "stream_cancelled", **event, "reason": message.cancel_reason,
                "partial_content": message.display_content}
    if message.status == Message.Status.ERROR:
        return {"type": "stream_error", **event, "error": message.error_detail, "error_type": message.error_type,
                "partial_content": message.display_content}
    raise ValueError(f"message {message.pk} is still {message.status}")


def error(code: str, detail: str, message_id=None) -> dict:
    event = {"type": "error", "code": code, "detail": detail}
    if message_id is not None:
        event["message_id"] = message_id
    return event


def fit_for_socket(text: str) -> str:
    """A terminal event too large for one websocket message, sent without its text.

    Only an answer over about 1 MiB gets here: its socket has received every delta
    (chunk frames are split small by the relay), so the event keeps the marker in
    `partial_content`, drops `content` and says `content_omitted`.
    """
    if len(text) * 4 <= MAX_SOCKET_MESSAGE or len(text.encode()) <= MAX_SOCKET_MESSAGE:
        return text
    event = json.loads(text)
    if event.get("type") not in TERMINAL_STATUS:
        return text
    content = event.pop("content", "")
    if "partial_content" in event:
        event["partial_content"] = event["partial_content"][len(content):]
    event["content_omitted"] = True
    return dump(event)
