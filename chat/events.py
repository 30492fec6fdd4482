"""The server → client events of PROTOCOL.md, built from rows."""

from streaming.runner import TERMINAL_STATUS

from .models import Message

__all__ = ["TERMINAL_STATUS", "error", "message_created", "message_dict", "terminal"]


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
