"""Native-cluster benchmark (issue #5), side by side in one run.

- guest syscall round trips per second: `sysloop` writes one byte per
  `write()` through the whole path (CPU trap → OS → memctl copy → UART →
  resume), timed as the difference between N=LONG and N=SHORT runs so the
  fixed cost of starting a program cancels out; beside it, its critical
  path (the messages one write() cycle waits for in sequence, counted on a
  trace of a short traced sysloop run: bench/floor.py) and its floor, hops
  × half the raw pyzmq round trip measured in the same run
  (``syscall_floor_ratio`` = the write() round trip ÷ that floor);
- the CPU's MIPS on `bench` inside the cluster (pages over the directory
  protocol, TLB misses and syscalls as trap messages to the OS) vs the same
  ELF under standalone `hwemu cpu run` (ratio). Both sides are timed the
  same way: from the moment the loaded program is handed to the core to its
  exit. Standalone: the runner's own `--stats` seconds (``Machine.run``:
  page set-up on first touch, every trap, exit; the ELF parse before it is
  not counted). Cluster: a client in this process sends ``os_exec`` and
  waits for ``proc_exit``; the ``os_exec`` reply comes once the OS has
  parsed the ELF, written its pages through memctl and resumed the CPU
  (reported separately as ``cluster_load_ms``); from that reply to
  ``proc_exit`` is the run (first page faults, every TLB-miss and syscall
  round trip, the console flush before the exit report). The instructions
  are counted by cpu0 itself (its ``instret`` before and after) and must
  equal the standalone count. A standalone run is a fresh process (cold
  translation caches); the CPU node keeps its decode and specialisation
  caches from one program to the next, as a long-running machine does, so
  the first `bench` run on a fresh cluster (after `hello` only) is also
  reported alone (``cluster_first_run_mips``, ``first_run_ratio``);
- for reference, the older end-to-end figure: `hwemu run` wall time of
  `bench` minus that of `hello` (CLI start-up, exec and console sync
  cancel out, up to their noise), as ``cluster_mips_end_to_end``.

Every figure is a median of --repeat runs against one cluster launched once.

With ``--hosts`` (root: network namespaces, hwemu/netns.py) it measures
instead what placing the CPU and the memory controller on different hosts
costs (docs/hosts.md): compose/native.toml on one host, and beside it the
same topology with cpu0 on host b and everything else on host a (two network
namespaces joined by a bridge; cpu0 ⇄ memctl, os1 over tcp + CURVE), both up
at once; `bench` runs on each in turns (ABBA), MIPS counted as above; the
ratio is across hosts ÷ one host (target ≥ 0.8).

    .venv/bin/python bench/native.py [--json] [--repeat N] [--rounds N] [--hosts]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import protocol.hw  # noqa: E402,F401  (registers os_exec / proc_exit)
from bench.floor import floor_line, raw_rtt_s, syscall_hops  # noqa: E402
from bench.rawzmq import abba_first  # noqa: E402
from bench.report import printed_as_json  # noqa: E402
from hwemu.netns import NetHosts, NetnsError  # noqa: E402
from orchestrator import critpath  # noqa: E402
from orchestrator.client import call, client_auth  # noqa: E402
from protocol.linux_abi import SYS_WRITE  # noqa: E402
from protocol.transport import Party  # noqa: E402

HWEMU = ROOT / ".venv/bin/hwemu"
SAMPLES = ROOT / "guest/build/samples"
TOPOLOGY = "compose/native.toml"
SHORT, LONG = 100, 2100


def timed(cmd: list[str], env: dict) -> tuple[float, bytes]:
    t = time.perf_counter()
    # a session of its own, as the detached cluster's nodes have: with the
    # kernel's autogroup scheduling both sides then get the same share of a busy machine
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600, cwd=ROOT,
                         start_new_session=True)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.decode(errors='replace')[-500:]}")
    return elapsed, out.stdout


def cpu_instret(rd: Path) -> int:
    status = trio.run(call, rd, "ctl_status", {}, 30.0)
    return next(n for n in status["nodes"] if n["name"] == "cpu0")["stats"]["instret"]


async def exec_timed(rd: Path, elf: bytes, argv: list[str]) -> tuple[float, float]:
    """Run one program on os1: (seconds to load it (os_exec round trip), seconds from then to its exit)."""
    status = await call(rd, "ctl_status", {}, 30.0)
    directory = {n["name"]: n["endpoint"] for n in status["nodes"]}
    me = f"bench-native-{os.getpid()}"
    party = Party(me, f"ipc://{rd}/{me}.sock", directory, advertise=True, auth=client_auth(rd, me))
    exited = trio.Event()
    exit_body: dict = {}

    async def handler(msg) -> None:
        if msg.kind == "proc_exit":
            exit_body.update(msg.body)
            exited.set()

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(party.serve, handler)
            t0 = time.perf_counter()
            reply = await party.request("os1", "os_exec", {"elf": elf, "argv": argv, "notify": True}, timeout=30)
            t1 = time.perf_counter()
            with trio.fail_after(300):
                await exited.wait()
            t2 = time.perf_counter()
            nursery.cancel_scope.cancel()
    finally:
        party.close()
    if exit_body.get("pid") != reply.body["data"]["pid"] or exit_body.get("code") != 0:
        raise SystemExit(f"{argv[0]} on the cluster: unexpected exit {exit_body}")
    return t1 - t0, t2 - t1


def placed_native(path: Path, net: NetHosts) -> Path:
    """compose/native.toml with cpu0 on host b and the rest (and the orchestrator) on host a."""
    text = (ROOT / TOPOLOGY).read_text().replace("[nodes.cpu0]\n", '[nodes.cpu0]\nhost = "b"\n')
    hosts = "".join(f'[hosts.{h}]\naddress = "{net.address(h)}"\nexec = {json.dumps(net.exec(h))}\n\n'
                    for h in ("a", "b"))
    path.write_text(hosts + '[orchestrator]\nhost = "a"\n\n' + text)
    return path


def hosts_main(args) -> None:
    try:
        net = NetHosts(["a", "b"])
    except NetnsError as exc:
        raise SystemExit(f"bench/native.py --hosts: {exc}") from None
    elf = (SAMPLES / "bench.elf").read_bytes()
    argv = [str(SAMPLES / "bench.elf"), str(args.rounds)]
    with net, tempfile.TemporaryDirectory(prefix="hwn") as tmp:
        one, placed = Path(tmp) / "one", Path(tmp) / "placed"
        topo = placed_native(Path(tmp) / "placed.toml", net)
        ups = ((one, [str(HWEMU), "up", TOPOLOGY, "--detach"]),
               (placed, [*net.exec("a"), str(HWEMU), "up", str(topo), "--detach"]))
        try:
            for rd, cmd in ups:
                subprocess.run(cmd, env={**os.environ, "HWEMU_RUN_DIR": str(rd)}, check=True,
                               stdout=subprocess.DEVNULL, cwd=ROOT)
            mips: dict[Path, list[float]] = {one: [], placed: []}

            def measure(rd: Path) -> None:
                before = cpu_instret(rd)
                _, run_s = trio.run(exec_timed, rd, elf, argv)
                mips[rd].append((cpu_instret(rd) - before) / 1e6 / run_s)

            for rd in (one, placed):  # warm: first page faults, the CPU's translation caches
                trio.run(exec_timed, rd, elf, argv)
            for i in range(args.repeat):
                for rd in ((one, placed) if abba_first(i) else (placed, one)):
                    measure(rd)
        finally:
            for rd, _ in ups:
                subprocess.run([str(HWEMU), "down"], env={**os.environ, "HWEMU_RUN_DIR": str(rd)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    ratios = [p / o for o, p in zip(mips[one], mips[placed])]
    result = {"one_host_mips": round(statistics.median(mips[one]), 2),
              "cpu_memctl_apart_mips": round(statistics.median(mips[placed]), 2),
              "hosts_mips_ratio": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
              "bench_rounds": args.rounds, "repeat": args.repeat}
    if printed_as_json(result, args):
        return
    print(f"bench.elf, cpu0 and memctl on one host: {result['one_host_mips']} MIPS; on two netns hosts "
          f"(tcp + CURVE): {result['cpu_memctl_apart_mips']} MIPS; ratio {result['hosts_mips_ratio']} "
          f"(target ≥ 0.8; per turn {result['ratios']})")


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the clusters this script started are stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (median)")
    ap.add_argument("--rounds", type=int, default=64,
                    help="bench.elf's ROUNDS argument for the MIPS figures (16: its default, 3.6 M instructions, "
                         "a few tenths of a second: too short to stand out of a busy machine's noise)")
    ap.add_argument("--hosts", action="store_true",
                    help="cpu0 and memctl on two network-namespace hosts vs one host (MIPS ratio; needs root)")
    args = ap.parse_args()
    if not (SAMPLES / "sysloop.elf").exists():
        subprocess.run(["make", "-C", str(ROOT / "guest"), "-s"], check=True)
    if args.hosts:
        hosts_main(args)
        return
    bench_elf = SAMPLES / "bench.elf"

    with tempfile.TemporaryDirectory(prefix="hwn") as tmp:
        stats_file = Path(tmp) / "stats.json"
        rd = Path(tmp) / "run"
        env = {**os.environ, "HWEMU_RUN_DIR": str(rd)}
        zmq_rtt = [raw_rtt_s(tmp)]
        subprocess.run([str(HWEMU), "up", TOPOLOGY, "--detach"], env=env, check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
        try:
            def run(prog, *a):
                return timed([str(HWEMU), "run", TOPOLOGY, str(SAMPLES / prog), "--", *a], env)[0]
            run("hello.elf")  # warm the cluster (first page faults, imports)
            # standalone and cluster runs alternate, so that a change of the
            # machine's load during the bench weighs on both sides alike
            standalone, loads, runs, counted = [], [], [], set()
            elf = bench_elf.read_bytes()
            for _ in range(args.repeat):
                timed([sys.executable, "-m", "nodes.cpu", "run", str(bench_elf), "--stats", str(stats_file), "--",
                       str(args.rounds)], dict(os.environ))
                standalone.append(json.loads(stats_file.read_text()))
                before = cpu_instret(rd)
                load_s, run_s = trio.run(exec_timed, rd, elf, [str(bench_elf), str(args.rounds)])
                counted.add(cpu_instret(rd) - before)
                loads.append(load_s)
                runs.append(run_s)
            short = statistics.median(run("sysloop.elf", str(SHORT)) for _ in range(args.repeat))
            long = statistics.median(run("sysloop.elf", str(LONG)) for _ in range(args.repeat))
            hello = statistics.median(run("hello.elf") for _ in range(args.repeat))
            bench_e2e = statistics.median(run("bench.elf", str(args.rounds)) for _ in range(args.repeat))
            trace = Path(tmp) / "sysloop-trace.json"
            timed([str(HWEMU), "run", TOPOLOGY, str(SAMPLES / "sysloop.elf"), "--trace", str(trace), "--", "50"], env)
            sys_hops, sys_path = syscall_hops(critpath.from_chrome(json.loads(trace.read_text())), SYS_WRITE)
        finally:
            subprocess.run([str(HWEMU), "down"], env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
        zmq_rtt.append(raw_rtt_s(tmp))

    instret = standalone[0]["instret"]
    standalone_mips = statistics.median(s["mips"] for s in standalone)
    if counted != {instret}:
        raise SystemExit(f"cpu0 retired {sorted(counted)} instructions for bench.elf, standalone {instret}")
    syscalls_per_s = (LONG - SHORT) / max(long - short, 1e-9)
    cluster_mips = instret / 1e6 / statistics.median(runs)
    # None when the noise of two CLI start-ups swamps the difference (a busy machine)
    e2e_mips = instret / 1e6 / (bench_e2e - hello) if bench_e2e > hello else None
    one_way = statistics.median(zmq_rtt) / 2
    result = {
        "syscalls_per_s": round(syscalls_per_s, 1),
        "syscall_us": round(1e6 / syscalls_per_s, 1),
        "raw_zmq_rtt_us": round(statistics.median(zmq_rtt) * 1e6, 1),
        "syscall_hops": sys_hops,
        "syscall_floor_us": round(sys_hops * one_way * 1e6, 1),
        "syscall_floor_ratio": round(1 / syscalls_per_s / (sys_hops * one_way), 2),
        "syscall_path": sys_path,
        "standalone_mips": round(standalone_mips, 2),
        "cluster_mips": round(cluster_mips, 2),
        "cluster_vs_standalone_mips_ratio": round(cluster_mips / standalone_mips, 3),
        "cluster_first_run_mips": round(instret / 1e6 / runs[0], 2),
        "first_run_ratio": round(instret / 1e6 / runs[0] / standalone_mips, 3),
        "cluster_load_ms": round(statistics.median(loads) * 1e3, 1),
        "cluster_run_ms": round(statistics.median(runs) * 1e3, 1),
        "standalone_run_ms": round(statistics.median(s["seconds"] for s in standalone) * 1e3, 1),
        "cluster_mips_end_to_end": round(e2e_mips, 2) if e2e_mips else None,
        "end_to_end_ratio": round(e2e_mips / standalone_mips, 3) if e2e_mips else None,
        "bench_instret": instret,
        "bench_rounds": args.rounds,
    }
    if printed_as_json(result, args):
        return
    print(f"guest write() round trips in the cluster: {result['syscalls_per_s']:.0f}/s "
          f"({result['syscall_us']} µs each)")
    print(floor_line("write() round trip", f"{result['syscall_us']} µs", sys_hops,
                     f"{result['syscall_floor_us']} µs (raw pyzmq round trip {result['raw_zmq_rtt_us']} µs "
                     f"in the same run; one hop = half of it)", result["syscall_floor_ratio"], 1.5))
    print(f"    path: {sys_path}")
    print(f"bench.elf ({instret} instructions): standalone {result['standalone_mips']} MIPS "
          f"({result['standalone_run_ms']} ms), in the cluster {result['cluster_mips']} MIPS "
          f"({result['cluster_run_ms']} ms), ratio {result['cluster_vs_standalone_mips_ratio']}; "
          f"loading it on the cluster {result['cluster_load_ms']} ms")
    print(f"first bench.elf run on a fresh cluster: {result['cluster_first_run_mips']} MIPS, "
          f"ratio {result['first_run_ratio']}")
    print(f"end to end (hwemu run bench - hello): {result['cluster_mips_end_to_end']} MIPS, "
          f"ratio {result['end_to_end_ratio']}")


if __name__ == "__main__":
    main()
