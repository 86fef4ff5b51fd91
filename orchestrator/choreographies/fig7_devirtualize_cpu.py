"""FIG. 7: devirtualize the CPU (and with it the memory) of the last OS.

Patent steps → steps here:

- 702 only one OS is left: refused with a clear message otherwise;
- 704-706 disable interrupts, the VMM's shutdown routine
  (``vmm_cpu_release`` {os}: it reflects whatever trap it holds and leaves
  the CPU running the OS's context with its own asids);
- 712 direct addressability on (``mem_set_identity``) — refused while
  borrowed frames are out (they would stay reachable only through the map);
  before the window, as devirtualizing the memory alone does with the CPU
  still virtualized, so a refusal comes before any route moves;
- 708-710 and 714 interrupts, traps and privileged operations straight to
  the OS and the CPU, re-enable: ONE lossless route change ``{trap:cpu0:
  os, irq:timer0: os, priv:<os>: cpu}``, its senders draining each on its
  own, concurrently (its pause is the window: one drain round trip);
- (detach) ``vmm_detach_os``.

Also here: devirtualizing memory alone (partial devirtualization, the CPU
stays virtualized), the same 712 step with the same refusal.

Recovery after an orchestrator crash: rolled back.
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies.base import Choreography, ChoreographyError, Ctx, Run, Step, figure
from orchestrator.choreographies.fig3_interpose_cpu import reroute_traps, restore_traps
from orchestrator.choreographies.frames import map_identity, map_owned
from orchestrator.choreographies.state import VMM

FIGURE = "fig7"
FIGURE_MEMORY = "fig7_memory"


async def _release(run: Run, ctx: Ctx) -> dict[str, Any]:
    data = await run.call(VMM, "vmm_cpu_release", {"os": ctx["os"]})
    return {"released": data}


async def _reattach(run: Run, ctx: Ctx) -> None:
    # the VMM's shutdown routine is undone by managing the OS afresh
    await run.call(VMM, "vmm_detach_os", {"os": ctx["os"]})
    await run.call(VMM, "vmm_attach_os", {"os": ctx["os"], "asid_base": ctx["asid_base"], "current": True})


async def _traps_back(run: Run, ctx: Ctx) -> dict[str, Any]:
    return await reroute_traps(run, ctx["os"], to_vmm=False)


async def _identity(run: Run, ctx: Ctx) -> dict[str, Any]:
    if ctx.get("memory_was") != VMM:
        return {"identity": "already"}
    await map_identity(run, ctx["os"])
    return {"identity": True}


async def _map_again(run: Run, ctx: Ctx) -> None:
    if ctx.get("identity") is True:
        await map_owned(run, ctx["os"])


async def _detach(run: Run, ctx: Ctx) -> dict[str, Any]:
    await run.call(VMM, "vmm_detach_os", {"os": ctx["os"]})
    return {"detached": ctx["os"]}


async def _attach(run: Run, ctx: Ctx) -> None:
    await run.call(VMM, "vmm_attach_os", {"os": ctx["os"], "asid_base": ctx["asid_base"], "current": True})


@figure(FIGURE)
def build(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE, f"FIG. 7 devirtualize the CPU of {params.get('os')}", [
        Step("vmm_cpu_release", _release, _reattach, "704-706 disable interrupts, VMM shutdown routine"),
        Step("direct_addressing_on", _identity, _map_again, "712 direct addressability on"),
        Step("traps_to_os", _traps_back, restore_traps,
             "708-710, 714 interrupts and traps to the OS, privileged operations to the CPU, re-enable"),
        Step("detach", _detach, _attach, "(the VMM stops managing the OS)"),
    ], params=params)


@figure(FIGURE_MEMORY)
def build_memory(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE_MEMORY, f"devirtualize the memory of {params.get('os')} (FIG. 7 step 712 alone)", [
        Step("direct_addressing_on", _identity, _map_again, "712 direct addressability on"),
    ], params=params)


def refuse_memory(orch, os_name: str) -> None:
    loans = orch.virt.loans_of(os_name)
    if loans:
        desc = ", ".join(f"{ln['count']} frames {ln['from']}→{ln['to']}" for ln in loans)
        raise ChoreographyError(f"cannot devirtualize the memory of {os_name} while borrowed frames are out "
                                f"({desc}): `hwemu memory return` them first")


async def devirtualize_cpu(orch, os_name: str, budget_ms: float | None = None) -> dict[str, Any]:
    """Run FIG. 7 for ``os_name``.

    Raises:
        ChoreographyError: refused (two OS instances under the VMM, borrowed frames out, not virtualized).
        ChoreographyFailed: a step failed; rolled back.
    """
    st = orch.virt
    att = st.attached.get(os_name)
    if att is None or att.get("cpu") != VMM:
        raise ChoreographyError(f"the CPU of {os_name} is not virtualized")
    if len(st.attached) > 1:
        raise ChoreographyError(f"cannot devirtualize the CPU while {len(st.attached)} OS instances run under the "
                                f"VMM ({', '.join(sorted(st.attached))}): only one OS can own the CPU; "
                                "stop the others first")
    if att.get("memory") == VMM:
        refuse_memory(orch, os_name)
    chor = build({"os": os_name, "asid_base": att["asid_base"], "memory_was": att.get("memory")})

    def commit(ctx: Ctx) -> None:
        st.attached.pop(os_name, None)

    chor.on_commit = commit
    return await chor.run(orch, budget_ms)


async def devirtualize_memory(orch, os_name: str) -> dict[str, Any]:
    """Give ``os_name`` direct addressability back, the CPU staying virtualized (partial devirtualization)."""
    st = orch.virt
    att = st.attached.get(os_name)
    if att is None or att.get("memory") != VMM:
        raise ChoreographyError(f"the memory of {os_name} is not virtualized")
    refuse_memory(orch, os_name)
    chor = build_memory({"os": os_name, "memory_was": VMM})

    def commit(ctx: Ctx) -> None:
        att["memory"] = os_name

    chor.on_commit = commit
    return await chor.run(orch)
