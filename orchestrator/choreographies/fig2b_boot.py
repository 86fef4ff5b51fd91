"""FIG. 2b: the VMM loaded at boot, before any OS (¶34, ¶37).

With ``[firmware] vmm_at_boot = true`` in the topology, the orchestrator
plays the firmware:

- the VMM's frames (``vmm_frames``) become its own, and each OS instance's
  boot memory map is its ``memory`` range minus the VMM's frames and minus
  the range of every other instance nested inside it (:func:`boot_maps`):
  the first OS never sees the VMM nor the other instances' partitions;
- the route table the cluster starts with is the interposed one
  (:func:`interposed_routes`): traps, timer interrupts and privileged
  operations of every OS started at boot go to the VMM, the VMM's own flows
  to the OS instances and the CPU; devices stay native (FIG. 5 later);
- the VMM is started and initialised first (``vmm_init``), manages each OS
  (``vmm_attach_os``), each OS's memory is an explicit map (no direct
  addressability), then the OS instances boot, each on its map.

It is boot, not a runtime change, so it is not journaled: a crash during it
is followed by a boot that does it again (every step is idempotent on the
memory controller's state). FIG. 7 and FIG. 8 devirtualize it later as they
would a VMM loaded at runtime (FIG. 4).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.choreographies.base import Run
from orchestrator.choreographies.state import VMM
from protocol.constants import DEFAULT_CPU, DEFAULT_TIMER
from protocol.errors import RemoteError

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.cluster import Orchestrator
    from orchestrator.topology import Topology

FIGURE = "fig2b"


def _oses(topology: "Topology", booted_only: bool = False) -> list[str]:
    return [n for n, s in topology.nodes.items() if s.kind == "os" and (s.autostart or not booted_only)]


def boot_maps(topology: "Topology") -> dict[str, list[int]]:
    """Each OS's boot memory map: its range without the VMM's frames and the ranges nested in it."""
    first, count = topology.firmware["vmm_frames"]
    vmm = set(range(first, first + count))
    ranges = {n: (topology.nodes[n].options["memory"][0],
                  topology.nodes[n].options["memory"][0] + topology.nodes[n].options["memory"][1])
              for n in _oses(topology)}
    maps = {}
    for name, (a0, a1) in ranges.items():
        hidden = set(vmm)
        for other, (b0, b1) in ranges.items():
            if other != name and a0 <= b0 and b1 <= a1:
                hidden.update(range(b0, b1))
        maps[name] = [f for f in range(a0, a1) if f not in hidden]
    return maps


def interposed_routes(topology: "Topology") -> dict[str, str]:
    """The topology's routes with every OS started at boot under the VMM (FIG. 3's routes)."""
    routes = dict(topology.routes)
    for name in _oses(topology, booted_only=True):
        opts = topology.nodes[name].options
        cpu, timer = opts.get("cpu", DEFAULT_CPU), opts.get("timer", DEFAULT_TIMER)
        routes.update({f"trap:{cpu}": VMM, f"irq:{timer}": VMM, f"priv:{name}": VMM,
                       f"trap:{VMM}.{name}": name, f"irq:{VMM}.{name}": name, f"priv:{VMM}": cpu})
    return routes


async def _own(run: Run, memctl: str, space: str, frames: list[int]) -> dict[str, int]:
    """Make ``frames`` exactly ``space``'s share of them, whoever had them (zeroed on the way)."""
    owners = await run.call(memctl, "mem_owners")
    free = set(owners.get("free", []))
    moved: dict[str, int] = {}
    try:
        await run.call(memctl, "mem_create_space", {"space": space, "frames": [f for f in frames if f in free]})
        free = set()
        moved["free"] = len([f for f in frames if f in set(owners.get("free", []))])
    except RemoteError as exc:
        if "exists already" not in exc.detail:
            raise
    wanted = set(frames)
    for owner, have in sorted(owners.items()):
        if owner in ("invariants", space) or (owner == "free" and not free):
            continue
        take = [f for f in have if f in wanted]
        if not take:
            continue
        if owner not in ("free", VMM):
            await run.call(memctl, "mem_pin", {"frames": take, "owner": owner})
        await run.call(memctl, "mem_transfer", {"frames": take, "from_owner": owner, "to_owner": space})
        moved[owner] = len(take)
    return moved


async def firmware_boot(orch: "Orchestrator") -> dict[str, Any]:
    """Give the VMM and each OS its memory, initialise the VMM and have it manage the OS
    instances started at boot (run after the non-OS nodes are up, before the OS nodes)."""
    fw = orch.topology.firmware
    run = Run(orch, "firmware", FIGURE)
    host = fw["vmm_host"]
    memctl = run.memctl(host)
    first, count = fw["vmm_frames"]
    vmm_frames = list(range(first, first + count))
    maps = boot_maps(orch.topology)
    moved = {VMM: await _own(run, memctl, VMM, vmm_frames)}
    for name, frames in maps.items():
        moved[name] = await _own(run, memctl, name, frames)
    discovered = await run.call(VMM, "vmm_init", {"frames": vmm_frames, "host": host})
    st = orch.virt
    st.vmm_loaded, st.vmm_host, st.vmm_frames = True, host, vmm_frames
    for name in _oses(orch.topology, booted_only=True):
        if name in st.attached:
            continue
        asid = st.next_asid_base()
        # the CPU runs nobody yet: each OS gets it with its first cpu_resume
        await run.call(VMM, "vmm_attach_os", {"os": name, "asid_base": asid, "current": False})
        await run.call(memctl, "mem_set_map", {"space": name, "map": {str(f): f for f in maps[name]}})
        st.attached[name] = {"asid_base": asid, "cpu": VMM, "memory": VMM}
    orch.boot_maps.update(maps)
    orch.firmware_maps = {n: list(f) for n, f in maps.items()}
    return {"moved": {k: v for k, v in moved.items() if v}, "maps": {n: len(f) for n, f in maps.items()},
            "vmm": discovered}
