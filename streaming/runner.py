"""Produce one answer: relay deltas, save them now and then, watch the clock, finalize once."""

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Protocol

from . import metrics
from .providers.base import Provider, ProviderError
from .registry import Stream

log = logging.getLogger("streaming.runner")
finished = logging.getLogger("streaming.finished")  # one JSON line per finished stream

TERMINAL_STATUS = {"stream_complete": "complete", "stream_cancelled": "cancelled", "stream_error": "error"}


@dataclass(frozen=True)
class Outcome:
    status: str  # complete | cancelled | error
    reason: str = ""  # cancel reason
    error_type: str = ""
    detail: str = ""  # safe to show the user
    internal: str = ""  # what the upstream said, keys redacted: the log and staff only


@dataclass(frozen=True)
class Limits:
    flush_interval: float
    max_age: float
    stale_after: float


class Store(Protocol):
    """Where a stream's row lives (chat/streams.py implements it on the Message model)."""

    async def start(self, message_id: int) -> bool:
        """pending → streaming; False when the row is no longer pending."""

    async def flush(self, message_id: int, text: str, chunk_count: int) -> str | None:
        """Append `text`, refresh the heartbeat; a stop reason when one is stored (or the row is final)."""

    async def finalize(self, message_id: int, outcome: Outcome | None, content: str, chunk_count: int) -> dict:
        """Write the terminal state once (conditional UPDATE); the terminal event of the row as it ends up."""


class Runner:
    def __init__(self, *, stream: Stream, provider: Provider, messages: list[dict], store: Store, limits: Limits):
        self.stream = stream
        self.provider = provider
        self.messages = messages
        self.store = store
        self.limits = limits
        self.unsaved: list[str] = []

    async def run(self) -> None:
        outcome = await self._produce()
        finalizing = asyncio.ensure_future(self._finalize(outcome))
        try:
            await asyncio.shield(finalizing)
        except asyncio.CancelledError:
            # A late cancel must not cut the one write that makes the row final.
            await finalizing

    async def _produce(self) -> Outcome | None:
        stream, limits = self.stream, self.limits
        reader = None
        try:
            if not await self.store.start(stream.message_id):
                return None
            reader = asyncio.get_running_loop().create_task(self._read())
            next_flush = time.monotonic() + limits.flush_interval
            while True:
                now = time.monotonic()
                deadline = min(next_flush, stream.started + limits.max_age, stream.last_update + limits.stale_after)
                await asyncio.wait({reader}, timeout=max(deadline - now, 0))
                if reader.done():
                    reader.result()
                    return Outcome("complete")
                now = time.monotonic()
                if now - stream.started >= limits.max_age:
                    return self._stop("timeout")
                if now - stream.last_update >= limits.stale_after:
                    return self._stop("stale")
                if now >= next_flush:
                    requested = await self._flush()
                    if requested:
                        return self._stop(requested)
                    next_flush = time.monotonic() + limits.flush_interval
        except asyncio.CancelledError:
            return Outcome("cancelled", reason=stream.cancel_reason or "shutdown")
        except ProviderError as error:
            log.warning("stream %s: %s error: %s", stream.message_id, error.error_type, error.internal or error.detail)
            return Outcome("error", error_type=error.error_type, detail=error.detail, internal=error.internal)
        except Exception:
            log.exception("stream %s failed", stream.message_id)
            return Outcome("error", error_type="unknown", detail="Unexpected server error")
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                await asyncio.wait({reader})

    def _stop(self, reason: str) -> Outcome:
        # Marks the stream as stopping, so a cancel arriving now does not interrupt finalization.
        if self.stream.cancel_reason is None:
            self.stream.cancel_reason = reason
            self.stream.stop_requested = time.monotonic()
        return Outcome("cancelled", reason=self.stream.cancel_reason)

    async def _read(self) -> None:
        stream, relay, unsaved = self.stream, self.stream.relay, self.unsaved
        async with contextlib.aclosing(self.provider.stream(self.messages)) as deltas:
            async for delta in deltas:
                if not delta:
                    continue
                if stream.first_chunk is None:
                    stream.first_chunk = time.monotonic()
                    metrics.time_to_first_chunk.observe(stream.first_chunk - stream.started)
                stream.chunk_count += 1
                stream.last_update = time.monotonic()
                unsaved.append(delta)
                relay.add(delta)

    async def _flush(self) -> str | None:
        text = "".join(self.unsaved)
        self.unsaved.clear()
        try:
            requested = await self.store.flush(self.stream.message_id, text, self.stream.chunk_count)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The database is away: keep the text in memory and try again next time.
            self.unsaved.insert(0, text)
            metrics.flushes.labels("failed").inc()
            log.warning("stream %s: flush failed, will retry", self.stream.message_id, exc_info=True)
            return None
        metrics.flushes.labels("ok").inc()
        return requested

    async def _finalize(self, outcome: Outcome | None) -> None:
        stream = self.stream
        stream.relay.emit()  # the terminal content is exactly the text of the frames sent before it
        content = stream.relay.text()
        for attempt in range(8):
            try:
                event = await self.store.finalize(stream.message_id, outcome, content, stream.chunk_count)
                break
            except Exception:
                log.warning("stream %s: finalize failed (attempt %d)", stream.message_id, attempt + 1, exc_info=True)
                await asyncio.sleep(min(0.1 * 2**attempt, 5))
        else:
            log.error("stream %s: could not be finalized; the sweeper will", stream.message_id)
            stream.outcome.cancel()
            return
        stream.relay.finish(event)
        stream.outcome.set_result(event)
        self._record(event)

    def _record(self, event: dict) -> None:
        """Metrics and one structured log line per finished stream."""
        stream, now = self.stream, time.monotonic()
        status = TERMINAL_STATUS.get(event["type"], event["type"])
        detail = event.get("reason") or event.get("error_type") or ""
        metrics.streams_finished.labels(status, detail).inc()
        if status == "error":
            metrics.upstream_errors.labels(detail).inc()
        if status == "cancelled" and stream.stop_requested is not None:
            metrics.cancel_latency.observe(now - stream.stop_requested)
        finished.info(json.dumps({
            "event": "stream_finished", "message_id": stream.message_id, "user_id": stream.user_id,
            "status": status, "reason": detail, "chunks": stream.chunk_count, "frames": stream.relay.seq,
            "chars": len(event.get("content", "")), "duration_ms": round((now - stream.started) * 1000),
            "ttfb_ms": round((stream.first_chunk - stream.started) * 1000) if stream.first_chunk else None,
            "worker": stream.worker,
        }))
