"""Shared httpx plumbing for the network providers: one client per event loop,
an SSE reader with a line-size cap, and the mapping of failures to ProviderError."""

import asyncio
import json
import logging
import re
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx

from .base import ProviderError, Usage
from .transport import upstream_client

logger = logging.getLogger("streaming.providers")

MAX_LINE_BYTES = 1 << 20  # no sane event is this big; a bigger one means a broken upstream
ERROR_BODY_BYTES = 4096
MAX_DETAIL_CHARS = 300
DRAIN_SECONDS = 0.25
# Keys and tokens as upstreams echo them ("Incorrect API key provided: sk-proj-ab***cd",
# "Bearer ..."), even masked: the visible ends are still part of a secret.
SECRET_SHAPES = re.compile(r"(\b(?:Bearer|Basic)\s+|\b(?=sk-)|\b(?=sk_)|(?:api[_-]?key|x-api-key)[\"':=\s]+)"
                           r"[A-Za-z0-9*_\-]{4,}(?:\.[A-Za-z0-9*_\-]+)*", re.IGNORECASE)
# Finds the message in a JSON error body cut short by the ERROR_BODY_BYTES cap.
TRUNCATED_MESSAGE = re.compile(r'"message"\s*:\s*"((?:[^"\\]|\\.)*)')

# Building a client (its TLS context mostly) costs tens of ms of CPU, so one is
# shared by every stream; but a client's connections belong to the loop that
# opened them, and tests run each in a fresh loop, hence one client per loop.
_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient]" = (
    weakref.WeakKeyDictionary()
)


class HTTPProvider:
    """What the network providers share: where the API is, the key, the model, the time limits."""

    name = ""
    path = ""  # appended to the base URL

    def __init__(self, *, base_url: str, api_key: str, model: str, connect_timeout: float, read_timeout: float):
        self.url = base_url.rstrip("/") + self.path
        self.api_key = api_key
        self.model = model
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout

        self._connection = None  # the network stream of the reply being read, while one is
        self.usage: Usage | None = None

    def open(self, *, headers: dict, body: dict):
        """`open_sse` on this provider's URL, with its time limits and its key kept out of errors."""
        return open_sse(self.url, headers=headers, body=body, connect_timeout=self.connect_timeout,
                        read_timeout=self.read_timeout, secret=self.api_key, on_connection=self._use)

    def _use(self, connection) -> None:
        self._connection = connection

    def abort(self) -> None:
        """Close the connection of the reply being read, now (Stream.stop calls this in the
        same call that decides the stop): no loop turn between the decision and the FIN."""
        if self._connection is not None and hasattr(self._connection, "abort"):
            self._connection.abort()


def get_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None or client.is_closed:
        # Every request passes its own timeout (settings may change at runtime).
        client = upstream_client(httpx.Limits(max_connections=1000, max_keepalive_connections=200))
        _clients[loop] = client
    return client


async def aclose_clients() -> None:
    """Close the running loop's client (tests, shutdown); forget those of dead loops."""
    loop = asyncio.get_running_loop()
    for other in [other for other in _clients if other.is_closed()]:
        del _clients[other]
    client = _clients.pop(loop, None)
    if client is not None:
        await client.aclose()


@asynccontextmanager
async def open_sse(
    url: str, *, headers: dict, body: dict, connect_timeout: float, read_timeout: float, secret: str = "",
    on_connection=lambda connection: None,
) -> AsyncIterator[AsyncIterator[tuple[str, str]]]:
    """POST `body` and yield an iterator of (event name, data) pairs, one per `data:` line.

    Everything raised inside the `async with` block, including by the caller's
    parsing, comes out as ProviderError; cancellation and generator closing pass
    through untouched. Leaving the block closes the response, and httpx closes
    (never pools) a connection whose response was not read to the end: that is
    what makes a stop close the upstream request at once. `on_connection` is handed the
    reply's network stream while it is read (None after), so that it can be aborted sooner.
    """
    timeout = httpx.Timeout(
        connect=connect_timeout, read=read_timeout, write=read_timeout, pool=connect_timeout
    )
    try:
        async with get_client().stream(
            "POST", url, json=body, headers=headers, timeout=timeout
        ) as response:
            await _check_response(response, secret)
            events = _sse_data(response)
            on_connection(response.extensions.get("network_stream"))
            try:
                yield events
                await _drain(events)
            finally:
                on_connection(None)  # it goes back to the pool, or is closed: not ours to abort
    except ProviderError:
        raise
    except Exception as exc:
        raise _translate(exc, url, read_timeout, secret) from exc


def error_message(payload: object) -> str | None:
    """The message of an error object in the shapes OpenAI, Anthropic and vLLM use."""
    if not isinstance(payload, dict):
        return None
    error = payload.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    if isinstance(error, str) and error.strip():
        return error
    message = payload.get("message")
    return message if isinstance(message, str) and message.strip() else None


def short(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def redact(text: str, secret: str = "") -> str:
    """`text` without API keys: the configured one, and anything shaped like a key or a token."""
    if secret:
        text = text.replace(secret, "[redacted]")
    return SECRET_SHAPES.sub(lambda found: found.group(1) + "[redacted]", text)


def status_text(status: int) -> str:
    """What the user is told of an error status: short, and nothing the upstream said."""
    if status in (408, 429):
        return f"The model server is busy or over its limits ({status}); please try again in a moment."
    if status == 413:
        return "The request was too large for the model server (413)."
    if status >= 500:
        return f"The model server failed ({status}); please try again in a moment."
    return f"The model server rejected the request ({status})."


def reported_error(payload: dict, secret: str) -> ProviderError:
    """An error object the upstream sent inside its stream (OpenAI's and Anthropic's shapes)."""
    error = payload.get("error")
    kind = error.get("type") if isinstance(error, dict) else None
    if kind in ("overloaded_error", "rate_limit_error", "rate_limit_exceeded"):
        detail = "The model server is busy or over its limits; please try again in a moment."
    else:
        detail = "The model server reported an error while answering."
    return ProviderError("upstream", detail, short(redact(error_message(payload) or str(payload)[:300], secret)))


async def _check_response(response: httpx.Response, secret: str) -> None:
    if response.status_code >= 400:
        said = redact(await _status_detail(response), secret)
        raise ProviderError("upstream", status_text(response.status_code),
                            short(f"{response.status_code} from {response.url.host}: {said}"))
    content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "text/event-stream":
        raise ProviderError(
            "protocol",
            f"The model server answered with {short(content_type, 60) or 'no content type'}"
            " instead of an event stream",
        )


async def _status_detail(response: httpx.Response) -> str:
    # Error pages can be huge (HTML from a proxy); the first few KiB say enough.
    raw = bytearray()
    async for chunk in response.aiter_bytes():
        raw += chunk
        if len(raw) >= ERROR_BODY_BYTES:
            break
    text = raw[:ERROR_BODY_BYTES].decode("utf-8", "replace")
    try:
        reason = error_message(json.loads(text))
    except ValueError:
        found = TRUNCATED_MESSAGE.search(text)
        reason = found.group(1) if found else None
    return reason or text[:200] or response.reason_phrase


async def _lines(response: httpx.Response) -> AsyncIterator[str]:
    # Splits by hand rather than with aiter_lines(), which would buffer a line
    # of any size; memory stays bounded by MAX_LINE_BYTES plus one read.
    pending = bytearray()
    async for chunk in response.aiter_bytes():
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            if end - start > MAX_LINE_BYTES:
                break
            yield pending[start:end].rstrip(b"\r").decode("utf-8", "replace")
            start = end + 1
        del pending[:start]
        if len(pending) > MAX_LINE_BYTES:
            raise ProviderError("protocol", "The model server sent an event larger than 1 MiB")
    if pending:
        yield pending.rstrip(b"\r").decode("utf-8", "replace")


async def _sse_data(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    # Each data line is handled on its own (JSON never spans lines in practice),
    # so servers that forget the blank line between events still work.
    event = ""
    async for line in _lines(response):
        if not line:
            event = ""
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "data":
            yield event, value


async def _drain(events: AsyncIterator[tuple[str, str]]) -> None:
    # After the final event the body usually has a few bytes left (the end of
    # the chunked encoding); reading them lets the connection go back to the
    # pool instead of paying a new TCP and TLS handshake for the next answer.
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for _ in events:
                pass
    except (TimeoutError, httpx.HTTPError, ProviderError):
        pass  # then the connection is simply closed, not reused


def _translate(exc: Exception, url: str, read_timeout: float, secret: str) -> ProviderError:
    where = httpx.URL(url).host
    said = redact(f"{type(exc).__name__} talking to {where}: {exc}", secret)
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError)):
        return ProviderError("network", "Could not connect to the model server", said)
    if isinstance(exc, httpx.ReadTimeout):
        return ProviderError("timeout", f"The model server sent nothing for {read_timeout:g} seconds", said)
    if isinstance(exc, httpx.TimeoutException):  # write or pool timeout
        return ProviderError("timeout", "The model server did not respond in time", said)
    if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.UnsupportedProtocol):
        return ProviderError("network", "The connection to the model server was lost", said)
    if isinstance(exc, httpx.DecodingError):
        return ProviderError("protocol", "The model server sent a body that could not be decoded", said)
    logger.warning("Unexpected error streaming from %s", url, exc_info=exc)
    return ProviderError("unknown", "Unexpected error talking to the model server", said)
