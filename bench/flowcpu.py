"""CPU cost of a message on a flow: what the sender and the receiver processes
spend per message, from their own CPU clocks (``/proc/<pid>/stat``), so the
figure holds on a loaded shared host where wall-clock throughput does not.

A real streamer node emits ``--count`` messages on a flow to a real sink node
(``compose/flip.toml``'s kinds) as fast as the plane takes them; the script
prints µs of CPU per message for each process and both together, per turn
and their median. Run it in two checkouts in turns (the code before a change
and after) to compare them side by side; ``--unsigned`` runs the plane
without MACs (``sign=False``), which shows what the MAC costs of it:

    .venv/bin/python bench/flowcpu.py [--count 100000] [--turns 3] [--unsigned] [--json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tests.fixtures.streamer  # noqa: E402,F401  (registers datum/stream_start)
from bench.report import printed_as_json  # noqa: E402
from orchestrator.cluster import running  # noqa: E402
from orchestrator.topology import parse  # noqa: E402

FLOW = "data:src"
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def topology():
    node = lambda role: {"kind": "testnode", "module": "tests.fixtures.streamer",  # noqa: E731
                         "options": {"role": role}}
    return parse({"cluster": {"name": "flowcpu"}, "nodes": {"src": node("streamer"), "sink": node("sink")},
                  "routes": {FLOW: "sink"}}, "flowcpu")


async def turn(count: int, sign: bool = True) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="flowcpu") as tmp:
        async with running(topology(), Path(tmp), sign=sign) as orch:
            pids = {n: orch.supervisor.nodes[n].pid for n in ("src", "sink")}
            await orch.request("src", "stream_start", {"flow": FLOW, "count": 2000}, timeout=120)  # warm up
            before = {n: cpu_seconds(p) for n, p in pids.items()}
            await orch.request("src", "stream_start", {"flow": FLOW, "count": count}, timeout=600)
            with trio.fail_after(600):
                while True:
                    st = (await orch.request("sink", "stats")).body["stats"]
                    if st["flows_in"][FLOW]["consumed"] >= count + 2000:
                        break
                    await trio.sleep(0.05)
            after = {n: cpu_seconds(p) for n, p in pids.items()}
    us = {n: round((after[n] - before[n]) / count * 1e6, 2) for n in pids}
    us["both"] = round(us["src"] + us["sink"], 2)
    return us


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--unsigned", action="store_true", help="no MAC on the plane (what the MAC costs)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    turns = [await turn(args.count, sign=not args.unsigned) for _ in range(args.turns)]
    result = {k: statistics.median(t[k] for t in turns) for k in ("src", "sink", "both")}
    result["turns"] = turns
    if not printed_as_json(result, args):
        for t in turns:
            print(f"turn: sender {t['src']} µs, receiver {t['sink']} µs, both {t['both']} µs of CPU per message")
        print(f"median: sender {result['src']} µs, receiver {result['sink']} µs, both {result['both']} µs")


if __name__ == "__main__":
    trio.run(main)
