"""Disk and network I/O of the OS on a real cluster (DESIGN.md §3-4, §6,
issue #6 parts 3-4): ``compose/io.toml`` (the native machine plus disk0 over
``<run dir>/disk0.img`` and nic0), programs started with
``hwemu run compose/io.toml PROG --forward HOSTPORT:GUESTPORT -- ARGS`` in a
subprocess, talked to by a plain Python UDP socket on loopback.

- differential: ``udpecho.elf`` and ``kvstore.elf`` answer the same
  conversations (tests/guest/test_network_samples.py, played there against
  qemu-riscv32) with the same replies, and print the same lines;
- durability: kvstore acknowledges SETs, then ``kill -9`` of the disk node
  (the supervisor restarts it; the running kvstore goes on), of the OS node
  (restarted; kvstore run again on the same image) and of every process of
  the cluster (``hwemu down`` then ``hwemu up`` on the same run directory):
  every acknowledged SET is there each time;
- bad input: ``iobad.elf`` (out-of-range and unaligned pread64/pwrite64, wild
  buffers, unsupported sockets, an oversized datagram) and a bounded flood of
  datagrams to the echo server: drops are counted by the NIC, nothing crashes.

Deadlines guard every wait (nothing is timed); every process is stopped by
pid at the end (the ``run_dir`` fixture, plus the ``hwemu run`` children).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import ContextManager, Iterator

import pytest

from tests.guest.test_network_samples import (
    converse,
    echo_conversation,
    free_udp_port,
    kv_after_restart_conversation,
    kv_fill_conversation,
    kv_restart_conversation,
)
from tests.integration import test_native
from tests.integration.procs import alive
from tests.integration.test_native import BUILD, HWEMU, REPO, hwemu, read_line_within, show

pytestmark = pytest.mark.integration
run_dir = test_native.run_dir  # a fixture: the tests take it as a parameter

IO = "compose/io.toml"
DISK_BYTES = 16 << 20  # compose/io.toml: size_mb = 16
GUEST_PORT = 7000
LINE_DEADLINE_S = 60.0
EXIT_DEADLINE_S = 120.0
RESTART_DEADLINE_S = 60.0


class Program:
    """``hwemu run compose/io.toml ELF --forward HOST:GUEST -- ARGS`` as a child."""

    def __init__(self, rd: Path, pids: set[int], elf: str, args: list[str], host_port: int,
                 guest_port: int = GUEST_PORT):
        self.proc = subprocess.Popen(
            [HWEMU, "run", IO, str(BUILD / elf), "--forward", f"{host_port}:{guest_port}", "--", *args],
            cwd=REPO, env={**os.environ, "HWEMU_RUN_DIR": str(rd)}, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pids.add(self.proc.pid)
        self.address = ("127.0.0.1", host_port)

    def line(self) -> bytes:
        try:
            return read_line_within(self.proc, LINE_DEADLINE_S)
        except AssertionError:
            if self.proc.poll() is not None:  # it ended: say why
                pytest.fail(f"hwemu run exited {self.proc.returncode}: {self.proc.stderr.read()!r}", pytrace=False)
            raise

    def finish(self) -> tuple[int, bytes, bytes]:
        out, err = self.proc.communicate(timeout=EXIT_DEADLINE_S)
        return self.proc.returncode, out, err

    def expect_exit(self, out: bytes) -> None:
        """It ends with status 0, having printed exactly ``out``."""
        code, got, err = self.finish()
        assert (code, got) == (0, out), (code, got, err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=EXIT_DEADLINE_S)


@contextlib.contextmanager
def started(rd: Path, pids: set[int], elf: str, args: list[str], ready: bytes,
            host_port: int | None = None) -> Iterator[Program]:
    """A :class:`Program` (a fresh host port unless ``host_port``) whose first line is
    ``ready``; killed at the end if it still runs."""
    prog = Program(rd, pids, elf, args, host_port or free_udp_port())
    try:
        assert prog.line() == ready
        yield prog
    finally:
        prog.kill()


def kvstore(rd: Path, pids: set[int], keys: int, host_port: int | None = None) -> ContextManager[Program]:
    """kvstore.elf on /dev/disk0, ready with ``keys`` keys (see :func:`started`)."""
    return started(rd, pids, "kvstore.elf", ["/dev/disk0", str(GUEST_PORT)], b"kvstore ready: %d keys\n" % keys,
                   host_port)


def udpecho(rd: Path, pids: set[int]) -> ContextManager[Program]:
    """udpecho.elf on GUEST_PORT, listening (see :func:`started`)."""
    return started(rd, pids, "udpecho.elf", [str(GUEST_PORT)], b"udpecho listening on %d\n" % GUEST_PORT)


def status(rd: Path) -> dict:
    st = hwemu(rd, "status", "--json", timeout=60)
    assert st.returncode == 0, show(st)
    return json.loads(st.stdout)


def node(rd: Path, name: str) -> dict:
    return next(n for n in status(rd)["nodes"] if n["name"] == name)


def kill9_and_wait_restart(rd: Path, name: str) -> dict:
    """SIGKILL node ``name``; wait (deadline) until the supervisor runs a new one."""
    old = node(rd, name)
    os.kill(old["pid"], signal.SIGKILL)
    deadline = time.monotonic() + RESTART_DEADLINE_S
    while True:
        n = node(rd, name)
        if n["pid"] != old["pid"] and n["alive"] and n["state"].startswith("running"):
            return n
        assert time.monotonic() < deadline, f"{name} not restarted within {RESTART_DEADLINE_S} s: {n}"
        time.sleep(0.1)


def up(rd: Path, topology: str = IO) -> None:
    started = hwemu(rd, "up", topology, "--detach", "--json")
    assert started.returncode == 0, show(started)


def kv_session(rd: Path, pids: set[int], conversation, keys: int, keys_after: int) -> None:
    with kvstore(rd, pids, keys) as prog:
        converse(prog.address, conversation)
        prog.expect_exit(b"kvstore stopped: %d keys\n" % keys_after)


# ------------------------------------------------------------ differential

def test_udpecho_on_the_cluster_echoes_like_under_qemu(guest_build, run_dir):
    rd, pids = run_dir
    up(rd)
    with udpecho(rd, pids) as prog:
        conversation = echo_conversation()
        converse(prog.address, conversation)
        prog.expect_exit(b"udpecho served %d datagrams\n" % (len(conversation) - 1))


def test_kvstore_on_the_cluster_answers_like_under_qemu_across_restarts(guest_build, run_dir):
    rd, pids = run_dir
    up(rd)
    kv_session(rd, pids, kv_fill_conversation(), 0, 6)
    # the drivers switch mode and back (drain, export, import) with nothing lost
    for mode in ("virtual", "native"):
        for device in ("disk", "nic"):
            r = hwemu(rd, "status", "--json")  # the cluster still answers
            assert r.returncode == 0, show(r)
            _driver_mode(rd, device, mode)
    kv_session(rd, pids, kv_restart_conversation(), 6, 6)
    kv_session(rd, pids, kv_after_restart_conversation(), 6, 6)
    assert (rd / "disk0.img").stat().st_size == DISK_BYTES


def _driver_mode(rd: Path, device: str, mode: str) -> dict:
    import trio

    from orchestrator.client import call

    reply = trio.run(call, rd, "ctl_request", {"node": "os1", "kind": "os_driver_mode",
                                               "body": {"device": device, "mode": mode}}, 30.0)
    assert reply["kind"] == "ok", reply
    assert reply["body"]["data"]["mode"] == mode
    return reply["body"]["data"]


def _fresh_stats(rd: Path, name: str) -> dict:
    """The node's stats now (``hwemu status`` shows those of its last heartbeat)."""
    import trio

    from orchestrator.client import call

    reply = trio.run(call, rd, "ctl_request", {"node": name, "kind": "stats", "body": {}}, 30.0)
    return reply["body"]["stats"]


# -------------------------------------------------------------- durability

def _sets(lo: int, hi: int) -> list[tuple[bytes, bytes]]:
    return [(b"SET key%03d value-%03d" % (i, i), b"OK") for i in range(lo, hi)]


def _gets(n: int) -> list[tuple[bytes, bytes]]:
    return [(b"GET key%03d" % i, b"VALUE value-%03d" % i) for i in range(n)] + [(b"COUNT", b"COUNT %d" % n)]


def test_kvstore_acknowledged_sets_survive_kill9_of_the_disk_the_os_and_the_whole_cluster(guest_build, run_dir):
    rd, pids = run_dir
    up(rd)
    progs: list[Program] = []
    try:
        prog = Program(rd, pids, "kvstore.elf", ["/dev/disk0", str(GUEST_PORT)], free_udp_port())
        progs.append(prog)
        assert prog.line() == b"kvstore ready: 0 keys\n"
        converse(prog.address, _sets(0, 20))

        # kill -9 the disk: restarted under the running kvstore, which goes on
        kill9_and_wait_restart(rd, "disk0")
        converse(prog.address, _gets(20) + _sets(20, 30))
        # the new disk numbers its completion interrupts from 1 again, and os1 was told so before
        # the first one: none was taken for a duplicate (and dropped), none missing
        os1, disk0 = _fresh_stats(rd, "os1"), _fresh_stats(rd, "disk0")
        irq = os1["flows_in"]["irq:disk0"]
        assert (irq["gaps"], irq["dups"], irq["consumed"]) == (0, 0, disk0["flows_out"]["irq:disk0"]), irq
        assert irq["runs"] == [[1, irq["consumed"]]]  # its history starts over with the new disk

        # kill -9 the OS: the program dies with it; kvstore again on the same image
        kill9_and_wait_restart(rd, "os1")
        code, out, err = prog.finish()
        assert code != 0, (code, out, err)
        # the new os1 sets its timer at boot, on io:os1.timer from fseq 1: the timer expected that
        timer = _fresh_stats(rd, "timer0")["flows_in"]["io:os1.timer"]
        assert (timer["gaps"], timer["dups"]) == (0, 0) and timer["runs"][0][0] == 1, timer
        prog = Program(rd, pids, "kvstore.elf", ["/dev/disk0", str(GUEST_PORT)], free_udp_port())
        progs.append(prog)
        assert prog.line() == b"kvstore ready: 30 keys\n"
        converse(prog.address, _gets(30) + _sets(30, 40))

        # kill -9 every process of the cluster, `hwemu down`, `hwemu up` on the same run dir
        st = status(rd)
        everything = {st["orchestrator"]["pid"], *(n["pid"] for n in st["nodes"])}
        pids |= everything
        for pid in everything:
            os.kill(pid, signal.SIGKILL)
        prog.kill()
        down = hwemu(rd, "down", timeout=60)
        assert down.returncode in (0, 1), show(down)
        deadline = time.monotonic() + RESTART_DEADLINE_S
        while any(alive(p) for p in everything):
            assert time.monotonic() < deadline, "killed processes still alive"
            time.sleep(0.05)
        up(rd)
        prog = Program(rd, pids, "kvstore.elf", ["/dev/disk0", str(GUEST_PORT)], free_udp_port())
        progs.append(prog)
        assert prog.line() == b"kvstore ready: 40 keys\n"
        converse(prog.address, _gets(40) + [(b"QUIT", b"BYE")])
        code, out, err = prog.finish()
        assert (code, out) == (0, b"kvstore stopped: 40 keys\n"), (code, out, err)
    finally:
        for p in progs:
            p.kill()


# --------------------------------------------------------------- bad input

IOBAD_EXPECTED = b"""openat(nosuchfile) = -2
openat(device) ok = 1
pread64(end) = 0
pread64(past end) = 0
pread64(straddling end) = 100
pwrite64(end) = -28
pwrite64(straddling end) = 200
pread64(negative offset) = -22
pwrite64(wild buffer) = -14
pread64(wild buffer) = -14
pread64(bad fd) = -9
pwrite64(unaligned) = 3001
fsync = 0
pread64(unaligned) = 3001
round trip equal = 1
close = 0
close again = -9
socket(AF_INET6) = -97
socket(SOCK_STREAM) = -93
socket+bind ok = 1
recvfrom(wild buffer) = -14
recvfrom(wild addrlen) = -14
sendto(oversized) = -90
sendto(wild buffer) = -14
sendto(wild address) = -14
bind(bound again) = -22
close(socket) = 0
iobad done
"""


def test_bad_io_input_fails_cleanly_and_a_flood_is_dropped_and_counted(guest_build, run_dir):
    rd, pids = run_dir
    up(rd)
    bad = hwemu(rd, "run", IO, str(BUILD / "iobad.elf"), "--", "/dev/disk0", str(DISK_BYTES), "7001")
    assert (bad.returncode, bad.stdout) == (0, IOBAD_EXPECTED), show(bad)
    # the bytes written across the device's end and at an unaligned offset are in the image
    with open(rd / "disk0.img", "rb") as f:
        f.seek(1000)
        assert f.read(3001) == bytes((i * 7 + 3) & 0xFF for i in range(3001))

    # a flood of datagrams at the echo server: a bounded count, loopback only
    prog = Program(rd, pids, "udpecho.elf", [str(GUEST_PORT)], free_udp_port())
    flood = 2000
    try:
        assert prog.line() == b"udpecho listening on 7000\n"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
            for i in range(flood):
                sock.sendto(b"flood %04d" % i, prog.address)
            # wait (deadline) until the NIC has handed over or dropped what it took in
            deadline = time.monotonic() + EXIT_DEADLINE_S
            while True:
                port = node(rd, "nic0")["stats"]["ports"][str(GUEST_PORT)]
                if port["queued"] == 0 and port["inflight"] == 0:
                    break
                assert time.monotonic() < deadline, f"the NIC still holds datagrams: {port}"
                time.sleep(0.05)
            assert port["drops"] > 0, port
            assert port["rx"] + port["drops"] <= flood, port
            # every datagram the guest got is echoed; then quit (resent until "bye": it may be dropped)
            sock.settimeout(10.0)
            echoed = 0
            while True:
                sock.sendto(b"quit", prog.address)
                try:
                    while True:
                        reply, _ = sock.recvfrom(65536)
                        if reply == b"bye":
                            break
                        assert reply.startswith(b"flood "), reply
                        echoed += 1
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "no bye"
        code, out, err = prog.finish()
        assert code == 0, (code, out, err)
        assert out == b"udpecho served %d datagrams\n" % echoed
        assert echoed >= port["rx"] > 0
    finally:
        prog.kill()
    # nothing crashed: every node is still its first incarnation
    assert all(n["alive"] and n["restarts"] == 0 for n in status(rd)["nodes"]), status(rd)["nodes"]


def test_an_os_with_a_disk_partition_sees_only_its_partition(guest_build, run_dir, tmp_path):
    """disk0 with ``partitions = {os1 = [FIRST, COUNT]}``: the OS's /dev/disk0
    is its partition (offsets from its first block, its end at COUNT blocks)."""
    rd, pids = run_dir
    first, count = 1024, 4096
    topo = tmp_path / "io-part.toml"
    topo.write_text((REPO / IO).read_text().replace(
        "options = { size_mb = 16, block_size = 512, memctl = \"memctl\" }",
        f"options = {{ size_mb = 16, block_size = 512, memctl = \"memctl\", "
        f"partitions = {{ os1 = [{first}, {count}] }} }}"))
    assert "partitions" in topo.read_text()
    up(rd, str(topo))
    size = count * 512
    bad = hwemu(rd, "run", str(topo), str(BUILD / "iobad.elf"), "--", "/dev/disk0", str(size), "7001")
    assert (bad.returncode, bad.stdout) == (0, IOBAD_EXPECTED), show(bad)
    with open(rd / "disk0.img", "rb") as f:
        f.seek(first * 512 + 1000)
        assert f.read(3001) == bytes((i * 7 + 3) & 0xFF for i in range(3001))
        f.seek(1000)
        assert f.read(3001) == bytes(3001), "the OS wrote outside its partition"


@pytest.mark.parametrize("spec", ["7000", "x:7000", "70000:7000", "7000:0", "7000:65536"])
def test_hwemu_run_refuses_a_bad_forward_spec_before_starting_anything(guest_build, run_dir, spec):
    rd, _ = run_dir
    bad = hwemu(rd, "run", IO, str(BUILD / "hello.elf"), "--forward", spec, timeout=60)
    assert bad.returncode == 1, show(bad)
    assert bad.stderr.decode().strip().splitlines() == [
        f"hwemu: --forward {spec!r}: expected HOSTPORT:GUESTPORT (host 0..65535, guest 1..65535)"], show(bad)
    assert not (rd / "cluster.json").exists()


def _os_ps(rd: Path) -> dict:
    import trio

    from orchestrator.client import call

    reply = trio.run(call, rd, "ctl_request", {"node": "os1", "kind": "os_ps", "body": {}}, 30.0)
    return reply["body"]["data"]


def _wait_blocked(rd: Path, name: str, wait: str) -> dict:
    deadline = time.monotonic() + LINE_DEADLINE_S
    while True:
        procs = [p for p in _os_ps(rd)["procs"] if p["name"] == name]
        if procs and procs[0]["state"] == "blocked" and procs[0]["wait"] == wait:
            return procs[0]
        assert time.monotonic() < deadline, f"{name} never blocked in {wait}: {procs}"
        time.sleep(0.02)


def test_a_process_blocked_on_the_network_or_the_disk_blocks_only_itself(guest_build, run_dir):
    rd, pids = run_dir
    up(rd)
    hello = ["--", "hwemu"]
    prog = Program(rd, pids, "kvstore.elf", ["/dev/disk0", str(GUEST_PORT)], free_udp_port())
    disk = None
    try:
        assert prog.line() == b"kvstore ready: 0 keys\n"
        # waiting for a datagram: blocked in recvfrom, and another program runs to its end
        _wait_blocked(rd, "kvstore.elf", "recvfrom")
        run = hwemu(rd, "run", IO, str(BUILD / "hello.elf"), *hello)
        assert run.returncode == 0 and run.stdout.startswith(b"Hello from hwemu!\n"), show(run)
        # waiting for the disk (stopped): blocked in pwrite64, and another program runs
        disk = node(rd, "disk0")["pid"]
        os.kill(disk, signal.SIGSTOP)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(EXIT_DEADLINE_S)
            sock.sendto(b"SET k v", prog.address)
            _wait_blocked(rd, "kvstore.elf", "pwrite64")
            run = hwemu(rd, "run", IO, str(BUILD / "hello.elf"), *hello)
            assert run.returncode == 0 and run.stdout.startswith(b"Hello from hwemu!\n"), show(run)
            os.kill(disk, signal.SIGCONT)
            disk = None
            reply, _ = sock.recvfrom(100)
            assert reply == b"OK"
        converse(prog.address, [(b"GET k", b"VALUE v"), (b"QUIT", b"BYE")])
        code, out, err = prog.finish()
        # (one console: the other program's output is in it too, before kvstore's last line)
        assert code == 0 and out.endswith(b"\nkvstore stopped: 1 keys\n"), (code, out, err)
        assert out.count(b"Hello from hwemu!\n") == 2, out
    finally:
        if disk is not None:
            try:
                os.kill(disk, signal.SIGCONT)
            except ProcessLookupError:
                pass
        prog.kill()
