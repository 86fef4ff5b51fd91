"""Recovery after ``kill -9`` of a node, per node kind (docs/recovery.md),
as a user meets it: ``hwemu up compose/io.toml`` then ``hwemu run ... --forward``
in a subprocess, a plain UDP socket on loopback as the client, and
``os.kill(pid, SIGKILL)`` of a pid that ``hwemu status`` shows.

- cpu: the process on the dead CPU is stopped with a machine check (status
  135, the reason printed), the OS goes on, a new program runs on the
  restarted CPU and reads back every key acknowledged before the fault,
  and the store holds no duplicate record (COUNT);
- nic: the restarted NIC has the forwards added at runtime and the guest's
  bound ports again; the store keeps answering on the same host port;
- timer: the OS's driver re-programs the restarted timer; a sleeping guest
  wakes and prints its exact output;
- nic under a flood: every datagram sent is either delivered or counted as
  dropped (stats and ``hwemu status``);
- uart: the console log is capped (``log_max``, rotated) and ``hwemu run``
  follows the rotation; a UART killed while a program prints: the output is
  exact, in the log each line once;
- disk: killed under SETs: its commands in flight are re-issued, every
  acknowledged key is there once;
- memctl: killed under a running program: a delay, the output is exact;
- os: killed: every frame it owned is zeroed before its next life, the other
  OS is untouched;
- vmm, killed while interposed: emergency devirtualization of a sole OS (its
  program's output exact, the VMM's frames home, the VMM loadable again);
  under two OSes, the one on the CPU goes on natively, the other is stopped.

Some tests use the ``cluster`` fixture and ``compose/vmm.toml`` (two OSes),
with a client party that starts programs and hears their exit.

Deadlines guard every wait (nothing is timed); every process is stopped by pid
at the end (the ``run_dir`` fixture, plus the ``hwemu run`` children).
"""

# ruff: noqa: F811  (the run_dir fixtures imported from test_native are this module's test arguments)
from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time

import pytest
import trio

from hwemu.testing import node_stats
from orchestrator.choreographies.base import Run
from orchestrator.cli.demo import timeshare_output
from tests.guest.test_network_samples import converse, free_udp_port
from tests.integration.test_choreographies import VMM_TOPOLOGY, Client, serving, vmm_stats, wait_vmm
from tests.integration.test_io import (
    GUEST_PORT,
    IO,
    _fresh_stats,
    _gets,
    _sets,
    kill9_and_wait_restart,
    kvstore,
    node,
    up,
)
from tests.integration.test_native import BUILD, HWEMU, REPO, hwemu, run_dir, show, tiny_run_dir  # noqa: F401

pytestmark = pytest.mark.integration

RECOVERY_DEADLINE_S = 60.0
MACHINE_CHECK = 128 + 7  # SIGBUS, as Linux kills a process on an uncorrectable memory error


def request(address: tuple[str, int], data: bytes, deadline_s: float = RECOVERY_DEADLINE_S) -> bytes:
    """One request, re-sent every second until a reply comes (a device restarting may lose
    a datagram, as UDP may); fail after ``deadline_s``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            sock.sendto(data, address)
            try:
                reply, sender = sock.recvfrom(65536)
            except TimeoutError:
                continue
            assert sender == address
            return reply
    pytest.fail(f"no reply to {data!r} from {address} within {deadline_s} s", pytrace=False)


# ------------------------------------------------------------------------ cpu

def test_kill9_of_the_cpu_is_a_machine_check_for_its_process_and_no_acknowledged_key_is_lost(guest_build, run_dir):
    rd, pids = run_dir
    up(rd)
    port = free_udp_port()
    with kvstore(rd, pids, 0, port) as prog:
        converse(prog.address, _sets(0, 25))
        kill9_and_wait_restart(rd, "cpu0")
        # the store's index lived in the dead CPU's cache: it must not answer from a stale one
        code, out, err = prog.finish()
        assert code == MACHINE_CHECK, (code, out, err)
        # on the console and from hwemu run, the documented reason (docs/recovery.md)
        assert out.startswith(b"[os1] pid 1 (kvstore.elf) killed: machine check: cpu0 failed and was restarted; "), out
        assert out.endswith((b" were in the CPU\n", b" were in the CPU's cache\n")) and out.count(b"\n") == 1, out
        assert b"hwemu: pid 1 killed: machine check: cpu0 failed" in err.replace(b"\n", b" "), err
        assert node(rd, "os1")["restarts"] == 0  # the OS went on
        os1 = _fresh_stats(rd, "os1")
        assert os1["kernel"]["machine_checks"] == 1 and os1["kernel"]["procs"] == 0, os1["kernel"]

    # a new program on the restarted CPU: every acknowledged SET is there, once
    with kvstore(rd, pids, 25, port) as prog:
        converse(prog.address, _gets(25) + _sets(25, 30) + [(b"COUNT", b"COUNT 30"), (b"QUIT", b"BYE")])
        prog.expect_exit(b"kvstore stopped: 30 keys\n")


# ------------------------------------------------------------------------ nic

def test_kill9_of_the_nic_keeps_runtime_forwards_and_bound_ports(guest_build, run_dir):
    rd, pids = run_dir
    up(rd)
    with kvstore(rd, pids, 0) as prog:  # a forward added at runtime (hwemu run --forward)
        converse(prog.address, _sets(0, 10))
        kill9_and_wait_restart(rd, "nic0")
        # the first datagrams may be lost while the driver binds the port again; none is wrong
        assert request(prog.address, b"COUNT") == b"COUNT 10"
        nic = _fresh_stats(rd, "nic0")
        assert nic["forward"][str(GUEST_PORT)] == prog.address[1], nic["forward"]
        assert nic["ports"][str(GUEST_PORT)]["host_port"] == prog.address[1], nic["ports"]
        converse(prog.address, _gets(10) + _sets(10, 15) + [(b"QUIT", b"BYE")])
        prog.expect_exit(b"kvstore stopped: 15 keys\n")
        os1 = _fresh_stats(rd, "os1")
        assert os1["resets"] == {"nic0": 1} and os1["io"]["nic"]["resets"] == 1, (os1["resets"], os1["io"]["nic"])


# ---------------------------------------------------------------------- timer

def test_kill9_of_the_timer_while_a_guest_sleeps_the_driver_reprograms_it(guest_build, run_dir):
    rd, pids = run_dir
    up(rd)
    expected = b"".join(b"nap %d of 8 done\n" % i for i in range(1, 9)) + b"naps: all 8 done\n"
    prog = subprocess.Popen([HWEMU, "run", IO, str(BUILD / "naps.elf"), "--", "8", "250"], cwd=REPO,
                            env={**os.environ, "HWEMU_RUN_DIR": str(rd)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids.add(prog.pid)
    try:
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        while _fresh_stats(rd, "os1")["kernel"]["procs"] == 0:  # the sleeper is running
            assert time.monotonic() < deadline, "naps never started"
            time.sleep(0.05)
        timer = kill9_and_wait_restart(rd, "timer0")
        out, err = prog.communicate(timeout=RECOVERY_DEADLINE_S)
        assert (prog.returncode, out) == (0, expected), (prog.returncode, out, err)
        period = _fresh_stats(rd, "timer0")["period_ms"]
        assert period == 10.0 and timer["restarts"] == 1, period  # compose/io.toml: tick_ms = 10
    finally:
        if prog.poll() is None:
            prog.kill()
            prog.communicate(timeout=30)


# --------------------------------------------------------------- nic: drops

def test_a_flood_is_delivered_or_counted_as_dropped_never_silently_lost(guest_build, tiny_run_dir):
    rd, pids = tiny_run_dir  # short endpoints: the status table keeps its state column whole
    up(rd)
    with kvstore(rd, pids, 0) as prog:
        sent = 3000
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(sent):  # far more than the ring and the host socket queue hold
                sock.sendto(b"COUNT", prog.address)
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        while True:  # until the NIC has taken every datagram off its host socket
            nic = _fresh_stats(rd, "nic0")
            p = nic["ports"][str(GUEST_PORT)]
            if p["rx"] + p["drops"] + p["host_drops"] == sent and p["queued"] == 0:
                break
            assert time.monotonic() < deadline, f"sent {sent}, port {p}"
            time.sleep(0.2)
        assert p["drops"] + p["host_drops"] > 0, p  # it was a flood
        assert nic["rx_dropped"]["total"] == p["drops"] + p["host_drops"], nic["rx_dropped"]
        st = hwemu(rd, "status")
        assert st.returncode == 0, show(st)
        assert f"{nic['rx_dropped']['total']} dropped".encode() in st.stdout, st.stdout
        assert request(prog.address, b"QUIT") == b"BYE"
        prog.expect_exit(b"kvstore stopped: 0 keys\n")


# -------------------------------------------------------- uart: the log's cap

def test_the_console_log_is_capped_and_rotated_and_hwemu_run_follows_the_rotation(guest_build, run_dir):
    rd, pids = run_dir
    topology = rd.parent / "capped.toml"
    topology.write_text((REPO / "compose/native.toml").read_text().replace(
        '[nodes.uart0]\nkind = "uart"\n', '[nodes.uart0]\nkind = "uart"\noptions = { log_max = 512 }\n'))
    expected = (REPO / "guest/samples/primes.expected").read_bytes()  # 1852 bytes: three rotations and more
    for _ in range(2):
        run = hwemu(rd, "run", str(topology), str(BUILD / "primes.elf"))
        assert (run.returncode, run.stdout) == (0, expected), show(run)
        log, old = rd / "uart0.console.log", rd / "uart0.console.log.1"
        assert log.stat().st_size < 512 and 512 <= old.stat().st_size < 512 + 128, (log.stat(), old.stat())


# ------------------------------------------------------------------------ vmm

async def vmm_loaded(cluster):
    """A cluster of two OSes with the VMM loaded in 8 frames of os1."""
    orch = await cluster(VMM_TOPOLOGY)
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    return orch


async def assert_native_again(orch, os_name: str) -> dict:
    """``os_name`` holds its CPU and memory again and the VMM's frames went home (zeroed);
    the resources table."""
    resources = (await orch.ctl_status())["virt"]["resources"]
    assert (resources[f"{os_name}.cpu"], resources[f"{os_name}.memory"]) == (os_name, os_name)
    owners = (await orch.request("memctl", "mem_owners")).body["data"]
    assert owners["invariants"] == "ok" and "vmm" not in owners
    return resources


async def test_kill9_of_the_interposed_vmm_rolls_the_sole_os_back_to_native_under_a_running_program(
        guest_build, cluster):
    orch = await vmm_loaded(cluster)
    lines = 40
    async with serving(Client(orch)) as client:
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "T", str(lines)])
        await orch.control("ctl_interpose", os="os1", memory=True)  # CPU, memory and console under the VMM
        assert orch.routes.table.routes["trap:cpu0"] == "vmm"
        await wait_vmm(orch, lambda s: s["traps_reflected"] > 0 and s["priv_forwarded"] > 0)
        vmm = orch.supervisor.nodes["vmm"]
        os.kill(vmm.pid, signal.SIGKILL)

        # the program finishes, byte for byte, on the OS alone: nothing ran twice, nothing was lost
        exit1 = await client.wait_exit("os1", pid)
        assert (exit1["code"], await client.console("uart0", start)) == (0, timeshare_output("T", lines))
    report = next(r for r in orch.recovery_log if r["kind"] == "vmm")
    assert (report["native"], report["stopped"], report["frames_to_host"]) == ("os1", [], 8), report
    routes = orch.routes.table.routes
    assert (routes["trap:cpu0"], routes["irq:timer0"], routes["priv:os1"], routes["io:os1.uart"],
            routes["irq:uart0"]) == ("os1", "os1", "cpu0", "uart0", "os1")
    assert (await assert_native_again(orch, "os1"))["os1.uart (uart0)"] == "os1"
    with trio.fail_after(60):  # the VMM comes back, unloaded: it can be loaded and interposed again
        while vmm.state != "running":
            await trio.sleep(0.05)
    assert vmm.restarts == 1
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    await orch.control("ctl_interpose", os="os1")
    back = (await orch.control("ctl_devirtualize", os="os1"))["reports"]
    assert [r["figure"] for r in back] == ["fig6", "fig7"]


# ------------------------------------------------------------------------- os

async def test_kill9_of_an_os_zeroes_every_frame_it_owned_and_leaves_the_other_os_untouched(guest_build, cluster):
    orch = await cluster(VMM_TOPOLOGY)  # os1 (frames 256..767) and os2 (768..1023) on one machine
    secret = b"a process's secret".ljust(64, b"!")
    for space, frame in (("os1", 300), ("os1", 700), ("os2", 800)):
        await orch.request("memctl", "mem_write", {"space": space, "addr": frame * 4096, "data": secret})
    os1, os2 = orch.supervisor.nodes["os1"], orch.supervisor.nodes["os2"]
    os2_pid = os2.pid
    async with serving(Client(orch)) as client:
        await client.exec("os1", "timeshare", ["timeshare", "T", "400"])  # killed with its OS
        os.kill(os1.pid, signal.SIGKILL)
        with trio.fail_after(60):
            while os1.state != "running" or os1.restarts != 1:
                await trio.sleep(0.05)
        report = next(r for r in orch.recovery_log if r["kind"] == "os")
        assert (report["node"], report["zeroed"], report["returned"]) == ("os1", 512, {}), report
        assert report["cpu"] == {"cpu_state": "halted", "forgot": "os1"}  # no trap of the dead life reaches the next
        for frame in (300, 700):  # nothing of the dead life is readable by the next
            data = (await orch.request("memctl", "mem_read", {"space": "os1", "addr": frame * 4096,
                                                              "length": 64})).body["data"]
            assert data == bytes(64), frame
        kept = await orch.request("memctl", "mem_read", {"space": "os2", "addr": 800 * 4096, "length": 64})
        assert kept.body["data"] == secret and os2.pid == os2_pid and os2.restarts == 0
        owners = (await orch.request("memctl", "mem_owners")).body["data"]
        assert owners["invariants"] == "ok" and owners["os1"] == list(range(256, 768))
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "T", "3"])  # the new life runs programs
        assert (await client.wait_exit("os1", pid))["code"] == 0
        assert await client.console("uart0", start) == timeshare_output("T", 3)


def test_hwemu_run_of_a_program_whose_os_is_killed_exits_137_even_when_the_new_life_reuses_its_pid(
        guest_build, run_dir):
    """The program died with its OS: ``hwemu run`` says so and exits 137 (killed), as a user expects, even
    when the OS's next life already runs another program with the same pid (it used to follow that one's
    console for ever, since it only asked whether the OS still knew the pid)."""
    rd, pids = run_dir
    up(rd)
    port = free_udp_port()
    with kvstore(rd, pids, 0, port) as first:
        kill9_and_wait_restart(rd, "os1")
        with kvstore(rd, pids, 0, port) as second:  # pid 1 again, in the OS's next life
            code, out, err = first.finish()
            assert code == 128 + signal.SIGKILL, (code, out, err)
            assert b"hwemu: pid 1 killed: os1 crashed and was restarted" in err, err
            converse(second.address, [(b"COUNT", b"COUNT 0"), (b"QUIT", b"BYE")])
            assert second.finish()[:2] == (0, b"kvstore stopped: 0 keys\n")


# ----------------------------------------------------------------------- disk

def test_kill9_of_the_disk_under_writes_reissues_them_and_no_acknowledged_key_is_lost_or_doubled(
        guest_build, run_dir):
    rd, pids = run_dir
    up(rd)
    with kvstore(rd, pids, 0) as prog:
        killer = threading.Timer(0.5, lambda: kill9_and_wait_restart(rd, "disk0"))
        killer.start()  # while the SETs below are written and fsync'ed
        try:
            for i in range(60):  # a retried SET sets the same value again: the store cannot tell
                assert request(prog.address, b"SET key%03d value-%03d" % (i, i)) == b"OK"
        finally:
            killer.join()
        assert node(rd, "disk0")["restarts"] == 1
        converse(prog.address, _gets(60) + [(b"QUIT", b"BYE")])
        prog.expect_exit(b"kvstore stopped: 60 keys\n")
        assert _fresh_stats(rd, "os1")["resets"] == {"disk0": 1}


# --------------------------------------------------------------------- memctl

async def test_a_node_restarted_while_a_route_change_ran_gets_the_table_in_force_once_ready(cluster):
    """A route change made while a node starts (its config written with the table then, not
    ready yet) is not sent to it: once ready, it gets the table in force. (Left with the older
    table, a restarted memctl would refuse the memory traffic of a flow moved meanwhile.) The
    new process is frozen from its spawn until the change is over, so the window is certain."""
    orch = await cluster(VMM_TOPOLOGY)
    np = orch.supervisor.nodes["memctl"]
    old = np.pid
    os.kill(old, signal.SIGKILL)
    with trio.fail_after(30):
        while np.pid == old:
            await trio.sleep(0.001)
    os.kill(np.pid, signal.SIGSTOP)
    try:
        assert np.state != "running"
        spawned = orch.spawn_epochs["memctl"]
        await orch.routes.change({"irq:uart0": "os2"})
        assert orch.routes.table.epoch > spawned
    finally:
        os.kill(np.pid, signal.SIGCONT)
    with trio.fail_after(30):
        while np.state != "running":
            await trio.sleep(0.02)
    with trio.fail_after(30):  # the install after its ready
        while (await node_stats(orch, "memctl"))["epoch"] != orch.routes.table.epoch:
            await trio.sleep(0.05)


async def test_kill9_of_memctl_under_a_running_program_output_is_exact(guest_build, cluster):
    orch = await cluster(VMM_TOPOLOGY)
    async with serving(Client(orch)) as client:
        start = await client.logged("uart0")
        # long enough to be running when memctl dies (30 lines once were: a faster core finished
        # them between the check below and the kill, and the restart was not done yet when counted)
        pid = await client.exec("os1", "timeshare", ["timeshare", "T", "300"])
        memctl = orch.supervisor.nodes["memctl"]
        with trio.fail_after(60):  # it runs (its pages are in the CPU's cache, some modified)
            # (not a count of page misses: since reads of its buffers take snapshots, the CPU
            # keeps its pages across syscalls and misses few)
            while (await orch.request("cpu0", "stats")).body["stats"]["modified"] == 0:
                await trio.sleep(0.02)
        assert len(await client.console("uart0", start)) < len(timeshare_output("T", 300))  # still running
        os.kill(memctl.pid, signal.SIGKILL)
        exit1 = await client.wait_exit("os1", pid)
        assert (exit1["code"], await client.console("uart0", start)) == (0, timeshare_output("T", 300))
        with trio.fail_after(30):  # the supervisor's restart (the program may end before it is done)
            while memctl.restarts < 1 or memctl.state != "running":
                await trio.sleep(0.02)
        assert memctl.restarts == 1
        with trio.fail_after(30):  # its recovery (every initiator recalled) may end after the program
            while (stats := (await orch.request("memctl", "stats")).body["stats"])["recoveries"] < 1:
                await trio.sleep(0.02)
        assert (stats["recoveries"], stats["lost_frames"]) == (1, 0), stats
        assert (await orch.request("memctl", "mem_owners")).body["data"]["invariants"] == "ok"


async def test_a_choreography_request_lost_with_a_killed_memctl_is_asked_of_its_next_life(cluster):
    """A choreography's request that the memory controller took with it when it was killed is asked
    again of its next life (orchestrator/choreographies/base.py ``Run.call``), not waited out: in a
    chaos run (demo seed 36) a kill of memctl in the middle of ¶39 timed its step out (10 s) and the
    borrow rolled back. Here memctl is frozen (SIGSTOP) while the request reaches it, then killed."""
    orch = await cluster(VMM_TOPOLOGY)
    memctl = orch.supervisor.nodes["memctl"]
    first = memctl.pid
    run = Run(orch, "test", "test")
    os.kill(first, signal.SIGSTOP)
    try:
        async with trio.open_nursery() as nursery:
            got: list = []

            async def ask() -> None:
                got.append(await run.call("memctl", "mem_owners", timeout=60))

            nursery.start_soon(ask)
            await trio.sleep(0.5)  # the request waits in the frozen process's inbox
            os.kill(first, signal.SIGKILL)  # and dies with it
            with trio.fail_after(60):  # a hang guard; the call's own timeout is 60 s
                while not got:
                    await trio.sleep(0.05)
    finally:
        if memctl.pid == first:
            os.kill(first, signal.SIGKILL)
    assert memctl.pid != first and memctl.restarts == 1
    assert got[0]["invariants"] == "ok"
    # asked while it is being restarted (killed, not yet up again): waited for, not refused
    second = memctl.pid
    os.kill(second, signal.SIGKILL)
    with trio.fail_after(60):
        while memctl.state == "running" and memctl.pid == second:  # the supervisor saw it die
            await trio.sleep(0.01)
        owners = await run.call("memctl", "mem_owners", timeout=50)
    assert owners["invariants"] == "ok" and memctl.restarts == 2


# ----------------------------------------------------------------------- uart

def test_kill9_of_the_uart_while_a_program_prints_loses_and_doubles_no_byte(guest_build, run_dir):
    rd, pids = run_dir
    up(rd, "compose/native.toml")
    lines = 120
    expected = subprocess.run(["qemu-riscv32", str(BUILD / "timeshare.elf"), "T", str(lines)],
                              capture_output=True, check=True).stdout
    prog = subprocess.Popen([HWEMU, "run", "compose/native.toml", str(BUILD / "timeshare.elf"), "--", "T",
                             str(lines)], cwd=REPO, env={**os.environ, "HWEMU_RUN_DIR": str(rd)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    pids.add(prog.pid)
    try:
        log = rd / "uart0.console.log"
        deadline = time.monotonic() + RECOVERY_DEADLINE_S
        while not log.exists() or log.read_bytes().count(b"\n") < 10:  # printing
            assert time.monotonic() < deadline, "timeshare never printed"
            time.sleep(0.02)
        kill9_and_wait_restart(rd, "uart0")
        out, err = prog.communicate(timeout=RECOVERY_DEADLINE_S * 2)
        assert (prog.returncode, out) == (0, expected), (prog.returncode, out, err)
        assert log.read_bytes().count(b"T: line 11 of") == 1  # the log too: each line once
        assert _fresh_stats(rd, "os1")["uart"]["resets"] == 1
    finally:
        if prog.poll() is None:
            prog.kill()
            prog.communicate(timeout=30)


async def test_kill9_of_the_vmm_under_two_oses_keeps_the_one_on_the_cpu_and_stops_the_one_whose_state_died(
        guest_build, cluster):
    orch = await vmm_loaded(cluster)
    lines = 60
    await orch.control("ctl_interpose", os="os1")
    await orch.control("ctl_interpose", os="os2")
    async with serving(Client(orch)) as client:
        starts = {u: await client.logged(u) for u in ("uart0", "uart1")}
        pids = {"os1": await client.exec("os1", "timeshare", ["timeshare", "A", str(lines)]),
                "os2": await client.exec("os2", "timeshare", ["timeshare", "B", str(lines)])}
        await wait_vmm(orch, lambda s: s["traps_reflected"] > 5)
        os.kill(orch.supervisor.nodes["vmm"].pid, signal.SIGKILL)
        with trio.fail_after(60):
            while not any(r["kind"] == "vmm" for r in orch.recovery_log):
                await trio.sleep(0.05)
        report = next(r for r in orch.recovery_log if r["kind"] == "vmm")
        survivor = report["native"]
        lost = ({"os1", "os2"} - {survivor}).pop()
        assert report["stopped"] == [lost], report
        assert orch.supervisor.nodes[lost].state == "stopped"  # never silently corrupted: stopped, said so
        uart, tag = {"os1": ("uart0", "A"), "os2": ("uart1", "B")}[survivor]
        done = await client.wait_exit(survivor, pids[survivor])
        assert (done["code"], await client.console(uart, starts[uart])) == (0, timeshare_output(tag, lines))
    routes = orch.routes.table.routes
    assert (routes["trap:cpu0"], routes["priv:" + survivor]) == (survivor, "cpu0")
    await assert_native_again(orch, survivor)


async def test_kill9_of_the_cpu_under_the_vmm_resets_its_virtual_cpus_a_machine_check_for_the_context_on_it(
        guest_build, cluster):
    """A CPU crash while the VMM time-slices two OSes on it: only the context that was on the CPU died.
    That OS stops its process with a machine check (135, the documented line); the other OS's context,
    saved in the VMM, goes on and its program finishes exactly; the VMM keeps managing both and new
    programs run on the restarted CPU, time-sliced again."""
    orch = await vmm_loaded(cluster)
    lines = 40
    await orch.control("ctl_interpose", os="os1")
    await orch.control("ctl_interpose", os="os2")
    async with serving(Client(orch)) as client:
        uarts, tags = {"os1": "uart0", "os2": "uart1"}, {"os1": "A", "os2": "B"}
        starts = {o: await client.logged(u) for o, u in uarts.items()}
        pids = {o: await client.exec(o, "timeshare", ["timeshare", tags[o], str(lines)]) for o in uarts}
        await wait_vmm(orch, lambda s: s["slices"] > 2 and s["traps_reflected"] > 5)
        cpu = orch.supervisor.nodes["cpu0"]
        os.kill(cpu.pid, signal.SIGKILL)
        with trio.fail_after(RECOVERY_DEADLINE_S):
            while not any(r["kind"] == "cpu" for r in orch.recovery_log):
                await trio.sleep(0.05)
        report = next(r for r in orch.recovery_log if r["kind"] == "cpu")
        lost = report["vmm"]["on_cpu"]
        assert lost in uarts, report  # both ran: one of them was on the CPU
        other = ({"os1", "os2"} - {lost}).pop()
        assert report["vmm"]["saved"] == [other], report

        died = await client.wait_exit(lost, pids[lost])
        assert died["code"] == MACHINE_CHECK, died
        # the documented line: from the notice (its registers were in the CPU), or earlier, from a system
        # call whose buffer's newest bytes died with the CPU (refused, not served older bytes)
        out = await client.console(uarts[lost], starts[lost])
        line = f"[{lost}] pid {pids[lost]} (timeshare) killed: machine check: ".encode()
        assert line in out and out.endswith((b" were in the CPU\n", b"memory holds older ones\n")), out
        # what it printed before is exact: no line printed from older bytes
        assert timeshare_output(tags[lost], lines).startswith(out[:out.index(line)]), out
        # the other OS's context was saved in the VMM, not in the CPU: its program finishes exactly
        done = await client.wait_exit(other, pids[other])
        assert (done["code"], await client.console(uarts[other], starts[other])) == (
            0, timeshare_output(tags[other], lines))
        assert report["killed"][other] == [] and report["killed"][lost] in ([pids[lost]], []), report

        # the OSes and the VMM went on; new programs run on the restarted CPU, time-sliced again
        assert cpu.restarts == 1
        assert all(orch.supervisor.nodes[n].restarts == 0 for n in ("os1", "os2", "vmm"))
        slices = (await vmm_stats(orch))["slices"]
        again = {o: await client.logged(u) for o, u in uarts.items()}
        pids = {o: await client.exec(o, "timeshare", ["timeshare", tags[o] + "2", "6"]) for o in uarts}
        for o in uarts:
            done = await client.wait_exit(o, pids[o])
            assert (done["code"], await client.console(uarts[o], again[o])) == (
                0, timeshare_output(tags[o] + "2", 6)), o
    s = await vmm_stats(orch)
    assert s["cpu_resets"] == 1 and s["slices"] > slices and sorted(s["oses"]) == ["os1", "os2"], s
    assert orch.routes.table.routes["trap:cpu0"] == "vmm"


async def kill9_os_and_wait(orch, name: str) -> dict:
    """SIGKILL OS ``name``; wait until the supervisor restarted it; the orchestrator's recovery report."""
    node = orch.supervisor.nodes[name]
    os.kill(node.pid, signal.SIGKILL)
    with trio.fail_after(RECOVERY_DEADLINE_S):
        while node.state != "running" or node.restarts != 1:
            await trio.sleep(0.05)
    return next(r for r in orch.recovery_log if r["kind"] == "os" and r["node"] == name)


async def test_kill9_of_an_os_under_the_vmm_resets_its_virtual_cpu_and_the_other_os_goes_on(guest_build, cluster):
    """An OS crash while the VMM time-slices two OSes: the dead OS's context must never run again (natively
    the CPU is reset; here it is shared, so the VMM resets that OS's part of it). The other OS's program
    finishes exactly, and the restarted OS, still under the VMM, runs a new program exactly."""
    orch = await vmm_loaded(cluster)
    await orch.control("ctl_interpose", os="os1")
    await orch.control("ctl_interpose", os="os2")
    async with serving(Client(orch)) as client:
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "A", "40"])
        await client.exec("os2", "timeshare", ["timeshare", "B", "400"])  # dies with its OS
        await wait_vmm(orch, lambda s: s["slices"] > 2 and s["traps_reflected"] > 5)
        report = await kill9_os_and_wait(orch, "os2")
        assert report["node"] == "os2" and isinstance(report["vmm"]["on_cpu"], bool), report
        done = await client.wait_exit("os1", pid)
        assert (done["code"], await client.console("uart0", start)) == (0, timeshare_output("A", 40))
        assert (await vmm_stats(orch))["oses"]["os2"]["runnable"] is False  # nothing of the dead life to run
        code, out = await client.run("os2", "uart1", "timeshare", ["timeshare", "B2", "6"])
        assert (code, out) == (0, timeshare_output("B2", 6))
    assert orch.supervisor.nodes["os1"].restarts == 0 and orch.supervisor.nodes["vmm"].restarts == 0
    assert sorted((await vmm_stats(orch))["oses"]) == ["os1", "os2"]


async def test_kill9_of_the_os_that_gave_the_vmm_frames_boots_its_next_life_without_them(guest_build, cluster):
    """os1 gave 8 frames to the VMM (FIG. 4) and crashed: its next life must not hand those frames to its
    programs (they are the VMM's: every access faults, "outside the partition"), and unloading the VMM
    gives them back to it."""
    orch = await vmm_loaded(cluster)
    vmm_frames = (await orch.request("memctl", "mem_owners")).body["data"]["vmm"]
    report = await kill9_os_and_wait(orch, "os1")
    assert report["boots_on"] == 512 - len(vmm_frames), report
    async with serving(Client(orch)) as client:
        # programs big enough to take frames from the start of its free list, where the VMM's were
        for tag in ("P", "Q"):
            assert await client.run("os1", "uart0", "timeshare", ["timeshare", tag, "4"]) == (
                0, timeshare_output(tag, 4))
        await orch.control("ctl_vmm_unload")  # its frames back to os1, which takes them again
        assert await client.run("os1", "uart0", "timeshare", ["timeshare", "R", "4"]) == (0, timeshare_output("R", 4))
    owners = (await orch.request("memctl", "mem_owners")).body["data"]
    assert owners["invariants"] == "ok" and "vmm" not in owners and owners["os1"] == list(range(256, 768))


async def test_an_os_killed_in_the_middle_of_a_return_of_its_frames_boots_without_the_ones_still_lent(
        guest_build, cluster):
    """os1 dies while ¶39 gives its frames back from os2 (frozen as the last step asks it to take
    them, then killed): the step fails at once, the return rolls back (the frames stay os2's, the
    loan stands), and only then does os1's recovery book its partition for the next life, without
    the lent frames. Seen in a chaos run (demo seed 84): the recovery booked them for the next life
    first, the rollback then gave them back to os2, and os1's next life faulted on pages it did not
    own; every return after it was refused."""
    orch = await vmm_loaded(cluster)
    await orch.control("ctl_interpose", os="os1")
    await orch.control("ctl_interpose", os="os2")
    await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=16)
    owners = (await orch.request("memctl", "mem_owners")).body["data"]
    os1 = orch.supervisor.nodes["os1"]
    first = os1.pid
    os.kill(first, signal.SIGSTOP)
    refused: list = []

    async def give_back() -> None:
        try:
            await orch.control("ctl_memory_return", from_os="os1", to_os="os2")
        except Exception as exc:  # noqa: BLE001  (what it failed with is asserted below)
            refused.append(exc)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(give_back)
            await trio.sleep(1.0)  # the return waits for the frozen os1
            os.kill(first, signal.SIGKILL)
            with trio.fail_after(RECOVERY_DEADLINE_S):
                while os1.state != "running" or os1.restarts != 1:
                    await trio.sleep(0.05)
    finally:
        if os1.pid == first:
            os.kill(first, signal.SIGKILL)
    assert refused and "os1 died while it was asked" in str(refused[0]), refused
    report = next(r for r in orch.recovery_log if r["kind"] == "os" and r["node"] == "os1")
    assert report["boots_on"] == len(owners["os1"]), (report, len(owners["os1"]))  # the lent 16 are not in it
    after = (await orch.request("memctl", "mem_owners")).body["data"]
    assert after["invariants"] == "ok" and after["os2"] == owners["os2"]
    async with serving(Client(orch)) as client:  # the next life runs programs on what it owns
        for tag in ("P", "Q"):
            assert await client.run("os1", "uart0", "timeshare", ["timeshare", tag, "4"]) == (
                0, timeshare_output(tag, 4))
    await orch.control("ctl_memory_return", from_os="os1", to_os="os2")  # and takes its frames back
    assert (await orch.request("memctl", "mem_owners")).body["data"]["invariants"] == "ok"


async def test_a_trap_the_vmm_reflected_to_a_dead_os_never_reaches_its_next_life(guest_build, cluster):
    """os1, under the VMM, is frozen while its program traps to it (the trap the VMM reflected waits,
    unacknowledged), then killed: the VMM gives up what it had sent the dead life (docs/recovery.md,
    "os"), so the next life, whose first process has the same pid and asid as the dead one, never takes
    that trap for its own. Seen in a chaos run (demo seed 84): the trap was sent again to the next life,
    its pid 1 resumed on the dead process's registers and died of a segmentation fault."""
    orch = await vmm_loaded(cluster)
    await orch.control("ctl_interpose", os="os1")
    os1 = orch.supervisor.nodes["os1"]
    first = os1.pid
    async with serving(Client(orch)) as client:
        await client.exec("os1", "timeshare", ["timeshare", "T", "400"])  # dies with its OS
        await wait_vmm(orch, lambda s: s["traps_reflected"] > 5)
        os.kill(first, signal.SIGSTOP)
        try:
            with trio.fail_after(RECOVERY_DEADLINE_S):  # a trap waits for the frozen os1
                while not (await vmm_stats(orch))["oses"]["os1"]["in_handler"]:
                    await trio.sleep(0.05)
            await trio.sleep(0.3)  # unacknowledged: the frozen os1 acknowledges nothing
        finally:
            os.kill(first, signal.SIGKILL)
        with trio.fail_after(RECOVERY_DEADLINE_S):
            while os1.state != "running" or os1.restarts != 1:
                await trio.sleep(0.05)
        report = next(r for r in orch.recovery_log if r["kind"] == "os" and r["node"] == "os1")
        assert report["vmm"]["abandoned"] >= 1, report
        assert await client.run("os1", "uart0", "timeshare", ["timeshare", "N", "6"]) == (0, timeshare_output("N", 6))
        kernel = (await orch.request("os1", "stats")).body["stats"]["kernel"]
        assert kernel["stray_traps"] == 0, kernel
