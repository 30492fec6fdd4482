"""The one interface every model provider implements."""

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

# Sent with a partial answer to continue (Continue after a stop): OpenAI-compatible servers get
# the partial as the last assistant message and this as a system instruction; Anthropic
# continues a prefilled assistant turn by itself.
CONTINUE_INSTRUCTION = ("Your previous answer was cut off. Continue it exactly where it stopped: "
                        "do not repeat any of it and do not add a preamble.")


@dataclass
class Usage:
    """Tokens the model server counted for one answer (None: not reported)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def continues(messages: list[dict]) -> bool:
    """Whether the conversation ends with a partial answer to go on from (`"partial": True`)."""
    return bool(messages) and messages[-1].get("partial", False)


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
    usage: Usage | None  # what the model server counted, once it said

    def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        """Yield text deltas of the answer to `messages` ([{"role", "content"}, ...]); a
        last assistant message with `"partial": True` is an answer cut short, to go on from.

        Cancelling the task that iterates (or closing the iterator) must close
        the upstream request at once; failures raise ProviderError.
        """
        ...
