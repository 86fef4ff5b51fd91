"""VMM benchmark (issue #7): the costs of interposing and devirtualizing at
runtime, on one cluster of compose/vmm.toml launched once.

- pause of interpose (FIG. 3 + FIG. 5) and devirtualize (FIG. 6 + FIG. 7):
  the time the senders of re-routed flows were held ("interrupts disabled",
  the sum over the request's choreographies), median and p99 over --cycles
  interpose/devirtualize cycles while a program (``timeshare``) runs on os1;
  target p99 <= 5 ms on loopback (reported, not asserted);
- guest syscall round-trip cost: ``sysloop`` timed as the difference between
  N=LONG and N=SHORT runs (bench/native.py's method, the fixed cost of a run
  cancels out), never virtualized (before the VMM is loaded), virtualized
  (CPU and console interposed) and devirtualized again: the ratios
  virtualized / native and devirtualized / never-virtualized (target <= 1.05);
- UDP round trip through the guest (``udpecho`` on os1 of compose/demo.toml,
  a Python client on loopback, median of --udp-n exchanges): native,
  virtualized (CPU, memory, console, disk and NIC interposed: every datagram
  goes NIC → VMM → os1 → VMM → NIC) and devirtualized; the same two ratios;
- frames borrowed per second (¶39: pin, hand over, zero twice, map, free
  list) as GiB/s of 4 KiB frames, the wall time of the borrow request, for
  a realistic loan of BORROW_FRAMES = 16384 frames (64 MiB) on a cluster of
  its own, compose/vmm-bench.toml (vmm.toml with 128 MiB for os1), started
  after the first one is down; each borrow is returned before the next.

    .venv/bin/python bench/vmm.py [--json] [--repeat N] [--cycles N]
"""

from __future__ import annotations

import argparse
import json
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

from orchestrator.client import call  # noqa: E402

HWEMU = ROOT / ".venv/bin/hwemu"
SAMPLES = ROOT / "guest/build/samples"
TOPOLOGY = "compose/vmm.toml"
SHORT, LONG = 100, 1100
PAGE = 4096
VMM_FRAMES = 64
BORROW_FRAMES = 16384  # 64 MiB
BORROW_TOPOLOGY = "compose/vmm-bench.toml"


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=600, cwd=ROOT)
    elapsed = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100 * len(s) + 0.5)) - 1))]


def pause(data: dict) -> float:
    reports = data.get("reports") or []
    for r in reports:
        if r.get("outcome") != "committed":
            raise SystemExit(f"{r.get('title')}: {r.get('outcome')} {r.get('error', '')}")
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


def udp_phase(tmp: str, n: int) -> dict[str, float]:
    """Median UDP echo round trip native, virtualized and devirtualized, on one cluster."""
    rd = Path(tmp) / "udp"
    env = {**os.environ, "HWEMU_RUN_DIR": str(rd)}
    ctl = lambda kind, body=None: trio.run(call, rd, kind, body or {}, 120.0)  # noqa: E731
    subprocess.run([str(HWEMU), "up", UDP_TOPOLOGY, "--detach"], env=env, check=True, stdout=subprocess.DEVNULL,
                   cwd=ROOT)
    server = None
    try:
        server = subprocess.Popen([str(HWEMU), "run", UDP_TOPOLOGY, str(SAMPLES / "udpecho.elf"), "--",
                                   str(UDP_PORT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                  cwd=ROOT)
        if not server.stdout.readline().startswith(b"udpecho listening"):
            raise SystemExit("udpecho did not start")
        ports = ctl("ctl_request", {"node": "nic0", "kind": "stats", "body": {}})["body"]["stats"]["ports"]
        address = ("127.0.0.1", ports[str(UDP_PORT)]["host_port"])
        udp_rtts(address, 50)  # warm up
        res = {"native": statistics.median(udp_rtts(address, n))}
        ctl("ctl_vmm_load", {"host": "os1", "frames": VMM_FRAMES})
        pause(ctl("ctl_interpose", {"os": "os1"}))
        virt = ctl("ctl_status")["virt"]["resources"]
        if virt.get("os1.nic (nic0)", virt.get("os1.nic")) != "vmm":
            raise SystemExit(f"the NIC was not interposed: {virt}")
        res["virtualized"] = statistics.median(udp_rtts(address, n))
        pause(ctl("ctl_devirtualize", {"os": "os1"}))
        res["devirtualized"] = statistics.median(udp_rtts(address, n))
        return res
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
        subprocess.run([str(HWEMU), "down"], env=env, stdout=subprocess.DEVNULL, cwd=ROOT)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeat", type=int, default=3, help="runs per syscall figure and borrows (median)")
    ap.add_argument("--cycles", type=int, default=30, help="interpose/devirtualize cycles for the pause figures")
    ap.add_argument("--udp-n", type=int, default=300, help="UDP echo exchanges per UDP figure (median)")
    args = ap.parse_args()
    if not (SAMPLES / "sysloop.elf").exists():
        subprocess.run(["make", "-C", str(ROOT / "guest"), "-s"], check=True)

    with tempfile.TemporaryDirectory(prefix="hwv") as tmp:
        rd = Path(tmp) / "run"
        env = {**os.environ, "HWEMU_RUN_DIR": str(rd)}

        def ctl(kind: str, body: dict | None = None):
            return trio.run(call, rd, kind, body or {}, 120.0)

        def syscall_s() -> float:
            """Seconds per guest syscall round trip (difference of two sysloop runs)."""
            run = lambda n: timed([str(HWEMU), "run", TOPOLOGY, str(SAMPLES / "sysloop.elf"), "--", str(n)], env)
            short = statistics.median(run(SHORT) for _ in range(args.repeat))
            long = statistics.median(run(LONG) for _ in range(args.repeat))
            return max(long - short, 1e-9) / (LONG - SHORT)

        subprocess.run([str(HWEMU), "up", TOPOLOGY, "--detach"], env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        background = None
        try:
            timed([str(HWEMU), "run", TOPOLOGY, str(SAMPLES / "hello.elf")], env)  # warm up
            native = syscall_s()
            ctl("ctl_vmm_load", {"host": "os1", "frames": VMM_FRAMES})
            ctl("ctl_interpose", {"os": "os1"})
            virtualized = syscall_s()
            ctl("ctl_devirtualize", {"os": "os1"})
            devirtualized = syscall_s()


            # a program runs on os1 throughout the cycles (killed with the cluster)
            background = subprocess.Popen([str(HWEMU), "run", TOPOLOGY, str(SAMPLES / "timeshare.elf"), "--",
                                           "P", "100000"], env=env, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, cwd=ROOT)
            time.sleep(2.0)
            inter, devirt = [], []
            for _ in range(args.cycles):
                inter.append(pause(ctl("ctl_interpose", {"os": "os1"})))
                time.sleep(0.05)
                devirt.append(pause(ctl("ctl_devirtualize", {"os": "os1"})))
                time.sleep(0.05)
            if background.poll() is not None:
                raise SystemExit(f"the background program ended during the cycles ({background.returncode})")
        finally:
            if background is not None and background.poll() is None:
                background.kill()
                background.wait()
            subprocess.run([str(HWEMU), "down"], env=env, stdout=subprocess.DEVNULL, cwd=ROOT)

        udp = udp_phase(tmp, args.udp_n)

        borrow_s, return_s = [], []
        brd = Path(tmp) / "borrow"  # a run dir of its own: a memory file is sized for one topology
        benv = {**os.environ, "HWEMU_RUN_DIR": str(brd)}
        bctl = lambda kind, body: trio.run(call, brd, kind, body, 120.0)  # noqa: E731
        subprocess.run([str(HWEMU), "up", BORROW_TOPOLOGY, "--detach"], env=benv, check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
        try:
            bctl("ctl_vmm_load", {"host": "os1", "frames": VMM_FRAMES})
            for _ in range(args.repeat):
                t = time.perf_counter()
                bctl("ctl_memory_borrow", {"from_os": "os1", "to_os": "os2", "frames": BORROW_FRAMES})
                borrow_s.append(time.perf_counter() - t)
                t = time.perf_counter()
                bctl("ctl_memory_return", {"from_os": "os1", "to_os": "os2"})
                return_s.append(time.perf_counter() - t)
        finally:
            subprocess.run([str(HWEMU), "down"], env=benv, stdout=subprocess.DEVNULL, cwd=ROOT)

    borrow = statistics.median(borrow_s)
    result = {
        "interpose_pause_p50_ms": round(statistics.median(inter), 3),
        "interpose_pause_p99_ms": round(pct(inter, 99), 3),
        "devirtualize_pause_p50_ms": round(statistics.median(devirt), 3),
        "devirtualize_pause_p99_ms": round(pct(devirt, 99), 3),
        "pause_target_p99_ms": 5.0,
        "cycles": args.cycles,
        "syscall_us_native": round(native * 1e6, 1),
        "syscall_us_virtualized": round(virtualized * 1e6, 1),
        "syscall_us_devirtualized": round(devirtualized * 1e6, 1),
        "virtualized_ratio": round(virtualized / native, 3),
        "devirtualized_ratio": round(devirtualized / native, 3),
        "devirtualized_target_ratio": 1.05,
        "udp_rtt_us_native": round(udp["native"] * 1e6, 1),
        "udp_rtt_us_virtualized": round(udp["virtualized"] * 1e6, 1),
        "udp_rtt_us_devirtualized": round(udp["devirtualized"] * 1e6, 1),
        "udp_virtualized_ratio": round(udp["virtualized"] / udp["native"], 3),
        "udp_devirtualized_ratio": round(udp["devirtualized"] / udp["native"], 3),
        "borrow_frames": BORROW_FRAMES,
        "borrow_ms": round(borrow * 1e3, 2),
        "borrow_frames_per_s": round(BORROW_FRAMES / borrow, 1),
        "borrow_gib_per_s": round(BORROW_FRAMES * PAGE / borrow / 2**30, 4),
        "return_ms": round(statistics.median(return_s) * 1e3, 2),
        "repeat": args.repeat,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"interpose pause     p50 {result['interpose_pause_p50_ms']:8.3f} ms  p99 {result['interpose_pause_p99_ms']:8.3f} ms"
          f"  ({args.cycles} cycles under a running program; target p99 <= 5 ms)")
    print(f"devirtualize pause  p50 {result['devirtualize_pause_p50_ms']:8.3f} ms  p99 {result['devirtualize_pause_p99_ms']:8.3f} ms")
    print(f"syscall round trip  native {result['syscall_us_native']} us, virtualized {result['syscall_us_virtualized']} us "
          f"(x{result['virtualized_ratio']}), devirtualized {result['syscall_us_devirtualized']} us "
          f"(x{result['devirtualized_ratio']}; target <= 1.05)")
    print(f"UDP echo round trip native {result['udp_rtt_us_native']} us, virtualized {result['udp_rtt_us_virtualized']} us "
          f"(x{result['udp_virtualized_ratio']}), devirtualized {result['udp_rtt_us_devirtualized']} us "
          f"(x{result['udp_devirtualized_ratio']})")
    print(f"borrow              {BORROW_FRAMES} frames in {result['borrow_ms']} ms: "
          f"{result['borrow_frames_per_s']:.0f} frames/s, {result['borrow_gib_per_s']} GiB/s (zeroing included; "
          f"target >= 1); return {result['return_ms']} ms")


if __name__ == "__main__":
    main()
