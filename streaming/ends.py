"""How a stream ends, as the engine sees it: the producer's own verdict (Outcome) and
what its row says once final (Ending), which may differ when someone else won the race."""

from dataclasses import dataclass

from .providers.base import Usage


@dataclass(frozen=True)
class Outcome:
    """What the producer decided: the terminal state it asks the store to write."""

    status: str  # complete | cancelled | error
    reason: str = ""  # cancel reason
    error_type: str = ""
    detail: str = ""  # safe to show the user
    internal: str = ""  # what the upstream said, keys redacted: the log and staff only
    usage: Usage | None = None  # tokens, the model server's or estimated (usage_estimated)
    usage_estimated: bool = False


@dataclass(frozen=True)
class Ending:
    """The row once final, whoever finalized it: its terminal status, the cancel reason or
    error type, and the terminal event for watchers (opaque to the engine)."""

    status: str
    detail: str
    event: dict
