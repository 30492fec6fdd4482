"""Anthropic's `/messages` API, streamed over SSE."""

import json
from collections.abc import AsyncIterator

from .base import ProviderError, Usage, continues
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
        body, cut = self._body(messages)
        async with self.open(headers=headers, body=body) as events:
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
                self._count(kind, payload)
                if kind == "content_block_delta":
                    delta = payload.get("delta")
                    if isinstance(delta, dict) and delta.get("type") == "text_delta":
                        text = delta.get("text")
                        if cut and isinstance(text, str) and text:
                            # The prefill lost its trailing white space, which the text so far keeps.
                            text, cut = text.lstrip() if text[0].isspace() else text, ""
                        if isinstance(text, str) and text:
                            yield text
            raise ProviderError("protocol", "The model server's answer ended before it was complete")

    def _count(self, kind: str, payload: dict) -> None:
        """Usage: the input (and a first output count) in message_start, the output so far in
        every message_delta."""
        if kind == "message_start":
            message = payload.get("message")
            usage = message.get("usage") if isinstance(message, dict) else None
            if isinstance(usage, dict):
                prompt = sum(usage.get(k) or 0 for k in ("input_tokens", "cache_creation_input_tokens",
                                                        "cache_read_input_tokens") if isinstance(usage.get(k), int))
                self.usage = Usage(prompt, usage.get("output_tokens") if isinstance(usage.get("output_tokens"), int)
                                   else None)
        elif kind == "message_delta":
            usage = payload.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("output_tokens"), int):
                self.usage = Usage((self.usage or Usage()).prompt_tokens, usage["output_tokens"])

    def _body(self, messages: list[dict]) -> tuple[dict, str]:
        """The request, and the white space cut off the end of a partial answer to continue
        (the API refuses a prefill that ends with white space)."""
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
        cut = ""
        if continues(messages):  # the partial answer is a prefill: the model goes on from its last word
            prefill = turns[-1]["content"]
            turns[-1]["content"] = prefill.rstrip()
            cut = prefill[len(turns[-1]["content"]):]
        body = {"model": self.model, "max_tokens": MAX_TOKENS, "stream": True, "messages": turns}
        if system:
            body["system"] = "\n\n".join(system)
        return body, cut
