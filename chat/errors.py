"""What can go wrong in a request, as exceptions the services raise and chat/protocol.py
maps, in one table, to a socket error code and an HTTP status."""


class ServiceError(Exception):
    """Bad input a user can correct; the message is safe to show."""


class LimitExceeded(ServiceError):
    """A concurrency cap was reached under the `reject` policy."""


class RateLimited(ServiceError):
    """Too many prompts in the last minute; `retry_after` seconds until the next is accepted."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class StreamUnavailable(ServiceError):
    """A backing service is down, or the answer runs where it cannot be reached."""


class SessionEnded(ServiceError):
    """The session a socket was opened with no longer signs its user in (logged out, expired,
    or cut by a password change)."""


class NotFound(ServiceError):
    """No such message in a project of this user (somebody else's looks the same)."""


class MessageAlreadyFinished(Exception):
    """The answer ended before the stop; `event` is its terminal event."""

    def __init__(self, event: dict):
        self.event = event
        self.status = {"stream_complete": "complete", "stream_cancelled": "cancelled",
                       "stream_error": "error"}[event["type"]]
        super().__init__(f"message {event['message_id']} is already {self.status}")


class StopPending(Exception):
    """The stop is stored and sent, but the producing process has not finalized the row yet."""

    def __init__(self, message):
        super().__init__(f"stop of message {message.pk} requested")
        self.message = message
