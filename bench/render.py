"""The outputs of a run: JSON, markdown tables and the latency plot."""

import json
from pathlib import Path

from .report import STOP_STAGES, r2

MET = {True: "yes", False: "**no**", None: "not measured"}


def write(results: dict, folder: Path, stem: str, plot: bool = True) -> None:
    text = markdown(results)  # first: it adds the seed-style ratios to the results
    (folder / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (folder / f"{stem}.md").write_text(text)
    if plot:
        latency_plot(results, folder / ("latency.png" if stem == "latest" else f"{stem}-latency.png"))


def _cell(value) -> str:
    return "–" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def table(head: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def markdown(results: dict) -> str:
    meta = results["meta"]
    out = [f"# Benchmark, {meta['mode']} run, {meta['date']}\n",
           f"Server code: {meta.get('server_commit', '?')}. "
           f"Backend `{meta['backend']}` ({meta['workers']} {meta.get('server', 'daphne')} worker(s)); upstream chunk "
           f"clock `{meta.get('upstream_clock', 'aligned')}`; phases: {', '.join(meta.get('phases', []))}; "
           f"{meta['machine']}; Python "
           f"{meta['python']}; the whole run took {meta['elapsed_s']} s. Clients: {meta['users']}. Server: "
           f"{meta['server_settings']}. Workload: each stream at {meta['config']['rate']} chunks/s of 4 bytes "
           f"(`tok `) from the fake upstream. All CPU figures are whole-process (user + system) over the "
           "measurement window.\n",
           "## Goals\n",
           table(["goal", "target", "measured", "met"],
                 [[g["name"], g["goal"], g["measured"], MET[g["met"]]] for g in results["goals"]])]
    out += timings(results)
    direct = results.get("direct", {})
    rows = []
    for n, lv in results.get("levels", {}).items():
        d = direct_for(direct, n)
        rows.append([n, lv["per_process"], lv["cancel_latency_ms"].get("p50"), lv["cancel_latency_ms"].get("p95"),
                     lv["cancel_latency_ms"].get("p99"), lv["cancel_latency_ms"]["n"],
                     lv["upstream_close_ms"].get("p50"), lv["upstream_close_ms"].get("p99"), lv["upstream_not_closed"],
                     lv["chunks_per_s"], d.get("chunks_per_s") if d.get("streams") == n else None,
                     round(lv["chunks_per_s"] / d["chunks_per_s"], 3) if d.get("streams") == n else None,
                     lv.get("server_cpu_ms_per_chunk"), lv.get("server_cpu_share"), lv.get("upstream_cpu_share"),
                     lv.get("loadgen_cpu_share"), lv.get("other_processes_cores"),
                     lv["ttfc_ms"].get("p50"), d.get("ttfc_ms", {}).get("p50"),
                     r2(lv["ttfc_ms"].get("p50") - d["ttfc_ms"]["p50"]) if d.get("ttfc_ms", {}).get("p50") is not None
                     and lv["ttfc_ms"].get("p50") is not None else None,
                     lv["wire_bytes_ratio"], (lv.get("db") or {}).get("updates_per_stream"),
                     (lv.get("db") or {}).get("expected_updates"), lv.get("refused", 0)])
    if rows:
        out += ["## Concurrency\n",
                "Cancel latency: client's `cancel` frame to its `stream_cancelled`. Upstream close: the same frame to "
                "the fake upstream seeing the connection closed. Relay/direct: chunks per second the clients received "
                "through the server / reading the upstream themselves, same concurrency. TTFC: `send` to first "
                "`message_chunk` (server) vs request to first content event (direct); added = the difference of the "
                "medians. Wire ratio: websocket bytes (payload + frame header) / content bytes in the window. "
                "DB: updates of each answer's row vs duration / flush + 2.\n",
                table(["streams", "per proc", "cancel p50 ms", "p95", "p99", "n", "upstream close p50 ms", "p99",
                       "not closed", "relay chunks/s", "direct chunks/s", "relay ratio", "server CPU ms/chunk",
                       "server CPU (cores)", "upstream CPU (cores)", "load generator CPU (cores)",
                       "other processes (cores)", "TTFC p50 ms", "direct TTFC p50 ms",
                       "TTFC added ms", "wire ratio", "DB updates/stream", "expected", "sends refused"], rows)]
    if "lengths" in results:
        out += ["## Answer length\n",
                f"One answer at a time, upstream at {meta['config']['length_rate']} chunks/s.\n",
                table(["chunks", "duration s", "DB updates", "expected (duration/0.5 + 2)", "DB inserts", "frames",
                       "wire bytes", "content bytes", "wire ratio"],
                      [[r["chunks"], r["duration_s"], r["db_updates"], r["expected_updates"], r["db_inserts"],
                        r["frames"], r["wire_bytes"], r["content_bytes"], r["wire_bytes_ratio"]]
                       for r in results["lengths"]])]
    out += baselines(results)
    return "\n".join(out + _tail(results))


def baselines(results: dict) -> list[str]:
    """The real relay against frame0 and the seed-style relay, at compare_at streams."""
    compare = results["meta"]["config"]["compare_at"]
    real, f0, seed = results.get("levels", {}).get(compare), results.get("frame0"), results.get("seed")
    if not (real and f0 and seed):
        return []
    out = [f"## Baselines at {compare} streams (steady window)\n",
           "`frame0`: the real server with STREAM_FRAME_INTERVAL=0 (a frame per upstream chunk). `seed`: "
           "bench/naive.py, a seed-style relay (a row write and a channel-layer frame carrying the whole content, "
           "per chunk). Ratios are seed / real.\n",
           table(["relay", "chunks/s", "server CPU ms/chunk", "server CPU (cores)", "wire ratio",
                  "DB updates/stream", "cancel p99 ms"],
                 [["real (frame interval 0.05)", real["chunks_per_s"], real.get("server_cpu_ms_per_chunk"),
                   real.get("server_cpu_share"), real["wire_bytes_ratio"], (real.get("db") or {}).get("updates_per_stream"),
                   real["cancel_latency_ms"].get("p99")],
                  ["frame0 (frame interval 0)", f0["chunks_per_s"], f0.get("server_cpu_ms_per_chunk"),
                   f0.get("server_cpu_share"), f0["wire_bytes_ratio"], None, None],
                  ["seed-style", seed["chunks_per_s"], seed.get("server_cpu_ms_per_chunk"), seed.get("server_cpu_share"),
                   seed["wire_bytes_ratio"], (seed.get("db") or {}).get("updates_per_stream"), None]])]
    ratios = seed_ratios(results, real)
    return out + ["Seed-style / real: " + ", ".join(f"{k} x{v}" for k, v in ratios.items()) + ".\n",
                  table(["seed-style length", "duration s", "DB updates", "wire ratio", "wire bytes"],
                        [[r["chunks"], r["duration_s"], r["db_updates"], r["wire_bytes_ratio"], r["wire_bytes"]]
                         for r in seed.get("lengths", [])])]


def timings(results: dict) -> list[str]:
    """Where each stop spent its time and how late the server's loop ran, per measurement."""
    meta = results["meta"]
    server, clock = meta.get("server", "daphne"), meta.get("upstream_clock", "aligned")
    at = meta["config"]["compare_at"] * meta["workers"]
    measured = [(f"{n} streams, {server}, {clock}", lv) for n, lv in results.get("levels", {}).items()]
    measured += [(f"{n} streams, {server}, spread", lv) for n, lv in results.get("spread", {}).items()]
    for kind, by_clock in results.get("servers", {}).items():
        measured += [(f"{at} streams, {kind}, {c}", lv) for c, lv in by_clock.items()]
    measured = [(name, lv) for name, lv in measured if "stop_stages_ms" in lv]
    if not measured:
        return []
    stages = ("frame_in", *STOP_STAGES, "frame_out")
    stage_rows = [[name, lv["stop_stages_ms"]["row_final"]["n"],
                   *[lv["stop_stages_ms"].get(stage, {}).get(p) for stage in stages for p in ("p50", "p99")],
                   lv["loop_lag_ms"].get("p50"), lv["loop_lag_ms"].get("p99"), lv["loop_lag_ms"].get("max")]
                  for name, lv in measured]
    out = ["## Where a stop spends its time\n",
           "Each sampled cancel, joined to the producing server's timeline of it. Frame in: from the client's "
           "send to the server reading the frame (where the server's clock starts). Then, in ms since that read, "
           "as the server timed them: the upstream connection aborted, the stream's task cancelled, the row "
           "final, the terminal event written to the socket. Frame out: from that write to the client reading "
           "the event. Loop lag: how late the server's 100 ms timer fired over the same run.\n",
           table(["measurement", "stops", *[f"{s.replace('_', ' ')} {p}" for s in stages for p in ("p50", "p99")],
                  "loop lag p50 ms", "p99", "max"], stage_rows)]
    compare = [(name, lv) for name, lv in measured if name.startswith(f"{at} streams")]
    if len(compare) > 1:
        out += ["## Aligned and spread, uvicorn and daphne\n",
                f"The same load at {at} streams: the upstream's chunks all in the same instant (aligned) or each on "
                "a clock of its own (spread), under each ASGI server. TTFC steady: the sends made while the other "
                "streams run (the cancel phase's), without the ramp's burst of sends.\n",
                table(["measurement", "cancel p50 ms", "cancel p99", "upstream closed p99", "TTFC p50",
                       "TTFC steady p50", "server CPU ms/chunk", "loop lag p99"],
                      [[name, lv["cancel_latency_ms"].get("p50"), lv["cancel_latency_ms"].get("p99"),
                        lv["upstream_close_ms"].get("p99"), lv["ttfc_ms"].get("p50"),
                        lv.get("ttfc_steady_ms", {}).get("p50"), lv.get("server_cpu_ms_per_chunk"),
                        lv.get("loop_lag_ms", {}).get("p99")] for name, lv in compare])]
    return out


def _tail(results: dict) -> list[str]:
    out = []
    storm_, leak_ = results.get("storm"), results.get("leak")
    if storm_:
        out += ["## Storm\n",
                f"{storm_['messages']} sends, each cancelled 0-300 ms after its `message_created`: outcomes "
                f"{storm_['outcomes']}; {storm_['problem_count']} problems (events vs rows vs deltas); "
                f"{storm_['rows_unfinished']} rows left unfinished; registry after: "
                f"{storm_['after']['registry_count']}.\n"]
    if leak_:
        out += ["## Leaks\n",
                f"{leak_['streams']} streams of {leak_['chunks']} chunks at {leak_['rate']}/s over "
                f"{leak_['sockets']} sockets, in {leak_['seconds']} s, every other one cancelled at a random "
                f"point: outcomes {leak_['outcomes']}. RSS {leak_['rss_before_mb']} -> {leak_['rss_after_mb']} MB "
                f"(growth {leak_['rss_growth_mb']} MB); registry after {leak_['registry_count_after']}; upstream "
                f"replies open after {leak_['upstream_active_replies_after']}, idle keep-alive connections "
                f"{leak_['upstream_open_connections_before']} -> {leak_['upstream_open_connections_after']}; asyncio "
                f"tasks {leak_['tasks_before']} -> {leak_['tasks_after']}; threads {leak_['threads_before']} -> "
                f"{leak_['threads_after']}.\n"]
    return out + _profiles(results)


def _profiles(results: dict) -> list[str]:
    out = []
    prof = results.get("profile")
    if prof and "top_self" in prof:
        out += [f"## Profile (py-spy, {prof['samples']} samples, {prof['streams']} streams)\n",
                "Where the server's CPU goes, by the area of the innermost frame:\n",
                table(["area", "share"], [[e["entry"], e["share"]] for e in prof["by_area"]]),
                "Top functions by own time:\n",
                table(["function", "share"], [[e["entry"], e["share"]] for e in prof["top_self"]]),
                "Top functions including callees:\n",
                table(["function", "share"], [[e["entry"], e["share"]] for e in prof["top_inclusive"]])]
    churn = results.get("profile_churn")
    if churn and "top_self" in churn:
        out += [f"## Profile of the leak run (py-spy, {churn['samples']} samples, short streams on {churn['streams']} sockets)\n",
                "Where a stream's own cost goes (prompt, start, cancel, finalize), by area and by function:\n",
                table(["area", "share"], [[e["entry"], e["share"]] for e in churn["by_area"]]),
                table(["function (own time)", "share"], [[e["entry"], e["share"]] for e in churn["top_self"]]),
                table(["function (including callees)", "share"], [[e["entry"], e["share"]] for e in churn["top_inclusive"]])]
    return out


def direct_for(direct: dict, streams: int) -> dict:
    """The direct baseline at the same concurrency, else the nearest one measured."""
    if not direct:
        return {}
    return direct[min(direct, key=lambda n: abs(int(n) - streams))]


def seed_ratios(results: dict, real: dict) -> dict:
    seed = results["seed"]
    ratios = {}
    if real.get("server_cpu_ms_per_chunk") and seed.get("server_cpu_ms_per_chunk"):
        ratios["CPU per chunk"] = round(seed["server_cpu_ms_per_chunk"] / real["server_cpu_ms_per_chunk"], 2)
    if real.get("wire_bytes_ratio") and seed.get("wire_bytes_ratio"):
        ratios["wire bytes per content byte"] = round(seed["wire_bytes_ratio"] / real["wire_bytes_ratio"], 2)
    real_db, seed_db = real.get("db") or {}, seed.get("db") or {}
    if real_db.get("updates_per_stream") and seed_db.get("updates_per_stream"):
        ratios["DB writes per second of stream"] = round(
            (seed_db["updates_per_stream"] / seed_db["mean_duration_s"]) / (real_db["updates_per_stream"] / real_db["mean_duration_s"]), 2)
    results["seed"]["ratios"] = ratios
    return ratios


def latency_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = results["levels"]
    xs = sorted(int(n) for n in levels)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for key, label, style in (("cancel_latency_ms", "cancel → stream_cancelled", "-"),
                              ("upstream_close_ms", "cancel → upstream closed", "--")):
        for p, marker in (("p50", "o"), ("p95", "s"), ("p99", "^")):
            ys = [levels[n][key].get(p) for n in xs]
            ax.plot(xs, ys, style, marker=marker, label=f"{label} {p}")
    ax.axhline(50, color="grey", linewidth=1, linestyle=":", label="goal: cancel p99 ≤ 50 ms at 200/process (aligned)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(x) for x in xs])
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("milliseconds")
    meta = results["meta"]
    ax.set_title(f"Stop latency vs concurrency ({meta['backend']}, {meta['workers']} worker(s), {meta['date'][:10]})")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
