"""The VMM's native drivers for the disk and the NIC on real clusters
(DESIGN.md §4 "VMM": the disk multiplexed by partition, the NIC by port;
FIG. 5 / FIG. 6 in orchestrator/choreographies/fig5_devices.py).

- Two test driver nodes named like OS instances (``tests.fixtures.iodriver``)
  reach disk0 and nic0 through the real VMM node, routed by hand as FIG. 5
  routes them: every refusal through the VMM has the errno the disk gives
  natively, each sees only its own partition and its own datagrams.
- The key-value store (``kvstore.elf``) on os1 of ``compose/vmmio.toml``,
  driven by a real UDP client in a thread, while the choreographies interpose
  the VMM on the CPU, the console, the disk and the NIC and take it out again:
  every reply is the expected one, byte for byte, the acknowledged values are
  there afterwards, no flow of any node saw a gap or a duplicate, and every
  frame kept exactly one owner.
- Two kvstores, on os1 and os2 under the VMM, on the same disk and NIC: each
  gets only its own data (its partition, its port).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
import trio

import protocol.hw  # noqa: F401  (disk_done / nic_done replies decode in this process)
import tests.fixtures.iodriver  # noqa: F401  (registers io_emit / io_events)
from hwemu.testing import node_stats as stats
from orchestrator.choreographies.base import ChoreographyError
from orchestrator.flowaudit import with_gaps
from tests.guest.test_network_samples import converse, free_udp_port
from tests.integration import test_choreographies
from tests.integration.test_choreographies import (
    Client,
    check_conservation,
    install_conservation_hook,
    vmm_stats,
    wait_vmm,
)
from tests.integration.test_io import _gets, _sets
from tests.integration.test_recovery import request

pytestmark = pytest.mark.integration
cli_run_dir = test_choreographies.cli_run_dir  # a fixture: the CLI test takes it as a parameter

REPO = Path(__file__).resolve().parents[2]
VMMIO = REPO / "compose" / "vmmio.toml"
PAGE = 4096
BS = 512
BLOCKS = 2048           # the iodriver topology's 1 MiB image
PART = 1024             # blocks per OS there
BUF = {"os1": 300 * PAGE, "os2": 600 * PAGE}   # inside each OS's memory partition
READY_DEADLINE_S = 60.0


# ============================================= the VMM node with two driver nodes

def driver_topology(tmp_path: Path) -> dict:
    driver = {"kind": "iodriver", "module": "tests.fixtures.iodriver"}
    return {
        "cluster": {"name": "vmmio-drivers"},
        "nodes": {
            "memctl": {"kind": "memctl", "options": {"frames": 1024, "partitions": {"os1": [256, 256],
                                                                                      "os2": [512, 256]}}},
            "disk0": {"kind": "disk", "options": {"size_mb": 1, "image": str(tmp_path / "disk0.img"),
                                                  "partitions": {"os1": [0, PART], "os2": [PART, PART]}}},
            "nic0": {"kind": "nic", "options": {"forward": {"7000": 0, "7001": 0}}},
            "os1": driver,
            "os2": {**driver, "options": {"rx_base": 700 * PAGE}},   # its receive buffers in its memory
            "vmm": {"kind": "vmm"},
        },
        "routes": {"io:os1.disk": "disk0", "irq:disk0": "os1", "io:os1.nic": "nic0", "irq:nic0": "os1"},
    }


async def issue(orch, os_name: str, device: str, kind: str, bodies: list[dict]) -> None:
    await orch.request(os_name, "io_emit", {"flow": f"io:{os_name}.{device}", "kind": kind, "bodies": bodies},
                       timeout=30)


async def events(orch, os_name: str, kind: str) -> dict:
    return (await orch.request(os_name, "io_events", {"kind": kind}, timeout=10)).body["data"]


async def wait_done(orch, os_name: str, kind: str, ids: list[int], timeout: float = 20.0) -> dict[int, dict]:
    with trio.fail_after(timeout):
        while True:
            got = {e["body"]["id"]: e for e in (await events(orch, os_name, kind))["events"]}
            if set(ids) <= set(got):
                return {i: got[i] for i in ids}
            await trio.sleep(0.01)


def cmd(i: int, block: int, count: int, os_name: str = "os1", addr: int | None = None,
        space: str | None = None) -> dict:
    return {"id": i, "block": block, "count": count, "space": space or os_name,
            "addr": BUF[os_name] if addr is None else addr}


BAD = [  # (block, count, extra), the same commands natively and through the VMM
    (0, 0, {}),                       # count 0: EINVAL
    (-1, 1, {}),                      # negative block: EINVAL
    (0, 2049, {}),                    # over max_blocks: EINVAL
    (PART - 1, 2, {}),                # straddles the partition's end: EIO
    (PART + 500, 1, {}),              # the other OS's blocks: EIO
    (BLOCKS - 1, 2, {}),              # past the device: EIO (outside the partition first)
    (5, 1, {"space": "os2"}),         # DMA into another OS's space: EFAULT
    (5, 1, {"addr": 10 * PAGE}),      # a guest address outside its memory: EFAULT (the DMA fails)
]


async def interpose_by_hand(orch) -> None:
    """What FIG. 5 does for both OSes' disk and NIC, as route changes and vmm_device."""
    await orch.routes.change({"io:vmm.disk0": "disk0", "io:vmm.nic0": "nic0",
                              "irq:vmm.os1": "os1", "irq:vmm.os2": "os2"})
    for os_name in ("os1", "os2"):
        for device, node in (("disk", "disk0"), ("nic", "nic0")):
            reply = await orch.request("vmm", "vmm_device", {"device": device, "node": node, "mode": "virtual",
                                                             "os": os_name})
            assert reply.kind == "ok", reply.body
    await orch.routes.change({"io:os1.disk": "vmm", "io:os2.disk": "vmm", "irq:disk0": "vmm",
                              "io:os1.nic": "vmm", "io:os2.nic": "vmm", "irq:nic0": "vmm"})


async def test_through_the_vmm_each_os_sees_its_own_partition_from_block_0_and_refusals_keep_the_native_errno(
        cluster, tmp_path):
    orch = await cluster(driver_topology(tmp_path))
    a, b = os.urandom(BS), os.urandom(BS)
    await orch.request("memctl", "mem_write", {"space": "os1", "addr": BUF["os1"], "data": a})
    await orch.request("memctl", "mem_write", {"space": "os2", "addr": BUF["os2"], "data": b})
    bad = [cmd(i + 1, blk, n, **extra) for i, (blk, n, extra) in enumerate(BAD)]
    await issue(orch, "os1", "disk", "disk_write", bad)
    native = await wait_done(orch, "os1", "disk_done", [c["id"] for c in bad])

    await interpose_by_hand(orch)
    through = [{**c, "id": c["id"] + 100} for c in bad]
    await issue(orch, "os1", "disk", "disk_write", through)
    virt = await wait_done(orch, "os1", "disk_done", [c["id"] for c in through])
    statuses = [native[c["id"]]["body"]["status"] for c in bad]
    assert statuses == [-errno.EINVAL] * 3 + [-errno.EIO] * 3 + [-errno.EFAULT] * 2
    assert [virt[c["id"]]["body"]["status"] for c in through] == statuses
    assert {e["flow"] for e in virt.values()} == {"irq:vmm.os1"}
    assert "outside os1's partition of 1024 blocks" in virt[104]["body"]["reason"]

    # each writes its block 5: the device has them at 5 and PART + 5
    await issue(orch, "os1", "disk", "disk_write", [cmd(201, 5, 1)])
    await issue(orch, "os2", "disk", "disk_write", [cmd(201, 5, 1, "os2")])   # the same id: the OSes' own
    done1 = await wait_done(orch, "os1", "disk_done", [201])
    done2 = await wait_done(orch, "os2", "disk_done", [201])
    assert (done1[201]["body"], done2[201]["body"]) == ({"id": 201, "status": 0, "count": 1},) * 2
    image = (tmp_path / "disk0.img").read_bytes()
    assert (image[5 * BS:6 * BS], image[(PART + 5) * BS:(PART + 6) * BS]) == (a, b)
    # os2 reads its block 5 back into another buffer; its block PART is past its end
    await issue(orch, "os2", "disk", "disk_read", [cmd(202, 5, 1, "os2", addr=BUF["os2"] + PAGE),
                                                   cmd(203, PART, 1, "os2")])
    done2 = await wait_done(orch, "os2", "disk_done", [202, 203])
    assert (done2[202]["body"]["status"], done2[203]["body"]["status"]) == (0, -errno.EIO)
    back = await orch.request("memctl", "mem_read", {"space": "os2", "addr": BUF["os2"] + PAGE, "length": BS})
    assert back.body["data"] == b
    info = (await orch.request("vmm", "disk_info", {"os": "os2"})).body["data"]
    assert (info["blocks"], info["partition"], info["block_size"]) == (PART, None, BS)

    shared = (await stats(orch, "vmm"))["vmm"]["io"]["shared"]["disk0"]
    assert shared["users"] == {"os1": {"partition": [0, PART]}, "os2": {"partition": [PART, PART]}}
    # refused by the VMM itself: all but the failing DMA, and os2's block past its end
    assert (shared["refused"], shared["completions"], shared["outstanding"]) == (len(BAD) - 1 + 1, 4, 0)
    disk = await stats(orch, "disk0")
    assert disk["errors"] == len(BAD) + 1   # natively all of them; through the VMM only the failing DMA
    for name in orch.live_nodes():
        s = await stats(orch, name)
        assert not with_gaps(s["flows_in"]), name


async def test_through_the_vmm_a_port_belongs_to_the_os_that_bound_it_and_datagrams_reach_only_it(
        cluster, tmp_path):
    orch = await cluster(driver_topology(tmp_path))
    await issue(orch, "os1", "nic", "nic_bind", [{"id": 1, "port": 7000}])   # natively, before the VMM
    assert (await wait_done(orch, "os1", "nic_done", [1]))[1]["body"]["status"] == 0
    await interpose_by_hand(orch)
    await issue(orch, "os2", "nic", "nic_bind", [{"id": 1, "port": 7001}])
    assert (await wait_done(orch, "os2", "nic_done", [1]))[1]["body"] == {"id": 1, "status": 0, "port": 7001}
    ports = (await stats(orch, "nic0"))["ports"]
    assert (ports["7000"]["owner"], ports["7001"]["owner"]) == ("os1", "os2")

    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as client:
        await client.bind(("127.0.0.1", 0))
        me = client.getsockname()[1]
        for i in range(3):
            await client.sendto(b"to os1 #%d" % i, ("127.0.0.1", ports["7000"]["host_port"]))
            await client.sendto(b"to os2 #%d" % i, ("127.0.0.1", ports["7001"]["host_port"]))
        with trio.fail_after(15):
            while True:
                rx1 = (await events(orch, "os1", "nic_rx"))["events"]
                rx2 = (await events(orch, "os2", "nic_rx"))["events"]
                if len(rx1) + len(rx2) >= 6:
                    break
                await trio.sleep(0.01)
        assert [(e["flow"], e["body"]["port"], e["body"]["data"]) for e in rx1] == [
            ("irq:vmm.os1", 7000, b"to os1 #%d" % i) for i in range(3)]
        assert [(e["flow"], e["body"]["port"], e["body"]["data"]) for e in rx2] == [
            ("irq:vmm.os2", 7001, b"to os2 #%d" % i) for i in range(3)]
        # the NIC wrote each datagram into a receive buffer of the OS that owns the port
        assert {a // PAGE for e in rx1 for a in e["body"]["buffers"]} <= set(range(400, 432))
        assert {a // PAGE for e in rx2 for a in e["body"]["buffers"]} <= set(range(700, 732))
        # os2 cannot post os1's frames as its buffers, through the VMM or not
        await issue(orch, "os2", "nic", "nic_rx_post", [{"buffers": [300 * PAGE], "space": "os1"}])

        # os2 may not send from os1's port, nor close it; from its own it goes out through the VMM
        send = {"src_port": 7000, "dst_host": "127.0.0.1", "dst_port": me, "data": b"x"}
        await issue(orch, "os2", "nic", "nic_send", [{"id": 2, **send}, {"id": 3, **send, "src_port": 7001,
                                                                        "data": b"from os2"}])
        await issue(orch, "os2", "nic", "nic_close", [{"id": 4, "port": 7000}])
        done = await wait_done(orch, "os2", "nic_done", [2, 3, 4])
        assert [done[i]["body"]["status"] for i in (2, 3, 4)] == [-errno.EBADF, 0, -errno.EBADF]
        with trio.fail_after(10):
            data, sender = await client.recvfrom(100)
        assert (data, sender[1]) == (b"from os2", ports["7001"]["host_port"])

    # a node that io:<os>.nic is not routed to cannot act for that OS
    forged = await orch.request("nic0", "nic_close", {"id": 9, "port": 7000, "os": "os1"})
    assert forged.body["status"] == -errno.EPERM
    # every receive slot came back through the VMM (the drivers ack each datagram)
    with trio.fail_after(10):
        while True:
            ports = (await stats(orch, "nic0"))["ports"]
            if (ports["7000"]["inflight"], ports["7001"]["inflight"]) == (0, 0):
                break
            await trio.sleep(0.01)
    assert (ports["7000"]["rx"], ports["7001"]["rx"], ports["7001"]["tx"]) == (3, 3, 1)
    nic = await stats(orch, "nic0")
    assert (nic["bad_posts"], nic["buffers"], nic["no_buffers"]) == (1, {"os1": 32, "os2": 32}, 0)
    for name in orch.live_nodes():
        s = await stats(orch, name)
        assert not with_gaps(s["flows_in"]), name


# ============================================= real OSes, kvstore, the choreographies

def kv_host_port(orch_stats: dict, guest: int) -> int:
    return orch_stats["ports"][str(guest)]["host_port"]


async def start_kvstore(orch, client: Client, os_name: str, uart: str, port: int) -> tuple[int, int, tuple]:
    """kvstore on ``os_name``'s /dev/disk0 and guest ``port``; waits for its ready line and its host port."""
    start = await client.logged(uart)
    pid = await client.exec(os_name, "kvstore", ["kvstore", "/dev/disk0", str(port)])
    with trio.fail_after(READY_DEADLINE_S):
        while not (await client.console(uart, start)).endswith(b"\n"):
            await trio.sleep(0.02)
        while str(port) not in (await stats(orch, "nic0"))["ports"]:
            await trio.sleep(0.02)
    host = kv_host_port(await stats(orch, "nic0"), port)
    return pid, start, ("127.0.0.1", host)


def in_thread(nursery: trio.Nursery, fn) -> trio.Event:
    """Run ``fn()`` in a worker thread as a task of ``nursery`` (what it raises fails the
    nursery); the event is set once it has returned or raised."""
    done = trio.Event()

    async def run() -> None:
        try:
            await trio.to_thread.run_sync(fn)
        finally:
            done.set()

    nursery.start_soon(run)
    return done


class Driver:
    """A real UDP client in a thread: SET then GET, every reply checked, until stopped
    (keys cycle through 150 names, so the store never fills)."""

    def __init__(self, address: tuple[str, int], prefix: bytes):
        self.address = address
        self.prefix = prefix
        self.stop = threading.Event()
        self.acked: dict[bytes, bytes] = {}
        self.rounds = 0

    def run(self) -> None:
        while not self.stop.is_set():
            key = b"%s%03d" % (self.prefix, self.rounds % 150)
            value = b"value-%03d-" % self.rounds + bytes(range(97, 97 + self.rounds % 26))
            converse(self.address, [(b"SET %s %s" % (key, value), b"OK"), (b"GET " + key, b"VALUE " + value)])
            self.acked[key] = value
            self.rounds += 1


async def no_gaps_or_refusals(orch) -> None:
    """No flow saw a gap (a copy sent again is dropped: flowaudit.with_gaps), and no node
    refused a message: a sender that switched to a new receiver before that receiver's own
    switch (both in one change) is not refused by its table one step behind (``receive_only``:
    orchestrator/routes.py)."""
    for name in orch.live_nodes():
        s = await stats(orch, name)
        assert not with_gaps(s["flows_in"]), name
        assert s["forbidden"] == 0, (name, s.get("forbidden_by"))


def _served(s: dict, node: str, key: str) -> int:
    return (s["io"]["shared"].get(node) or {}).get(key, 0)


async def test_kvstore_answers_exactly_while_the_vmm_is_interposed_on_cpu_disk_and_nic_and_taken_out(
        guest_build, cluster):
    orch = await cluster(VMMIO)
    install_conservation_hook(orch)
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    client = Client(orch, "kvclient")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client.handle)
            pid, start, address = await start_kvstore(orch, client, "os1", "uart0", 7000)
            driver = Driver(address, b"key")
            done = in_thread(nursery, driver.run)
            with trio.fail_after(60):
                while driver.rounds < 3:
                    await trio.sleep(0.02)
            interposed = (await orch.control("ctl_interpose", os="os1"))["reports"]
            assert [(r["figure"], r["params"].get("device")) for r in interposed] == [
                ("fig3", None), ("fig5", "uart"), ("fig5", "disk"), ("fig5", "nic")]
            routes = orch.routes.table.routes
            assert [routes[f] for f in ("io:os1.disk", "irq:disk0", "io:os1.nic", "irq:nic0")] == ["vmm"] * 4
            resources = (await orch.control("ctl_virt_status"))["resources"]
            assert (resources["os1.disk (disk0)"], resources["os1.nic (nic0)"], resources["os2.disk (disk0)"]) == (
                "vmm", "vmm", "os2")
            disk_state = {s["name"]: s["data"] for s in interposed[2]["steps"]}["driver_virtual"]["driver_virtual"]
            assert (disk_state["mode"], disk_state["inflight"], disk_state["partition"]) == (
                "virtual", 0, [0, 16384])
            # the store keeps answering, now through the VMM's drivers
            at = driver.rounds
            s = await wait_vmm(orch, lambda s: _served(s, "disk0", "completions") > 10
                               and _served(s, "nic0", "rx") > 4)
            assert driver.rounds > at and s["io"]["shared"]["nic0"]["ports"] == {"7000": "os1"}
            back = (await orch.control("ctl_devirtualize", os="os1"))["reports"]
            assert sorted(r["figure"] for r in back) == ["fig6", "fig6", "fig6", "fig7"]
            at = driver.rounds
            with trio.fail_after(60):
                while driver.rounds < at + 3:
                    await trio.sleep(0.02)
            driver.stop.set()
            await done.wait()
            # every acknowledged value is there, then the store stops cleanly
            final = [(b"GET " + k, b"VALUE " + v) for k, v in driver.acked.items()]
            final += [(b"COUNT", b"COUNT %d" % len(driver.acked)), (b"QUIT", b"BYE")]
            await trio.to_thread.run_sync(converse, address, final)
            exit1 = await client.wait_exit("os1", pid)
            assert (exit1["code"], await client.console("uart0", start)) == (
                0, b"kvstore ready: 0 keys\nkvstore stopped: %d keys\n" % len(driver.acked))
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()
    routes = orch.routes.table.routes
    assert [routes[f] for f in ("io:os1.disk", "irq:disk0", "io:os1.nic", "irq:nic0")] == [
        "disk0", "os1", "nic0", "os1"]
    await no_gaps_or_refusals(orch)
    await check_conservation(orch)
    assert (await vmm_stats(orch))["io"]["shared"] == {}


async def test_kill9_of_the_vmm_under_the_kvstore_loses_no_acknowledged_key(guest_build, cluster):
    """The VMM dies while it drives os1's CPU, disk and NIC under the key-value store and
    a client that keeps writing: the emergency devirtualization puts os1 back on the
    hardware, and every value the store acknowledged reads back, none twice (COUNT). A
    system call's results travel with the process's resume (``stores``, through the VMM
    while it is there): one lost with the dead VMM is sent again with them (the OS keeps
    them until the process traps again), so no request the store answered is missing from
    its buffer and no datagram is read twice. The client re-sends a request a restart may
    have lost (UDP may lose; a SET of the same value is idempotent)."""
    orch = await cluster(VMMIO)
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    client = Client(orch, "kvclient")
    stop = threading.Event()
    acked: dict[bytes, bytes] = {}
    rounds = [0]

    def drive() -> None:
        while not stop.is_set():
            i = rounds[0]
            key, value = b"k%03d" % (i % 120), b"v-%05d-" % i + bytes(range(97, 97 + i % 26))
            assert request(address, b"SET %s %s" % (key, value)) == b"OK"
            acked[key] = value
            assert request(address, b"GET " + key) == b"VALUE " + value
            rounds[0] += 1

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client.handle)
            pid, start, address = await start_kvstore(orch, client, "os1", "uart0", 7000)
            done = in_thread(nursery, drive)
            with trio.fail_after(60):
                while rounds[0] < 3:
                    await trio.sleep(0.02)
            await orch.control("ctl_interpose", os="os1")
            await wait_vmm(orch, lambda s: _served(s, "nic0", "rx") > 6 and s["traps_reflected"] > 20)
            stores = (await stats(orch, "cpu0"))["stores"]
            os.kill(orch.supervisor.nodes["vmm"].pid, signal.SIGKILL)
            with trio.fail_after(60):
                while not any(r["kind"] == "vmm" for r in orch.recovery_log):
                    await trio.sleep(0.05)
            at = rounds[0]
            with trio.fail_after(60):
                while rounds[0] < at + 10:
                    await trio.sleep(0.05)
            stop.set()
            await done.wait()
            final = [(b"GET " + k, b"VALUE " + v) for k, v in acked.items()]
            final += [(b"COUNT", b"COUNT %d" % len(acked)), (b"QUIT", b"BYE")]
            await trio.to_thread.run_sync(converse, address, final)
            exit1 = await client.wait_exit("os1", pid)
            assert (exit1["code"], await client.console("uart0", start)) == (
                0, b"kvstore ready: 0 keys\nkvstore stopped: %d keys\n" % len(acked))
            nursery.cancel_scope.cancel()
    finally:
        stop.set()
        client.party.close()
    report = next(r for r in orch.recovery_log if r["kind"] == "vmm")
    assert report["native"] == "os1", report
    routes = orch.routes.table.routes
    assert [routes[f] for f in ("trap:cpu0", "priv:os1", "io:os1.nic", "irq:nic0")] == ["os1", "cpu0", "nic0", "os1"]
    # the requests' bytes reached the store as resume stores, under the VMM and after it
    assert stores > 0 and (await stats(orch, "cpu0"))["stores"] > stores


async def test_a_resume_lost_with_a_dead_vmm_is_sent_again_with_the_results_it_carried(guest_build, cluster):
    """The CPU alone under the VMM (the NIC's interrupts still reach os1): the store is
    blocked in recvfrom, the CPU halted. The VMM is frozen, a request arrives, os1 delivers
    it into the store's buffer as the stores of the resume it sends, and that resume stops
    in the frozen VMM, which is then killed. The emergency devirtualization finds the CPU
    halted with a process current (``resumed``): os1 sends the resume again, with the
    stores, so the store reads the request it was told it got and answers it (without
    them it would run on with its buffer as it was)."""
    orch = await cluster(VMMIO)
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    client = Client(orch, "kvclient")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client.handle)
            pid, start, address = await start_kvstore(orch, client, "os1", "uart0", 7000)
            assert await trio.to_thread.run_sync(request, address, b"SET a 1") == b"OK"
            await orch.control("ctl_interpose", os="os1", cpu=True)
            routes = orch.routes.table.routes
            assert (routes["priv:os1"], routes["trap:cpu0"], routes["irq:nic0"]) == ("vmm", "vmm", "os1")
            assert await trio.to_thread.run_sync(request, address, b"GET a") == b"VALUE 1"
            with trio.fail_after(30):
                while (await stats(orch, "cpu0"))["cpu_state"] != "halted":  # blocked in recvfrom
                    await trio.sleep(0.02)
            rx = (await stats(orch, "os1"))["io"]["nic"]["rx"]
            vmm = orch.supervisor.nodes["vmm"]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(60)
                os.kill(vmm.pid, signal.SIGSTOP)
                try:
                    sock.sendto(b"SET lost-and-found 42", address)
                    with trio.fail_after(30):  # delivered, its resume on its way to the frozen VMM
                        while (await stats(orch, "os1"))["io"]["nic"]["rx"] == rx:
                            await trio.sleep(0.02)
                    await trio.sleep(0.3)
                finally:
                    os.kill(vmm.pid, signal.SIGKILL)
                with trio.fail_after(60):
                    while not any(r["kind"] == "vmm" for r in orch.recovery_log):
                        await trio.sleep(0.05)
                assert await trio.to_thread.run_sync(sock.recvfrom, 100) == (b"OK", address)
            report = next(r for r in orch.recovery_log if r["kind"] == "vmm")
            assert (report["native"], report["cpu"]) == ("os1", "resumed"), report
            await trio.to_thread.run_sync(converse, address, [(b"GET lost-and-found", b"VALUE 42"),
                                                              (b"COUNT", b"COUNT 2"), (b"QUIT", b"BYE")])
            assert (await client.wait_exit("os1", pid))["code"] == 0
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()


async def kill9_and_wait_restart(orch, name: str) -> None:
    """SIGKILL a node by its pid; return once the supervisor restarted it and every driver heard."""
    np = orch.supervisor.nodes[name]
    pid = np.pid
    os.kill(pid, signal.SIGKILL)
    with trio.fail_after(60):
        while np.pid == pid or np.state != "running":
            await trio.sleep(0.05)


async def test_a_nic_and_a_disk_restarted_under_the_vmm_are_reset_by_its_drivers(guest_build, cluster):
    """docs/recovery.md: a device restarted while the VMM drives it (FIG. 5) is
    reset by the VMM's native driver of it, as the OS's driver resets it
    natively: the NIC gets the OS's receive buffers and bound port again (the
    store answers on the same host port), the disk the commands its dead
    process had consumed (none stays outstanding); every acknowledged key is
    read back, on the VMM and natively after FIG. 6."""
    orch = await cluster(VMMIO)
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    host_port = free_udp_port()  # a forward added at runtime survives the NIC's restart (nodes/nic)
    await orch.request("nic0", "nic_forward", {"guest_port": 7000, "host_port": host_port})
    client = Client(orch, "kvclient")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client.handle)
            pid, start, address = await start_kvstore(orch, client, "os1", "uart0", 7000)
            assert address == ("127.0.0.1", host_port)
            await trio.to_thread.run_sync(converse, address, _sets(0, 10))
            await orch.control("ctl_interpose", os="os1")
            assert orch.routes.table.get("io:os1.nic") == "vmm" and orch.routes.table.get("io:os1.disk") == "vmm"

            await kill9_and_wait_restart(orch, "nic0")
            # the first datagrams may be lost while the VMM binds the port again; none is wrong
            assert await trio.to_thread.run_sync(request, address, b"COUNT") == b"COUNT 10"
            nic = await stats(orch, "nic0")
            assert nic["ports"]["7000"]["owner"] == "os1" and nic["ports"]["7000"]["host_port"] == host_port

            # the disk dies with a command in it, taken and not completed (a slow disk: a latency
            # fault), under SETs, each re-sent until answered (a SET is idempotent)
            await orch.request("disk0", "fault_set", {"id": "slow", "type": "disk", "seed": 1, "latency_ms": 2000})

            def sets() -> None:
                for i in range(10, 40):
                    assert request(address, b"SET key%03d value-%03d" % (i, i)) == b"OK"

            writer = in_thread(nursery, sets)
            flow = "io:vmm.disk0"
            with trio.fail_after(60):  # a command the disk acknowledged and has not completed
                while True:
                    vmm = await stats(orch, "vmm")
                    if vmm["vmm"]["io"]["shared"]["disk0"]["outstanding"] and \
                            vmm["flows_acked"].get(flow) == vmm["flows_out"].get(flow):
                        break
                    await trio.sleep(0.02)
            await kill9_and_wait_restart(orch, "disk0")
            with trio.fail_after(120):
                await writer.wait()
            await trio.to_thread.run_sync(converse, address, _gets(40))
            shared = (await vmm_stats(orch))["io"]["shared"]
            assert (shared["nic0"]["resets"], shared["disk0"]["resets"]) == (1, 1), shared
            assert shared["disk0"]["outstanding"] == 0 and shared["disk0"]["reissued"] >= 1, shared["disk0"]

            await orch.control("ctl_devirtualize", os="os1")
            await trio.to_thread.run_sync(converse, address, _gets(40) + [(b"QUIT", b"BYE")])
            exit1 = await client.wait_exit("os1", pid)
            assert (exit1["code"], await client.console("uart0", start)) == (
                0, b"kvstore ready: 0 keys\nkvstore stopped: 40 keys\n")
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()


async def test_two_oses_under_the_vmm_each_get_only_their_own_partition_and_port(guest_build, cluster):
    orch = await cluster(VMMIO)
    install_conservation_hook(orch)
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    with pytest.raises(ChoreographyError, match="disk0's interrupts go to os1, which drives it natively"):
        await orch.control("ctl_interpose", os="os2", io=["disk"])
    first = (await orch.control("ctl_interpose", os="os1"))["reports"]
    second = (await orch.control("ctl_interpose", os="os2"))["reports"]
    assert [r["figure"] for r in first + second] == ["fig3"] + ["fig5"] * 3 + ["fig3"] + ["fig5"] * 3
    with pytest.raises(ChoreographyError, match="os2 still reach disk0 through the VMM"):
        await orch.control("ctl_devirtualize", os="os1", io=["disk"])
    client = Client(orch, "kvclient2")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client.handle)
            p1, s1, a1 = await start_kvstore(orch, client, "os1", "uart0", 7000)
            p2, s2, a2 = await start_kvstore(orch, client, "os2", "uart1", 7001)

            def talk() -> None:
                converse(a1, [(b"SET shared one", b"OK"), (b"SET only1 x", b"OK")])
                converse(a2, [(b"SET shared two", b"OK"), (b"GET only1", b"NOTFOUND")])
                converse(a1, [(b"GET shared", b"VALUE one"), (b"COUNT", b"COUNT 2"), (b"QUIT", b"BYE")])
                converse(a2, [(b"GET shared", b"VALUE two"), (b"COUNT", b"COUNT 1"), (b"QUIT", b"BYE")])

            await trio.to_thread.run_sync(talk)
            e1, e2 = await client.wait_exit("os1", p1), await client.wait_exit("os2", p2)
            assert (e1["code"], await client.console("uart0", s1)) == (
                0, b"kvstore ready: 0 keys\nkvstore stopped: 2 keys\n")
            assert (e2["code"], await client.console("uart1", s2)) == (
                0, b"kvstore ready: 0 keys\nkvstore stopped: 1 keys\n")
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()
    # each store's header is at the start of its own partition of the one image
    image = (orch.run_dir / "disk0.img").read_bytes()
    assert image[:8] == image[16384 * BS:16384 * BS + 8] == b"HWEMUKV1"
    s = await vmm_stats(orch)
    assert s["io"]["shared"]["disk0"]["users"] == {"os1": {"partition": [0, 16384]},
                                                    "os2": {"partition": [16384, 16384]}}
    # os2 leaves (its devices back first), then os1 gets everything back
    stopped = (await orch.control("ctl_os_stop", os="os2"))["reports"]
    assert [r["figure"] for r in stopped] == ["fig6"] * 3 + ["os_stop"]
    back = (await orch.control("ctl_devirtualize", os="os1"))["reports"]
    assert sorted(r["figure"] for r in back) == ["fig6", "fig6", "fig6", "fig7"]
    assert (orch.routes.table.routes["irq:disk0"], orch.routes.table.routes["irq:nic0"]) == ("os1", "os1")
    await no_gaps_or_refusals(orch)
    await check_conservation(orch)


# ============================================= the disk driver's switch and a whole transfer

async def test_a_disk_driver_mode_switch_waits_for_the_whole_multi_block_transfer(cluster, tmp_path):
    """The real OS node, run in this process on a cluster's endpoint so that the
    test can start a pwrite64-sized transfer (64 disk commands of 8 blocks) and
    ask for the mode switch while it is between two of them."""
    from nodes.guest_os.node import OsNode
    from nodes.runtime import NodeConfig

    topo = driver_topology(tmp_path)
    topo["nodes"]["os1"] = {"kind": "os", "autostart": False, "options": {"memory": [256, 256]}}
    del topo["nodes"]["os2"]
    orch = await cluster(topo)
    cfg = NodeConfig(name="os1", kind="os", endpoint=orch.directory["os1"], directory=dict(orch.directory),
                     routes=orch.routes.table.to_wire(), orchestrator=None, options={"memory": [256, 256]},
                     run_dir=str(orch.run_dir), auth=orch._node_config(orch.topology.nodes["os1"])["auth"])
    node = OsNode(cfg)
    data = os.urandom(64 * PAGE)
    order: list[str] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(node.run)
        with trio.fail_after(10):
            while node.state != "running":
                await trio.sleep(0.01)
        disk = node.io.disk

        async def transfer() -> None:
            assert await disk.pwrite(0, data) == len(data)
            order.append("transfer done")

        nursery.start_soon(transfer)
        with trio.fail_after(30):
            while disk.commands < 3:  # a few chunks in: the next one is not issued yet
                await trio.sleep(0)
        state = await disk.set_mode("virtual")
        order.append("switched")
        written = (await stats(orch, "disk0"))["blocks_written"]
        node.stop()
    assert order == ["transfer done", "switched"]
    assert (state["mode"], state["inflight"], written) == ("virtual", 0, 64 * PAGE // BS)
    assert (tmp_path / "disk0.img").read_bytes()[:len(data)] == data


# ============================================= receive buffers across an OS restart

async def test_an_os_killed_and_restarted_withdraws_its_old_receive_buffers_before_reusing_the_frames(
        guest_build, cluster):
    import signal

    orch = await cluster(VMMIO)
    client = Client(orch, "bufclient")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client.handle)
            await client.exec("os1", "udpecho", ["udpecho", "7000"])
            with trio.fail_after(READY_DEADLINE_S):  # the driver posts its buffers, then binds
                while not ((nic := await stats(orch, "nic0"))["buffers"].get("os1") == 32 and "7000" in nic["ports"]):
                    await trio.sleep(0.02)
            old = orch.supervisor.nodes["os1"]
            pid = old.pid
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(60):   # the supervisor restarts it; at boot it withdraws its buffers
                while not (old.pid != pid and old.state == "running"
                           and (await stats(orch, "nic0"))["buffers"].get("os1") == 0):
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()
    nic = await stats(orch, "nic0")
    assert (nic["buffers"], nic["ports"]["7000"]["owner"]) == ({"os1": 0}, "os1")  # the port waits for a rebind


# ============================================= the CLI, as a user runs it

def test_cli_interposes_and_devirtualizes_the_disk_and_the_nic_and_refuses_an_unknown_device(cli_run_dir):
    from tests.integration.test_choreographies import hwemu, one_json

    rd = cli_run_dir
    assert hwemu(rd, "up", "compose/vmmio.toml", "--detach", "--json").returncode == 0
    assert hwemu(rd, "vmm", "load", "--host", "os1", "--frames", "8").returncode == 0
    unknown = hwemu(rd, "interpose", "--io", "tape")
    assert (unknown.returncode, unknown.stderr.strip().splitlines()) == (
        1, ["hwemu: device 'tape' cannot be virtualized (devices: uart, disk, nic)"])
    inter = hwemu(rd, "interpose", "--io", "disk", "--io", "nic", "--json")
    assert inter.returncode == 0, inter.stderr
    assert [(r["figure"], r["params"]["device"], r["outcome"]) for r in one_json(inter.stdout)["reports"]] == [
        ("fig5", "disk", "committed"), ("fig5", "nic", "committed")]
    virt = one_json(hwemu(rd, "status", "--json").stdout)["virt"]["resources"]
    assert {k: v for k, v in virt.items() if "disk" in k or "nic" in k} == {
        "os1.disk (disk0)": "vmm", "os1.nic (nic0)": "vmm", "os2.disk (disk0)": "os2", "os2.nic (nic0)": "os2"}
    assert virt["os1.cpu"] == "os1"   # partial: the devices only
    again = hwemu(rd, "interpose", "--io", "all", "--json")   # what is left: the console
    assert [r["params"]["device"] for r in one_json(again.stdout)["reports"]] == ["uart"]
    back = hwemu(rd, "devirtualize", "--io", "all", "--json")
    assert back.returncode == 0, back.stderr
    assert sorted(r["params"]["device"] for r in one_json(back.stdout)["reports"]) == ["disk", "nic", "uart"]
    virt = one_json(hwemu(rd, "status", "--json").stdout)["virt"]["resources"]
    assert set(virt.values()) == {"os1", "os2"}
