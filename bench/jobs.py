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


async def run_job(job: dict, *, servers, upstream, sample: bool = False, during=None) -> JobRun:
    """Run `job` in a load-generator process. With `sample`, the CPU of the servers, the
    upstream, the load generator and the whole machine is read when the job's measurement
    window opens and closes. `during(go)` is awaited beside the job (profilers)."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.loadgen", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, limit=2**30, preexec_fn=die_with_parent)
    child.stdin.write((json.dumps(job) + "\n").encode())
    await child.stdin.drain()
    line = await asyncio.wait_for(child.stdout.readline(), 180)
    if line.strip() != b"READY":
        raise RuntimeError(f"load generator failed to start: {line[:300]!r}")
    go = time.monotonic() + 0.3
    child.stdin.write((json.dumps({"go": go}) + "\n").encode())
    await child.stdin.drain()
    loadgen = psutil.Process(child.pid)
    windowed = "window" in job  # `during` then starts with the window, else at once
    side = asyncio.ensure_future(during(go)) if during and not windowed else None
    sampling = None
    while True:
        out = await child.stdout.readline()
        if out.startswith(b"WINDOW "):
            start, end = map(float, out.split()[1:])
            if sample:
                sampling = asyncio.ensure_future(_sample_window(start, end, servers, upstream, loadgen))
            if during and windowed:
                side = asyncio.ensure_future(during(start))
            continue
        break
    await child.wait()
    if not out.startswith(b"RESULT "):
        raise RuntimeError(f"load generator failed (exit {child.returncode}): {out[:300]!r}")
    run = JobRun(json.loads(out[7:]))
    if sampling:
        run.window = await sampling
    if side:
        run.extra = await side or {}
    return run


async def _sample_window(start, end, servers, upstream, loadgen) -> tuple[Sample, Sample]:
    samples = []
    for at in (start, end):
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        stats = await asyncio.to_thread(upstream.stats)
        machine = psutil.cpu_times()
        busy = machine.user + machine.nice + machine.system + machine.irq + machine.softirq + machine.steal
        samples.append(Sample(time.monotonic(), sum(s.cpu_s() for s in servers), stats["cpu_s"], stats["chunks"],
                              sum(loadgen.cpu_times()[:2]), busy))
    return samples[0], samples[1]
