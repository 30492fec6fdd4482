"""Any OpenAI-compatible `/chat/completions` server, streamed over SSE."""

import json
from collections.abc import AsyncIterator

from .base import CONTINUE_INSTRUCTION, ProviderError, Usage, continues
from .http import HTTPProvider, reported_error


class OpenAIProvider(HTTPProvider):
    name = "openai"
    path = "/chat/completions"

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        # include_usage: a last chunk with the token counts (sent only when the answer ends).
        body = {"model": self.model, "messages": request_messages(messages), "stream": True,
                "stream_options": {"include_usage": True}}
        async with self.open(headers=headers, body=body) as events:
            async for _, data in events:
                if data.strip() == "[DONE]":
                    return
                text = self._read(data)
                if text:
                    yield text
            raise ProviderError("protocol", "The model server's answer ended before it was complete")

    def _read(self, data: str) -> str | None:
        """An event's text; keep-alive comments, role-only deltas and the odd non-JSON line from
        a proxy are legal noise; the usage chunk is kept; only an error object is fatal."""
        try:
            payload = json.loads(data)
        except ValueError:
            return None
        if not isinstance(payload, dict):
            return None
        if payload.get("error"):
            raise reported_error(payload, self.api_key)
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(_count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens")))
        choices = payload.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return None
        delta = choices[0].get("delta")
        content = delta.get("content") if isinstance(delta, dict) else None
        return content if isinstance(content, str) else None


def request_messages(messages: list[dict]) -> list[dict]:
    """The conversation as the API takes it. To continue a partial answer, it goes last as an
    assistant message, and the instruction to go on from it joins the system message."""
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    if not continues(messages):
        return plain
    if plain[0]["role"] == "system":
        plain[0]["content"] += "\n\n" + CONTINUE_INSTRUCTION
    else:
        plain.insert(0, {"role": "system", "content": CONTINUE_INSTRUCTION})
    return plain


def _count(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None
