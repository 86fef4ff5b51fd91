"""The disk and NIC devices (DESIGN.md §3, Devices) in real clusters: memctl,
disk0, nic0 and a test driver node named like an OS (``os1``,
``tests.fixtures.iodriver``) that issues device commands on ``io:os1.*`` and
records completions and interrupts from ``irq:*``. Guest memory is set and
checked through memctl; the disk image is checked with plain file reads; the
NIC's host side is driven with real UDP sockets on loopback."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio

import protocol.hw  # noqa: F401  (disk_done / nic_done replies decode in this process)
import tests.fixtures.iodriver  # noqa: F401  (registers io_emit / io_events)
from hwemu.testing import node_stats as stats
from hwemu.testing import wait_stats
from orchestrator.errors import StartError
from tests.integration.procs import identity, sigkill_until_restarted

pytestmark = pytest.mark.integration

DRIVER = {"kind": "iodriver", "module": "tests.fixtures.iodriver"}
PAGE = 4096
BS = 512
GUEST = 300 * PAGE  # inside os1's memory partition (frames 256..511)
BLOCKS = 2048  # a 1 MiB image of 512-byte blocks


def topology(tmp_path: Path, disk: dict | None = None, nic: dict | None = None, driver: dict | None = None,
             image: bool = True, restart: str = "on-failure") -> dict:
    disk_opts = {"size_mb": 1, "partitions": {"os1": [0, 1024], "os2": [1024, 1024]}, **(disk or {})}
    if image:
        disk_opts["image"] = str(tmp_path / "disk0.img")
    return {
        "cluster": {"name": "io"},
        "nodes": {
            "memctl": {"kind": "memctl", "options": {"frames": 512, "partitions": {"os1": [256, 256]}}},
            "disk0": {"kind": "disk", "restart": restart, "options": disk_opts},
            "nic0": {"kind": "nic", "options": {"forward": {"7000": 0}, **(nic or {})}},
            "os1": {**DRIVER, "options": driver or {}},
        },
        "routes": {"io:os1.disk": "disk0", "irq:disk0": "os1", "io:os1.nic": "nic0", "irq:nic0": "os1"},
    }


async def issue(orch, flow: str, kind: str, bodies: list[dict]) -> None:
    """The driver emits ``kind`` on ``flow``, one message per body, in order."""
    await orch.request("os1", "io_emit", {"flow": flow, "kind": kind, "bodies": bodies}, timeout=30)


async def events(orch, kind: str) -> dict:
    return (await orch.request("os1", "io_events", {"kind": kind}, timeout=10)).body["data"]


async def wait_done(orch, kind: str, ids: list[int], timeout: float = 20.0) -> dict[int, dict]:
    """Completions (``disk_done``/``nic_done``) for ``ids``, by id; fail after ``timeout`` s."""
    with trio.fail_after(timeout):
        while True:
            got = {e["body"]["id"]: e["body"] for e in (await events(orch, kind))["events"]}
            if set(ids) <= set(got):
                return {i: got[i] for i in ids}
            await trio.sleep(0.01)


async def poke(orch, addr: int, data: bytes) -> None:
    await orch.request("memctl", "mem_write", {"space": "os1", "addr": addr, "data": data})


async def peek(orch, addr: int, length: int) -> bytes:
    return (await orch.request("memctl", "mem_read", {"space": "os1", "addr": addr, "length": length})).body["data"]


def cmd(i: int, block: int, count: int, addr: int = GUEST, space: str = "os1") -> dict:
    return {"id": i, "block": block, "count": count, "space": space, "addr": addr}


# -- disk ---------------------------------------------------------------------------


async def test_disk_write_is_in_the_image_file_at_completion_and_reads_back_through_guest_memory(cluster, tmp_path):
    orch = await cluster(topology(tmp_path))
    image = tmp_path / "disk0.img"
    assert image.stat().st_size == BLOCKS * BS
    pattern = os.urandom(8 * BS)
    await poke(orch, GUEST, pattern)

    await issue(orch, "io:os1.disk", "disk_write", [cmd(1, 10, 8)])
    done = await wait_done(orch, "disk_done", [1])
    assert done[1] == {"id": 1, "status": 0, "count": 8}
    # durable before the completion: the bytes are in the file, and one fdatasync was made for the write
    assert image.read_bytes()[10 * BS:18 * BS] == pattern
    s = await stats(orch, "disk0")
    assert (s["writes"], s["syncs"], s["blocks_written"]) == (1, 1, 8)

    # read back into another buffer, word-aligned but not page-aligned: the DMA spans two pages
    dest = GUEST + 20 * PAGE + 4 * 3
    await issue(orch, "io:os1.disk", "disk_read", [cmd(2, 10, 8, addr=dest)])
    await issue(orch, "io:os1.disk", "disk_flush", [{"id": 3}])
    done = await wait_done(orch, "disk_done", [2, 3])
    assert done == {2: {"id": 2, "status": 0, "count": 8}, 3: {"id": 3, "status": 0, "count": 0}}
    assert await peek(orch, dest, 8 * BS) == pattern

    log = await events(orch, "disk_done")
    assert [e["body"]["id"] for e in log["events"]] == [1, 2, 3]
    assert [(e["flow"], e["fseq"]) for e in log["events"]] == [("irq:disk0", 1), ("irq:disk0", 2), ("irq:disk0", 3)]
    assert log["flows"]["irq:disk0"] == {"gaps": 0, "dups": 0}

    # the direct forms: disk_info, and a command as a request answered with disk_done
    info = (await orch.request("disk0", "disk_info")).body["data"]
    assert info == {"blocks": BLOCKS, "block_size": BS, "write_back": False, "queue_depth": 64,
                    "max_blocks": 2048, "partition": None}
    direct = await orch.request("disk0", "disk_read", cmd(4, 10, 1, addr=GUEST + 40 * PAGE))
    assert (direct.kind, direct.body) == ("disk_done", {"id": 4, "status": 0, "count": 1})
    assert await peek(orch, GUEST + 40 * PAGE, BS) == pattern[:BS]
    s = await stats(orch, "disk0")
    # the flush found the image clean (the write was made durable with it): no second fdatasync
    assert (s["reads"], s["flushes"], s["syncs"], s["clean_flushes"], s["errors"]) == (2, 1, 1, 1, 0)


async def test_bad_disk_commands_complete_with_errno_in_order_and_the_node_keeps_serving(cluster, tmp_path):
    orch = await cluster(topology(tmp_path))
    pid = identity((await orch.request("disk0", "ping")).body)
    pattern = os.urandom(BS)
    await poke(orch, GUEST, pattern)
    bad = [
        (cmd(1, 0, 0), -errno.EINVAL, "count 0"),
        (cmd(2, 0, 1, addr=GUEST + 2), -errno.EINVAL, "aligned"),
        (cmd(3, -1, 1), -errno.EINVAL, "negative"),
        (cmd(4, 0, 2049), -errno.EINVAL, "count 2049"),
        (cmd(5, BLOCKS - 1, 2), -errno.EIO, "outside os1's partition of 1024 blocks"),
        (cmd(6, 1500, 1), -errno.EIO, "outside os1's partition"),       # os2's blocks
        (cmd(7, 1020, 8), -errno.EIO, "outside os1's partition"),       # straddles the boundary
        (cmd(8, 5, 1, space="os2"), -errno.EFAULT, "own address space"),
        (cmd(9, 5, 1, addr=10 * PAGE), -errno.EFAULT, "mem_fault"),     # not os1's memory
    ]
    await issue(orch, "io:os1.disk", "disk_write", [c for c, _, _ in bad] + [cmd(10, 5, 1)])
    await issue(orch, "io:os1.disk", "disk_read", [cmd(11, 1500, 1), cmd(12, 5, 1, addr=GUEST + PAGE)])
    done = await wait_done(orch, "disk_done", list(range(1, 13)))
    for c, status, why in bad:
        body = done[c["id"]]
        assert (body["status"], body["count"]) == (status, 0), body
        assert why in body["reason"], body
    assert (done[10], done[12]) == ({"id": 10, "status": 0, "count": 1}, {"id": 12, "status": 0, "count": 1})
    assert done[11]["status"] == -errno.EIO
    assert [e["body"]["id"] for e in (await events(orch, "disk_done"))["events"]] == list(range(1, 13))
    assert await peek(orch, GUEST + PAGE, BS) == pattern
    assert (tmp_path / "disk0.img").read_bytes()[1500 * BS:1501 * BS] == bytes(BS)  # nothing was written there

    # a whole-device issuer (no partition: a tool, the VMM) meets the end of the device itself
    beyond = await orch.request("disk0", "disk_read", cmd(13, BLOCKS - 1, 2))
    assert (beyond.body["status"], "beyond the end" in beyond.body["reason"]) == (-errno.EIO, True)
    assert identity((await orch.request("disk0", "ping")).body) == pid
    s = await stats(orch, "disk0")
    assert (s["state"], s["errors"], s["writes"], s["reads"]) == ("running", 11, 1, 1)
    assert orch.supervisor.nodes["disk0"].restarts == 0


async def test_write_back_disk_syncs_only_on_flush_and_a_full_queue_answers_eagain(cluster, tmp_path):
    orch = await cluster(topology(tmp_path, disk={"write_back": True, "queue_depth": 2}))
    pattern = os.urandom(4 * BS)
    await poke(orch, GUEST, pattern)
    await issue(orch, "io:os1.disk", "disk_write", [cmd(1, 100, 4)])
    assert (await wait_done(orch, "disk_done", [1]))[1]["status"] == 0
    s = await stats(orch, "disk0")
    assert (s["writes"], s["syncs"]) == (1, 0)
    await issue(orch, "io:os1.disk", "disk_flush", [{"id": 2}])
    assert (await wait_done(orch, "disk_done", [2]))[2] == {"id": 2, "status": 0, "count": 0}
    assert (await stats(orch, "disk0"))["syncs"] == 1
    assert (tmp_path / "disk0.img").read_bytes()[100 * BS:104 * BS] == pattern

    # a burst past the queue depth: every command completes, in order, done or -EAGAIN
    ids = list(range(10, 60))
    await issue(orch, "io:os1.disk", "disk_read", [cmd(i, 100, 4, addr=GUEST + PAGE) for i in ids])
    done = await wait_done(orch, "disk_done", ids)
    assert {b["status"] for b in done.values()} <= {0, -errno.EAGAIN}
    busy = [i for i in ids if done[i]["status"] == -errno.EAGAIN]
    assert all("queue full" in done[i]["reason"] for i in busy)
    s = await stats(orch, "disk0")
    assert (s["busy"], s["reads"], s["queued"]) == (len(busy), len(ids) - len(busy), 0)
    # completions leave in arrival order only for executed commands; -EAGAIN ones leave at once
    executed = [e["body"]["id"] for e in (await events(orch, "disk_done"))["events"]
                if e["body"]["id"] >= 10 and e["body"]["status"] == 0]
    assert executed == sorted(executed)
    assert await peek(orch, GUEST + PAGE, 4 * BS) == pattern


async def test_disk_killed_with_sigkill_loses_no_acknowledged_write(cluster, tmp_path):
    orch = await cluster(topology(tmp_path))
    n = 40
    pattern = os.urandom(n * BS)
    await poke(orch, GUEST, pattern)
    # one block per command, written in reverse order: n separate acknowledged writes
    await issue(orch, "io:os1.disk", "disk_write",
                [cmd(i, 200 + i, 1, addr=GUEST + i * BS) for i in reversed(range(n))])
    done = await wait_done(orch, "disk_done", list(range(n)))
    assert all(b["status"] == 0 for b in done.values())

    epoch = orch.routes.table.epoch

    async def rerouted() -> bool:  # the restarted disk and its OS both at the epoch that names it
        now = orch.routes.table.epoch
        return (now > epoch and (await stats(orch, "disk0"))["epoch"] == now
                and (await stats(orch, "os1"))["epoch"] == now)

    assert orch.supervisor.nodes["disk0"].restarts == 0
    await sigkill_until_restarted(orch, "disk0", rerouted)

    dest = GUEST + 16 * PAGE
    await poke(orch, dest, bytes(n * BS))
    await issue(orch, "io:os1.disk", "disk_read", [cmd(1000, 200, n, addr=dest)])
    assert (await wait_done(orch, "disk_done", [1000]))[1000] == {"id": 1000, "status": 0, "count": n}
    assert await peek(orch, dest, n * BS) == pattern
    assert (tmp_path / "disk0.img").read_bytes()[200 * BS:(200 + n) * BS] == pattern
    log = await events(orch, "disk_done")
    assert log["events"][-1]["fseq"] == 1  # the new process numbers its completions from 1 again
    assert log["flows"]["irq:disk0"] == {"gaps": 0, "dups": 0}


async def test_disk_image_defaults_to_the_run_dir_keeps_its_existing_size_and_takes_4096_byte_blocks(
        cluster, tmp_path):
    run_dir = tmp_path / "rd"
    run_dir.mkdir(mode=0o700)  # a run directory must be private (protocol/auth.py)
    old = os.urandom(64 * PAGE)  # an image made by a host tool: 64 blocks of 4 KiB, not size_mb
    (run_dir / "disk0.img").write_bytes(old)
    orch = await cluster(topology(tmp_path, disk={"block_size": 4096, "partitions": {"os1": [0, 64]}},
                                  image=False), run_dir=run_dir)
    info = (await orch.request("disk0", "disk_info")).body["data"]
    assert (info["blocks"], info["block_size"], info["max_blocks"]) == (64, 4096, 256)
    pattern = os.urandom(PAGE)
    await poke(orch, GUEST, pattern)
    await issue(orch, "io:os1.disk", "disk_read", [cmd(1, 3, 2, addr=GUEST + PAGE)])
    await issue(orch, "io:os1.disk", "disk_write", [cmd(2, 63, 1), cmd(3, 64, 1)])
    done = await wait_done(orch, "disk_done", [1, 2, 3])
    assert [done[i]["status"] for i in (1, 2, 3)] == [0, 0, -errno.EIO]
    assert await peek(orch, GUEST + PAGE, 2 * PAGE) == old[3 * PAGE:5 * PAGE]
    assert (run_dir / "disk0.img").read_bytes() == old[:63 * PAGE] + pattern


async def test_a_disk_whose_partition_ends_past_the_image_refuses_to_start_and_says_why(cluster, tmp_path):
    with pytest.raises(StartError, match=r"disk disk0: option 'partitions': expected \[first_block, count\] "
                                           r"within the device's 2048 blocks, got \{'os1': \[0, 4096\]\}"):
        await cluster(topology(tmp_path, disk={"partitions": {"os1": [0, 4096]}}, restart="never"))


# -- NIC ----------------------------------------------------------------------------


async def host_port(orch, guest: int) -> int:
    return (await stats(orch, "nic0"))["ports"][str(guest)]["host_port"]


async def recv(sock, timeout: float = 10.0) -> tuple[bytes, tuple[str, int]]:
    with trio.fail_after(timeout):
        return await sock.recvfrom(70000)


async def test_udp_datagrams_cross_between_a_host_socket_and_the_guest_port_both_ways(cluster, tmp_path):
    orch = await cluster(topology(tmp_path))
    await issue(orch, "io:os1.nic", "nic_bind", [{"id": 1, "port": 7000}, {"id": 2, "port": 0}])
    done = await wait_done(orch, "nic_done", [1, 2])
    assert done[1] == {"id": 1, "status": 0, "port": 7000}
    ephemeral = done[2]["port"]
    assert done[2]["status"] == 0 and ephemeral >= 49152
    forwarded = await host_port(orch, 7000)
    other = await host_port(orch, ephemeral)
    assert forwarded > 0 and other > 0 and forwarded != other

    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as client:
        await client.bind(("127.0.0.1", 0))
        me = client.getsockname()
        await client.sendto(b"hello guest", ("127.0.0.1", forwarded))
        with trio.fail_after(10):
            while not (rx := (await events(orch, "nic_rx"))["events"]):
                await trio.sleep(0.01)
        # the datagram was written by DMA into the first receive buffer the driver posted
        assert [e["body"] for e in rx] == [{"port": 7000, "src_host": "127.0.0.1", "src_port": me[1],
                                            "length": 11, "buffers": [400 * PAGE], "data": b"hello guest"}]
        assert rx[0]["flow"] == "irq:nic0"

        big = os.urandom(65507)
        await issue(orch, "io:os1.nic", "nic_send", [
            {"id": 3, "src_port": 7000, "dst_host": "127.0.0.1", "dst_port": me[1], "data": b"hello host"},
            {"id": 4, "src_port": ephemeral, "dst_host": "127.0.0.1", "dst_port": me[1], "data": big},
        ])
        assert await recv(client) == (b"hello host", ("127.0.0.1", forwarded))
        assert await recv(client) == (big, ("127.0.0.1", other))
        done = await wait_done(orch, "nic_done", [3, 4])
        assert [done[3]["status"], done[4]["status"]] == [0, 0]

    s = await stats(orch, "nic0")
    assert {k: s["ports"]["7000"][k] for k in ("rx", "tx", "drops", "inflight")} == \
        {"rx": 1, "tx": 1, "drops": 0, "inflight": 0}  # the driver acked its slot
    await issue(orch, "io:os1.nic", "nic_close", [{"id": 5, "port": ephemeral}])
    assert (await wait_done(orch, "nic_done", [5]))[5]["status"] == 0
    assert str(ephemeral) not in (await stats(orch, "nic0"))["ports"]


async def test_nic_refuses_oversize_non_loopback_unbound_and_double_bound_sends_and_keeps_running(cluster, tmp_path):
    orch = await cluster(topology(tmp_path))
    pid = identity((await orch.request("nic0", "ping")).body)

    def send(i: int, host: str, data: bytes = b"x", src: int = 7000) -> dict:
        return {"id": i, "src_port": src, "dst_host": host, "dst_port": 9, "data": data}

    await issue(orch, "io:os1.nic", "nic_bind", [{"id": 1, "port": 7000}, {"id": 2, "port": 7000},
                                                 {"id": 3, "port": 70000}])
    await issue(orch, "io:os1.nic", "nic_send", [
        send(4, "127.0.0.1", os.urandom(65508)),
        send(5, "10.0.0.1"), send(6, "8.8.8.8"), send(7, "localhost"), send(8, "::1"), send(9, "0.0.0.0"),
        send(10, "127.0.0.1", src=7001),
    ])
    await issue(orch, "io:os1.nic", "nic_close", [{"id": 11, "port": 7000}, {"id": 12, "port": 7000}])
    done = await wait_done(orch, "nic_done", list(range(1, 13)))
    status = {i: b["status"] for i, b in done.items()}
    assert status == {1: 0, 2: -errno.EADDRINUSE, 3: -errno.EINVAL, 4: -errno.EMSGSIZE,
                      5: -errno.ENETUNREACH, 6: -errno.ENETUNREACH, 7: -errno.ENETUNREACH,
                      8: -errno.ENETUNREACH, 9: -errno.ENETUNREACH, 10: -errno.EBADF, 11: 0, 12: -errno.EBADF}
    assert "never leaves loopback" in done[5]["reason"]
    assert "65508" in done[4]["reason"]
    # a direct request is answered with its completion
    direct = await orch.request("nic0", "nic_bind", {"id": 13, "port": 7000})
    assert (direct.kind, direct.body) == ("nic_done", {"id": 13, "status": 0, "port": 7000})
    assert identity((await orch.request("nic0", "ping")).body) == pid
    s = await stats(orch, "nic0")
    assert (s["state"], s["refused"], s["oversize"], s["ports"]["7000"]["tx"]) == ("running", 5, 1, 0)
    assert orch.supervisor.nodes["nic0"].restarts == 0


async def test_a_flood_to_a_receiver_that_never_reads_fills_the_ring_then_drops_and_counts(cluster, tmp_path):
    ring = 16
    orch = await cluster(topology(tmp_path, nic={"rx_queue": ring}, driver={"auto_ack": False}))
    await issue(orch, "io:os1.nic", "nic_bind", [{"id": 1, "port": 7000}])
    assert (await wait_done(orch, "nic_done", [1]))[1]["status"] == 0
    target = ("127.0.0.1", await host_port(orch, 7000))

    def counted(total: int):
        return lambda s: s["ports"]["7000"]["rx"] + s["ports"]["7000"]["drops"] == total

    sent = 0
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as client:
        await client.bind(("127.0.0.1", 0))
        # in rounds the NIC confirms, so the host kernel's socket buffer never overflows:
        # every datagram is either delivered or dropped by the NIC's ring, and counted
        for _ in range(40):
            for _ in range(50):
                await client.sendto(b"%d" % sent, target)
                sent += 1
            await wait_stats(orch, "nic0", counted(sent))
        assert sent == 2000
        s = await stats(orch, "nic0")
        assert {k: s["ports"]["7000"][k] for k in ("rx", "drops", "inflight", "queued")} == \
            {"rx": ring, "drops": sent - ring, "inflight": ring, "queued": 0}
        rx = (await events(orch, "nic_rx"))["events"]
        assert [e["body"]["data"] for e in rx] == [b"%d" % i for i in range(ring)]
        assert [e["fseq"] for e in rx] == list(range(2, ring + 2))  # after the bind's nic_done

        # the guest reads them: the slots come back and traffic flows again
        await issue(orch, "io:os1.nic", "nic_rx_ack", [{"port": 7000, "count": ring}])
        await wait_stats(orch, "nic0", lambda s: s["ports"]["7000"]["inflight"] == 0)
        for i in range(5):
            await client.sendto(b"again %d" % i, target)
        s = await wait_stats(orch, "nic0", lambda s: s["ports"]["7000"]["rx"] == ring + 5)
    assert s["ports"]["7000"]["drops"] == sent - ring
    rx = (await events(orch, "nic_rx"))["events"]
    assert [e["body"]["data"] for e in rx[ring:]] == [b"again %d" % i for i in range(5)]
    assert (s["state"], orch.supervisor.nodes["nic0"].restarts) == ("running", 0)
