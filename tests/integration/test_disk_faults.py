"""The disk node's faults (``fault_set`` type ``disk``, docs/faults.md) seen
from a driver, byte for byte: memctl, disk0 and a test driver named ``os1``
(tests/integration/test_disk_nic.py's cluster), faults added through the
orchestrator's fault manager as ``hwemu fault disk`` adds them. The image is
checked with plain file reads."""

from __future__ import annotations

import os

import pytest

from tests.integration.test_disk_nic import BS, GUEST, cmd, issue, peek, poke, stats, topology, wait_done

pytestmark = pytest.mark.integration

EIO = -5


async def test_a_torn_write_leaves_a_durable_prefix_of_whole_sectors_and_completes_eio(cluster, tmp_path):
    orch = await cluster(topology(tmp_path))
    image = tmp_path / "disk0.img"
    await orch.faults.ctl_fault_add({"type": "disk", "node": "disk0", "torn_write": 1.0, "seed": 3})
    for i, block in enumerate((10, 40, 70), start=1):
        pattern = os.urandom(8 * BS)
        await poke(orch, GUEST, pattern)
        await issue(orch, "io:os1.disk", "disk_write", [cmd(i, block, 8)])
        done = (await wait_done(orch, "disk_done", [i]))[i]
        assert (done["status"], done["count"]) == (EIO, 0) and "torn write" in done["reason"], done
        on_disk = image.read_bytes()[block * BS:(block + 8) * BS]
        # whole sectors, in order, from the first: pattern[:k sectors], then the old (zero) bytes
        assert any(on_disk == pattern[:k * BS] + bytes((8 - k) * BS) for k in range(8)), block
    assert (await stats(orch, "disk0"))["faults_injected"]["torn_write"] == 3
    await orch.faults.ctl_fault_clear(None)
    assert (await stats(orch, "disk0"))["faults"] == []
    await issue(orch, "io:os1.disk", "disk_write", [cmd(9, 100, 8)])
    assert (await wait_done(orch, "disk_done", [9]))[9]["status"] == 0  # cleared: writes land whole again
    assert image.read_bytes()[100 * BS:108 * BS] == await peek(orch, GUEST, 8 * BS)


async def test_eio_touches_neither_image_nor_memory_and_a_failed_fsync_is_never_a_success(cluster, tmp_path):
    orch = await cluster(topology(tmp_path))
    image = tmp_path / "disk0.img"
    eio = await orch.faults.ctl_fault_add({"type": "disk", "node": "disk0", "eio": 1.0})
    await poke(orch, GUEST, b"\x55" * (4 * BS))
    await issue(orch, "io:os1.disk", "disk_write", [cmd(1, 5, 4)])
    await issue(orch, "io:os1.disk", "disk_read", [cmd(2, 5, 4, addr=GUEST + 8 * BS)])
    done = await wait_done(orch, "disk_done", [1, 2])
    assert [(d["status"], d["count"]) for d in done.values()] == [(EIO, 0), (EIO, 0)], done
    assert image.read_bytes()[5 * BS:9 * BS] == bytes(4 * BS)
    assert await peek(orch, GUEST + 8 * BS, 4 * BS) == bytes(4 * BS)
    await orch.faults.ctl_fault_clear(eio["id"])

    await orch.faults.ctl_fault_add({"type": "disk", "node": "disk0", "fsync_fail": 1.0})
    syncs = (await stats(orch, "disk0"))["syncs"]
    await issue(orch, "io:os1.disk", "disk_write", [cmd(3, 5, 4)])
    await issue(orch, "io:os1.disk", "disk_flush", [{"id": 4}])
    done = await wait_done(orch, "disk_done", [3, 4])
    assert [d["status"] for d in done.values()] == [EIO, EIO] and "fdatasync failed" in done[4]["reason"], done
    after = await stats(orch, "disk0")
    assert after["syncs"] == syncs and after["writes"] == 0, after
