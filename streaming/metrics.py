"""Prometheus metrics of this process's streams (served at /metrics)."""

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

active_streams = Gauge("stopchat_active_streams", "Streams running in this process")
streams_finished = Counter(
    "stopchat_streams_finished_total", "Streams finished, by terminal status and cancel reason or error type",
    ["status", "reason"],
)
cancel_latency = Histogram(
    "stopchat_cancel_latency_seconds", "From a stop reaching the producing process to the final row and event",
    buckets=LATENCY_BUCKETS,
)
time_to_first_chunk = Histogram(
    "stopchat_time_to_first_chunk_seconds", "From the start of a stream to its first upstream delta",
    buckets=LATENCY_BUCKETS,
)
upstream_errors = Counter("stopchat_upstream_errors_total", "Upstream failures, by error type", ["error_type"])
flushes = Counter("stopchat_flushes_total", "Saves of produced text to the database, by result", ["result"])
