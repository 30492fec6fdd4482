"""The one interface every model provider implements."""

from collections.abc import AsyncIterator
from typing import Protocol


class ProviderError(Exception):
    """An upstream failure, mapped to a `error_type` of docs/protocol.md and a short safe text.

    `detail` is shown to the user; `internal` is what the upstream itself said (keys
    redacted), for the log and for staff only: it may name the key, the account or the
    server's internals.
    """

    def __init__(self, error_type: str, detail: str, internal: str = ""):
        super().__init__(detail)
        self.error_type = error_type  # timeout | upstream | network | protocol | unknown
        self.detail = detail
        self.internal = internal


class Provider(Protocol):
    name: str
    model: str

    def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        """Yield text deltas of the answer to `messages` ([{"role", "content"}, ...]).

        Cancelling the task that iterates (or closing the iterator) must close
        the upstream request at once; failures raise ProviderError.
        """
        ...
