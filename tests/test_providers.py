"""Providers against a real (fake) HTTP server: streaming and error mapping
(tests/test_provider_stops.py: a stop closes the upstream connection)."""

import asyncio
import logging
import socket
import time

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured

from streaming.providers import get_provider
from streaming.providers.anthropic import AnthropicProvider
from streaming.providers.base import CONTINUE_INSTRUCTION, Usage
from streaming.providers.demo import DemoProvider, compose_answer
from streaming.providers.openai import OpenAIProvider
from tests.helpers import BUDGET, wait_for
from tests.provider_support import MESSAGES, llm, run  # noqa: F401 (llm: a fixture)
from tests.upstream import (
    anthropic_reply,
    chat_reply,
    error_reply,
    huge_event_reply,
    raw_reply,
    reset_reply,
    stall_reply,
)

# -- OpenAI-compatible ----------------------------------------------------------------


async def test_it_streams_openai_to_completion(llm, upstream):
    upstream.enqueue(chat_reply(["Hel", "lo", ", world", "!"], delay=0.01))
    deltas, error = await run(get_provider())
    assert error is None
    assert deltas == ["Hel", "lo", ", world", "!"]
    # The upstream marks its reply finished once its last write returned, in its own thread.
    await wait_for(lambda: upstream.requests[0].finished)
    assert upstream.requests[0].chunks_sent == 4


async def test_it_sends_model_messages_stream_and_auth(llm, upstream):
    await run(get_provider())
    request = upstream.requests[0]
    assert request.path == "/v1/chat/completions"
    assert request.json == {"model": "fake-model", "messages": MESSAGES, "stream": True,
                            "stream_options": {"include_usage": True}}
    assert request.headers["authorization"] == "Bearer test-key"

    llm.LLM_API_KEY = ""
    await run(get_provider())
    assert "authorization" not in upstream.requests[1].headers


async def test_it_reads_the_usage_openai_sends_last(llm, upstream):
    upstream.enqueue(chat_reply(["Hi"], usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}))
    provider = get_provider()
    assert await run(provider) == (["Hi"], None)
    assert provider.usage == Usage(prompt_tokens=12, completion_tokens=3)
    upstream.enqueue(chat_reply(["No usage"]))  # a server that ignores stream_options
    provider = get_provider()
    await run(provider)
    assert provider.usage is None


async def test_it_asks_openai_to_continue_a_partial_answer_without_repeating_it(llm, upstream):
    partial = MESSAGES + [{"role": "assistant", "content": "Hello th", "partial": True}]
    await run(get_provider(), partial)
    assert upstream.requests[0].json["messages"] == [
        {"role": "system", "content": "Be brief.\n\n" + CONTINUE_INSTRUCTION},
        {"role": "user", "content": "Say hello"},
        {"role": "assistant", "content": "Hello th"},  # last: the model goes on from it
    ]
    await run(get_provider(), partial[1:])  # no system message of its own: the instruction comes first
    assert upstream.requests[1].json["messages"][0] == {"role": "system", "content": CONTINUE_INSTRUCTION}


async def test_it_skips_non_json_and_deltaless_lines(llm, upstream):
    upstream.enqueue(raw_reply([
        ": keep-alive comment",
        "data: not json at all",
        "data: [1, 2]",
        'data: {"choices": []}',
        'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}',
        'data: {"choices": [{"index": 0, "delta": {"content": ""}}]}',
        'data: {"choices": [{"index": 0, "delta": {"content": null}}]}',
        "",
        'data: {"choices": [{"index": 0, "delta": {"content": "kept"}}]}',
        'data:{"choices": [{"index": 0, "delta": {"content": " too"}}]}',
        "data: [DONE]",
    ]))
    assert await run(get_provider()) == (["kept", " too"], None)


async def test_it_stops_at_done_and_ignores_what_follows(llm, upstream):
    upstream.enqueue(raw_reply([
        'data: {"choices": [{"delta": {"content": "before"}}]}',
        "data: [DONE]",
        'data: {"choices": [{"delta": {"content": "after"}}]}',
    ]))
    assert await run(get_provider()) == (["before"], None)


async def test_it_reports_missing_done_as_protocol(llm, upstream):
    upstream.enqueue(chat_reply(["partial"], done=False))
    deltas, error = await run(get_provider())
    assert deltas == ["partial"]
    assert error.error_type == "protocol"


@pytest.mark.parametrize(
    "status, body, shown, said",
    [
        (401, {"error": {"message": "Incorrect API key provided: sk-proj-abcd****wxyz. See your keys."}},
         "The model server rejected the request (401).", "Incorrect API key provided: [redacted]. See your keys."),
        (429, {"error": {"message": "Rate limit reached", "type": "rate_limit"}},
         "The model server is busy or over its limits (429); please try again in a moment.", "Rate limit reached"),
        (500, {"error": {"message": "The server had an error"}},
         "The model server failed (500); please try again in a moment.", "The server had an error"),
        (502, "<html>Bad gateway from the proxy</html>",
         "The model server failed (502); please try again in a moment.", "<html>Bad gateway from the proxy</html>"),
    ],
)
async def test_it_tells_the_user_a_safe_text_and_keeps_what_the_upstream_said_for_staff(
        llm, upstream, status, body, shown, said):
    upstream.enqueue(error_reply(status, body))
    deltas, error = await run(get_provider())
    assert deltas == []
    assert (error.error_type, error.detail) == ("upstream", shown)
    assert error.internal == f"{status} from 127.0.0.1: {said}"


async def test_it_redacts_the_configured_key_and_anything_shaped_like_one(llm, upstream):
    llm.LLM_API_KEY = "my-own-secret-key-123"
    upstream.enqueue(error_reply(403, {"error": {"message": (
        "Key my-own-secret-key-123 refused; header was Bearer my-own-secret-key-123; also sk-ant-api03-XyZ_12-ab "
        "and api_key=abcdef123456")}}))
    _, error = await run(get_provider())
    assert error.detail == "The model server rejected the request (403)."
    assert "my-own-secret" not in error.internal and "XyZ" not in error.internal and "abcdef" not in error.internal
    assert error.internal.count("[redacted]") == 4


async def test_it_keeps_error_details_short(llm, upstream):
    upstream.enqueue(error_reply(400, {"error": {"message": "long " * 5000}}))
    _, error = await run(get_provider())
    assert (error.error_type, error.detail) == ("upstream", "The model server rejected the request (400).")
    assert error.internal.startswith("400 from 127.0.0.1: long long") and len(error.internal) <= 300


async def test_it_maps_an_error_object_in_the_stream_to_upstream(llm, upstream):
    upstream.enqueue(raw_reply([
        'data: {"choices": [{"delta": {"content": "a"}}]}',
        'data: {"error": {"message": "Context length exceeded"}}',
    ]))
    deltas, error = await run(get_provider())
    assert deltas == ["a"]
    assert (error.error_type, error.detail) == ("upstream", "The model server reported an error while answering.")
    assert error.internal == "Context length exceeded"


async def test_it_reports_connection_refused_as_network(llm):
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm.LLM_BASE_URL = f"http://127.0.0.1:{port}/v1"
    _, error = await run(get_provider())
    assert (error.error_type, error.detail) == ("network", "Could not connect to the model server")
    assert error.internal.startswith("ConnectError talking to 127.0.0.1:")


async def test_it_times_out_when_the_upstream_stalls(llm, upstream):
    llm.LLM_READ_TIMEOUT = 0.3
    upstream.enqueue(stall_reply(["first"]))
    started = time.monotonic()
    deltas, error = await run(get_provider())
    assert deltas == ["first"]
    assert error.error_type == "timeout" and "0.3 seconds" in error.detail
    assert 0.25 < time.monotonic() - started < 1.5
    await asyncio.to_thread(upstream.wait_closed, upstream.requests[0])
    assert upstream.requests[0].closed_early


async def test_it_times_the_silence_after_the_last_event_not_the_whole_answer(llm, upstream):
    llm.LLM_READ_TIMEOUT = 0.3
    words = [f"w{i} " for i in range(8)]
    upstream.enqueue(stall_reply(words, delay=0.1))  # events for 0.7 s, 0.1 s apart, then silence
    started = time.monotonic()
    deltas, error = await run(get_provider())
    took = time.monotonic() - started
    assert deltas == words
    assert error.error_type == "timeout"
    assert 0.7 + 0.3 - 0.05 < took < 0.7 + 0.3 + BUDGET, f"timed out after {took:.2f}s"


async def test_it_reports_a_reset_as_network_after_the_chunks_before_it(llm, upstream):
    upstream.enqueue(reset_reply(["one ", "two "]))
    deltas, error = await run(get_provider())
    assert deltas == ["one ", "two "]
    assert (error.error_type, error.detail) == ("network", "The connection to the model server was lost")


async def test_it_refuses_a_huge_event(llm, upstream):
    upstream.enqueue(huge_event_reply(2 * 1024 * 1024))
    deltas, error = await run(get_provider())
    assert deltas == []
    assert error.error_type == "protocol" and "1 MiB" in error.detail
    await wait_for(lambda: upstream.open_connections() == 0)


async def test_it_refuses_a_non_sse_answer(llm, upstream):
    upstream.enqueue(raw_reply(['{"choices": []}'], content_type="application/json"))
    _, error = await run(get_provider())
    assert error.error_type == "protocol" and "application/json" in error.detail


async def test_it_maps_unexpected_failures_to_unknown_without_leaking(llm, monkeypatch, caplog):
    def explode(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(httpx.AsyncClient, "stream", explode)
    with caplog.at_level(logging.WARNING, logger="streaming.providers"):
        _, error = await run(get_provider())
    assert error.error_type == "unknown" and "secret" not in error.detail
    assert "secret internals" in caplog.text


# -- Anthropic ------------------------------------------------------------------------


@pytest.fixture
def claude(llm):
    llm.LLM_PROVIDER = "anthropic"
    llm.LLM_API_KEY = "sk-ant-test"
    return llm


async def test_it_streams_anthropic_to_completion(claude, upstream):
    upstream.enqueue(anthropic_reply(["Hi", " there", "!"], delay=0.01))
    provider = get_provider()
    assert isinstance(provider, AnthropicProvider)
    messages = MESSAGES + [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again"}]
    assert await run(provider, messages) == (["Hi", " there", "!"], None)
    request = upstream.requests[0]
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == "sk-ant-test"
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.json == {
        "model": "fake-model",
        "max_tokens": 4096,
        "stream": True,
        "system": "Be brief.",
        "messages": messages[1:],
    }


@pytest.mark.parametrize("base", ["/v1", "/v1/", "", "/"])
async def test_it_takes_anthropics_base_url_with_or_without_v1(claude, upstream, base):
    claude.LLM_BASE_URL = upstream.base_url.removesuffix("/v1") + base
    upstream.enqueue(anthropic_reply(["Hi"]))
    assert await run(get_provider()) == (["Hi"], None)
    assert upstream.requests[0].path == "/v1/messages"


async def test_it_reads_anthropics_usage_from_the_start_and_the_last_delta(claude, upstream):
    upstream.enqueue(anthropic_reply(["a", "b", "c"], input_tokens=25))
    provider = get_provider()
    await run(provider)
    assert provider.usage == Usage(prompt_tokens=25, completion_tokens=3)


async def test_it_continues_an_anthropic_answer_as_a_prefill_without_its_trailing_space(claude, upstream):
    upstream.enqueue(anthropic_reply([" world", "!"]))
    partial = [{"role": "user", "content": "Say hello"}, {"role": "assistant", "content": "Hello ", "partial": True}]
    deltas, error = await run(get_provider(), partial)
    assert error is None
    assert upstream.requests[0].json["messages"] == [{"role": "user", "content": "Say hello"},
                                                     {"role": "assistant", "content": "Hello"}]
    assert "Hello " + "".join(deltas) == "Hello world!"  # joined with the partial as stored


async def test_the_demo_model_continues_its_own_answer_from_where_it_stopped():
    demo = DemoProvider(delay=0)
    whole = "".join([delta async for delta in demo.stream(MESSAGES)])
    partial = whole[:137]
    rest = "".join([delta async for delta in demo.stream(MESSAGES + [
        {"role": "assistant", "content": partial, "partial": True}])])
    assert partial + rest == whole


async def test_it_maps_an_anthropic_error_event_to_upstream(claude, upstream):
    upstream.enqueue(raw_reply([
        "event: content_block_delta",
        'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}',
        "",
        "event: error",
        'data: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
        "",
    ]))
    deltas, error = await run(get_provider())
    assert deltas == ["Hi"]
    assert error.error_type == "upstream" and error.detail.startswith("The model server is busy")
    assert error.internal == "Overloaded"


async def test_it_reports_a_missing_anthropic_message_stop_as_protocol(claude, upstream):
    upstream.enqueue(raw_reply([
        "event: content_block_delta",
        'data: {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}}',
        "",
    ]))
    deltas, error = await run(get_provider())
    assert deltas == ["Hi"]
    assert error.error_type == "protocol"


async def test_it_merges_consecutive_anthropic_turns(claude, upstream):
    upstream.enqueue(anthropic_reply(["ok"]))
    await run(get_provider(), [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}])
    assert upstream.requests[0].json["messages"] == [{"role": "user", "content": "one\n\ntwo"}]
    assert "system" not in upstream.requests[0].json


# -- Demo -----------------------------------------------------------------------------


async def test_it_streams_a_deterministic_markdown_demo_answer():
    messages = [{"role": "user", "content": "How do I stop a stream?"}]
    deltas, error = await run(DemoProvider(delay=0), messages)
    text = "".join(deltas)
    assert error is None and text == compose_answer(messages)
    assert text.startswith("## ") and '"How do I stop a stream?"' in text
    assert text.count("\n\n") >= 5 and "\n- " in text and "\n```" in text
    assert 250 <= len(text.split()) <= 400
    assert all(delta.strip() and delta.lstrip() == delta for delta in deltas)  # word + its spacing
    assert (await run(DemoProvider(delay=0), messages))[0] == deltas
    answers = {compose_answer([{"role": "user", "content": f"question {i}"}]) for i in range(10)}
    assert len(answers) == 10


async def test_it_cancels_the_demo_between_words():
    received = []

    async def consume():
        async for delta in DemoProvider(delay=0.01).stream([{"role": "user", "content": "hi"}]):
            received.append(delta)

    task = asyncio.create_task(consume())
    await wait_for(lambda: len(received) >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert 3 <= len(received) < 10


# -- Choosing a provider --------------------------------------------------------------


def test_it_picks_the_provider_from_settings(settings):
    settings.LLM_PROVIDER, settings.LLM_BASE_URL, settings.LLM_MODEL = "demo", "", ""
    assert (get_provider().name, get_provider().model) == ("demo", "demo")

    settings.LLM_PROVIDER = "openai"
    provider = get_provider()
    assert isinstance(provider, OpenAIProvider) and provider.model == "gpt-4o-mini"
    assert provider.url == "https://api.openai.com/v1/chat/completions"

    settings.LLM_PROVIDER = "anthropic"
    provider = get_provider()
    assert isinstance(provider, AnthropicProvider) and provider.model == "claude-3-5-haiku-latest"
    assert provider.url == "https://api.anthropic.com/v1/messages"

    settings.LLM_BASE_URL, settings.LLM_MODEL = "http://llm.local:8080/v1/", "local"
    provider = get_provider()
    assert (provider.url, provider.model) == ("http://llm.local:8080/v1/messages", "local")

    settings.LLM_PROVIDER = "gemini"
    with pytest.raises(ImproperlyConfigured):
        get_provider()
