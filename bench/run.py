"""`python -m bench`: the benchmark, every phase in one run, or one question at a time:
`python -m bench --only PHASE[,PHASE] --levels N[,N] --upstream aligned|spread
[--server daphne|uvicorn] --out PATH`.

Phases (each against the baselines measured in the same run):
  direct     the load generator reads the upstream itself (throughput and TTFC baseline)
  levels     the real server at each concurrency: steady window, then cancels at random points;
             with each level, the server's own timing of every stop's stages and its loop lag
  spread     the levels measurement at compare_at streams with the upstream's chunk clocks spread
  servers    at compare_at streams, aligned and spread, under the other ASGI server
  profile    py-spy on the server under the compare_at load (full run only)
  lengths    one answer of 1k / 10k / 100k chunks: DB writes and wire bytes
  storm      sends and cancels in quick succession; events checked against rows
  leak       10,000 short streams, half cancelled; RSS, registry, upstream and tasks after
  frame0     the real server with STREAM_FRAME_INTERVAL=0 (the naive-relay CPU baseline)
  seed       bench/naive.py, the seed-style relay (a write and a full-content frame per chunk)
"""

import asyncio
import datetime
import itertools
import os
import json
import platform
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import report
from . import cluster
from .cluster import BIN, Database, Server, Upstream, clear_redis_prefix, server_env
from .jobs import run_job
from .upstream import TOKEN

RESULTS = Path(__file__).resolve().parent / "results"
PROJECTS_PER_USER = 24
SERVER_TREE = [""]  # the commit the servers run from, with --server-tree

FULL = {
    "levels": [1, 50, 200, 500], "window": 4.0, "warmup": 1.0, "cancel_phase": 5.0, "max_start": 30.0,
    "cancel_gap": {1: (0.1, 0.3), "default": (1.0, 5.0)}, "rate": 25,
    "lengths": [1000, 10000, 100000], "length_rate": 4000, "seed_lengths": [1000, 10000],
    "storm": {"clients": 50, "sends": 20}, "leak": {"warm": 300, "total": 10000, "clients": 50, "chunks": 8, "rate": 5},
    "compare_at": 200, "profile": 6.0, "users": 520,
}
SMOKE = {
    "levels": [1, 20], "direct_levels": [20], "window": 1.5, "warmup": 0.5, "cancel_phase": 2.0, "max_start": 10.0,
    "cancel_gap": {1: (0.05, 0.15), "default": (1.0, 2.0)}, "rate": 25,
    "lengths": [1000, 5000], "length_rate": 4000, "seed_lengths": [300],
    "storm": {"clients": 10, "sends": 8}, "leak": {"warm": 20, "total": 100, "clients": 20, "chunks": 8, "rate": 5},
    "compare_at": 20, "profile": 0, "users": 40,
}


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


PHASES = ("direct", "levels", "spread", "servers", "profile", "lengths", "storm", "leak", "frame0", "seed")
SMOKE_PHASES = ("direct", "levels", "lengths", "storm", "leak", "frame0", "seed")
SERVER_APP = "chatproj.asgi:application"


class Bench:
    def __init__(self, config: dict, backend: str, workdir: Path, stem: str, server: str = "daphne",
                 clock: str = "aligned"):
        self.config, self.backend, self.workdir, self.stem = config, backend, workdir, stem
        self.figures = RESULTS  # where the profile's flame graph goes (--out's folder, if given)
        self.server, self.clock = server, clock  # the ASGI server and the upstream's chunk clock measured
        self.workers = 2 if backend == "pg" else 1
        self.prefix = f"stopchat-bench-{secrets.token_hex(4)}" if backend == "pg" else None
        self.results: dict = {}
        self.servers: list[Server] = []
        self.slots = itertools.count()  # each job talks in projects of its own

    # -- processes ------------------------------------------------------------------------------

    def start(self) -> None:
        self.upstream = Upstream()
        self.db = Database(self.backend, self.workdir)
        env = server_env(self.db, self.upstream, self.prefix)
        prepared = self.db.prepare(env, self.config["users"], PROJECTS_PER_USER)
        self.users, self.staff = prepared["users"], prepared["staff_session"]

    def serve(self, app: str = SERVER_APP, server: str | None = None, **env) -> list[Server]:
        """Servers of `app` (under the run's ASGI server, or `server`; the seed baseline is daphne's)."""
        self.stop_servers()
        kind = (server or self.server) if app == SERVER_APP else "daphne"
        environment = server_env(self.db, self.upstream, self.prefix, **env)
        self.servers = [Server(environment, app, self.workdir / f"{kind}-{i}.log", kind) for i in range(self.workers)]
        return self.servers

    def serving(self) -> None:
        """The real server, unless a phase before left it running."""
        if not self.servers:
            self.serve()

    def stop_servers(self) -> None:
        for server in self.servers:
            server.stop()
        self.servers = []

    def close(self) -> None:
        self.stop_servers()
        self.upstream.stop()
        self.db.drop()
        if self.prefix:
            clear_redis_prefix(self.prefix)

    # -- jobs -----------------------------------------------------------------------------------

    def job(self, kind: str, name: str, clients: int = 1, **fields) -> dict:
        slot = next(self.slots)
        if slot >= PROJECTS_PER_USER:
            raise RuntimeError("more jobs than projects per user: raise PROJECTS_PER_USER")
        return {"kind": kind, "name": name, "clients": clients, "users": self.users, "slot": slot,
                "servers": [s.address for s in self.servers], "upstream": self.upstream.base_url,
                "rate": self.config["rate"], "clock": self.clock, **fields}

    def steady(self, kind: str, name: str, streams: int, cancel_phase: float = 0.0, **fields) -> dict:
        c = self.config
        gap = c["cancel_gap"].get(streams, c["cancel_gap"]["default"])
        return self.job(kind, name, streams, ramp=min(2.0, streams / 200), warmup=c["warmup"], window=c["window"],
                        cancel_phase=cancel_phase, cancel_gap=gap, max_start=c["max_start"], **fields)

    async def measure(self, kind: str, name: str, streams: int, cancel_phase: float = 0.0, during=None,
                      **fields) -> dict:
        """One steady window (and cancel phase) at `streams`; with the real server, also the
        stages of the stops it timed and how late its loop's timer fired, over this run only."""
        self.upstream.reset()
        probes = kind == "streams"
        if probes:
            self.probe(reset=True)
        job = self.steady(kind, name, streams, cancel_phase, **fields)
        run = await run_job(job, servers=self.servers, upstream=self.upstream, sample=True, during=during)
        closed = self.upstream.stats(closed=True)["closed"]
        level = report.level(run, streams, self.workers, closed, TOKEN)
        if probes:
            level.update(report.server_timings(self.probe(reset=True), run.result["streams"]))
        return level

    def probe(self, reset: bool = False) -> list[dict]:
        path = "/bench/probe" + ("?reset=1" if reset else "")
        return [server.get(path, self.staff) for server in self.servers]

    async def wait_idle(self, timeout: float = 30.0) -> dict:
        """Until no server has a stream and the upstream has no reply in flight."""
        deadline = time.monotonic() + timeout
        while True:
            counts = [s.get("/api/streams/", self.staff)["count"] for s in self.servers]
            active = self.upstream.stats()["active_replies"]
            if (sum(counts) == 0 and active == 0) or time.monotonic() > deadline:
                return {"registry_count": sum(counts), "upstream_active_replies": active}
            await asyncio.sleep(0.2)

    # -- phases ---------------------------------------------------------------------------------

    async def phase_direct(self) -> None:
        self.results["direct"] = {}
        for streams in self.config.get("direct_levels", self.config["levels"]):
            log(f"direct: {streams} clients reading the upstream")
            self.results["direct"][streams] = await self.measure("direct", f"direct{streams}", streams)

    async def phase_levels(self) -> None:
        self.serve()
        self.results["levels"] = {}
        for streams in self.config["levels"]:
            log(f"levels: {streams} streams through {self.server} ({self.clock} upstream)")
            result = await self.measure("streams", f"lvl{streams}", streams, self.config["cancel_phase"])
            result["db"] = report.db_writes(self.db, result.pop("finished"), self.config_flush())
            self.results["levels"][streams] = result
            await self.wait_idle()

    async def compare_level(self, name: str, clock: str) -> dict:
        streams = self.per_process_compare()
        result = await self.measure("streams", name, streams, self.config["cancel_phase"], clock=clock)
        result.pop("finished")
        await self.wait_idle()
        return result

    def per_process_compare(self) -> int:
        """compare_at streams on each worker (the goals are per process)."""
        return self.config["compare_at"] * self.workers

    async def phase_spread(self) -> None:
        streams = self.per_process_compare()
        log(f"spread: {streams} streams through {self.server}, the upstream's chunk clocks spread")
        self.serving()
        self.results["spread"] = {streams: await self.compare_level(f"spread{streams}", "spread")}

    async def phase_servers(self) -> None:
        other = "uvicorn" if self.server == "daphne" else "daphne"
        log(f"servers: {self.per_process_compare()} streams under {other}, aligned and spread")
        self.serve(server=other)
        self.results["servers"] = {other: {clock: await self.compare_level(f"{other}-{clock}", clock)
                                           for clock in ("aligned", "spread")}}
        self.serve()

    async def spy(self, delay: float, seconds: float, raw: Path, svg: Path | None = None) -> None:
        """py-spy on the (first) server: collapsed stacks to `raw`, a flame graph to `svg`."""
        binary = shutil.which("py-spy") or str(BIN / "py-spy")
        await asyncio.sleep(delay)
        common = ["record", "--pid", str(self.servers[0].pid), "--duration", str(int(seconds)), "--rate", "200",
                  "--nonblocking"]
        outputs = [("raw", raw)] + ([("flamegraph", svg)] if svg else [])
        procs = [await asyncio.create_subprocess_exec(binary, *common, "--format", fmt, "-o", str(out),
                                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                 for fmt, out in outputs]
        for proc in procs:
            await proc.wait()

    async def phase_profile(self) -> None:
        streams = self.config["compare_at"]
        if not self.config["profile"]:
            return
        self.serving()
        log(f"profile: py-spy on the server under {streams} steady streams")
        seconds = self.config["profile"]
        raw = self.workdir / "profile.txt"

        async def record(start: float) -> None:
            await self.spy(start - time.monotonic(), seconds, raw, self.figures / f"{self.stem}-profile.svg")

        saved = self.config["window"]
        self.config["window"] = seconds + 1
        try:
            await self.measure("streams", f"prof{streams}", streams, 0.0, during=record)
        finally:
            self.config["window"] = saved
        svg = self.figures / f"{self.stem}-profile.svg"
        shown = svg.relative_to(RESULTS.parent.parent) if svg.is_relative_to(RESULTS.parent.parent) else svg
        self.results["profile"] = (report.profile(raw, streams, str(shown)) if raw.exists()
                                   else {"error": "py-spy produced nothing"})
        await self.wait_idle()

    def config_flush(self) -> float:
        return 0.5  # STREAM_FLUSH_INTERVAL's default, which the runs keep

    async def lengths(self, lengths: list[int]) -> list[dict]:
        job = self.job("lengths", f"len{secrets.token_hex(2)}", lengths=lengths, rate=self.config["length_rate"])
        run = await run_job(job, servers=self.servers[:1], upstream=self.upstream)
        return report.lengths(run.result["lengths"], self.db, self.config_flush())

    async def phase_lengths(self) -> None:
        self.serving()
        log(f"lengths: answers of {self.config['lengths']} chunks")
        self.results["lengths"] = await self.lengths(self.config["lengths"])

    async def phase_storm(self) -> None:
        storm = self.config["storm"]
        self.serving()
        log(f"storm: {storm['clients']} clients x {storm['sends']} sends and cancels")
        job = self.job("storm", "storm", storm["clients"], sends=storm["sends"], cancel_within=0.3,
                       users=self.users[-storm["clients"]:])
        run = await run_job(job, servers=self.servers, upstream=self.upstream)
        idle = await self.wait_idle()
        self.results["storm"] = report.storm(run.result, self.db, idle)

    async def phase_leak(self) -> None:
        leak = self.config["leak"]
        self.serving()
        log(f"leak: warm-up {leak['warm']} streams, then {leak['total']} streams, half cancelled")
        common = {"chunks": leak["chunks"], "rate": leak["rate"]}
        await run_job(self.job("churn", "warm", leak["clients"], total=leak["warm"], **common),
                      servers=self.servers, upstream=self.upstream)
        before = await self.snapshot()
        started = time.monotonic()
        raw = self.workdir / "profile-churn.txt"

        async def record(go: float) -> None:  # where a stream's own cost goes (start, cancel, finalize)
            if self.config["profile"]:
                await self.spy(go + 3 - time.monotonic(), self.config["profile"], raw)

        run = await run_job(self.job("churn", "churn", leak["clients"], total=leak["total"], **common),
                            servers=self.servers, upstream=self.upstream, during=record)
        elapsed = time.monotonic() - started
        idle = await self.wait_idle()
        await asyncio.sleep(1.0)
        after = await self.snapshot()
        self.results["leak"] = report.leak(before, after, idle, run.result, leak, elapsed)
        if raw.exists():
            self.results["profile_churn"] = report.profile(raw, leak["clients"], "")

    async def snapshot(self) -> dict:
        await self.wait_idle()
        await asyncio.sleep(0.5)
        probes = [s.get("/bench/probe", self.staff) for s in self.servers]
        return {"rss_mb": [round(s.rss_mb(), 2) for s in self.servers], "tasks": [p["tasks"] for p in probes],
                "threads": [p["threads"] for p in probes], "upstream": self.upstream.stats()}

    async def phase_frame0(self) -> None:
        streams = self.config["compare_at"]
        log(f"frame0: STREAM_FRAME_INTERVAL=0 at {streams} streams")
        self.serve(STREAM_FRAME_INTERVAL=0)
        self.results["frame0"] = await self.measure("streams", "frame0", streams)
        await self.wait_idle()

    async def phase_seed(self) -> None:
        streams = self.config["compare_at"]
        log(f"seed: the seed-style relay at {streams} streams, and lengths {self.config['seed_lengths']}")
        self.serve("bench.naive:application")
        result = await self.measure("streams", "seed", streams)
        result["db"] = report.db_writes(self.db, result.pop("finished"), self.config_flush())
        result["lengths"] = await self.lengths(self.config["seed_lengths"])
        self.results["seed"] = result

    async def run(self, smoke: bool, phases: tuple[str, ...]) -> dict:
        started = time.monotonic()
        log(f"start: upstream, {self.backend} database, {self.config['users']} users")
        self.start()
        try:
            for name in phases:
                await getattr(self, f"phase_{name}")()
                # What is measured so far, should a later phase fail.
                (self.workdir / "partial.json").write_text(json.dumps(self.results, default=str))
        finally:
            self.close()
        self.results["meta"] = meta(self.backend, self.workers, smoke, self.config, time.monotonic() - started)
        self.results["meta"].update(server=self.server, upstream_clock=self.clock, phases=list(phases))
        return self.results


def meta(backend: str, workers: int, smoke: bool, config: dict, elapsed: float) -> dict:
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    import os

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=RESULTS.parent.parent, capture_output=True, text=True).stdout.strip()

    if cluster.SERVER_ROOT != cluster.ROOT:
        commit = f"{git('rev-parse', '--short', SERVER_TREE[0])} (a snapshot, --server-tree {SERVER_TREE[0]})"
    else:
        dirty = git("status", "--porcelain", "--", "chat", "streaming", "chatproj")
        commit = git("rev-parse", "--short", "HEAD") + (" + uncommitted server changes (work tree)" if dirty else "")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "server_commit": commit,
        "mode": "smoke" if smoke else "full", "backend": backend, "workers": workers,
        "machine": f"{os.cpu_count()} cores, {cpu}", "python": platform.python_version(),
        "elapsed_s": round(elapsed, 1), "config": config,
        "users": "one user (own project, own session) per client socket",
        "server_settings": "DEBUG=0, STREAM_FLUSH_INTERVAL=0.5, STREAM_FRAME_INTERVAL=0.05 (defaults), "
                           "STREAM_MAX_PER_PROCESS=5000, STREAM_MAX_PER_USER=1000",
    }


def workdir_for(stem: str) -> Path:
    """A folder of this run's own for its databases and daphne logs (not committed); those of
    finished runs of the same kind are removed, never one of a run still going on."""
    base = RESULTS / "work"
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob(f"{stem}-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(old, ignore_errors=True)
    folder = base / f"{stem}-{os.getpid()}"
    folder.mkdir()
    return folder
