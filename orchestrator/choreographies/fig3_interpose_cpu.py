"""FIG. 3: interpose the VMM under a running OS, on the CPU and memory.

The memory step (308) is its own option: ``hwemu interpose --cpu`` runs the
figure without it (the OS keeps direct addressability: the VMM gets its
traps, interrupts and privileged operations, and its TLB entries still name
frames directly); ``--memory`` alone, once the CPU is virtualized, runs
step 308 by itself (figure ``fig3_memory``), and before that implies the
CPU: the patent disables direct addressability only after the CPU's traps
and interrupts reach the VMM (302-306 come first), since the VMM must see
the OS's TLB misses to manage a map for it.

Patent steps → steps here:

- (new flows) the VMM's own flows are routed first, so that nothing it sends
  can find no route: ``trap:vmm.<os>`` → os, ``irq:vmm.<os>`` → os,
  ``priv:vmm`` → cpu (route changes with no old receiver; not undone, a
  route nobody sends on is harmless);
- (attach) ``vmm_attach_os`` {os, asid_base, current}: the VMM starts
  managing the OS (asid base 0 for the first, so its TLB entries stay valid);
- 302-306 and 310 disable interrupts → redirect the CPU's trap and
  interrupt routes and the OS's privileged operations to the VMM →
  re-enable: ONE lossless route change ``{trap:cpu0: vmm, irq:timer0: vmm,
  priv:<os>: vmm}``, whose senders (cpu0, timer0, the OS) each drain on
  their own, concurrently: the disabled window is one drain round trip, not
  one per route in a row. Routing the privileged operations in the same
  window as the traps is safe because the VMM manages the OS from
  ``attach`` on and handles its privileged operations under direct
  addressability (what ``--cpu`` alone leaves);
- 308 disable the OS's direct addressability: ``mem_set_map`` with the
  identity made explicit (every frame the OS owns, guest page = frame),
  after the window, as ``--memory`` alone does on a virtualized CPU;
- 312 resume the OS: nothing stopped it (the route change only held its
  traps); recorded as a step so the journal shows the figure whole.

Recovery after an orchestrator crash: rolled back.
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies import base
from orchestrator.choreographies.base import Choreography, ChoreographyError, Ctx, Run, Step, figure
from orchestrator.choreographies.fig5_devices import interpose_device
from orchestrator.choreographies.frames import map_identity, map_owned
from orchestrator.choreographies.state import VMM, devices_of
from orchestrator.control import control, optional

FIGURE = "fig3"
FIGURE_MEMORY = "fig3_memory"


async def reroute_traps(run: Run, os_name: str, to_vmm: bool) -> dict[str, Any]:
    """ONE lossless route change of what makes the VMM interposed on ``os_name``:
    its CPU's traps, its timer's interrupts and its privileged operations, to
    the VMM (``to_vmm``) or back (traps and interrupts to the OS, privileged
    operations to the CPU). The disabled window and the previous receivers
    (``traps_previous``, for :func:`restore_traps`)."""
    cpu, timer = run.cpu_and_timer(os_name)
    native = {f"trap:{cpu}": os_name, f"irq:{timer}": os_name, f"priv:{os_name}": cpu}
    out = await run.reroute({flow: VMM for flow in native} if to_vmm else native)
    return {**run.window(out), "traps_previous": out["previous"]}


async def restore_traps(run: Run, ctx: Ctx) -> None:
    """The undo of :func:`reroute_traps`."""
    await run.restore_routes(ctx.get("traps_previous") or {})


async def _new_flows(run: Run, ctx: Ctx) -> dict[str, Any]:
    os_name = ctx["os"]
    cpu, _ = run.cpu_and_timer(os_name)
    out = await run.reroute({f"trap:{VMM}.{os_name}": os_name, f"irq:{VMM}.{os_name}": os_name,
                             f"priv:{VMM}": cpu})
    # only the VMM was held (nothing of the OS): not the disabled window the budget is for
    return {"vmm_held_ms": out["pause_ms"], "new_flows": sorted(out["previous"])}


async def _attach(run: Run, ctx: Ctx) -> dict[str, Any]:
    os_name = ctx["os"]
    cpu, _ = run.cpu_and_timer(os_name)
    current = run.orch.routes.table.get(f"trap:{cpu}") == os_name
    await run.call(VMM, "vmm_attach_os", {"os": os_name, "asid_base": ctx["asid_base"], "current": current})
    return {"current": current}


async def _detach(run: Run, ctx: Ctx) -> None:
    await run.call(VMM, "vmm_detach_os", {"os": ctx["os"]})


async def _redirect(run: Run, ctx: Ctx) -> dict[str, Any]:
    return await reroute_traps(run, ctx["os"], to_vmm=True)


async def _map(run: Run, ctx: Ctx) -> dict[str, Any]:
    return {"mapped_pages": await map_owned(run, ctx["os"])}


async def _identity(run: Run, ctx: Ctx) -> None:
    await map_identity(run, ctx["os"])


async def _resume(run: Run, ctx: Ctx) -> dict[str, Any]:
    return {"resumed": ctx["os"]}


@figure(FIGURE)
def build(params: dict[str, Any]) -> Choreography:
    memory = params.get("memory", True)
    steps = [
        Step("new_flows", _new_flows, None, "(the VMM's flows to the OS and the CPU)"),
        Step("attach", _attach, _detach, "(the VMM manages the OS)"),
        Step("redirect_traps", _redirect, restore_traps,
             "302-306, 310 disable interrupts, traps, interrupts and privileged operations to the VMM, re-enable"),
        *([Step("disable_direct_addressing", _map, _identity, "308 disable direct addressability")] if memory else []),
        Step("resume_os", _resume, None, "312 resume the OS"),
    ]
    what = "CPU and memory" if memory else "CPU (direct addressability kept)"
    return Choreography(FIGURE, f"FIG. 3 interpose the VMM on the {what} of {params.get('os')}", steps,
                        params=params)


@figure(FIGURE_MEMORY)
def build_memory(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE_MEMORY, f"virtualize the memory of {params.get('os')} (FIG. 3 step 308 alone)", [
        Step("disable_direct_addressing", _map, _identity, "308 disable direct addressability"),
    ], params=params)


async def interpose_cpu(orch, os_name: str, budget_ms: float | None = None, memory: bool = True) -> dict[str, Any]:
    """Run FIG. 3 for ``os_name`` (without step 308 if not ``memory``).

    Raises:
        ChoreographyError: the VMM is not loaded, or manages the OS already.
        ChoreographyFailed: a step failed; rolled back.
    """
    st = orch.virt
    if not st.vmm_loaded:
        raise ChoreographyError("the VMM is not loaded: `hwemu vmm load` first")
    if st.attached.get(os_name, {}).get("cpu") == VMM:
        raise ChoreographyError(f"the CPU of {os_name} is virtualized already")
    Run(orch, "", FIGURE).os_option(os_name, "cpu", None)
    chor = build({"os": os_name, "asid_base": st.next_asid_base(), "memory": bool(memory)})

    def commit(ctx: Ctx) -> None:
        st.attached[os_name] = {"asid_base": ctx["asid_base"], "cpu": VMM, "memory": VMM if memory else os_name}

    chor.on_commit = commit
    return await chor.run(orch, budget_ms)


async def interpose_memory(orch, os_name: str, budget_ms: float | None = None) -> dict[str, Any]:
    """Step 308 alone: the VMM takes over the memory map of ``os_name``, whose CPU it manages already.

    Raises:
        ChoreographyError: the CPU is not virtualized (FIG. 3's order), or the memory is already.
    """
    att = orch.virt.attached.get(os_name)
    if att is None or att.get("cpu") != VMM:
        raise ChoreographyError(f"the CPU of {os_name} is not virtualized: memory is virtualized after the CPU "
                                "(FIG. 3); `hwemu interpose --memory` does both")
    if att.get("memory") == VMM:
        raise ChoreographyError(f"the memory of {os_name} is virtualized already")
    chor = build_memory({"os": os_name})

    def commit(ctx: Ctx) -> None:
        att["memory"] = VMM

    chor.on_commit = commit
    return await chor.run(orch, budget_ms)


@control("ctl_interpose", os=optional("str"), cpu=optional("bool"), memory=optional("bool"),
         io=optional("list", items="str"), budget_ms=optional("float"))
async def ctl_interpose(orch, os: str | None = None, cpu: bool | None = None, memory: bool | None = None,
                        io: list[str] | None = None, budget_ms: float | None = None) -> dict[str, Any]:
    """FIG. 3 on the CPU (``cpu``: without step 308, direct addressability kept), step 308
    (``memory``: implies the CPU if it is not virtualized yet) and FIG. 5 on each device
    asked; nothing asked: everything not done yet (every device the topology gives the OS)."""
    os_name = orch.default_os(os)
    everything = not cpu and not memory and not io
    devices = devices_of(orch.topology, os_name) if everything or "all" in (io or []) else list(io or [])
    skip_done = everything or "all" in (io or [])
    att = orch.virt.attached.get(os_name, {})
    want_mem = bool(memory) or everything
    reports: list[dict[str, Any]] = []
    try:
        if cpu or ((everything or memory) and att.get("cpu") != "vmm"):
            reports.append(await orch.exclusive(interpose_cpu, os_name, budget_ms=budget_ms, memory=want_mem))
        elif memory or (everything and att.get("memory") != "vmm"):
            reports.append(await orch.exclusive(interpose_memory, os_name, budget_ms=budget_ms))
        for dev in devices:
            if not skip_done or f"{os_name}.{dev}" not in orch.virt.devices:
                reports.append(await orch.exclusive(interpose_device, os_name, dev, budget_ms=budget_ms))
    except (ChoreographyError, base.ChoreographyFailed) as exc:
        base.committed_before(exc, reports)
    return {"reports": reports}
