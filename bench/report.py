"""Figures from raw job results, and the goals (bench/render.py writes them out)."""

import datetime
import re
from collections import Counter
from pathlib import Path

from streaming.metrics import STOP_STAGES  # the server's stages, in the order they happen


def pct(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def dist(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50": r2(pct(values, 50)), "p95": r2(pct(values, 95)), "p99": r2(pct(values, 99)),
            "max": r2(max(values))}


def r2(value):
    return None if value is None else round(value, 2)


# -- per phase -------------------------------------------------------------------------------------


def level(run, streams: int, workers: int, closed: dict, token: str) -> dict:
    result = run.result
    start, end = result["window"]
    seconds = end - start
    chunks = result["window_chars"] / len(token)
    out = {"streams": streams, "per_process": streams / workers, "window_s": round(seconds, 2),
           "chunks_per_s": round(chunks / seconds, 1)}
    if run.window:
        first, last = run.window
        wall = last.at - first.at
        server_cpu = last.server_cpu_s - first.server_cpu_s
        upstream_chunks = last.upstream_chunks - first.upstream_chunks
        out.update(
            server_cpu_share=round(server_cpu / wall, 3),
            server_cpu_ms_per_chunk=round(1000 * server_cpu / chunks, 4) if chunks else None,
            upstream_chunks_per_s=round(upstream_chunks / wall, 1),
            upstream_cpu_share=round((last.upstream_cpu_s - first.upstream_cpu_s) / wall, 3),
            upstream_cpu_ms_per_chunk=round(1000 * (last.upstream_cpu_s - first.upstream_cpu_s) / upstream_chunks, 4)
            if upstream_chunks else None,
            loadgen_cpu_share=round((last.loadgen_cpu_s - first.loadgen_cpu_s) / wall, 3),
            machine_busy_cores=round((last.machine_busy_s - first.machine_busy_s) / wall, 3),
        )
        out["other_processes_cores"] = round(out["machine_busy_cores"] - out["server_cpu_share"]
                                             - out["upstream_cpu_share"] - out["loadgen_cpu_share"], 3)
    if "ttfc" in result:  # direct readers
        out["ttfc_ms"] = dist([1000 * t for t in result["ttfc"]])
        return out
    records = result["streams"]
    cancel, close, missing = [], [], 0
    for s in records:
        if s["cancel_at"] is None or s["terminal"] != "stream_cancelled":
            continue
        cancel.append(1000 * (s["terminal_at"] - s["cancel_at"]))
        if s["tag"] in closed:
            close.append(1000 * (closed[s["tag"]] - s["cancel_at"]))
        else:
            missing += 1
    ttfcs = [(s["sent_at"], 1000 * (s["first_chunk_at"] - s["sent_at"])) for s in records if s["first_chunk_at"]]
    out.update(
        cancel_latency_ms=dist(cancel), upstream_close_ms=dist(close), upstream_not_closed=missing,
        ttfc_ms=dist([ttfc for _, ttfc in ttfcs]),
        # The sends made once every stream runs (the cancel phase's), apart from the ramp's burst.
        ttfc_steady_ms=dist([ttfc for sent_at, ttfc in ttfcs if sent_at >= start]),
        wire_bytes_ratio=round(result["window_wire"] / result["window_chars"], 2) if result["window_chars"] else None,
        errors=result.get("errors", [])[:5], refused=len(result.get("refused", [])),
        refused_codes=dict(Counter(result.get("refused", []))),
        not_stopped_within_120s=result.get("not_stopped_within_120s", 0),
        finished=[s["message_id"] for s in records if s["message_id"]],
    )
    return out


def durations(db, ids: list[int]) -> dict[int, float]:
    out = {}
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        marks = ",".join(["%s"] * len(part))
        for message_id, started, finished in db.query(
                f"SELECT id, started_at, finished_at FROM chat_message WHERE id IN ({marks})", tuple(part)):
            if started and finished:
                out[message_id] = (_when(finished) - _when(started)).total_seconds()
    return out


def _when(value) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=None)
    return datetime.datetime.fromisoformat(str(value).replace("Z", "")[:26])


def db_writes(db, ids: list[int], flush: float) -> dict:
    """Row writes per stream, against the goal duration / STREAM_FLUSH_INTERVAL + 2 updates."""
    if not ids:
        return {}
    counts, times = db.writes(ids), durations(db, ids)
    done = [i for i in ids if i in times]
    if not done:
        return {}
    updates = sum(counts[i]["update"] for i in done) / len(done)
    expected = sum(times[i] / flush + 2 for i in done) / len(done)
    return {"streams": len(done), "updates_per_stream": round(updates, 2), "inserts_per_stream":
            round(sum(counts[i]["insert"] for i in done) / len(done), 2),
            "expected_updates": round(expected, 2), "mean_duration_s": round(sum(times[i] for i in done) / len(done), 2)}


def lengths(records: list[dict], db, flush: float) -> list[dict]:
    ids = [r["message_id"] for r in records]
    counts, times = db.writes(ids), durations(db, ids)
    out = []
    for r in records:
        duration = times.get(r["message_id"])
        out.append({
            "chunks": r["chunks"], "terminal": r["terminal"], "chunk_count": r["chunk_count"],
            "duration_s": r2(duration), "db_updates": counts[r["message_id"]]["update"],
            "db_inserts": counts[r["message_id"]]["insert"],
            "expected_updates": r2(duration / flush + 2) if duration is not None else None,
            "frames": r["frames"], "wire_bytes": r["wire"], "content_bytes": r["content_bytes"],
            "wire_bytes_ratio": round(r["wire"] / r["content_bytes"], 3) if r["content_bytes"] else None,
            "ttfc_ms": r2(1000 * (r["first_chunk_at"] - r["sent_at"])) if r["first_chunk_at"] else None,
        })
    return out


STATUS = {"stream_complete": "complete", "stream_cancelled": "cancelled", "stream_error": "error"}


def storm(result: dict, db, idle: dict) -> dict:
    records = result["streams"]
    ids = [r["message_id"] for r in records]
    rows = {}
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        marks = ",".join(["%s"] * len(part))
        for row in db.query(f"SELECT id, status, cancel_reason, content FROM chat_message WHERE id IN ({marks})", tuple(part)):
            rows[row[0]] = row
    problems = []
    outcomes = Counter()
    for r in records:
        row = rows.get(r["message_id"])
        outcomes[r["terminal"] or "none"] += 1
        why = []
        if len(r["events"]) != 1:
            why.append(f"{len(r['events'])} terminal events")
        if row is None:
            why.append("no row")
        else:
            if STATUS.get(r["terminal"]) != row[1]:
                why.append(f"row {row[1]} vs event {r['terminal']}")
            if row[3] != r["content"]:
                why.append("row content differs from the event's")
            if r["terminal"] == "stream_cancelled" and row[2] != r["reason"]:
                why.append(f"reason {row[2]} vs {r['reason']}")
        if r["content"] is not None and r["deltas"] != r["content"]:
            why.append("deltas do not add up to the content")
        if not r["seqs_ok"]:
            why.append("seq not contiguous")
        if r["terminal"] == "stream_complete" and r["cancel_reply"] not in ("already_finished", None):
            why.append(f"cancel answered {r['cancel_reply']}")
        if why:
            problems.append({"message_id": r["message_id"], "problems": why})
    unfinished = db.query("SELECT count(*) FROM chat_message WHERE status IN ('pending', 'streaming')")[0][0]
    return {"messages": len(records), "outcomes": dict(outcomes), "problems": problems[:20],
            "problem_count": len(problems), "rows_unfinished": unfinished, "error_frames": result["error_count"],
            "after": idle, "ok": not problems and unfinished == 0 and idle["registry_count"] == 0}


def leak(before: dict, after: dict, idle: dict, result: dict, config: dict, elapsed: float) -> dict:
    growth = [round(a - b, 2) for a, b in zip(after["rss_mb"], before["rss_mb"])]
    return {
        "streams": config["total"], "sockets": config["clients"], "chunks": config["chunks"], "rate": config["rate"], "seconds": round(elapsed, 1), "outcomes": result["outcomes"],
        "error_frames": result["error_count"], "rss_before_mb": before["rss_mb"], "rss_after_mb": after["rss_mb"],
        "rss_growth_mb": max(growth), "registry_count_after": idle["registry_count"],
        "upstream_active_replies_after": after["upstream"]["active_replies"],
        "upstream_open_connections_before": before["upstream"]["open_connections"],
        "upstream_open_connections_after": after["upstream"]["open_connections"],
        "tasks_before": before["tasks"], "tasks_after": after["tasks"],
        "threads_before": before["threads"], "threads_after": after["threads"],
    }


FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
CATEGORIES = [
    ("json (dumps/loads)", ("json/",)),
    ("websocket framing (autobahn)", ("autobahn/",)),
    ("twisted reactor and transports", ("twisted/",)),
    ("daphne", ("daphne/",)),
    ("httpx / httpcore / h11 (upstream read)", ("httpx/", "httpcore/", "h11/", "anyio/", "sniffio/")),
    ("channels / asgiref", ("channels/", "asgiref/")),
    ("database (django.db, sqlite3, psycopg)", ("django/db/", "sqlite3/", "psycopg")),
    ("django, other", ("django/",)),
    ("stream engine (streaming/)", ("streaming/",)),
    ("chat app (chat/)", ("chat/",)),
    ("logging", ("logging/",)),
    ("threads, executors", ("threading.py", "concurrent/", "queue.py")),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
]


def _category(file: str) -> str:
    for name, needles in CATEGORIES:
        if any(n in file for n in needles):
            return name
    return "other"


def _short(file: str) -> str:
    for marker in ("site-packages/", "lib/python3.11/", "/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


PLUMBING = ("asyncio/", "threading.py", "concurrent/", "daphne/", "twisted/internet/", "runpy.py", "asgiref/sync.py",
            "channels/db.py", "contextvars")


def _plumbing(func: str, file: str) -> bool:
    """Frames under which everything runs (event loop, thread pool), useless in an inclusive ranking."""
    return func == "<module>" or any(p in file for p in PLUMBING)


def profile(raw: Path, streams: int, flamegraph: str) -> dict:
    self_time, inclusive, categories = Counter(), Counter(), Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = []
        for part in stack.split(";"):
            match = FRAME.match(part)
            frames.append((match["func"], _short(match["file"])) if match else (part, ""))
        leaf = frames[-1]
        self_time[f"{leaf[0]} ({leaf[1]})"] += n
        categories[_category(leaf[1])] += n
        for func, file in set(frames):
            if not _plumbing(func, file):
                inclusive[f"{func} ({file})"] += n
    share = lambda c: [{"entry": k, "share": round(v / total, 3)} for k, v in c.most_common(15)]  # noqa: E731
    return {"streams": streams, "samples": total, "by_area": share(categories), "top_self": share(self_time),
            "top_inclusive": share(inclusive), "flamegraph": flamegraph}


def server_timings(probes: list[dict], records: list[dict]) -> dict:
    """What the servers timed during one measurement, joined to the clients' sampled cancels
    (cleanup cancels and other stops left out): each stop's stages in ms since the server read
    its frame; `frame_in`, from the client's send to that read, and `frame_out`, from the event
    written to the client's read (one machine, one monotonic clock); and how late the servers'
    100 ms loop timer fired (ms)."""
    sampled = {r["message_id"]: r for r in records
               if r["cancel_at"] is not None and r["terminal"] == "stream_cancelled"}
    stops = [stop for probe in probes for stop in probe["stops"] if stop["message_id"] in sampled]
    for stop in stops:
        client = sampled[stop["message_id"]]
        stop["frame_in"] = 1000 * (stop["requested_at"] - client["cancel_at"])
        if "event_written" in stop:
            stop["frame_out"] = 1000 * (client["terminal_at"] - stop["requested_at"]) - stop["event_written"]
    lags = [lag for probe in probes for lag in probe["lags"]]
    return {"stop_stages_ms": {stage: dist([s[stage] for s in stops if stage in s])
                               for stage in ("frame_in", *STOP_STAGES, "frame_out")},
            "loop_lag_ms": dist(lags)}
