"""Disk and network I/O benchmark of the OS on compose/io.toml (issue #6), one run.

- UDP echo round trip: ``udpecho.elf`` on the cluster (``hwemu run
  --forward``) vs a raw Python UDP echo server on loopback, the same client
  (one 64-byte datagram, wait for its echo, --rtt-n times); ratio of the
  median round trips (cluster / raw);
- synchronous 4 KiB write IOPS: ``bench/iowrite.c`` (a guest program, built
  here against the SDK) doing pwrite64 of one 4 KiB block + fsync, --write-n
  times, timed by the guest's own clock_gettime (so the program's start-up
  is not counted), vs a raw Python ``os.pwrite`` + ``os.fdatasync`` loop on
  a file in the same run directory (same file system); ratio cluster / raw;
- beside each guest figure, its critical path and floor (bench/floor.py):
  the hops (messages waited for in sequence) of one echo, from the
  datagram's arrival at the NIC to the NIC's send of the echo, and of one pwrite+fsync cycle, counted on a
  trace of a short extra batch (tracing slows the nodes, so the timed
  figures run untraced); the floor is hops × half the raw pyzmq round trip
  measured in the same run, plus the raw UDP echo (the loopback legs) or
  the raw pwrite+fdatasync (the device's own time); ratio figure ÷ floor.

    .venv/bin/python bench/io.py [--json] [--rtt-n N] [--write-n N]
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.floor import floor_line, raw_rtt_s, syscall_hops, traced  # noqa: E402
from bench.report import printed_as_json  # noqa: E402
from orchestrator import critpath  # noqa: E402
from protocol.linux_abi import SYS_PWRITE64  # noqa: E402

TRACED_N = 30  # echoes and writes of the traced batches that count the hops
HWEMU = ROOT / ".venv/bin/hwemu"
GUEST = ROOT / "guest"
SAMPLES = GUEST / "build/samples"
PAYLOAD = b"x" * 64


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rtts(address: tuple[str, int], n: int) -> list[float]:
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        for _ in range(5):  # warm-up
            sock.sendto(PAYLOAD, address)
            sock.recvfrom(65536)
        for _ in range(n):
            t = time.perf_counter()
            sock.sendto(PAYLOAD, address)
            reply, _ = sock.recvfrom(65536)
            out.append(time.perf_counter() - t)
            assert reply == PAYLOAD
    return out


def raw_echo(n: int) -> list[float]:
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                data, peer = srv.recvfrom(65536)
            except TimeoutError:
                continue
            srv.sendto(data, peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        return rtts(srv.getsockname(), n)
    finally:
        stop.set()
        t.join()
        srv.close()


def raw_writes(path: Path, n: int) -> float:
    block = bytearray(4096)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        t = time.perf_counter()
        for i in range(n):
            block[:] = bytes([i & 0xFF]) * 4096
            os.pwrite(fd, block, i * 4096)
            os.fdatasync(fd)
        return time.perf_counter() - t
    finally:
        os.close(fd)


def build_iowrite(out: Path) -> Path:
    elf = out / "iowrite.elf"
    cc = subprocess.run(
        ["riscv64-unknown-elf-gcc", "-march=rv32im", "-mabi=ilp32", "-O2", "-ffreestanding",
         f"-I{GUEST}/sdk", f"-I{GUEST}/sdk/include", "-static", "-nostartfiles", "-nostdlib",
         "-T", f"{GUEST}/sdk/link.ld", "-Wl,--no-warn-rwx-segments", f"{GUEST}/build/crt0.o",
         str(ROOT / "bench/iowrite.c"), f"{GUEST}/build/libhwemu.a", "-lgcc", "-o", str(elf)],
        capture_output=True, text=True)
    if cc.returncode != 0:
        raise SystemExit(f"cannot build bench/iowrite.c:\n{cc.stderr}")
    return elf


def read_line(proc: subprocess.Popen, seconds: float = 60) -> bytes:
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    got = b""
    deadline = time.monotonic() + seconds
    while not got.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not sel.select(left):
            raise SystemExit(f"no line from {proc.args} within {seconds} s (got {got!r})")
        chunk = os.read(proc.stdout.fileno(), 1)
        if not chunk:
            raise SystemExit(f"{proc.args} ended: {got!r} {proc.stderr.read()!r}")
        got += chunk
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--rtt-n", type=int, default=300, help="echo round trips per side")
    ap.add_argument("--write-n", type=int, default=200, help="4 KiB pwrite+fsync per side")
    args = ap.parse_args()
    subprocess.run(["make", "-C", str(GUEST), "-s"], check=True)

    with tempfile.TemporaryDirectory(prefix="hwio") as tmp:
        rd = Path(tmp) / "run"
        env = {**os.environ, "HWEMU_RUN_DIR": str(rd)}
        elf = build_iowrite(Path(tmp))
        zmq_rtt = [raw_rtt_s(tmp)]
        subprocess.run([str(HWEMU), "up", "compose/io.toml", "--detach"], env=env, check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
        try:
            host = free_port()
            echo = subprocess.Popen([str(HWEMU), "run", "compose/io.toml", str(SAMPLES / "udpecho.elf"),
                                     "--forward", f"{host}:7000", "--", "7000"], env=env, cwd=ROOT,
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                read_line(echo)
                guest_rtt = rtts(("127.0.0.1", host), args.rtt_n)
                echo_tl = traced(rd, Path(tmp) / "echo-trace.json", lambda: rtts(("127.0.0.1", host), TRACED_N))
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.settimeout(10)
                    s.sendto(b"quit", ("127.0.0.1", host))
                    s.recvfrom(16)
                echo.communicate(timeout=60)
            finally:
                if echo.poll() is None:
                    echo.kill()
                    echo.communicate()
            run = subprocess.run([str(HWEMU), "run", "compose/io.toml", str(elf), "--", "/dev/disk0",
                                  str(args.write_n)], env=env, cwd=ROOT, capture_output=True, timeout=600)
            words = run.stdout.split()
            if run.returncode != 0 or len(words) != 3 or words[0] != b"iowrite":
                raise SystemExit(f"iowrite failed: {run.stdout!r} {run.stderr!r}")
            guest_write_s = int(words[2]) / 1e6
            write_trace = Path(tmp) / "write-trace.json"
            subprocess.run([str(HWEMU), "run", "compose/io.toml", str(elf), "--trace", str(write_trace), "--",
                            "/dev/disk0", str(TRACED_N)], env=env, cwd=ROOT, capture_output=True, timeout=600,
                           check=True)
            write_tl = critpath.from_chrome(json.loads(write_trace.read_text()))
        finally:
            subprocess.run([str(HWEMU), "down"], env=env, stdout=subprocess.DEVNULL, cwd=ROOT)
        raw_rtt = raw_echo(args.rtt_n)
        raw_write_s = raw_writes(rd / "raw-writes.bin", args.write_n)
        zmq_rtt.append(raw_rtt_s(tmp))

    # hops of one echo: from the datagram's arrival at the NIC to the NIC's send of the
    # echo (the UDP legs outside are the raw echo's)
    rx, tx = echo_tl.marks("nic0", "nic", "nic rx"), echo_tl.marks("nic0", "nic", "nic tx")
    echo_paths = (critpath.between(echo_tl, "nic0", rx, tx) if rx and tx  # a NIC without the marks: its
                  else critpath.spans(echo_tl, "nic0", "nic_rx", "nic_send"))  # interrupt to its nic_send
    echo_hops = critpath.hop_count(echo_paths)
    echo_path = critpath.describe(next(p for p in echo_paths if len(p) == echo_hops))
    write_hops, write_path = syscall_hops(write_tl, SYS_PWRITE64)
    one_way = statistics.median(zmq_rtt) / 2

    g_rtt, r_rtt = statistics.median(guest_rtt), statistics.median(raw_rtt)
    g_iops, r_iops = args.write_n / guest_write_s, args.write_n / raw_write_s
    udp_floor = echo_hops * one_way + r_rtt
    write_floor = write_hops * one_way + raw_write_s / args.write_n  # seconds per pwrite+fsync
    result = {
        "raw_zmq_rtt_us": round(statistics.median(zmq_rtt) * 1e6, 1),
        "udp_rtt_hops": echo_hops,
        "udp_rtt_floor_us": round(udp_floor * 1e6, 1),
        "udp_rtt_floor_ratio": round(g_rtt / udp_floor, 2),
        "udp_rtt_path": echo_path,
        "write_hops": write_hops,
        "write_floor_iops": round(1 / write_floor, 1),
        "write_floor_ratio": round((guest_write_s / args.write_n) / write_floor, 2),
        "write_path": write_path,
        "udp_rtt_guest_us": round(g_rtt * 1e6, 1),
        "udp_rtt_raw_us": round(r_rtt * 1e6, 1),
        "udp_rtt_ratio": round(g_rtt / r_rtt, 2),
        "write_iops_guest": round(g_iops, 1),
        "write_iops_raw": round(r_iops, 1),
        "write_iops_ratio": round(g_iops / r_iops, 4),
        "write_method": "guest bench/iowrite.c: pwrite64 4 KiB block-aligned + fsync, timed by the guest",
        "rtt_n": args.rtt_n,
        "write_n": args.write_n,
    }
    if printed_as_json(result, args):
        return
    print(f"UDP echo round trip: guest {result['udp_rtt_guest_us']} µs, raw Python {result['udp_rtt_raw_us']} µs "
          f"(median of {args.rtt_n}), ratio {result['udp_rtt_ratio']}")
    print(f"4 KiB pwrite+fsync: guest {result['write_iops_guest']} IOPS, raw pwrite+fdatasync "
          f"{result['write_iops_raw']} IOPS, ratio {result['write_iops_ratio']} (target ≥ 0.3)")
    print(f"floors (raw pyzmq round trip {result['raw_zmq_rtt_us']} µs in the same run; one hop = half of it):")
    print(floor_line("UDP echo", f"{result['udp_rtt_guest_us']} µs", echo_hops,
                     f"{result['udp_rtt_floor_us']} µs (+ the raw echo)", result["udp_rtt_floor_ratio"], 1.5))
    print(f"    path: {echo_path}")
    print(floor_line("pwrite+fsync", f"{result['write_iops_guest']} IOPS", write_hops,
                     f"{result['write_floor_iops']} IOPS (+ the raw fdatasync)", result["write_floor_ratio"], 1.5))
    print(f"    path: {write_path}")


if __name__ == "__main__":
    main()
