"""The message plane of two commits side by side: what a change costs it.

Presets name the changes whose cost an issue asks for: ``tracing`` (the
default: the commit that put an event recorder in every node, tracing off,
against its parent; the target is within 3 %), ``house`` and ``house2`` (the
two refactors of the code's layout, which should cost nothing) and ``reliable``
(reliable flows: acknowledgements and a retransmit buffer; allowed 10 %,
``--bound 0.10``). ``--before``
and ``--after`` compare any two commits whose ``bench/msgplane.py`` has the
echo cluster, ``node_rtt`` and ``our_throughput`` (every commit since the
message-plane bench).

Each tree is taken from git (``git archive``) into a temporary directory and
gets a *driver*: a process that imports that tree's own message-plane bench
(``bench/msgplane.py``: the echo cluster, ``node_rtt``, ``our_throughput``),
starts the tree's echo cluster once and then measures on command. The two
clusters run side by side for the whole run, and the drivers take turns in
ABBA order (A, B, B, A, ...): each turn is ``--rtt`` node-to-node round trips
(``src`` pings ``echo``: the turn's median) and ``--msgs`` messages streamed
on a flow (msg/s). Turns are short (about a second), so a drift of the shared
host's speed hits both trees alike; what is compared is each ABBA pair's
ratio AFTER ÷ BEFORE, and the result is the median of those ratios with a
bootstrap 95 % interval (the target: within 3 %, i.e. round trip ≤ 1.03 and
throughput ≥ 0.97; the verdict says "met" when the whole interval is inside,
"missed" when it is wholly outside, else "not decided").

Later work (reliable flows, MACs) costs what its own benches say.

Usage: python bench/commits.py [--preset tracing|house|house2|reliable | --before C --after C]
                               [--turns N] [--rtt N] [--msgs N] [--bound X] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import printed_as_json  # noqa: E402

PRESETS = {  # name -> (before, after): the changes whose cost an issue asks for
    "tracing": ("03476f7", "ac399ee"),  # main before the recorders; the commit that put one in every node
    "house": ("04b8fdf", "5f4efe6"),  # main before the first layout refactor; its merge
    "house2": ("73556c2", "b4fc1d0"),  # main before the OS node's split and the errors modules; with them
    "reliable": ("01fe43a^1", "01fe43a"),  # main before reliable flows (acks, retransmission); their merge
}
TREES = ("protocol", "nodes", "orchestrator", "bench", "hwemu", "tests", "compose", "pyproject.toml")

# Runs inside a tree (cwd and PYTHONPATH = the tree): its echo cluster, measured on command
# ("rtt N" -> the median round trip in s, "tp N" -> msg/s), each answer one JSON line with
# the CPU time the cluster's nodes spent meanwhile (ns, from /proc/PID/schedstat: what the
# code costs, which a loaded host's scheduling moves much less than it moves wall time).
DRIVER = """
import json, statistics, sys, tempfile, trio
from pathlib import Path
from bench.msgplane import echo_topology, node_rtt, our_throughput
from orchestrator.cluster import running

def cpu_ns(orch):
    total = 0
    for np in orch.supervisor.nodes.values():
        with open(f"/proc/{np.pid}/schedstat") as f:
            total += int(f.read().split()[0])
    return total

async def main():
    with tempfile.TemporaryDirectory(prefix="hwtcd") as tmp:
        async with running(echo_topology(), Path(tmp) / "cl") as orch:
            await node_rtt(orch, 10, 200)
            print(json.dumps("ready"), flush=True)
            while line := (await trio.to_thread.run_sync(sys.stdin.readline)).split():
                what, n = line[0], int(line[1])
                before = cpu_ns(orch)
                if what == "rtt":
                    out = statistics.median(await node_rtt(orch, n, 20))
                else:
                    out = await our_throughput(orch, n)
                print(json.dumps([out, cpu_ns(orch) - before]), flush=True)

trio.run(main)
"""


def extract(commit: str, into: Path) -> Path:
    """The tree of ``commit`` (what the message-plane bench imports) under ``into``."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, *TREES],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        sys.exit(f"bench/commits.py: cannot take {commit} from git ({done.stderr.decode().strip()}); "
                 "run it in a clone")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


class Driver:
    """One tree's driver process, its echo cluster kept running between turns."""

    def __init__(self, tree: Path, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-c", DRIVER], cwd=tree, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**env, "PYTHONPATH": str(tree)})
        self.name = tree.name
        self._answer()

    def _answer(self):
        line = self.proc.stdout.readline()
        if not line:
            sys.exit(f"bench/commits.py: the driver of {self.name} ended (exit {self.proc.wait()}; "
                     "its error is above)")
        return json.loads(line)

    def measure(self, what: str, n: int) -> list[float]:
        """``[figure, CPU ns the cluster spent]`` of one turn."""
        self.proc.stdin.write(f"{what} {n}\n")
        self.proc.stdin.flush()
        return self._answer()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # its loop ends and the cluster is stopped
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def interval(ratios: list[float], rounds: int = 2000) -> tuple[float, float]:
    """A bootstrap 95 % interval of the median of ``ratios`` (a fixed seed: the same run, the same interval)."""
    rng = random.Random(1)
    meds = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(rounds))
    return meds[int(0.025 * rounds)], meds[int(0.975 * rounds) - 1]


def verdict(low: float, high: float, bound: float, upper: bool) -> str:
    inside = (lambda x: x <= bound) if upper else (lambda x: x >= bound)
    if inside(low) and inside(high):
        return "met"
    if not inside(low) and not inside(high):
        return "missed"
    return "not decided"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=40, help="ABBA turns of each tree (default 40)")
    ap.add_argument("--rtt", type=int, default=1000, help="round trips per turn (default 1000)")
    ap.add_argument("--msgs", type=int, default=20000, help="messages streamed per turn (default 20000)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tracing",
                    help="which change to measure (default tracing); --before/--after override it")
    ap.add_argument("--before", metavar="COMMIT", help="the commit without the change")
    ap.add_argument("--after", metavar="COMMIT", help="the commit with it")
    ap.add_argument("--bound", type=float, default=0.03,
                    help="the cost allowed, as a fraction (default 0.03: within 3 %%)")
    ap.add_argument("--spin-us", type=int, default=None, metavar="US",
                    help="the nodes' inbox polling window (HWEMU_SPIN_US; default: the environment's, else 200); "
                         "0 for the CPU figures: a polling node's CPU time is mostly the time it waited")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.spin_us is not None:
        if args.spin_us < 0:
            sys.exit("bench/commits.py: --spin-us must be 0 or more")
        env["HWEMU_SPIN_US"] = str(args.spin_us)
    if min(args.turns, args.rtt, args.msgs) < 1:
        sys.exit("bench/commits.py: --turns, --rtt and --msgs must be at least 1")
    if not 0 < args.bound < 1:
        sys.exit("bench/commits.py: --bound must be a fraction between 0 and 1")
    args.before = args.before or PRESETS[args.preset][0]
    args.after = args.after or PRESETS[args.preset][1]
    keys = ("rtt", "tp", "rtt_cpu", "tp_cpu")
    runs: dict[str, dict[str, list[float]]] = {side: {k: [] for k in keys} for side in ("before", "after")}
    with tempfile.TemporaryDirectory(prefix="hwtc") as tmp:
        drivers: dict[str, Driver] = {}
        try:
            for name, commit in (("before", args.before), ("after", args.after)):
                drivers[name] = Driver(extract(commit, Path(tmp) / name), env)
            for i in range(args.turns):
                order = ("before", "after") if i % 2 == 0 else ("after", "before")  # ABBA: drift cancels
                for name in order:
                    for what, n in (("rtt", args.rtt), ("tp", args.msgs)):
                        figure, cpu = drivers[name].measure(what, n)
                        runs[name][what].append(figure)
                        # CPU per round trip (the warm-up's 20 included) or per message streamed
                        runs[name][f"{what}_cpu"].append(cpu / (n + 20 if what == "rtt" else n))
                if not args.json:
                    b, a = runs["before"], runs["after"]
                    print(f"turn {i + 1}: round trip {b['rtt'][-1] * 1e6:.1f} → {a['rtt'][-1] * 1e6:.1f} µs, "
                          f"throughput {b['tp'][-1]:.0f} → {a['tp'][-1]:.0f} msg/s", flush=True)
        finally:
            for driver in drivers.values():
                driver.stop()

    def ratios(key: str) -> list[float]:
        return [a / b for a, b in zip(runs["after"][key], runs["before"][key])]

    lat, thr, lat_cpu, thr_cpu = ratios("rtt"), ratios("tp"), ratios("rtt_cpu"), ratios("tp_cpu")
    (lat_lo, lat_hi), (thr_lo, thr_hi) = interval(lat), interval(thr)
    (lc_lo, lc_hi), (tc_lo, tc_hi) = interval(lat_cpu), interval(thr_cpu)
    result = {
        "preset": args.preset if (args.before, args.after) == PRESETS[args.preset] else None,
        "before": args.before, "after": args.after, "bound": args.bound,
        "spin_us": env.get("HWEMU_SPIN_US"), "turns": args.turns, "rtt_per_turn": args.rtt,
        "msgs_per_turn": args.msgs,
        "before_rtt_p50_us": round(statistics.median(runs["before"]["rtt"]) * 1e6, 1),
        "after_rtt_p50_us": round(statistics.median(runs["after"]["rtt"]) * 1e6, 1),
        "before_msgs_per_s": round(statistics.median(runs["before"]["tp"])),
        "after_msgs_per_s": round(statistics.median(runs["after"]["tp"])),
        "latency_cost": round(statistics.median(lat), 3),
        "latency_interval": [round(lat_lo, 3), round(lat_hi, 3)],
        "latency_verdict": verdict(lat_lo, lat_hi, 1 + args.bound, upper=True),
        "throughput_cost": round(statistics.median(thr), 3),
        "throughput_interval": [round(thr_lo, 3), round(thr_hi, 3)],
        "throughput_verdict": verdict(thr_lo, thr_hi, 1 - args.bound, upper=False),
        # the CPU the nodes spent per round trip and per message: after ÷ before (more is worse)
        "before_cpu_per_rtt_us": round(statistics.median(runs["before"]["rtt_cpu"]) / 1e3, 2),
        "after_cpu_per_rtt_us": round(statistics.median(runs["after"]["rtt_cpu"]) / 1e3, 2),
        "before_cpu_per_msg_us": round(statistics.median(runs["before"]["tp_cpu"]) / 1e3, 2),
        "after_cpu_per_msg_us": round(statistics.median(runs["after"]["tp_cpu"]) / 1e3, 2),
        "cpu_rtt_cost": round(statistics.median(lat_cpu), 3),
        "cpu_rtt_interval": [round(lc_lo, 3), round(lc_hi, 3)],
        "cpu_rtt_verdict": verdict(lc_lo, lc_hi, 1 + args.bound, upper=True),
        "cpu_msg_cost": round(statistics.median(thr_cpu), 3),
        "cpu_msg_interval": [round(tc_lo, 3), round(tc_hi, 3)],
        "cpu_msg_verdict": verdict(tc_lo, tc_hi, 1 + args.bound, upper=True),
    }
    if printed_as_json(result, args):
        return
    print(f"{args.after} ÷ {args.before}, median of {args.turns} ABBA turns [95 % interval]:")
    print(f"  round trip  {result['latency_cost']} {result['latency_interval']}  "
          f"(target ≤ {1 + args.bound:g}: {result['latency_verdict']}; "
          f"{result['before_rtt_p50_us']} → {result['after_rtt_p50_us']} µs)")
    print(f"  throughput  {result['throughput_cost']} {result['throughput_interval']}  "
          f"(target ≥ {1 - args.bound:g}: {result['throughput_verdict']}; "
          f"{result['before_msgs_per_s']} → {result['after_msgs_per_s']} msg/s)")
    print(f"  CPU per round trip  {result['cpu_rtt_cost']} {result['cpu_rtt_interval']}  "
          f"(target ≤ {1 + args.bound:g}: {result['cpu_rtt_verdict']}; "
          f"{result['before_cpu_per_rtt_us']} → {result['after_cpu_per_rtt_us']} µs)")
    print(f"  CPU per message     {result['cpu_msg_cost']} {result['cpu_msg_interval']}  "
          f"(target ≤ {1 + args.bound:g}: {result['cpu_msg_verdict']}; "
          f"{result['before_cpu_per_msg_us']} → {result['after_cpu_per_msg_us']} µs)")


if __name__ == "__main__":
    main()
