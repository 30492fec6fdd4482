"""The run's goals: issue 12's for the full run, loose bounds for the smoke run (CI)."""

FLUSH_GOAL_SLACK = 0.25


def _goal(name, goal, measured, met):
    return {"name": name, "goal": goal, "measured": measured, "met": met}


def of(results: dict, smoke: bool) -> list[dict]:
    return smoke_goals(results) if smoke else full_goals(results)


# The goals of the full run, at compare_at (200) streams per process: (figure, percentile, bound) by upstream clock.
STOP_GOALS = {"aligned": [("cancel_latency_ms", "p99", 50), ("upstream_close_ms", "p99", 20), ("ttfc_ms", "p50", 30)],
              "spread": [("cancel_latency_ms", "p99", 25), ("upstream_close_ms", "p99", 10), ("ttfc_ms", "p50", 20)]}
CPU_GOAL = 0.08
CANCEL_GOAL_AT_500 = 250
CANCEL_GOAL_TWO_WORKERS = 100


def full_goals(results: dict) -> list[dict]:
    """Issue 12's goals, each "not measured" when its phase did not run: per process at
    compare_at streams (one process, SQLite) for either upstream clock, at 500 streams, or
    with several workers (PostgreSQL), their cancel p99 at compare_at streams each."""
    meta, levels = results["meta"], results.get("levels", {})
    compare, workers, server = meta["config"]["compare_at"], meta["workers"], meta.get("server", "daphne")
    at = compare * workers
    by_clock = {"aligned": None, "spread": (results.get("spread") or {}).get(at)}
    by_clock[meta.get("upstream_clock", "aligned")] = levels.get(at)  # a run with --upstream spread: its levels
    out = []
    for clock, level in by_clock.items():
        where = f"at {at} streams ({clock} upstream, {server})"
        if workers > 1:
            value = level["cancel_latency_ms"].get("p99") if level else None
            out.append(_bound(f"cancel_latency_ms p99, {workers} workers, {compare} streams each ({clock} upstream, "
                              f"{server})", CANCEL_GOAL_TWO_WORKERS, value))
            continue
        for figure, stat, bound in STOP_GOALS[clock]:
            out.append(_bound(f"{figure} {stat} {where}", bound, level[figure].get(stat) if level else None))
        out.append(_bound(f"server_cpu_ms_per_chunk {where}", CPU_GOAL,
                          level.get("server_cpu_ms_per_chunk") if level else None))
    if workers == 1:
        busy = levels.get(500) if meta.get("upstream_clock", "aligned") == "aligned" else None
        out.append(_bound(f"cancel_latency_ms p99 at 500 streams (aligned upstream, {server})", CANCEL_GOAL_AT_500,
                          busy["cancel_latency_ms"].get("p99") if busy else None))
    direct = results.get("direct", {}).get(compare)
    relay = levels[compare]["chunks_per_s"] / max(direct["chunks_per_s"], 1e-9) if direct and compare in levels else None
    out.append(_goal(f"relay_throughput_ratio at {compare} streams", ">= 0.8", _round(relay, 3),
                     None if relay is None else relay >= 0.8))
    out += _lengths_goals(results.get("lengths"), smoke=False) if "lengths" in results else [
        _goal("db_writes_per_stream and wire_bytes_ratio by answer length", "", None, None)]
    return out + _leak_and_storm_goals(results, full=True)


def _bound(name: str, bound: float, value) -> dict:
    return _goal(name, f"<= {bound:g}", value, None if value is None else value <= bound)


def _round(value, digits):
    return None if value is None else round(value, digits)


def _lengths_goals(lens, smoke: bool) -> list[dict]:
    out = []
    for row in lens or []:
        expected = row["expected_updates"] or 0
        slack = max(2, FLUSH_GOAL_SLACK * expected) if not smoke else expected + 4
        out.append(_goal(f"db_writes_per_stream at {row['chunks']} chunks (updates; duration {row['duration_s']} s)",
                         f"~ {expected} (duration / flush + 2, +-{slack:g})", row["db_updates"],
                         abs(row["db_updates"] - expected) <= slack))
    for row in lens or []:
        out.append(_goal(f"wire_bytes_ratio at {row['chunks']} chunks", "<= 3", row["wire_bytes_ratio"],
                         row["wire_bytes_ratio"] is not None and row["wire_bytes_ratio"] <= 3))
    return out


def _leak_and_storm_goals(results: dict, full: bool = False) -> list[dict]:
    out = []
    leak, storm = results.get("leak"), results.get("storm")
    if full and not leak:
        out.append(_goal("rss_growth_mb and what is left after the leak run", "", None, None))
    if full and not storm:
        out.append(_goal("storm: exactly one terminal state each", "", None, None))
    if leak:
        out.append(_goal(f"rss_growth_mb after {leak['streams']} streams", "<= 20", leak["rss_growth_mb"],
                         leak["rss_growth_mb"] <= 20))
        clean = (leak["registry_count_after"] == 0 and leak["upstream_active_replies_after"] == 0
                 and all(a <= b for a, b in zip(leak["tasks_after"], leak["tasks_before"])))
        out.append(_goal("after the leak run: registry empty, no upstream reply open, no task beyond the baseline",
                         "0 / 0 / <= baseline",
                         f"{leak['registry_count_after']} / {leak['upstream_active_replies_after']} / "
                         f"{leak['tasks_after']} vs {leak['tasks_before']}", clean))
    if storm:
        out.append(_goal(f"storm: {storm['messages']} messages, exactly one terminal state each, rows agree",
                         "0 problems", f"{storm['problem_count']} problems, {storm['rows_unfinished']} rows unfinished",
                         storm["ok"]))
    return out


def smoke_goals(results: dict) -> list[dict]:
    """Loose bounds a loaded CI machine passes, but that a per-chunk write or a whole-content
    frame would still fail."""
    meta, levels = results["meta"], results["levels"]
    compare = meta["config"]["compare_at"]
    workers = meta["workers"]
    cancel_at = max(levels)
    cancel = levels[cancel_at]["cancel_latency_ms"].get("p99")
    close = levels[cancel_at]["upstream_close_ms"].get("p99")
    relay = levels[compare]["chunks_per_s"] / max(results["direct"][compare]["chunks_per_s"], 1e-9)
    cpu = levels[compare].get("server_cpu_ms_per_chunk")
    seed_cpu = results["seed"].get("server_cpu_ms_per_chunk") or 0
    out = [
        _goal(f"cancel_latency_ms p99 at {cancel_at} streams ({cancel_at / workers:g} per process)", "<= 2000", cancel,
              cancel is not None and cancel <= 2000),
        _goal(f"upstream_close_ms p99 at {cancel_at} streams", "<= 2000", close, close is not None and close <= 2000),
        _goal(f"relay_throughput_ratio at {compare} streams", ">= 0.5", round(relay, 3), relay >= 0.5),
    ]
    out += _lengths_goals(results["lengths"], smoke=True)
    out.append(_goal(f"server_cpu_ms_per_chunk at {compare} streams", f"<= 3 and <= half the seed-style's ({seed_cpu})",
                     cpu, cpu is not None and cpu <= 3 and cpu <= 0.5 * seed_cpu))
    return out + _leak_and_storm_goals(results)
