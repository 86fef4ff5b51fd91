"""A restarted memory controller answers its first requests ``recovering`` (nodes/memctl/node.py):
its frames and directory are loaded when the node is made, before its inbox serves anything.

Seen in a chaos run (demo seed 36, 1 run in 6): a CPU asked the restarted controller again at once;
the request was dispatched while the node's setup had not opened the controller yet, the handler
failed, and the CPU took the failure for a fault: "segmentation fault (store to a read-only page)"
killed the key-value store.
"""

from __future__ import annotations

import pytest

from nodes.memctl.directory import MemoryController
from nodes.memctl.errors import Recovering
from nodes.memctl.node import MemctlNode
from nodes.runtime import NodeConfig


async def _recall(holder: str, frame: int, mode: str) -> None:
    return None


async def test_a_restarted_controller_is_recovering_before_its_inbox_serves(tmp_path):
    (tmp_path / "mem").mkdir()
    first = MemoryController.open(tmp_path / "mem", 8, _recall)
    await first.create_space("os1", range(0, 4))
    await first.acquire("cpu0", "os1", 0, True)  # cpu0 caches a page: a restart must flush it first
    first.close()  # killed

    cfg = NodeConfig(name="memctl", kind="memctl", endpoint=f"ipc://{tmp_path}/memctl.sock",
                     directory={}, routes={"epoch": 1, "routes": {}}, orchestrator=None,
                     options={"frames": 8, "path": str(tmp_path / "mem")})
    node = MemctlNode(cfg)  # not run: nothing of setup() has happened
    try:
        assert node.mc is not None and node.mc.recovering
        with pytest.raises(Recovering):  # what a CPU asking again at once gets, and retries on
            await node.mc.acquire("cpu0", "os1", 0, True)
    finally:
        node.mc.close()
        node.party.close()
