"""Starting and stopping OS instances on a running cluster (DESIGN.md §5: "a
policy can devirtualize automatically as soon as one OS instance remains").

``start_os``: a deferred OS node (``autostart = false``) is launched with its
topology partition. ``stop_os``: an OS leaves the machine; if the VMM manages
it, its devices are given back first (FIG. 6), then the VMM stops managing it
(``vmm_detach_os``; the VMM refuses while that OS has a context on the CPU),
then the node is stopped. The orchestrator then applies the policy.

Recovery after an orchestrator crash: rolled back.
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies import VMM, Choreography, ChoreographyError, Ctx, Run, Step, figure
from orchestrator.choreographies.fig5_devices import give_back_device

FIGURE_STOP = "os_stop"


async def _detach(run: Run, ctx: Ctx) -> dict[str, Any]:
    if not ctx.get("attached"):
        return {"detached": False}
    await run.call(VMM, "vmm_detach_os", {"os": ctx["os"]})
    return {"detached": True}


async def _attach(run: Run, ctx: Ctx) -> None:
    if ctx.get("detached"):
        await run.call(VMM, "vmm_attach_os", {"os": ctx["os"], "asid_base": ctx["asid_base"], "current": False})


async def _stop(run: Run, ctx: Ctx) -> dict[str, Any]:
    return {"stopped": await run.orch.stop_node(ctx["os"])}


async def _start(run: Run, ctx: Ctx) -> None:
    if ctx.get("stopped"):
        await run.orch.start_node(ctx["os"])


@figure(FIGURE_STOP)
def build_stop(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE_STOP, f"stop OS instance {params.get('os')}", [
        Step("vmm_detach_os", _detach, _attach, "(the VMM stops managing it)"),
        Step("stop_node", _stop, _start, "(the OS instance shuts down)"),
    ], params=params)


async def stop_os(orch, os_name: str) -> list[dict[str, Any]]:
    """Stop ``os_name`` (devices back first if virtualized); one report per choreography."""
    st = orch.virt
    Run(orch, "", FIGURE_STOP).os_option(os_name, "cpu", None)
    if orch.virt.loans_of(os_name):
        raise ChoreographyError(f"{os_name} lends or borrows frames: `hwemu memory return` them first")
    reports = []
    for key, dev in sorted(st.devices.items()):
        if dev["os"] == os_name:
            reports.append(await give_back_device(orch, os_name, dev["device"]))
    att = st.attached.get(os_name)
    chor = build_stop({"os": os_name, "attached": att is not None,
                       "asid_base": att["asid_base"] if att else 0})
    chor.on_commit = lambda ctx: st.attached.pop(os_name, None)
    reports.append(await chor.run(orch))
    return reports


async def start_os(orch, os_name: str) -> dict[str, Any]:
    """Launch a deferred (or stopped) OS node with its topology partition."""
    Run(orch, "", FIGURE_STOP).os_option(os_name, "cpu", None)
    started = await orch.start_node(os_name)
    return {"os": os_name, "started": started}
