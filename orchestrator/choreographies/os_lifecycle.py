"""OS instances joining and leaving a running cluster: boot a second OS
instance on the VMM with borrowed memory and shut it down, returning its
memory (¶49); the policy of DESIGN.md §5 ("devirtualize automatically as
soon as one OS instance remains") is applied by the orchestrator after a
shutdown.

``boot_os`` with ``frames`` (figure ``p49_boot``), patent steps → steps here:

- the kernel module of the running host OS allocates and pins N frames
  (all or nothing: an OS needs the memory it boots with), and lets go of
  them; the VMM takes them, zeroed (¶39's first half);
- the new instance's address space is made if it has none (``mem_create_space``)
  and the frames become its own, zeroed again (``mem_transfer`` vmm → os);
- the firmware hands it a boot memory map of exactly those frames (the
  node's ``boot_frames`` option) and it boots (the node is started);
- it runs on the VMM: FIG. 3's steps for it (the VMM manages it, its
  privileged operations go to the VMM, which time-slices the CPU between
  it and the host). Refused unless the CPU is virtualized already: the
  host's CPU traps must reach the VMM before a second OS can share it.

Without ``frames``: the deferred node is started with its own topology
partition (no VMM needed), as before.

``stop_os`` (figure ``os_stop``, or ``p49_shutdown`` for an instance booted
on borrowed frames): its devices back first (FIG. 6), the VMM stops managing
it (``vmm_detach_os``; refused while it has a context on the CPU), the node
is stopped; then, for a booted instance, its frames go back where they came
from: os → vmm → host (zeroed each time), and the host's module adds them
to its free list.

Recovery after an orchestrator crash: rolled back.
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies import fig3_interpose_cpu as fig3
from orchestrator.choreographies.base import Choreography, ChoreographyError, Ctx, Run, Step, figure
from orchestrator.choreographies.fig5_devices import give_back_device
from orchestrator.choreographies.frames import alloc_pin, ctx_runs, give_up, hand_over, runs_of, transfer
from orchestrator.choreographies.state import VMM
from orchestrator.control import control, optional
from protocol.constants import DEFAULT_CPU
from protocol.errors import RemoteError
from protocol.frames import count, from_runs

FIGURE_STOP = "os_stop"
FIGURE_BOOT = "p49_boot"
FIGURE_SHUTDOWN = "p49_shutdown"


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
        if ctx.get("runs") or ctx.get("frames"):
            run.orch.boot_maps[ctx["os"]] = from_runs(ctx_runs(ctx, "runs"))
        await run.orch.start_node(ctx["os"])


async def _space(run: Run, ctx: Ctx) -> dict[str, Any]:
    try:
        await run.call(run.memctl(ctx["os"]), "mem_create_space", {"space": ctx["os"], "frames": []})
    except RemoteError as exc:
        if "exists already" not in exc.detail:
            raise
        return {"space_created": False}
    return {"space_created": True}


async def _drop_space(run: Run, ctx: Ctx) -> None:
    if ctx.get("space_created"):
        await run.call(run.memctl(ctx["os"]), "mem_destroy_space", {"space": ctx["os"]})


async def _boot(run: Run, ctx: Ctx) -> dict[str, Any]:
    run.orch.boot_maps[ctx["os"]] = from_runs(ctx_runs(ctx, "runs"))
    return {"booted": await run.orch.start_node(ctx["os"])}


def _firmware_map_back(run: Run, os_name: str) -> None:
    """The borrowed map is void: the instance's next boot is on the firmware's own map (FIG. 2b), if any."""
    run.orch.boot_maps.pop(os_name, None)
    own = getattr(run.orch, "firmware_maps", {}).get(os_name)
    if own is not None:
        run.orch.boot_maps[os_name] = list(own)


async def _halt(run: Run, ctx: Ctx) -> None:
    if ctx.get("booted"):
        await run.orch.stop_node(ctx["os"])
    _firmware_map_back(run, ctx["os"])


async def _forget_map(run: Run, ctx: Ctx) -> dict[str, Any]:
    _firmware_map_back(run, ctx["os"])
    return {}


@figure(FIGURE_STOP)
def build_stop(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE_STOP, f"stop OS instance {params.get('os')}", [
        Step("vmm_detach_os", _detach, _attach, "(the VMM stops managing it)"),
        Step("stop_node", _stop, _start, "(the OS instance shuts down)"),
    ], params=params)


@figure(FIGURE_BOOT)
def build_boot(params: dict[str, Any]) -> Choreography:
    inter = fig3.build(params).steps
    return Choreography(FIGURE_BOOT, f"¶49 boot {params.get('os')} on the VMM in {params.get('n')} frames "
                                     f"borrowed from {params.get('host')}", [
        alloc_pin("host", "n", patent="module in the host OS allocates and pins N frames"),
        give_up("host", "runs", "module_lets_go", patent="the module hands them over"),
        transfer("runs", "host", None, "to_vmm", to_owner=VMM, patent="the VMM takes them (zeroed)", through_vmm=True),
        Step("os_space", _space, _drop_space, "(the new instance's address space)"),
        transfer("runs", None, "os", "to_os", from_owner=VMM, patent="they become the new instance's (zeroed)",
                 through_vmm=True),
        Step("boot", _boot, _halt, "firmware memory map = the borrowed frames; the instance boots"),
        *inter,
    ], params=params)


@figure(FIGURE_SHUTDOWN)
def build_shutdown(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE_SHUTDOWN, f"¶49 shut down {params.get('os')} and return its "
                                         f"{count(runs_of(params.get('runs')))} frames to {params.get('host')}", [
        Step("vmm_detach_os", _detach, _attach, "(the VMM stops managing it)"),
        Step("stop_node", _stop, _start, "the instance shuts down"),
        Step("forget_boot_map", _forget_map, None, "(its boot memory map is void)"),
        # the instance is shut down: no module of its own lets go of the frames, the step pins them
        *hand_over("runs", "os", "host", ("to_vmm", "to_host"),
                   ("the VMM takes its memory back (zeroed)", "back to the host OS (zeroed)",
                    "the host's module adds them to its free list"), pin=True),
    ], params=params)


def _boot_loan(orch, os_name: str) -> dict[str, Any] | None:
    return next((ln for ln in orch.virt.loans if ln.get("boot") and ln["to"] == os_name), None)


async def stop_os(orch, os_name: str) -> list[dict[str, Any]]:
    """Shut ``os_name`` down (devices back first if virtualized; a booted
    instance's borrowed memory back to its host); one report per choreography."""
    st = orch.virt
    Run(orch, "", FIGURE_STOP).os_option(os_name, "cpu", None)
    boot = _boot_loan(orch, os_name)
    if [ln for ln in orch.virt.loans_of(os_name) if ln is not boot]:
        raise ChoreographyError(f"{os_name} lends or borrows frames: `hwemu memory return` them first")
    reports = []
    for key, dev in sorted(st.devices.items()):
        if dev["os"] == os_name:
            reports.append(await give_back_device(orch, os_name, dev["device"]))
    att = st.attached.get(os_name)
    params = {"os": os_name, "attached": att is not None, "asid_base": att["asid_base"] if att else 0}
    if boot is None:
        chor = build_stop(params)
        chor.on_commit = lambda ctx: st.attached.pop(os_name, None)
    else:
        chor = build_shutdown({**params, "host": boot["from"], "runs": runs_of(boot.get("runs") or boot["frames"])})

        def commit(ctx: Ctx) -> None:
            st.attached.pop(os_name, None)
            st.loans.remove(boot)

        chor.on_commit = commit
    reports.append(await chor.run(orch))
    return reports


async def boot_os(orch, os_name: str, frames: int | None = None, host: str | None = None,
                  budget_ms: float | None = None) -> dict[str, Any]:
    """Boot a deferred (or stopped) OS instance: on ``frames`` frames borrowed
    from ``host`` (default: the VMM's host) through the VMM, running on the
    VMM; or, without ``frames``, with its topology partition.

    Raises:
        ChoreographyError: refused before any step (running already, no VMM, CPU not virtualized ...).
        ChoreographyFailed: a step failed; rolled back.
    """
    run = Run(orch, "", FIGURE_BOOT)
    cpu = run.os_option(os_name, "cpu", DEFAULT_CPU)
    if frames is None:
        started = await orch.start_node(os_name)
        return {"os": os_name, "started": started, "reports": []}
    st = orch.virt
    if isinstance(frames, bool) or not isinstance(frames, int) or frames <= 0:
        raise ChoreographyError(f"the number of frames to boot {os_name} in must be positive, got {frames!r}")
    if os_name in orch.live_nodes():
        raise ChoreographyError(f"{os_name} is running already: `hwemu os shutdown {os_name}` first")
    if not st.vmm_loaded:
        raise ChoreographyError(f"booting {os_name} on borrowed memory goes through the VMM, which is not loaded: "
                                "`hwemu vmm load` first")
    host = host or st.vmm_host
    run.os_option(host, "cpu", None)
    if host == os_name or host not in orch.live_nodes():
        raise ChoreographyError(f"the frames for {os_name} come from a running OS instance, not {host!r}")
    if orch.routes.table.get(f"trap:{cpu}") != VMM:
        raise ChoreographyError(f"{os_name} would share {cpu} with {orch.routes.table.get(f'trap:{cpu}')}, whose "
                                f"CPU is not virtualized: `hwemu interpose --cpu` first")
    chor = build_boot({"os": os_name, "host": host, "n": frames, "asid_base": st.next_asid_base()})

    def commit(ctx: Ctx) -> None:
        st.attached[os_name] = {"asid_base": ctx["asid_base"], "cpu": VMM, "memory": VMM}
        st.loans.append({"id": ctx["choreography"], "from": host, "to": os_name, "runs": ctx["runs"],
                         "count": count(ctx["runs"]), "boot": True})

    chor.on_commit = commit
    report = await chor.run(orch, budget_ms)
    return {"os": os_name, "started": True, "frames": from_runs(report["steps"][0]["data"]["runs"]),
            "reports": [report]}


@control("ctl_os_shutdown", os="str")
async def ctl_os_shutdown(orch, os: str) -> dict[str, Any]:
    """Shut an OS instance down (devices back and detached from the VMM first; memory it
    was booted on returned to its host, ¶49); then the policy."""
    orch.policy_reports = []
    reports = await orch.exclusive(stop_os, os)
    return {"reports": reports, "policy": orch.policy_reports}


@control("ctl_os_boot", os="str", frames=optional("int"), host=optional("str"), budget_ms=optional("float"))
async def ctl_os_boot(orch, os: str, frames: int | None = None, host: str | None = None,
                      budget_ms: float | None = None) -> dict[str, Any]:
    """Boot a deferred (or stopped) OS instance: on ``frames`` frames borrowed from ``host``
    through the VMM (¶49), else with its own partition."""
    return await orch.exclusive(boot_os, os, frames, host, budget_ms=budget_ms)


@control("ctl_os_stop", os="str")
async def ctl_os_stop(orch, os: str) -> dict[str, Any]:
    """The former name of ``ctl_os_shutdown``."""
    return await ctl_os_shutdown(orch, os)


@control("ctl_os_start", os="str")
async def ctl_os_start(orch, os: str) -> dict[str, Any]:
    """The former name of ``ctl_os_boot`` without frames."""
    data = await ctl_os_boot(orch, os)
    return {"os": data["os"], "started": data["started"]}
