"""What the orchestrator does when the supervisor restarts a crashed node
(docs/recovery.md): the parts of recovery that only the party that saw the
process die can do. Everything else is done by the drivers of the restarted
node, as an OS resets a device after a reset.

- Before a crashed **CPU** runs again: every memory controller forgets the
  copies it cached (``mem_drop_initiator``) and says which frames held the
  only copy of their newest bytes; each OS is told (``peer_restarted`` with
  ``lost``) and stops, with a machine check, the process that was on the CPU
  and every process whose memory was among them. Only then is the new CPU
  started, so no process ever runs again on memory that silently went back
  in time.
- Once any restarted node is **ready**: every OS and the VMM get
  ``peer_restarted`` {node, kind, incarnation}; the drivers of that node
  reset it (timer period, NIC ports and receive buffers, disk commands in
  flight re-issued at once).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import protocol.recovery  # noqa: F401  (registers mem_drop_initiator / peer_restarted)
from orchestrator.supervisor import NodeProc
from protocol.errors import ProtocolError, RemoteError, RequestTimeout

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.cluster import Orchestrator

log = logging.getLogger("hwemu.recovery")

NOTICE_TIMEOUT = 10.0
FAILURES = (RemoteError, RequestTimeout, ProtocolError)


def _running(orch: "Orchestrator", kinds: tuple[str, ...]) -> list[str]:
    return [n for n in orch.live_nodes() if orch.topology.nodes[n].kind in kinds]


async def before_respawn(orch: "Orchestrator", np: NodeProc) -> None:
    """A crashed node is about to be started again (nothing of it runs now)."""
    if np.spec.kind == "cpu":
        await cpu_lost(orch, np.spec.name)


async def cpu_lost(orch: "Orchestrator", cpu: str) -> dict[str, Any]:
    """The machine check of a dead CPU: drop its caches, have each OS stop what it lost.

    Returns:
        {"frames": frames whose newest bytes were lost, "killed": {os: [pid, ...]}}.
    """
    pages: dict[str, list[int]] = {}
    frames: list[int] = []
    for memctl in _running(orch, ("memctl",)):
        try:
            reply = await orch.party.request(memctl, "mem_drop_initiator", {"initiator": cpu},
                                             timeout=NOTICE_TIMEOUT)
        except FAILURES as exc:
            log.error("%s did not drop the caches of the dead %s: %s", memctl, cpu, exc)
            continue
        data = reply.body.get("data") or {}
        frames += data.get("frames", [])
        for space, gpns in (data.get("pages") or {}).items():
            pages.setdefault(space, []).extend(gpns)
    killed: dict[str, Any] = {}
    for os_name in _running(orch, ("os", "vmm")):
        try:
            reply = await orch.party.request(os_name, "peer_restarted",
                                             {"node": cpu, "kind": "cpu", "lost": pages}, timeout=NOTICE_TIMEOUT)
            killed[os_name] = (reply.body.get("data") or {}).get("killed", [])
        except FAILURES as exc:
            log.error("%s was not told that %s died: %s", os_name, cpu, exc)
    log.warning("%s died: %d frames lost their newest bytes; processes stopped: %s", cpu, len(frames), killed)
    orch.recovery_log.append({"node": cpu, "kind": "cpu", "lost_frames": len(frames), "killed": killed})
    return {"frames": frames, "killed": killed}


async def back(orch: "Orchestrator", np: NodeProc) -> None:
    """A restarted node is ready: its drivers (each OS, the VMM) reset it."""
    name = np.spec.name
    body = {"node": name, "kind": np.spec.kind}
    incarnation = orch.incarnations.get(name)
    if incarnation is not None:
        body["incarnation"] = incarnation
    for node in _running(orch, ("os", "vmm")):
        if node == name:
            continue
        try:
            await orch.party.request(node, "peer_restarted", body, timeout=NOTICE_TIMEOUT)
        except FAILURES as exc:
            log.warning("%s did not take the restart of %s: %s", node, name, exc)
