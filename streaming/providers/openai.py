"""Any OpenAI-compatible `/chat/completions` server, streamed over SSE."""

import json
from collections.abc import AsyncIterator

from .base import ProviderError
from .http import HTTPProvider, reported_error


class OpenAIProvider(HTTPProvider):
    name = "openai"
    path = "/chat/completions"

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {"model": self.model, "messages": messages, "stream": True}
        async with self.open(headers=headers, body=body) as events:
            async for _, data in events:
                if data.strip() == "[DONE]":
                    return
                text = _delta_text(data, self.api_key)
                if text:
                    yield text
            raise ProviderError("protocol", "The model server's answer ended before it was complete")


def _delta_text(data: str, secret: str) -> str | None:
    # Keep-alive comments, role-only deltas, usage chunks and the odd non-JSON
    # line from a proxy are all legal noise; only an error object is fatal.
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    if payload.get("error"):
        raise reported_error(payload, secret)
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    delta = choices[0].get("delta")
    content = delta.get("content") if isinstance(delta, dict) else None
    return content if isinstance(content, str) else None
