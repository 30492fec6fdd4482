"""Model providers, chosen by the LLM_* settings (docs/protocol.md, Configuration)."""

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from .anthropic import AnthropicProvider
from .base import Provider, ProviderError
from .demo import DemoProvider
from .http import aclose_clients
from .openai import OpenAIProvider

__all__ = ["Provider", "ProviderError", "aclose_clients", "get_provider"]

# provider name -> (class, default base URL, default model)
REMOTE = {
    "openai": (OpenAIProvider, "https://api.openai.com/v1", "gpt-4o-mini"),
    "anthropic": (AnthropicProvider, "https://api.anthropic.com/v1", "claude-3-5-haiku-latest"),
}


def get_provider() -> Provider:
    # Settings are read on every call so that overrides (tests, reloads) apply.
    kind = (settings.LLM_PROVIDER or "demo").strip().lower()
    if kind == "demo":
        return DemoProvider(delay=float(settings.LLM_DEMO_DELAY))
    if kind not in REMOTE:
        raise ImproperlyConfigured(
            f"LLM_PROVIDER must be demo, openai or anthropic, not {settings.LLM_PROVIDER!r}"
        )
    cls, base_url, model = REMOTE[kind]
    return cls(
        base_url=settings.LLM_BASE_URL or base_url,
        api_key=settings.LLM_API_KEY,
        model=settings.LLM_MODEL or model,
        connect_timeout=float(settings.LLM_CONNECT_TIMEOUT),
        read_timeout=float(settings.LLM_READ_TIMEOUT),
    )
