"""VMM benchmark (issue #7): the costs of interposing and devirtualizing at
runtime, on one cluster of compose/vmm.toml launched once.

- pause of interpose (FIG. 3 + FIG. 5) and devirtualize (FIG. 6 + FIG. 7):
  the time the senders of re-routed flows were held ("interrupts disabled",
  each sender on its own clock, summed over the request's route changes;
  the longest single change is printed beside it), median and p99 over --cycles
  interpose/devirtualize cycles while a program (``timeshare``) runs on os1;
  target p99 <= 5 ms on loopback (reported, not asserted). Beside the
  cycles, on the same loaded host, a raw pyzmq round trip between two
  processes of its own every 5 ms: the floor of each change's drain, which
  is such a round trip between nodes; ``interpose_pause_rtt_ratio`` and
  ``devirtualize_pause_rtt_ratio`` divide each pause's p99 by that round
  trip's p99 (target <= 1.5), and the ``*_window_rtt_ratio`` figures the
  longest single window's;
- guest syscall round-trip cost: ``syscost`` times N one-byte writes from
  inside the guest (CLOCK_MONOTONIC around the loop, so loading the ELF and
  starting the CLI stay out of it), on two clusters of compose/vmm.toml up
  side by side: a *reference* that is never virtualized, and the *measured*
  one, which goes native → virtualized (CPU and console interposed) →
  devirtualized. Each phase alternates runs on the two (--repeat each), and
  each ratio divides by the reference's figure of the same phase, so a drift
  of the host's speed cancels: virtualized / never-virtualized and
  devirtualized / never-virtualized (target <= 1.05); the native phase's
  ratio (``control_ratio``) shows what two identical clusters differ by,
  and ``devirtualized_vs_own_native`` divides that out (devirtualized ratio
  / control ratio: the measured cluster after a virtualize/devirtualize
  round against itself before it, the reference taking out the drift);
- UDP round trip through the guest (``udpecho`` on os1 of compose/demo.toml,
  a Python client on loopback, median of --udp-n exchanges): native,
  virtualized (CPU, memory, console, disk and NIC interposed: every datagram
  goes NIC → VMM → os1 → VMM → NIC) and devirtualized, each phase in
  batches alternating (ABBA) with a never-virtualized demo cluster up
  alongside; the same ratios as for the syscall;
- frames borrowed per second (¶39: pin, hand over, zero twice, map, free
  list) as GiB/s of 4 KiB frames, the wall time of the borrow request
  (median of --repeat), at each of BORROW_SIZES_MIB = 16, 64 and 256 MiB
  (4096, 16384, 65536 frames: what a user lends a VM; every size is
  printed, so the fixed cost per request shows), on a cluster of its own,
  compose/vmm-bench.toml (vmm.toml with 384 MiB for os1), started after the
  first one is down; each borrow is returned before the next. The memory
  of a fresh cluster was never written (a sparse file: zeroing it costs
  nothing), so the largest size is measured again after every frame of os1
  was written (``dirty``: what a lender that has run programs gives, whose
  zeroing costs what it costs). ``borrow_gib_per_s`` is that figure.

    .venv/bin/python bench/vmm.py [--json] [--repeat N] [--cycles N] [--only borrow|virt]
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rawzmq import RawProbe, abba_first, stop  # noqa: E402
from bench.report import printed_as_json  # noqa: E402
from orchestrator.client import call  # noqa: E402
from protocol.constants import PAGE_SIZE as PAGE  # noqa: E402
from protocol.frames import to_runs  # noqa: E402

HWEMU = ROOT / ".venv/bin/hwemu"
SAMPLES = ROOT / "guest/build/samples"
TOPOLOGY = "compose/vmm.toml"
SYSCOST_N, SYSCOST_ROUNDS = 300, 3  # writes per round, rounds per run (the median round counts)
VMM_FRAMES = 64
BORROW_SIZES_MIB = (16, 64, 256)
DIRTY_CHUNK = 256  # frames per mem_write (1 MiB) when the bench writes os1's memory
BORROW_TOPOLOGY = "compose/vmm-bench.toml"


def checked(cmd: list[str], env: dict) -> bytes:
    """Run ``cmd``; its stdout, or exit naming it and its stderr's end if it failed."""
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.decode(errors='replace')[-500:]}")
    return out.stdout


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    checked(cmd, env)
    return time.perf_counter() - t


def ctl(rd: Path, kind: str, body: dict | None = None):
    """A control request to the cluster of run dir ``rd``; its reply body."""
    return trio.run(call, rd, kind, body or {}, 120.0)


def up(topology: str, env: dict) -> None:
    subprocess.run([str(HWEMU), "up", topology, "--detach"], env=env, check=True, stdout=subprocess.DEVNULL,
                   cwd=ROOT)


def down(env: dict, **kw) -> None:
    subprocess.run([str(HWEMU), "down"], env=env, stdout=subprocess.DEVNULL, cwd=ROOT, **kw)


def abba(measure_a, measure_b, rounds: int) -> tuple[list, list]:
    """Each measurement ``rounds`` times, taking turns in ABBA order
    (:func:`bench.rawzmq.abba_first`); what each returned, in order."""
    a, b = [], []
    for i in range(rounds):
        if abba_first(i):
            a.append(measure_a())
            b.append(measure_b())
        else:
            b.append(measure_b())
            a.append(measure_a())
    return a, b


def through_phases(rd: Path, measure, check_virtualized=None) -> dict:
    """``measure()`` on the cluster of ``rd`` native, then with the VMM loaded
    and interposed on os1 (``check_virtualized(status)`` may refuse what it
    took), then devirtualized: phase -> what it returned."""
    res = {"native": measure()}
    ctl(rd, "ctl_vmm_load", {"host": "os1", "frames": VMM_FRAMES})
    pause(ctl(rd, "ctl_interpose", {"os": "os1"}))
    if check_virtualized is not None:
        check_virtualized(ctl(rd, "ctl_status"))
    res["virtualized"] = measure()
    pause(ctl(rd, "ctl_devirtualize", {"os": "os1"}))
    res["devirtualized"] = measure()
    return res


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def pause(data: dict, windows: list[float] | None = None, changes: list[int] | None = None,
          spent: dict | None = None) -> float:
    """The pause of one interpose/devirtualize request: the sum of its disabled
    windows (one per route change). The longest of them goes to ``windows``,
    their number (the route changes that held senders, in sequence) to ``changes``,
    and where each sender's pause went (``start``: from its pause to its switch
    task running; ``drain``: waiting for the old receiver; ``flush``) to
    ``spent`` (sender -> part -> [ms, ...])."""
    reports = data.get("reports") or []
    for r in reports:
        if r.get("outcome") != "committed":
            raise SystemExit(f"{r.get('title')}: {r.get('outcome')} {r.get('error', '')}")
    if windows is not None:
        windows.append(max((step["pause_ms"] for r in reports for step in r["steps"]), default=0.0))
    if changes is not None:
        changes.append(sum(1 for r in reports for step in r["steps"] if step["pause_ms"] > 0))
    if spent is not None:
        for r in reports:
            for step in r["steps"]:
                for sender, parts in ((step.get("data") or {}).get("spent_ms") or {}).items():
                    for part, ms in parts.items():
                        spent.setdefault(sender, {}).setdefault(part, []).append(ms)
    return sum(r["pause_ms"] for r in reports)


UDP_TOPOLOGY = "compose/demo.toml"
UDP_PORT = 7000


def udp_rtts(address: tuple[str, int], n: int) -> list[float]:
    """n echo exchanges of 64 bytes, one after the other; seconds each."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10.0)
        for i in range(n):
            payload = b"%08d" % i + b"x" * 56
            t = time.perf_counter()
            sock.sendto(payload, address)
            reply, _ = sock.recvfrom(2048)
            out.append(time.perf_counter() - t)
            if reply != payload:
                raise SystemExit(f"udpecho answered {reply[:40]!r} to {payload[:40]!r}")
    return out


UDP_BATCHES = 4  # batches per cluster and phase, alternating ABBA


def udp_phase(tmp: str, n: int) -> dict[str, tuple[float, float]]:
    """Median UDP echo round trip on a measured cluster (native, then
    virtualized, then devirtualized) and on a never-virtualized reference
    up alongside, each phase in UDP_BATCHES batches per cluster alternating
    ABBA, so a drift of the host's speed hits both alike: phase -> (measured,
    reference) seconds."""
    clusters = {name: Path(tmp) / name for name in ("udp", "udp-reference")}
    servers = []
    try:
        addresses = {}
        for name, rd in clusters.items():
            env = {**os.environ, "HWEMU_RUN_DIR": str(rd)}
            up(UDP_TOPOLOGY, env)
            server = subprocess.Popen([str(HWEMU), "run", UDP_TOPOLOGY, str(SAMPLES / "udpecho.elf"), "--",
                                       str(UDP_PORT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      cwd=ROOT)
            servers.append(server)
            if not server.stdout.readline().startswith(b"udpecho listening"):
                raise SystemExit(f"udpecho did not start on {name}")
            ports = ctl(rd, "ctl_request", {"node": "nic0", "kind": "stats", "body": {}})["body"]["stats"]["ports"]
            addresses[name] = ("127.0.0.1", ports[str(UDP_PORT)]["host_port"])
            udp_rtts(addresses[name], 50)  # warm up
        batch = max(1, n // UDP_BATCHES)

        def side_by_side() -> tuple[float, float]:
            a, b = abba(lambda: udp_rtts(addresses["udp"], batch), lambda: udp_rtts(addresses["udp-reference"], batch),
                        UDP_BATCHES)
            return statistics.median(sum(a, [])), statistics.median(sum(b, []))

        def nic_interposed(status: dict) -> None:
            virt = status["virt"]["resources"]
            if virt.get("os1.nic (nic0)", virt.get("os1.nic")) != "vmm":
                raise SystemExit(f"the NIC was not interposed: {virt}")

        return through_phases(clusters["udp"], side_by_side, nic_interposed)
    finally:
        stop(*servers)
        for rd in clusters.values():
            down({**os.environ, "HWEMU_RUN_DIR": str(rd)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeat", type=int, default=4, help="runs per syscall figure and borrows (median)")
    ap.add_argument("--cycles", type=int, default=100,
                    help="interpose/devirtualize cycles for the pause figures (100: the p99 is not the worst one)")
    ap.add_argument("--only", choices=("virt", "udp", "borrow"), help="only the pause and syscall figures (virt), "
                    "only the UDP round trips (udp) or only the borrow figures (borrow)")
    ap.add_argument("--udp-n", type=int, default=300, help="UDP echo exchanges per UDP figure (median)")
    args = ap.parse_args()
    if not (SAMPLES / "syscost.elf").exists():
        subprocess.run(["make", "-C", str(ROOT / "guest"), "-s"], check=True)

    result: dict = {"repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="hwv") as tmp:
        if args.only in (None, "virt"):
            result.update(virt_figures(Path(tmp) / "run", args))
        if args.only in (None, "udp"):
            udp = udp_phase(tmp, args.udp_n)
            ratio = {phase: m / r for phase, (m, r) in udp.items()}
            result.update({
                "udp_rtt_us_native": round(udp["native"][0] * 1e6, 1),
                "udp_rtt_us_virtualized": round(udp["virtualized"][0] * 1e6, 1),
                "udp_rtt_us_devirtualized": round(udp["devirtualized"][0] * 1e6, 1),
                "udp_rtt_us_reference": [round(udp[p][1] * 1e6, 1) for p in ("native", "virtualized", "devirtualized")],
                "udp_control_ratio": round(ratio["native"], 3),
                "udp_virtualized_ratio": round(ratio["virtualized"], 3),
                "udp_devirtualized_ratio": round(ratio["devirtualized"], 3),
                "udp_devirtualized_vs_own_native": round(ratio["devirtualized"] / ratio["native"], 3)})
        if args.only in (None, "borrow"):
            result.update(borrow_figures(Path(tmp) / "borrow", args))
    if printed_as_json(result, args):
        return
    if "cycles" in result:
        print(f"interpose pause     p50 {result['interpose_pause_p50_ms']:8.3f} ms  "
              f"p99 {result['interpose_pause_p99_ms']:8.3f} ms"
              f"  ({args.cycles} cycles under a running program; target p99 <= 5 ms)")
        print(f"devirtualize pause  p50 {result['devirtualize_pause_p50_ms']:8.3f} ms  "
              f"p99 {result['devirtualize_pause_p99_ms']:8.3f} ms")
        print(f"  (each is the sum of the request's disabled windows; the longest single window: interpose p50 "
              f"{result['interpose_longest_window_p50_ms']} / p99 {result['interpose_longest_window_p99_ms']} ms, "
              f"devirtualize {result['devirtualize_longest_window_p50_ms']} / "
              f"{result['devirtualize_longest_window_p99_ms']} ms)")
        print(f"  beside them, a raw pyzmq round trip between two processes every 5 ms: p50 "
              f"{result['raw_rtt_under_load_p50_ms']} ms, p99 {result['raw_rtt_under_load_p99_ms']} ms "
              f"({result['raw_rtt_under_load_n']} round trips)")
        print(f"  pause p99 ÷ raw round trip p99: interpose {result['interpose_pause_rtt_ratio']} "
              f"({result['interpose_route_changes']} route changes in sequence), devirtualize "
              f"{result['devirtualize_pause_rtt_ratio']} ({result['devirtualize_route_changes']}) (target ≤ 1.5); "
              f"the longest single window: {result['interpose_window_rtt_ratio']} / "
              f"{result['devirtualize_window_rtt_ratio']}")
        print("  where a sender's pause went, p50 / p99 ms (start: from its pause to its switch running; drain: "
              "waiting for the old receiver to consume; flush): " + "; ".join(
                  f"{sender} " + ", ".join(f"{part} {v[0]}/{v[1]}" for part, v in parts.items())
                  for sender, parts in result["window_spent_ms"].items()))
        print(f"syscall round trip  native {result['syscall_us_native']} us, "
              f"virtualized {result['syscall_us_virtualized']} us "
              f"(x{result['virtualized_ratio']}), devirtualized {result['syscall_us_devirtualized']} us "
              f"(x{result['devirtualized_ratio']}; target <= 1.05); each ÷ a never-virtualized cluster alongside "
              f"({result['syscall_us_reference']} us), which the native phase matches x{result['control_ratio']}; "
              f"devirtualized against its own native phase x{result['devirtualized_vs_own_native']}")
    if "udp_rtt_us_native" in result:
        print(f"UDP echo round trip native {result['udp_rtt_us_native']} us, "
              f"virtualized {result['udp_rtt_us_virtualized']} us "
              f"(x{result['udp_virtualized_ratio']}), devirtualized {result['udp_rtt_us_devirtualized']} us "
              f"(x{result['udp_devirtualized_ratio']}; target <= 1.05); each ÷ a never-virtualized cluster alongside "
              f"({result['udp_rtt_us_reference']} us), which the native phase matches x{result['udp_control_ratio']}; "
              f"devirtualized against its own native phase x{result['udp_devirtualized_vs_own_native']}")
    for b in result.get("borrow_sizes", []):
        print(f"borrow {b['mib']:4d} MiB {'dirty' if b['dirty'] else 'fresh'} {b['frames']} frames "
              f"in {b['borrow_ms']} ms: "
              f"{b['frames_per_s']:.0f} frames/s, {b['gib_per_s']} GiB/s (zeroing included; "
              f"target >= 1); return {b['return_ms']} ms")


def syscost_s(env: dict) -> float:
    """Seconds per guest syscall round trip: the median round of one ``syscost`` run."""
    out = checked([str(HWEMU), "run", TOPOLOGY, str(SAMPLES / "syscost.elf"), "--", str(SYSCOST_N),
                   str(SYSCOST_ROUNDS)], env)
    rounds = [int(line.split()[-2]) for line in out.decode().splitlines() if line.startswith("syscost: round")]
    if len(rounds) != SYSCOST_ROUNDS:
        raise SystemExit(f"syscost printed {len(rounds)} rounds, expected {SYSCOST_ROUNDS}: {out[-300:]!r}")
    return statistics.median(rounds) / SYSCOST_N / 1e6


def side_by_side(measured: dict, reference: dict, repeat: int) -> tuple[float, float]:
    """Median syscall cost on the measured and the reference cluster, runs
    alternating in ABBA order (neither side always goes first)."""
    a, b = abba(lambda: syscost_s(measured), lambda: syscost_s(reference), repeat)
    return statistics.median(a), statistics.median(b)


def virt_figures(rd: Path, args) -> dict:
    """Pause of interpose / devirtualize and the syscall ratios, on compose/vmm.toml."""
    env = {**os.environ, "HWEMU_RUN_DIR": str(rd)}
    ref_rd = rd.parent / "reference"
    ref_env = {**os.environ, "HWEMU_RUN_DIR": str(ref_rd)}

    background = probe = None
    try:
        for e in (env, ref_env):
            up(TOPOLOGY, e)
            timed([str(HWEMU), "run", TOPOLOGY, str(SAMPLES / "hello.elf")], e)  # warm up
        phases = through_phases(rd, lambda: side_by_side(env, ref_env, args.repeat))
        down(ref_env)

        # a program runs on os1 throughout the cycles (killed with the cluster)
        background = subprocess.Popen([str(HWEMU), "run", TOPOLOGY, str(SAMPLES / "timeshare.elf"), "--",
                                       "P", "100000"], env=env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, cwd=ROOT)
        time.sleep(2.0)
        # beside the cycles, on the same loaded host: raw pyzmq round trips
        # between two processes of their own, one every 5 ms (the floor of a
        # route change's drain, which is such a round trip between nodes)
        probe = RawProbe(f"ipc://{rd.parent}/wakeup-probe")
        inter, devirt, inter_win, devirt_win = [], [], [], []
        n_changes: dict[str, list[int]] = {"interpose": [], "devirtualize": []}
        spent: dict = {}
        for _ in range(args.cycles):
            inter.append(pause(ctl(rd, "ctl_interpose", {"os": "os1"}), inter_win, n_changes["interpose"], spent))
            time.sleep(0.05)
            devirt.append(pause(ctl(rd, "ctl_devirtualize", {"os": "os1"}), devirt_win, n_changes["devirtualize"],
                                spent))
            time.sleep(0.05)
        wakeups = probe.stop()
        if background.poll() is not None:
            raise SystemExit(f"the background program ended during the cycles ({background.returncode})")
    finally:
        if probe is not None:
            probe.close()
        stop(background)
        for e in (env, ref_env):
            down(e, stderr=subprocess.DEVNULL)
    changes = {k: statistics.median_low(v) for k, v in n_changes.items()}
    us = lambda v: round(v * 1e6, 1)  # noqa: E731
    ratio = lambda phase: round(phases[phase][0] / phases[phase][1], 3)  # noqa: E731
    return {
        "interpose_pause_p50_ms": round(statistics.median(inter), 3),
        "interpose_pause_p99_ms": round(pct(inter, 99), 3),
        "devirtualize_pause_p50_ms": round(statistics.median(devirt), 3),
        "devirtualize_pause_p99_ms": round(pct(devirt, 99), 3),
        "pause_target_p99_ms": 5.0,
        "interpose_longest_window_p50_ms": round(statistics.median(inter_win), 3),
        "interpose_longest_window_p99_ms": round(pct(inter_win, 99), 3),
        "devirtualize_longest_window_p50_ms": round(statistics.median(devirt_win), 3),
        "devirtualize_longest_window_p99_ms": round(pct(devirt_win, 99), 3),
        "interpose_pause_rtt_ratio": round(pct(inter, 99) / (pct(wakeups, 99) * 1e3), 2),
        "devirtualize_pause_rtt_ratio": round(pct(devirt, 99) / (pct(wakeups, 99) * 1e3), 2),
        "interpose_window_rtt_ratio": round(pct(inter_win, 99) / (pct(wakeups, 99) * 1e3), 2),
        "devirtualize_window_rtt_ratio": round(pct(devirt_win, 99) / (pct(wakeups, 99) * 1e3), 2),
        "window_spent_ms": {sender: {part: [round(statistics.median(v), 3), round(pct(v, 99), 3)]
                                     for part, v in sorted(parts.items())}
                            for sender, parts in sorted(spent.items())},
        "interpose_route_changes": changes["interpose"],
        "devirtualize_route_changes": changes["devirtualize"],
        "cycles": args.cycles,
        "raw_rtt_under_load_p50_ms": round(statistics.median(wakeups) * 1e3, 3),
        "raw_rtt_under_load_p99_ms": round(pct(wakeups, 99) * 1e3, 3),
        "raw_rtt_under_load_n": len(wakeups),
        "syscall_us_native": us(phases["native"][0]),
        "syscall_us_virtualized": us(phases["virtualized"][0]),
        "syscall_us_devirtualized": us(phases["devirtualized"][0]),
        "syscall_us_reference": [us(phases[p][1]) for p in ("native", "virtualized", "devirtualized")],
        "control_ratio": ratio("native"),
        "virtualized_ratio": ratio("virtualized"),
        "devirtualized_ratio": ratio("devirtualized"),
        "devirtualized_vs_own_native": round(ratio("devirtualized") / ratio("native"), 3),
        "devirtualized_target_ratio": 1.05,
    }


def borrow_figures(brd: Path, args) -> dict:
    """Borrow (and return) each size of BORROW_SIZES_MIB --repeat times on compose/vmm-bench.toml."""
    benv = {**os.environ, "HWEMU_RUN_DIR": str(brd)}  # a run dir of its own: a memory file is sized for one topology
    bctl = functools.partial(ctl, brd)
    sizes = []
    up(BORROW_TOPOLOGY, benv)
    try:
        bctl("ctl_vmm_load", {"host": "os1", "frames": VMM_FRAMES})

        def dirty_os1() -> None:
            """Write a pattern into every frame os1 owns (whichever it lends next is then dirty)."""
            owners = bctl("ctl_request", {"node": "memctl", "kind": "mem_owners", "body": {}})["body"]["data"]
            for first, n in to_runs(owners["os1"]):
                for at in range(first, first + n, DIRTY_CHUNK):
                    k = min(DIRTY_CHUNK, first + n - at)
                    bctl("ctl_request", {"node": "memctl", "kind": "mem_write", "timeout": 30.0,
                                         "body": {"space": "os1", "addr": at * PAGE, "data": b"\x5a" * (k * PAGE)}})

        def measure(mib: int, dirty: bool = False) -> dict:
            frames = mib * 2**20 // PAGE
            borrow_s, return_s = [], []
            for _ in range(args.repeat):
                if dirty:
                    dirty_os1()
                t = time.perf_counter()
                report = bctl("ctl_memory_borrow", {"from_os": "os1", "to_os": "os2", "frames": frames})["reports"][0]
                borrow_s.append(time.perf_counter() - t)
                if report.get("partial"):
                    raise SystemExit(f"borrow of {frames} frames was partial: {report['partial']}")
                if dirty:  # the written frames reached os2 zeroed (checked outside the timing)
                    for first, n in report["runs"]:
                        for f in (first, first + n - 1):
                            got = bctl("ctl_request", {"node": "memctl", "kind": "mem_read",
                                                       "body": {"space": "os2", "addr": f * PAGE, "length": PAGE}})
                            if got["body"].get("data") != bytes(PAGE):
                                raise SystemExit(f"frame {f} lent to os2 is not zeroed: {got}")
                t = time.perf_counter()
                bctl("ctl_memory_return", {"from_os": "os1", "to_os": "os2"})
                return_s.append(time.perf_counter() - t)
            borrow = statistics.median(borrow_s)
            return {"mib": mib, "frames": frames, "dirty": dirty, "borrow_ms": round(borrow * 1e3, 2),
                    "borrow_ms_all": [round(b * 1e3, 2) for b in borrow_s],
                    "frames_per_s": round(frames / borrow, 1),
                    "gib_per_s": round(frames * PAGE / borrow / 2**30, 4),
                    "return_ms": round(statistics.median(return_s) * 1e3, 2)}

        for mib in BORROW_SIZES_MIB:
            sizes.append(measure(mib))
        sizes.append(measure(BORROW_SIZES_MIB[-1], dirty=True))
    finally:
        down(benv)
    largest = sizes[-1]
    return {"borrow_sizes": sizes, "borrow_frames": largest["frames"], "borrow_ms": largest["borrow_ms"],
            "borrow_frames_per_s": largest["frames_per_s"], "borrow_gib_per_s": largest["gib_per_s"],
            "borrow_target_gib_per_s": 1.0, "return_ms": largest["return_ms"]}


if __name__ == "__main__":
    main()
