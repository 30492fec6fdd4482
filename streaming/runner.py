"""Produce one answer: relay deltas, save them now and then, watch the clock, finalize once."""

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

from . import metrics
from .ends import Ending, Outcome
from .providers.base import Provider, ProviderError, Usage
from .registry import Stream

log = logging.getLogger("streaming.runner")
finished = logging.getLogger("streaming.finished")  # one structured record per finished stream

FINALIZE_ATTEMPTS = 8  # backing off up to 5 s: rides out a database restart
CHARS_PER_TOKEN = 4  # the usual rough measure, for an answer the model server did not count


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Limits:
    flush_interval: float
    max_age: float
    stale_after: float


class Store(Protocol):
    """Where a stream's row lives (chat/answers.py implements it on the Message model)."""

    async def start(self, message_id: int) -> bool:
        """pending → streaming; False when the row is no longer pending."""

    async def flush(self, message_id: int, text: str, chunk_count: int) -> str | None:
        """Append `text`, refresh the heartbeat; a stop reason when one is stored (or the row is final)."""

    async def finalize(self, message_id: int, outcome: Outcome | None, content: str, chunk_count: int,
                       on_final=None) -> Ending:
        """Write the terminal state once (conditional UPDATE); the row's Ending as it ends up,
        also handed to `on_final(ending)` the moment it is known."""


def _reader_ended(reader: asyncio.Task) -> None:
    """A reader left to finish its cleanup alone: what it raised then is of no use (logged)."""
    if not reader.cancelled() and reader.exception() is not None:
        log.debug("an upstream reader's cleanup raised", exc_info=reader.exception())


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
            # The upstream request goes out while the row's start waits for the database: the
            # first chunk does not wait for a write (a row no longer pending cancels the request).
            reader = asyncio.get_running_loop().create_task(self._read())
            if not await self.store.start(stream.message_id):
                return None
            next_flush = time.monotonic() + limits.flush_interval
            while True:
                now = time.monotonic()
                deadline = min(next_flush, stream.started_monotonic + limits.max_age,
                               stream.last_progress + limits.stale_after)
                await asyncio.wait({reader}, timeout=max(deadline - now, 0))
                if reader.done():
                    reader.result()
                    return Outcome("complete")
                now = time.monotonic()
                if now - stream.started_monotonic >= limits.max_age:
                    return self._stopped("timeout")
                if now - stream.last_progress >= limits.stale_after:
                    return self._stopped("stale")
                if now >= next_flush:
                    requested = await self._flush()
                    if requested:
                        return self._stopped(requested)
                    next_flush = time.monotonic() + limits.flush_interval
        except asyncio.CancelledError:
            metrics.stop_reached(stream.stop_timeline, "task_cancelled")
            return Outcome("cancelled", reason=stream.stop_reason or "shutdown")
        except ProviderError as error:
            log.warning("stream %s: %s error: %s", stream.message_id, error.error_type, error.internal or error.detail)
            return Outcome("error", error_type=error.error_type, detail=error.detail, internal=error.internal)
        except Exception:
            log.exception("stream %s failed", stream.message_id)
            return Outcome("error", error_type="unknown", detail="Unexpected server error")
        finally:
            if reader is not None and not reader.done():
                # The connection is closed in this call; the reader's own cleanup (httpx's, tens
                # of ms of loop turns at 200 streams) goes on without holding up the final row.
                # Cancelled, it appends no more text: its next step raises.
                if stream.abort_upstream is not None:
                    stream.abort_upstream()
                reader.cancel()
                reader.add_done_callback(_reader_ended)
            metrics.stop_reached(stream.stop_timeline, "upstream_aborted")  # when not done at once

    def _stopped(self, reason: str) -> Outcome:
        # Claimed on the stream, so a stop arriving now does not interrupt finalization.
        if self.stream.claim_stop(reason):
            metrics.stop_reached(self.stream.stop_timeline, "task_cancelled")  # decided by the task itself
        return Outcome("cancelled", reason=self.stream.stop_reason)

    async def _read(self) -> None:
        stream, relay, unsaved = self.stream, self.stream.relay, self.unsaved
        stream.abort_upstream = getattr(self.provider, "abort", None)  # the demo model has no connection
        async with contextlib.aclosing(self.provider.stream(self.messages)) as deltas:
            async for delta in deltas:
                if not delta:
                    continue
                now = time.monotonic()
                if stream.first_chunk_at is None:
                    stream.first_chunk_at = now
                    metrics.time_to_first_chunk.observe(now - stream.started_monotonic)
                stream.chunk_count += 1
                stream.last_progress = now
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
        if outcome is not None:
            outcome = self._with_usage(outcome, content)
        for attempt in range(FINALIZE_ATTEMPTS):
            try:
                ending = await self.store.finalize(stream.message_id, outcome, content, stream.chunk_count,
                                                   on_final=self._tell_watchers)
                break
            except Exception:
                log.warning("stream %s: finalize failed (attempt %d)", stream.message_id, attempt + 1, exc_info=True)
                await asyncio.sleep(min(0.1 * 2**attempt, 5))
        else:
            log.error("stream %s: could not be finalized; the sweeper will", stream.message_id)
            stream.ending.cancel()
            return
        stream.ending.set_result(ending)
        self._record(ending, len(content), outcome.usage if outcome is not None else None)

    def _tell_watchers(self, ending: Ending) -> None:
        """The row is final: its terminal event goes to the watchers now, not a loop turn later."""
        metrics.stop_reached(self.stream.stop_timeline, "row_final", self.stream.message_id)
        self.stream.relay.finish(ending.event, self.stream.stop_timeline or None)

    def _with_usage(self, outcome: Outcome, content: str) -> Outcome:
        """The model server's counts where it gave them; an estimate where it did not (an
        answer stopped before its usage came, a server that sends none), marked as one."""
        told = getattr(self.provider, "usage", None) or Usage()
        prompt = told.prompt_tokens
        # A count of the output is final only at the end (Anthropic's first one is a placeholder).
        completion = told.completion_tokens if outcome.status == "complete" else None
        estimated = prompt is None or completion is None
        if prompt is None:
            prompt = estimate_tokens("".join(m["content"] for m in self.messages))
        if completion is None:
            completion = estimate_tokens(content)
        return dataclasses.replace(outcome, usage=Usage(prompt, completion), usage_estimated=estimated)

    def _record(self, ending: Ending, chars: int, usage: Usage | None) -> None:
        """Metrics and one structured log record per finished stream."""
        stream, now = self.stream, time.monotonic()
        metrics.streams_finished.labels(ending.status, ending.detail).inc()
        if usage is not None:
            metrics.tokens.labels("prompt", ending.status).inc(usage.prompt_tokens or 0)
            metrics.tokens.labels("completion", ending.status).inc(usage.completion_tokens or 0)
        if ending.status == "error":
            metrics.upstream_errors.labels(ending.detail).inc()
        if ending.status == "cancelled" and stream.stop_requested_at is not None:
            metrics.cancel_latency.observe(now - stream.stop_requested_at)
        ttfc = stream.first_chunk_at - stream.started_monotonic if stream.first_chunk_at else None
        record = {
            "event": "stream_finished", "message_id": stream.message_id, "user_id": stream.user_id,
            "status": ending.status, "reason": ending.detail, "chunks": stream.chunk_count, "frames": stream.relay.seq,
            "chars": chars, "duration_ms": round((now - stream.started_monotonic) * 1000),
            "ttfc_ms": round(ttfc * 1000) if ttfc is not None else None, "worker": stream.worker,
        }
        finished.info("stream %s finished: %s %s, %d chunks in %d ms", stream.message_id, ending.status,
                      ending.detail, stream.chunk_count, record["duration_ms"], extra=record)
