"""Chaos campaign benchmark (issue 14): many seeded `hwemu chaos` runs, aggregated.

Runs ``--io`` seeds of the ``io`` scenario and ``--demo`` seeds of ``demo``
(100 and 20 by default: hours on a 2-core host; ``--io 3 --demo 1`` for a
short form), each a whole ``hwemu chaos --json`` run in a fresh run
directory, one after the other. Prints the runs, the faults injected per
kind, the violations (target 0) with the command that reproduces each failed
run, and the recovery time after each kill per node kind (median, p99: from
the SIGKILL to the restarted node reporting ready again).

    .venv/bin/python bench/chaos.py [--io N] [--demo N] [--duration S] [--faults K,K] [--held-back K,K]
                                    [--first-seed S] [--trace] [--keep DIR] [--json]

A failed run's directory (its history, its logs, and with ``--trace`` its
Perfetto trace, ``chaos-seed<S>.pftrace``) is kept under ``--keep DIR``
(default ``chaos-failed/`` with ``--trace``); passing runs leave nothing.

``--json`` prints one object: ``runs``, ``violations``, ``failed_runs``,
``faults_injected``, ``recovery_ms_median`` / ``recovery_ms_p99`` (per node
kind), ``run_seconds_median`` and the per-run summaries.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import printed_as_json  # noqa: E402

HWEMU = ROOT / ".venv/bin/hwemu"


def p99(values: list[float]) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(0.99 * (len(s) - 1))))]


def one(seed: int, scenario: str, duration: float, faults: str | None, held: str | None, work: Path,
        trace: bool = False) -> dict:
    cmd = [str(HWEMU), "chaos", "--seed", str(seed), "--duration", str(duration), "--scenario", scenario,
           "--json", "--run-dir", str(work / f"{scenario}-{seed}")]
    if trace:
        cmd.append("--trace")
    if faults:
        cmd += ["--faults", faults]
    if held is not None:
        cmd += ["--held-back", held]
    t = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=ROOT,
                          env={k: v for k, v in os.environ.items() if k != "HWEMU_HISTORY_DIR"})
    try:
        rep = json.loads(done.stdout)
    except ValueError:
        rep = {"seed": seed, "scenario": scenario, "violations": 1, "faults_injected": {}, "recovery_ms": [],
               "ok": False, "errors": [f"no report (exit {done.returncode}): {done.stderr.strip()[-300:]}"],
               "reproduce": " ".join(cmd[1:])}
    rep["exit"] = done.returncode
    rep["wall_s"] = round(time.monotonic() - t, 1)
    return rep


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--io", type=int, default=100, help="seeds of the io scenario (default 100)")
    ap.add_argument("--demo", type=int, default=20, help="seeds of the demo scenario (default 20)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of faults per run (default 10)")
    ap.add_argument("--faults", default=None, help="fault kinds (default: hwemu chaos's, HELD_BACK left out)")
    ap.add_argument("--held-back", default=None, help="passed to hwemu chaos (KIND or KIND:NODEKIND, or none)")
    ap.add_argument("--first-seed", type=int, default=1000, help="seeds are first-seed, first-seed+1, ...")
    ap.add_argument("--trace", action="store_true", help="trace each run (hwemu chaos --trace)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="keep each failed run's directory here (default with --trace: chaos-failed/)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.io < 0 or args.demo < 0 or args.io + args.demo == 0:
        ap.error("--io and --demo: at least one run, no negative count")
    if not HWEMU.exists():
        sys.exit(f"bench/chaos.py: {HWEMU} missing: run `make guest` (it creates .venv/) first")
    keep = args.keep if args.keep is not None else (Path("chaos-failed") if args.trace else None)
    runs = []
    with tempfile.TemporaryDirectory(prefix="hwemu-chaos-") as tmp:
        plan = [("io", args.first_seed + i) for i in range(args.io)] + \
               [("demo", args.first_seed + args.io + i) for i in range(args.demo)]
        for n, (scenario, seed) in enumerate(plan, 1):
            rep = one(seed, scenario, args.duration, args.faults, args.held_back, Path(tmp), args.trace)
            runs.append(rep)
            run = Path(tmp) / f"{scenario}-{seed}"
            if not rep.get("ok") and keep is not None and run.exists():
                keep.mkdir(parents=True, exist_ok=True)
                rep["kept"] = str(shutil.move(str(run), str(keep / run.name)))
            shutil.rmtree(run, ignore_errors=True)  # a passing run's traces and images: the disk is not endless
            if not args.json:
                print(f"[{n}/{len(plan)}] {scenario} seed {seed}: {rep.get('violations')} violations, faults "
                      f"{rep.get('faults_injected')}, {rep['wall_s']:.0f} s"
                      + ("" if rep.get("ok") else f"  FAILED: {rep.get('reproduce')}"), flush=True)
                for v in rep.get("violation_details", [])[:3]:
                    print(f"    {v['check']}: {v['what']}: {v['detail'][:200]} ({v['where']})", flush=True)
                for e in rep.get("errors", [])[:3]:
                    print(f"    {e[:200]}", flush=True)
                if rep.get("kept"):
                    print(f"    kept: {rep['kept']}", flush=True)
    injected: dict[str, int] = {}
    recovery: dict[str, list[float]] = {}
    for rep in runs:
        for kind, count in rep.get("faults_injected", {}).items():
            injected[kind] = injected.get(kind, 0) + count
        for rec in rep.get("recovery_ms", []):
            recovery.setdefault(rec["kind"], []).append(rec["ms"])
    failed = [r for r in runs if not r.get("ok")]
    out = {
        "runs": len(runs), "runs_io": args.io, "runs_demo": args.demo, "duration_s": args.duration,
        "violations": sum(r.get("violations", 0) for r in runs), "failed_runs": len(failed),
        "reproduce_failed": [r.get("reproduce") for r in failed],
        "faults_injected": injected,
        "faults_unsupported": sum(len(r.get("faults_unsupported", [])) for r in runs),
        "recovery_ms_median": {k: round(statistics.median(v), 1) for k, v in recovery.items()},
        "recovery_ms_p99": {k: round(p99(v), 1) for k, v in recovery.items()},
        "kills_recovered": {k: len(v) for k, v in recovery.items()},
        "run_seconds_median": round(statistics.median(r["wall_s"] for r in runs), 1),
        "per_run": [{k: r.get(k) for k in ("scenario", "seed", "violations", "faults_injected", "ok", "wall_s")}
                    for r in runs],
    }
    if printed_as_json(out, args):
        return
    print(f"runs: {out['runs']} ({args.io} io, {args.demo} demo), {args.duration:g} s of faults each, "
          f"median run {out['run_seconds_median']:.0f} s")
    print(f"faults injected: {injected or 'none'}"
          + (f" ({out['faults_unsupported']} not supported by this build)" if out["faults_unsupported"] else ""))
    print(f"violations: {out['violations']} (target 0), failed runs: {len(failed)}")
    for cmd in out["reproduce_failed"]:
        print(f"  reproduce: {cmd}")
    for kind in sorted(recovery):
        print(f"recovery after a kill, {kind}: median {out['recovery_ms_median'][kind]:.0f} ms, "
              f"p99 {out['recovery_ms_p99'][kind]:.0f} ms ({len(recovery[kind])} kills)")
    if not recovery:
        print("recovery after a kill: no kill injected (every kill is in HELD_BACK, or --faults had none)")


if __name__ == "__main__":
    main()
