"""What tracing costs the message plane when it is off: the plane of the commit
that added the recorders (``AFTER``) against its parent (``BEFORE``), side by side.

Each tree is taken from git (``git archive``) into a temporary directory, and
``bench/msgplane.py --json --quick`` of each runs in turns (A, B, B, A, ...),
each turn measuring our round trip and throughput beside raw pyzmq in the same
process. What is compared is each turn's *ratio to raw* (ours ÷ raw), so what
the host does meanwhile cancels out; the result is the median of those ratios
of AFTER over BEFORE (the target: within 3 %, i.e. latency ≤ 1.03, throughput
≥ 0.97). The commits are the parent and the commit of the tracing work by
default; later work (reliable flows, MACs) costs what its own benches say.

Usage: python bench/tracecost.py [--turns N] [--before C] [--after C] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEFORE = "03476f7"  # main before the recorders
AFTER = "ac399ee"  # the commit that put a recorder in every node (tracing off unless started)
TREES = ("protocol", "nodes", "orchestrator", "bench", "hwemu", "tests", "compose", "pyproject.toml")


def extract(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (what the message-plane bench imports) under ``into``."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, *TREES],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        sys.exit(f"bench/tracecost.py: cannot take {commit} from git ({done.stderr.decode().strip()}); "
                 "run it in a clone")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def turn(tree: Path) -> dict:
    """One quick message-plane run of ``tree``: its JSON result."""
    done = subprocess.run([sys.executable, str(tree / "bench" / "msgplane.py"), "--json", "--quick"],
                          cwd=tree, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
                          env={**os.environ, "PYTHONPATH": str(tree)})
    if done.returncode != 0:
        sys.exit(f"bench/tracecost.py: the bench of {tree.name} failed: {done.stderr.decode()[-800:]}")
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=6, help="runs of each tree (default 6)")
    ap.add_argument("--before", default=BEFORE, metavar="COMMIT")
    ap.add_argument("--after", default=AFTER, metavar="COMMIT")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    if args.turns < 1:
        sys.exit("bench/tracecost.py: --turns must be at least 1")
    with tempfile.TemporaryDirectory(prefix="hwtc") as tmp:
        trees = {name: extract(commit, Path(tmp) / name) for name, commit in
                 (("before", args.before), ("after", args.after))}
        runs: dict[str, list[dict]] = {"before": [], "after": []}
        for i in range(args.turns):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")  # ABBA: drift cancels
            for name in order:
                runs[name].append(turn(trees[name]))
                if not args.json:
                    r = runs[name][-1]
                    print(f"turn {i + 1} {name:6}: round trip {r['our_rtt_p50_us']} µs = {r['latency_ratio']}× raw, "
                          f"throughput {r['our_msgs_per_s']} msg/s = {r['throughput_ratio']}× raw", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    lat = [a["latency_ratio"] / b["latency_ratio"] for a, b in zip(runs["after"], runs["before"])]
    thr = [a["throughput_ratio"] / b["throughput_ratio"] for a, b in zip(runs["after"], runs["before"])]
    result = {
        "before": args.before, "after": args.after, "turns": args.turns,
        "before_latency_ratio": round(med("before", "latency_ratio"), 3),
        "after_latency_ratio": round(med("after", "latency_ratio"), 3),
        "before_throughput_ratio": round(med("before", "throughput_ratio"), 3),
        "after_throughput_ratio": round(med("after", "throughput_ratio"), 3),
        "trace_off_latency_cost": round(statistics.median(lat), 3),
        "trace_off_throughput_cost": round(statistics.median(thr), 3),
        "per_turn_latency": [round(x, 3) for x in lat], "per_turn_throughput": [round(x, 3) for x in thr],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"tracing off, {args.after} ÷ {args.before} (each as a ratio to raw pyzmq in its own run):")
    print(f"  round trip  {result['trace_off_latency_cost']}  (target ≤ 1.03; per turn {result['per_turn_latency']})")
    print(f"  throughput  {result['trace_off_throughput_cost']}  (target ≥ 0.97; per turn "
          f"{result['per_turn_throughput']})")


if __name__ == "__main__":
    main()
