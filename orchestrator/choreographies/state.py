"""Who controls each resource (DESIGN.md §5): the orchestrator's record of
what the choreographies committed, shown by ``hwemu status`` and checked by
their preconditions (refusals).

It lives in the orchestrator's memory and in ``orchestrator-state.json``
(orchestrator/state.py): an orchestrator restarted after a crash re-attaches
to the running nodes with it (and the journal rolls back what was half
done); when it cannot, it restarts the nodes, and the machine comes back
native.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.control import control
from protocol.constants import DEFAULT_UART, VMM

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.topology import Topology

DEVICES = ("uart", "disk", "nic")  # the devices a VMM can interpose on (FIG. 5)


def device_node(topology, os_name: str, device: str) -> str | None:
    """The device node that ``os_name``'s ``device`` driver reaches (None: it has none).

    The OS's option (``uart``, ``disk``, ``nic``) names it; else the topology's
    native route ``io:<os>.<device>``; for the UART the default ``uart0``. An
    OS with neither has no disk or NIC (it is not handed another's).
    """
    spec = topology.nodes.get(os_name)
    named = spec.options.get(device) if spec is not None else None
    if named:
        return named
    native = topology.routes.get(f"io:{os_name}.{device}")
    if native and native in topology.nodes and topology.nodes[native].kind == device:
        return native
    return DEFAULT_UART if device == "uart" else None


def devices_of(topology, os_name: str) -> list[str]:
    """The virtualizable devices ``os_name`` has in this topology (``--io all``)."""
    return [d for d in DEVICES if device_node(topology, os_name, d) is not None]


@dataclass
class VirtState:
    """The virtualization state of a cluster."""

    vmm_loaded: bool = False
    vmm_host: str | None = None
    vmm_frames: list[int] = field(default_factory=list)
    attached: dict[str, dict[str, Any]] = field(default_factory=dict)
    """os -> {"asid_base", "cpu": "vmm", "memory": "vmm" | "os"} while the VMM manages it."""
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    """"<os>.<device>" -> {"os", "device", "node"} while the device is virtualized."""
    loans: list[dict[str, Any]] = field(default_factory=list)
    """{"id", "from", "to", "runs", "count"} of frames lent and not returned (runs: protocol/frames.py)."""
    auto_devirtualize: bool = False
    """Policy (off by default): devirtualize everything once one OS remains."""

    def loans_of(self, os_name: str) -> list[dict[str, Any]]:
        return [ln for ln in self.loans if os_name in (ln["from"], ln["to"])]

    def next_asid_base(self) -> int:
        used = {a["asid_base"] for a in self.attached.values()}
        base = 0
        while base in used:
            base += 0x10000
        return base

    def view(self, topology: "Topology") -> dict[str, Any]:
        """``{resource: controller}`` for every OS's CPU, memory and devices (its UART,
        disk and NIC where the topology gives it one), plus the VMM and loans."""
        resources: dict[str, str] = {}
        for name, spec in topology.nodes.items():
            if spec.kind != "os":
                continue
            att = self.attached.get(name, {})
            resources[f"{name}.cpu"] = VMM if att.get("cpu") == VMM else name
            resources[f"{name}.memory"] = VMM if att.get("memory") == VMM else name
            for device in devices_of(topology, name):
                node = device_node(topology, name, device)
                resources[f"{name}.{device} ({node})"] = VMM if f"{name}.{device}" in self.devices else name
        return {"vmm": {"loaded": self.vmm_loaded, "host": self.vmm_host, "frames": len(self.vmm_frames)},
                "resources": resources, "loans": list(self.loans),
                "policy": {"auto_devirtualize": self.auto_devirtualize}}


@control("ctl_virt_status")
async def ctl_virt_status(orch) -> dict[str, Any]:
    """Who controls each resource, the VMM, the loans, the policy."""
    return orch.virt.view(orch.topology)


@control("ctl_policy", auto_devirtualize="bool")
async def ctl_policy(orch, auto_devirtualize: bool) -> dict[str, Any]:
    """Set the devirtualization policy: devirtualize everything once one OS remains (off by default)."""
    orch.virt.auto_devirtualize = bool(auto_devirtualize)
    orch.save_state()
    return orch.virt.view(orch.topology)["policy"]
