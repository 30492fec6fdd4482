"""What the provider tests share: the prompt, the provider settings on the fake upstream,
and waiting for the upstream to see a connection closed."""

import asyncio

import pytest

from streaming.providers import ProviderError, aclose_clients
from tests.helpers import BUDGET, wait_for

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello"},
]


@pytest.fixture
async def llm(settings, llm):
    """The suite's fake-upstream settings (tests/conftest.py) with shorter time limits,
    as settings to adjust; closes the client after."""
    settings.LLM_CONNECT_TIMEOUT = 1.0
    settings.LLM_READ_TIMEOUT = 2.0
    yield settings
    await aclose_clients()
    await wait_for(lambda: llm.open_connections() == 0)


async def run(provider, messages=MESSAGES):
    """All deltas, and the ProviderError that ended the stream (or None)."""
    deltas = []
    try:
        async for delta in provider.stream(messages):
            deltas.append(delta)
    except ProviderError as exc:
        return deltas, exc
    return deltas, None


async def assert_closed_promptly(upstream, request, since):
    await asyncio.to_thread(upstream.wait_closed, request, 2.0)
    assert request.closed_early
    assert request.closed_at - since < BUDGET
    await wait_for(lambda: upstream.open_connections() == 0)
