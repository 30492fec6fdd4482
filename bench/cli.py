"""`python -m bench`: the command line (the phases and their options: bench/run.py)."""

import argparse
import asyncio
import json
import subprocess
import sys
from pathlib import Path

from . import cluster, goals, render, run
from .run import FULL, PHASES, RESULTS, SERVER_TREE, SMOKE, SMOKE_PHASES, Bench, log, workdir_for


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=run.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a short run (under a minute) that asserts loose goals")
    parser.add_argument("--backend", choices=["sqlite", "pg"], default="sqlite")
    parser.add_argument("--only", type=lambda v: v.split(","), metavar="PHASE[,PHASE]",
                        help=f"run only these phases, of: {', '.join(PHASES)}")
    parser.add_argument("--levels", type=lambda v: [int(n) for n in v.split(",")], metavar="N[,N]",
                        help="the concurrency levels (and the direct baseline's)")
    parser.add_argument("--compare-at", type=int, metavar="N",
                        help="the level the baselines, spread, servers and profile phases use (200)")
    parser.add_argument("--upstream", choices=["aligned", "spread"], default="aligned",
                        help="when the upstream's chunks fall: on one shared grid, or each on its own clock")
    parser.add_argument("--server", choices=["daphne", "uvicorn"], default="uvicorn",
                        help="the ASGI server measured (uvicorn: production's); the servers phase runs the other")
    parser.add_argument("--out", type=Path, metavar="PATH", help="write the JSON here (and the markdown beside it)")
    parser.add_argument("--leak-streams", type=int, help="streams of the leak phase (10,000 in the full run)")
    parser.add_argument("--server-tree", metavar="REF",
                        help="run the servers from a snapshot of this commit instead of the work tree")
    args = parser.parse_args()
    if args.smoke and args.only:
        parser.error("--smoke runs its own phases (its goals need each of them); --only is for the full run's")
    phases = tuple(args.only) if args.only else (SMOKE_PHASES if args.smoke else PHASES)
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s): {', '.join(sorted(unknown))}; the phases are {', '.join(PHASES)}")
    config = json.loads(json.dumps(SMOKE if args.smoke else FULL))
    if args.leak_streams:
        config["leak"]["total"] = args.leak_streams
    if args.backend == "pg":
        config["levels"] = sorted(set(config["levels"]) | ({400} if not args.smoke else set()))
    if args.levels:
        config["levels"] = config["direct_levels"] = args.levels
    if args.compare_at:
        config["compare_at"] = args.compare_at
    config["cancel_gap"] = {int(k) if k != "default" else k: v for k, v in config["cancel_gap"].items()}
    RESULTS.mkdir(exist_ok=True)
    stem = ("smoke" if args.smoke else "latest") + ("-pg" if args.backend == "pg" else "")
    workdir = workdir_for(stem)
    if args.server_tree:
        SERVER_TREE[0] = subprocess.run(["git", "rev-parse", args.server_tree], cwd=cluster.ROOT, check=True,
                                        capture_output=True, text=True).stdout.strip()
        cluster.snapshot(SERVER_TREE[0], workdir / "server")
    bench = Bench(config, args.backend, workdir, stem, server=args.server, clock=args.upstream)
    if args.out:
        bench.figures, bench.stem = args.out.parent.resolve(), args.out.stem
    results = asyncio.run(bench.run(args.smoke, phases))
    outcome = goals.of(results, smoke=args.smoke)
    results["goals"] = outcome
    folder, stem = (args.out.parent, args.out.stem) if args.out else (RESULTS, stem)
    render.write(results, folder, stem, plot=not args.smoke and not args.only)  # the smoke run asserts; no plot
    failed = [g for g in outcome if g["met"] is False]
    if args.smoke:
        for goal in outcome:
            log(f"{'ok  ' if goal['met'] else 'FAIL'} {goal['name']}: {goal['measured']} (smoke bound {goal['goal']})")
        print(f"bench-smoke: {len(outcome) - len(failed)} passed, {len(failed)} failed")
        sys.exit(1 if failed else 0)
    for goal in outcome:
        state = {True: "met    ", False: "NOT MET", None: "not measured"}[goal["met"]]
        log(f"{state} {goal['name']}: {goal['measured']} (goal {goal['goal']})")
    log(f"wrote {folder / (stem + '.json')} and {stem}.md")


if __name__ == "__main__":
    main()
