"""FIG. 8: remove the VMM — memory back to the OS, devices back, CPU back,
optionally unload, returning the VMM's own frames to its host.

Each part is its own journaled choreography, in the figure's order:

- 802 memory back: direct addressability for each OS (refused while
  borrowed frames are out: they are returned explicitly, ¶39 in reverse);
- 804 devices back: FIG. 6 for each virtualized device;
- 806 CPU back: FIG. 7 (refused while two OS instances run under the VMM);
- 808 unload (optional, this module's own figure ``fig8_unload``): the
  ``vmm`` node stopped, its frames back to the host (``mem_transfer`` vmm →
  host, zeroed) and onto the host's free list (``mod_add``).

Recovery after an orchestrator crash: rolled back (a half-done unload puts
the frames back with the VMM; the node is not restarted).
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies import base
from orchestrator.choreographies.base import Choreography, ChoreographyError, Ctx, Run, Step, figure
from orchestrator.choreographies.fig4_load_vmm import init_vmm
from orchestrator.choreographies.fig5_devices import give_back_device
from orchestrator.choreographies.fig7_devirtualize_cpu import devirtualize_cpu, devirtualize_memory, refuse_memory
from orchestrator.choreographies.frames import add_frames, transfer
from orchestrator.choreographies.state import VMM
from orchestrator.control import control, optional
from protocol.frames import to_runs

FIGURE_UNLOAD = "fig8_unload"


async def _stop(run: Run, ctx: Ctx) -> dict[str, Any]:
    return {"vmm_stopped": await run.orch.stop_node(VMM)}


async def _restart(run: Run, ctx: Ctx) -> None:
    if ctx.get("vmm_stopped"):  # loaded again as FIG. 4 loads it, into the frames it had
        await run.orch.start_node(VMM)
        await init_vmm(run, ctx)


@figure(FIGURE_UNLOAD)
def build_unload(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE_UNLOAD, f"FIG. 8 unload the VMM, its frames back to {params.get('host')}", [
        Step("stop_vmm", _stop, _restart, "808 unload the VMM"),
        transfer("runs", None, "host", "to_host", from_owner=VMM, patent="808 its frames back (zeroed)"),
        add_frames("host", "runs", "add_to_free_list", patent="808 the host's module adds them to its free list"),
    ], params=params)


async def unload(orch) -> dict[str, Any]:
    """Stop the VMM and return its frames; refused while it manages anything."""
    st = orch.virt
    if not st.vmm_loaded:
        raise ChoreographyError("the VMM is not loaded")
    busy = ([f"the CPU of {o}" for o in sorted(st.attached)] + [f"the {d['device']} of {d['os']}"
            for d in st.devices.values()] + [f"{ln['count']} frames {ln['from']}→{ln['to']}" for ln in st.loans])
    if busy:
        raise ChoreographyError(f"cannot unload the VMM while it manages {', '.join(busy)}: "
                                "`hwemu devirtualize` first")
    chor = build_unload({"host": st.vmm_host, "runs": to_runs(st.vmm_frames)})

    def commit(ctx: Ctx) -> None:
        st.vmm_loaded, st.vmm_host, st.vmm_frames = False, None, []

    chor.on_commit = commit
    return await chor.run(orch)


async def remove_vmm(orch, os_name: str | None = None, cpu: bool = True, io: list[str] | None = None,
                     memory: bool = True, unload_vmm: bool = False,
                     reports: list[dict[str, Any]] | None = None,
                     budget_ms: float | None = None) -> list[dict[str, Any]]:
    """Devirtualize in FIG. 8's order what is asked; returns one report per choreography run.

    ``os_name`` limits it to one OS (default: every OS the VMM manages).
    ``cpu`` implies memory and every device (devirtualizing the CPU implies
    the rest). ``io`` lists devices ("uart") or ``["all"]``. Refused, before
    anything is done, while two OS instances run under the VMM (``cpu``) or
    while frames lent to or by an OS whose memory is to be devirtualized are
    out (return them first: ``hwemu memory return``).

    Raises:
        ChoreographyError: a refusal (its message says which and why).
        ChoreographyFailed: a part failed and was rolled back; earlier parts stay done.
    """
    st = orch.virt
    reports = [] if reports is None else reports
    io = list(io or [])
    managed = sorted(set(st.attached) | {d["os"] for d in st.devices.values()})
    targets = [os_name] if os_name else managed
    if cpu and len(st.attached) > 1:
        raise ChoreographyError(f"cannot devirtualize the CPU while {len(st.attached)} OS instances run under the "
                                f"VMM ({', '.join(sorted(st.attached))}): only one OS can own the CPU")
    if cpu or memory:
        for o in targets:
            if st.attached.get(o, {}).get("memory") == VMM:
                refuse_memory(orch, o)
    if memory and not cpu:  # 802 memory back (with the CPU, FIG. 7 does it)
        for o in targets:
            if st.attached.get(o, {}).get("memory") == VMM:
                reports.append(await devirtualize_memory(orch, o))
    for key, dev in sorted(st.devices.items()):  # 804 devices back
        if dev["os"] in targets and (cpu or "all" in io or dev["device"] in io):
            reports.append(await give_back_device(orch, dev["os"], dev["device"], budget_ms=budget_ms))
    if cpu:  # 806 CPU back
        for o in targets:
            if st.attached.get(o, {}).get("cpu") == VMM:
                reports.append(await devirtualize_cpu(orch, o, budget_ms=budget_ms))
    if unload_vmm:  # 808
        reports.append(await unload(orch))
    return reports


@control("ctl_vmm_unload")
async def ctl_vmm_unload(orch) -> dict[str, Any]:
    """FIG. 8 808: stop the VMM and return its frames (refused while it manages anything)."""
    return {"reports": [await orch.exclusive(unload)]}


@control("ctl_devirtualize", os=optional("str"), cpu=optional("bool"), io=optional("list", items="str"),
         memory=optional("bool"), unload=optional("bool"), budget_ms=optional("float"))
async def ctl_devirtualize(orch, os: str | None = None, cpu: bool | None = None, io: list[str] | None = None,
                           memory: bool | None = None, unload: bool | None = None,
                           budget_ms: float | None = None) -> dict[str, Any]:
    """FIG. 8 order: memory, devices, CPU, optionally unload; nothing asked: everything allowed."""
    everything = not cpu and not io and not memory
    if everything:
        cpu = len(orch.virt.attached) <= 1
        io, memory = ["all"], True
    reports: list[dict[str, Any]] = []
    try:
        await orch.exclusive(remove_vmm, os_name=os, cpu=bool(cpu), io=list(io or []), memory=bool(memory),
                             unload_vmm=bool(unload), reports=reports, budget_ms=budget_ms)
    except (ChoreographyError, base.ChoreographyFailed) as exc:
        base.committed_before(exc, reports)
    return {"reports": reports}
