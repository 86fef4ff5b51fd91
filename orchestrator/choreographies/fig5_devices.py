"""FIG. 5 (interpose on a device) and FIG. 6 (give a device back), for the
devices an OS drives through a dual-mode driver: the UART (one per OS), the
disk (shared by partition) and the NIC (shared by port; nodes/vmm/io.py).

FIG. 5, patent steps → steps here:

- (new flows) ``io:vmm.<device node>`` → the device node (the VMM's native
  driver) and ``irq:vmm.<os>`` → os (virtual interrupts);
- 502-504 disable interrupts, the dual-mode driver to virtual: ``os_driver_mode``
  {device, mode: virtual} on the OS (it drains its queue — for the disk the
  whole transfer in progress — and exports its state: partition, bound ports,
  commands in flight);
- (the VMM takes the device) ``vmm_device`` {device, node, mode: virtual, os,
  state}: the VMM learns the OS's partition / ports from the device itself;
- 506-508 the device's interrupts (and the OS's commands) to the VMM,
  re-enable: ONE lossless route change ``{io:<os>.<device>: vmm, irq:<node>: vmm}``.

FIG. 6 is the reverse: routes back to the device and the OS (one change),
``vmm_device`` native, the driver to native (it imports the state).

A shared device's interrupt has one receiver: natively the OS the topology
routes ``irq:<node>`` to (its *native owner*). So FIG. 5 for another OS is
refused while the native owner still drives the node itself, and FIG. 6 of
the native owner is refused while another OS still reaches the node through
the VMM. An OS that has the device only through the VMM (no native route)
keeps its route to the VMM on FIG. 6: the VMM stops serving it, and its
driver's commands are then refused (``-ENODEV``) — as for an OS shut down.

Recovery after an orchestrator crash: rolled back.
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies.base import Choreography, ChoreographyError, Ctx, Run, Step, figure
from orchestrator.choreographies.state import DEVICES, VMM, device_node, devices_of

FIGURE_IN = "fig5"
FIGURE_OUT = "fig6"
SHARED = ("disk", "nic")


def native_owner(topology, node: str) -> str | None:
    """The OS the topology routes ``irq:<node>`` to: the one that drives it natively."""
    return topology.routes.get(f"irq:{node}")


def _node(run: Run, ctx: Ctx) -> str:
    node = device_node(run.orch.topology, ctx["os"], ctx["device"])
    if node is None:
        raise ChoreographyError(f"{ctx['os']} has no {ctx['device']}")
    return node


async def _new_flows(run: Run, ctx: Ctx) -> dict[str, Any]:
    # io:vmm.<device node> (one UART per OS: the VMM drives each on its own flow)
    out = await run.reroute({f"io:{VMM}.{_node(run, ctx)}": _node(run, ctx), f"irq:{VMM}.{ctx['os']}": ctx["os"]})
    return {"new_flows": sorted(out["previous"]), "vmm_held_ms": out["pause_ms"]}


def _driver(mode: str):
    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        # a drain waits for the transfer in progress (a 1 MiB pwrite is 256 disk commands)
        state = await run.call(ctx["os"], "os_driver_mode", {"device": ctx["device"], "mode": mode}, timeout=60.0)
        return {f"driver_{mode}": state}
    return do


def _vmm_device(mode: str):
    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        body = {"device": ctx["device"], "node": _node(run, ctx), "mode": mode, "os": ctx["os"]}
        if mode == "virtual" and isinstance(ctx.get("driver_virtual"), dict):
            body["state"] = ctx["driver_virtual"]
        data = await run.call(VMM, "vmm_device", body)
        return {f"vmm_{mode}": data}
    return do


def _routes(to_vmm: bool):
    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        os_name, node = ctx["os"], _node(run, ctx)
        io, irq = f"io:{os_name}.{ctx['device']}", f"irq:{node}"
        if to_vmm:
            changes = {io: VMM, irq: VMM}
        elif ctx["device"] in SHARED and native_owner(run.orch.topology, node) != os_name:
            changes = {}  # it never had the device natively: nothing to route back to (module docstring)
        else:
            changes = {io: node, irq: os_name}
        out = await run.reroute(changes)
        return {**run.window(out), "routes_previous": out["previous"]}
    return do


async def _routes_undo(run: Run, ctx: Ctx) -> None:
    await run.restore_routes(ctx.get("routes_previous") or {})


def _undo_with(fn):
    async def undo(run: Run, ctx: Ctx) -> None:
        await fn(run, ctx)
    return undo


@figure(FIGURE_IN)
def build_in(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE_IN, f"FIG. 5 interpose the VMM on the {params.get('device')} of {params.get('os')}", [
        Step("new_flows", _new_flows, None, "(the VMM's flows to the device and the OS)"),
        Step("driver_virtual", _driver("virtual"), _undo_with(_driver("native")),
             "502-504 disable interrupts, driver to virtual (drain, export state)"),
        Step("vmm_takes_device", _vmm_device("virtual"), _undo_with(_vmm_device("native")),
             "(the VMM's native driver takes the device)"),
        Step("redirect", _routes(True), _routes_undo, "506-508 device interrupts to the VMM, re-enable"),
    ], params=params)


@figure(FIGURE_OUT)
def build_out(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE_OUT, f"FIG. 6 give the {params.get('device')} back to {params.get('os')}", [
        Step("redirect_back", _routes(False), _routes_undo, "602-606 disable interrupts, interrupts to the OS"),
        Step("vmm_releases_device", _vmm_device("native"), _undo_with(_vmm_device("virtual")),
             "(the VMM's native driver lets go)"),
        Step("driver_native", _driver("native"), _undo_with(_driver("virtual")),
             "604 driver to native (import state), re-enable"),
    ], params=params)


def _check(orch, os_name: str, device: str) -> str:
    if device not in DEVICES:
        raise ChoreographyError(f"device {device!r} cannot be virtualized (devices: {', '.join(DEVICES)})")
    Run(orch, "", FIGURE_IN).os_option(os_name, device, None)
    node = device_node(orch.topology, os_name, device)
    if node is None:
        raise ChoreographyError(f"{os_name} has no {device} in this topology (devices: "
                                f"{', '.join(devices_of(orch.topology, os_name)) or 'none'})")
    if node not in orch.topology.nodes:
        raise ChoreographyError(f"the {device} of {os_name} is {node!r}, which is not a node of this topology")
    return node


def _sharers(orch, os_name: str, node: str) -> list[str]:
    """The other OSes that reach ``node`` through the VMM now."""
    return sorted(d["os"] for d in orch.virt.devices.values() if d["node"] == node and d["os"] != os_name)


async def interpose_device(orch, os_name: str, device: str = "uart", budget_ms: float | None = None) -> dict:
    """Run FIG. 5 for ``device`` of ``os_name``."""
    st = orch.virt
    node = _check(orch, os_name, device)
    if not st.vmm_loaded:
        raise ChoreographyError("the VMM is not loaded: `hwemu vmm load` first")
    key = f"{os_name}.{device}"
    if key in st.devices:
        raise ChoreographyError(f"the {device} of {os_name} is virtualized already")
    owner = native_owner(orch.topology, node)
    if device in SHARED and owner not in (None, os_name) and orch.routes.table.get(f"irq:{node}") == owner:
        raise ChoreographyError(f"{node}'s interrupts go to {owner}, which drives it natively: interpose the "
                                f"{device} of {owner} first")
    chor = build_in({"os": os_name, "device": device})

    def commit(ctx: Ctx) -> None:
        st.devices[key] = {"os": os_name, "device": device, "node": node}

    chor.on_commit = commit
    return await chor.run(orch, budget_ms)


async def give_back_device(orch, os_name: str, device: str = "uart", budget_ms: float | None = None) -> dict:
    """Run FIG. 6 for ``device`` of ``os_name``."""
    st = orch.virt
    node = _check(orch, os_name, device)
    key = f"{os_name}.{device}"
    if key not in st.devices:
        raise ChoreographyError(f"the {device} of {os_name} is not virtualized")
    others = _sharers(orch, os_name, node)
    if device in SHARED and native_owner(orch.topology, node) == os_name and others:
        raise ChoreographyError(f"{', '.join(others)} still reach {node} through the VMM, which needs its "
                                f"interrupts: give their {device} back first")
    chor = build_out({"os": os_name, "device": device})
    chor.on_commit = lambda ctx: st.devices.pop(key, None)
    return await chor.run(orch, budget_ms)
