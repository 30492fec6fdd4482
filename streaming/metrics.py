"""Prometheus metrics of this process's streams (served at /metrics), and the recent raw
samples behind two of them, for the benchmark's exact percentiles."""

import asyncio
import collections
import time

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A stop's stages in the order they happen; each is timed from the one before it. `requested`:
# the stop was decided (a frame read, a REST call, a timer), where the clock starts; the
# upstream is aborted in that same call (Stream.stop), before the task sees its cancellation.
STOP_STAGES = ("upstream_aborted", "task_cancelled", "row_final", "event_written")
LAG_INTERVAL = 0.1  # how often the lag monitor's timer is set
RECENT = 5000

active_streams = Gauge("stopchat_active_streams", "Streams running in this process")
streams_finished = Counter(
    "stopchat_streams_finished_total", "Streams finished, by terminal status and cancel reason or error type",
    ["status", "reason"],
)
cancel_latency = Histogram(
    "stopchat_cancel_latency_seconds", "From a stop reaching the producing process to the final row and event",
    buckets=LATENCY_BUCKETS,
)
stop_stage = Histogram(
    "stopchat_stop_stage_seconds",
    "How long each stage of a stop took, from the stage before it (requested, upstream_aborted, "
    "task_cancelled, row_final, event_written)",
    ["stage"], buckets=LATENCY_BUCKETS,
)
event_loop_lag = Histogram(
    "stopchat_event_loop_lag_seconds", f"How late a timer set every {LAG_INTERVAL * 1000:g} ms fires",
    buckets=LATENCY_BUCKETS,
)
time_to_first_chunk = Histogram(
    "stopchat_time_to_first_chunk_seconds", "From the start of a stream to its first upstream delta",
    buckets=LATENCY_BUCKETS,
)
tokens = Counter("stopchat_tokens", "Tokens of finished answers (the model server's counts, or estimates), "
                 "by kind (prompt, completion) and the answer's status", ["kind", "status"])
upstream_errors = Counter("stopchat_upstream_errors_total", "Upstream failures, by error type", ["error_type"])
flushes = Counter("stopchat_flushes_total", "Saves of produced text to the database, by result", ["result"])

recent_stops: collections.deque = collections.deque(maxlen=RECENT)  # (message id, {stage: monotonic time})
recent_lags: collections.deque = collections.deque(maxlen=RECENT)  # seconds late


def stop_reached(timeline: dict, stage: str, message_id: int | None = None) -> None:
    """Record that a stop reached `stage` now (once), timed from the stage before it; its
    whole timeline is kept (with `message_id`) once the row is final."""
    if stage in timeline or "requested" not in timeline:
        return
    timeline[stage] = now = time.monotonic()
    before = [timeline[s] for s in ("requested", *STOP_STAGES) if s in timeline and s != stage]
    stop_stage.labels(stage).observe(now - max(before))
    if stage == "row_final":
        recent_stops.append((message_id, timeline))


class LagMonitor:
    """A timer set every LAG_INTERVAL: how late it fires is how long the event loop takes to
    get round to anything scheduled (a stop's next step included)."""

    def __init__(self):
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._schedule(asyncio.get_running_loop())

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _schedule(self, loop) -> None:
        due = loop.time() + LAG_INTERVAL
        self._handle = loop.call_at(due, self._fire, loop, due)

    def _fire(self, loop, due: float) -> None:
        lag = max(loop.time() - due, 0.0)
        event_loop_lag.observe(lag)
        recent_lags.append(lag)
        self._schedule(loop)


lag_monitor = LagMonitor()
