"""Anthropic's `/messages` API, streamed over SSE."""

import json
from collections.abc import AsyncIterator

from .base import ProviderError
from .http import HTTPProvider, reported_error

API_VERSION = "2023-06-01"
MAX_TOKENS = 4096


class AnthropicProvider(HTTPProvider):
    name = "anthropic"
    path = "/messages"

    def __init__(self, *, base_url: str, **settings):
        # Anthropic's SDKs take the base without /v1 (https://api.anthropic.com); both forms work.
        base = base_url.rstrip("/")
        super().__init__(base_url=base if base.endswith("/v1") else base + "/v1", **settings)

    async def stream(self, messages: list[dict]) -> AsyncIterator[str]:
        headers = {"Accept": "text/event-stream", "anthropic-version": API_VERSION}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        async with self.open(headers=headers, body=self._body(messages)) as events:
            async for event, data in events:
                try:
                    payload = json.loads(data)
                except ValueError:
                    continue
                if not isinstance(payload, dict):
                    continue
                kind = event or payload.get("type")
                if kind == "message_stop":
                    return
                if kind == "error":
                    raise reported_error(payload, self.api_key)
                if kind == "content_block_delta":
                    delta = payload.get("delta")
                    if isinstance(delta, dict) and delta.get("type") == "text_delta":
                        text = delta.get("text")
                        if isinstance(text, str) and text:
                            yield text
            raise ProviderError("protocol", "The model server's answer ended before it was complete")

    def _body(self, messages: list[dict]) -> dict:
        system = [m["content"] for m in messages if m["role"] == "system"]
        # The API rejects two turns in a row from the same role (e.g. a user
        # prompt after an answer that failed and was left out), so merge them.
        turns: list[dict] = []
        for m in messages:
            if m["role"] == "system":
                continue
            if turns and turns[-1]["role"] == m["role"]:
                turns[-1]["content"] += "\n\n" + m["content"]
            else:
                turns.append({"role": m["role"], "content": m["content"]})
        body = {"model": self.model, "max_tokens": MAX_TOKENS, "stream": True, "messages": turns}
        if system:
            body["system"] = "\n\n".join(system)
        return body
