"""Native-cluster benchmark (issue #5), side by side in one run.

- guest syscall round trips per second: `sysloop` writes one byte per
  `write()` through the whole path (CPU trap → OS → memctl copy → UART →
  resume), timed as the difference between N=LONG and N=SHORT runs so the
  fixed cost of starting a program cancels out;
- the CPU's MIPS on `bench` inside the cluster (pages over the directory
  protocol, traps as messages) vs the same ELF under standalone
  `hwemu cpu run` (ratio), the cluster time taken as `bench` minus `hello`
  (the fixed cost of `hwemu run` itself: client start-up, exec, console sync).

Every figure is a median of --repeat runs against one cluster launched once.

    .venv/bin/python bench/native.py [--json] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import signal
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HWEMU = ROOT / ".venv/bin/hwemu"
SAMPLES = ROOT / "guest/build/samples"
SHORT, LONG = 100, 2100


def timed(cmd: list[str], env: dict) -> tuple[float, bytes]:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600, cwd=ROOT)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.decode(errors='replace')[-500:]}")
    return elapsed, out.stdout


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the clusters this script started are stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    args = ap.parse_args()
    if not (SAMPLES / "sysloop.elf").exists():
        subprocess.run(["make", "-C", str(ROOT / "guest"), "-s"], check=True)

    with tempfile.TemporaryDirectory(prefix="hwn") as tmp:
        stats_file = Path(tmp) / "stats.json"
        standalone = []
        for _ in range(args.repeat):
            timed([sys.executable, "-m", "nodes.cpu", "run", str(SAMPLES / "bench.elf"), "--stats", str(stats_file)],
                  dict(os.environ))
            standalone.append(json.loads(stats_file.read_text()))
        instret = standalone[0]["instret"]
        standalone_mips = statistics.median(s["mips"] for s in standalone)

        env = {**os.environ, "HWEMU_RUN_DIR": str(Path(tmp) / "run")}
        subprocess.run([str(HWEMU), "up", "compose/native.toml", "--detach"], env=env, check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
        try:
            run = lambda prog, *a: timed([str(HWEMU), "run", "compose/native.toml", str(SAMPLES / prog), "--", *a], env)[0]
            run("hello.elf")  # warm the cluster (first page faults, imports)
            short = statistics.median(run("sysloop.elf", str(SHORT)) for _ in range(args.repeat))
            long = statistics.median(run("sysloop.elf", str(LONG)) for _ in range(args.repeat))
            hello = statistics.median(run("hello.elf") for _ in range(args.repeat))
            bench = statistics.median(run("bench.elf") for _ in range(args.repeat))
        finally:
            subprocess.run([str(HWEMU), "down"], env=env, stdout=subprocess.DEVNULL, cwd=ROOT)

    syscalls_per_s = (LONG - SHORT) / max(long - short, 1e-9)
    cluster_mips = instret / 1e6 / max(bench - hello, 1e-9)
    result = {
        "syscalls_per_s": round(syscalls_per_s, 1),
        "syscall_us": round(1e6 / syscalls_per_s, 1),
        "standalone_mips": round(standalone_mips, 2),
        "cluster_mips": round(cluster_mips, 2),
        "cluster_vs_standalone_mips_ratio": round(cluster_mips / standalone_mips, 3),
        "bench_instret": instret,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"guest write() round trips in the cluster: {result['syscalls_per_s']:.0f}/s "
          f"({result['syscall_us']} µs each)")
    print(f"bench.elf ({instret} instructions): standalone {result['standalone_mips']} MIPS, "
          f"in the cluster {result['cluster_mips']} MIPS, ratio {result['cluster_vs_standalone_mips_ratio']}")


if __name__ == "__main__":
    main()
