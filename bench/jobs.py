"""Runs load-generator processes and samples the servers' CPU over their measurement window."""

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field

import psutil

from .cluster import ROOT, die_with_parent


@dataclass
class Sample:
    at: float
    server_cpu_s: float
    upstream_cpu_s: float
    upstream_chunks: int
    loadgen_cpu_s: float
    machine_busy_s: float  # every process of the machine, in core-seconds


@dataclass
class JobRun:
    result: dict
    window: tuple[Sample, Sample] | None = None
    extra: dict = field(default_factory=dict)


def split(job: dict, procs: int) -> list[dict]:
    """One job per process: the clients and users shared out, tags kept apart."""
    if procs <= 1 or job["clients"] < 2 * procs:
        return [job]
    parts = []
    for p in range(procs):
        clients = job["clients"] // procs + (1 if p < job["clients"] % procs else 0)
        servers = job["servers"]
        shift = p % len(servers) if servers else 0
        parts.append({**job, "name": f"{job['name']}.p{p}", "clients": clients, "users": job["users"][p::procs],
                      "servers": servers[shift:] + servers[:shift]})
    return parts


def merge(results: list[dict]) -> dict:
    if len(results) == 1:
        return results[0]
    merged: dict = {}
    for result in results:
        for key, value in result.items():
            if key == "window":
                merged[key] = value
            elif isinstance(value, (int, float)):
                merged[key] = merged.get(key, 0) + value
            elif isinstance(value, list):
                merged.setdefault(key, []).extend(value)
            elif isinstance(value, dict):
                bucket = merged.setdefault(key, {})
                for k, v in value.items():
                    bucket[k] = bucket.get(k, 0) + v
    return merged


async def run_job(job: dict, *, servers, upstream, procs: int = 1, sample: bool = False, during=None) -> JobRun:
    """Run `job` in `procs` load-generator processes. With `sample`, CPU of the servers, the
    upstream and the load generators is read at the start and end of the job's window.
    `during(go)` is awaited beside the job (profilers)."""
    parts = split(job, procs)
    children = []
    for part in parts:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.loadgen", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, limit=2**30, preexec_fn=die_with_parent)
        child.stdin.write((json.dumps(part) + "\n").encode())
        await child.stdin.drain()
        children.append(child)
    for child in children:
        line = await asyncio.wait_for(child.stdout.readline(), 180)
        if line.strip() != b"READY":
            raise RuntimeError(f"load generator failed to start: {line[:300]!r}")
    go = time.monotonic() + 0.3
    for child in children:
        child.stdin.write((json.dumps({"go": go}) + "\n").encode())
        await child.stdin.drain()
    loadgens = [psutil.Process(child.pid) for child in children]
    sampling = asyncio.ensure_future(_sample_window(job, go, servers, upstream, loadgens)) if sample else None
    side = asyncio.ensure_future(during(go)) if during else None
    results = []
    for child in children:
        out = await child.stdout.readline()
        await child.wait()
        if not out.startswith(b"RESULT "):
            raise RuntimeError(f"load generator failed (exit {child.returncode}): {out[:300]!r}")
        results.append(json.loads(out[7:]))
    run = JobRun(merge(results))
    if sampling:
        run.window = await sampling
    if side:
        run.extra = await side or {}
    return run


async def _sample_window(job, go, servers, upstream, loadgens) -> tuple[Sample, Sample]:
    start = go + job["ramp"] + job["warmup"]
    samples = []
    for at in (start, start + job["window"]):
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        stats = await asyncio.to_thread(upstream.stats)
        loadgen_cpu = sum(sum(p.cpu_times()[:2]) for p in loadgens)
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
        samples.append(Sample(time.monotonic(), sum(s.cpu_s() for s in servers), stats["cpu_s"], stats["chunks"],
                              loadgen_cpu, busy))
    return samples[0], samples[1]
