"""The critical paths of guest I/O, pinned (issue #16): how many messages a
guest operation waits for in sequence, counted on a real trace of a real
cluster (orchestrator/critpath.py), so that a change that adds a wait to a
path fails here rather than only in a benchmark.

The design's counts (4, 6 and 2 hops; docs/benchmarks.md, "Critical paths"):

- a UDP echo through ``udpecho`` (from the datagram's arrival at the NIC to
  the NIC's send of the echo): the interrupt carries the datagram; the OS
  resumes the process with the buffer, the source address and its length as
  the resume's stores (the CPU makes them in the pages it holds); the
  ``sendto`` trap carries the buffer and the address; ``nic_send``. No
  message to the memory controller at all;
- a 4 KiB ``pwrite64`` + ``fsync`` loop (one cycle, trap to trap): the trap
  carries the buffer, the block is written with its bytes in ``disk_write``
  (no DMA), the completion (durable: the disk has no volatile write cache),
  the resume, the ``fsync`` trap, the resume (a flush of such a disk has
  nothing to do, so none is sent, as Linux sends none);
- a one-byte console ``write()`` loop: the trap carries the byte, the
  resume, the next trap (the UART's write is posted, not awaited).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.floor import syscall_hops
from bench.io import build_iowrite, free_port, read_line
from orchestrator import critpath
from protocol.linux_abi import SYS_PWRITE64, SYS_WRITE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HWEMU = str(Path(sys.executable).parent / "hwemu")
SAMPLES = REPO / "guest" / "build" / "samples"

# the most messages each operation may wait for in sequence (the module docstring says which)
# before issue #16: 22 (and 2 more for the NIC's DMA, not counted then), 22 and 4; then 12, 12 and 4;
# then traps carried the buffers the calls read and resumes the results they write, and an fsync
# of a disk without a volatile write cache sent no flush
UDP_ECHO_HOPS = 4
WRITE_FSYNC_HOPS = 6
CONSOLE_WRITE_HOPS = 2


def hwemu(run_dir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``hwemu ARGS`` on the cluster of ``run_dir`` (its option before a ``--``: after it, the program's)."""
    cut = args.index("--") if "--" in args else len(args)
    return subprocess.run([HWEMU, *args[:cut], "--run-dir", str(run_dir), *args[cut:]], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                          env=dict(os.environ))


def test_a_udp_echo_waits_for_no_more_messages_than_the_design_says(guest_build, tmp_path):
    rd = tmp_path / "r"
    host = free_port()
    echo = None
    try:
        up = hwemu(rd, "up", "compose/io.toml", "--detach")
        assert up.returncode == 0, up.stderr
        echo = subprocess.Popen([HWEMU, "run", "compose/io.toml", str(SAMPLES / "udpecho.elf"), "--run-dir",
                                 str(rd), "--forward", f"{host}:7000", "--", "7000"], cwd=REPO,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        read_line(echo, 120)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(30)

            def exchange(n: int) -> None:
                for i in range(n):
                    payload = b"hop %d" % i
                    s.sendto(payload, ("127.0.0.1", host))
                    assert s.recvfrom(100)[0] == payload
                    # one at a time, the guest back in recvfrom before the next: each echo's
                    # path alone on the trace, not behind the previous one's tail
                    time.sleep(0.3)

            exchange(3)  # the pages the loop touches are in the CPU's cache
            assert hwemu(rd, "trace", "start").returncode == 0
            exchange(12)
            assert hwemu(rd, "trace", "stop").returncode == 0
            saved = hwemu(rd, "trace", "save", str(tmp_path / "echo.json"))
            assert saved.returncode == 0, saved.stderr
            s.sendto(b"quit", ("127.0.0.1", host))
            s.recvfrom(100)
        assert echo.wait(timeout=120) == 0
    finally:
        if echo is not None and echo.poll() is None:
            echo.kill()
            echo.wait()
        hwemu(rd, "down")
    tl = critpath.from_chrome(json.loads((tmp_path / "echo.json").read_text()))
    paths = critpath.between(tl, "nic0", tl.marks("nic0", "nic", "nic rx"), tl.marks("nic0", "nic", "nic tx"))
    assert len(paths) >= 8
    typical = next(p for p in paths if len(p) == critpath.hop_count(paths))
    kinds = [h.kind for h in typical]
    assert kinds[0] == "nic_rx" and kinds[-1] == "nic_send", critpath.describe(typical)
    # the datagram came with its interrupt and went with the resume; the echo with the trap
    assert kinds == ["nic_rx", "cpu_resume", "trap", "nic_send"], critpath.describe(typical)
    assert critpath.hop_count(paths) <= UDP_ECHO_HOPS, critpath.describe(typical)


def test_a_synchronous_disk_write_waits_for_no_more_messages_than_the_design_says(guest_build, tmp_path):
    rd = tmp_path / "r"
    elf = build_iowrite(tmp_path)
    trace = tmp_path / "write.json"
    n = 12
    try:
        assert hwemu(rd, "up", "compose/io.toml", "--detach").returncode == 0
        done = hwemu(rd, "run", "compose/io.toml", str(elf), "--trace", str(trace), "--", "/dev/disk0", str(n))
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.startswith(f"iowrite {n} ")
    finally:
        hwemu(rd, "down")
    image = (rd / "disk0.img").read_bytes()
    for i in range(n):  # every acknowledged write is in the image
        assert image[i * 4096:(i + 1) * 4096] == bytes([i]) * 4096
    hops, path = syscall_hops(critpath.from_chrome(json.loads(trace.read_text())), SYS_PWRITE64)
    assert "disk_write os1→disk0" in path and "mem_read disk0→memctl" not in path, path  # no DMA
    assert "memctl" not in path and "disk_flush" not in path, path  # the trap carried the buffer
    assert hops <= WRITE_FSYNC_HOPS, path


def test_a_console_write_waits_for_the_byte_the_resume_and_the_next_trap_only(guest_build, tmp_path):
    trace = tmp_path / "sysloop.json"
    done = hwemu(tmp_path / "r", "run", "compose/native.toml", str(SAMPLES / "sysloop.elf"), "--trace", str(trace),
                 "--", "40")
    assert done.returncode == 0, done.stderr
    hops, path = syscall_hops(critpath.from_chrome(json.loads(trace.read_text())), SYS_WRITE)
    assert "uart_write" not in path, path  # posted: the UART buffers it
    assert hops <= CONSOLE_WRITE_HOPS, path
