"""FIG. 4: load the VMM at runtime into frames an OS gives up.

Patent steps, each one step here:

- 402 the host OS's kernel module allocates and pins N frames
  (``mod_alloc_pin`` {n} on the host: its module pins them with the memory controller);
- 402 (cont.) the module hands them over (``mod_give_back``: the host no
  longer counts them as its own);
- 404 the frames become the VMM's, zeroed (``mem_transfer`` host → ``vmm``);
- 406 the VMM image is loaded there: the ``vmm`` node, a deferred node of the
  topology (``autostart = false``), is started;
- 408 the VMM initialises and discovers the resources (``vmm_init`` {frames, host}).

A failing step undoes the earlier ones in reverse: the VMM node stopped, the
frames back to the host (zeroed again) and onto its free list. Recovery after
an orchestrator crash: rolled back (see the package docstring).
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies.base import Choreography, ChoreographyError, Ctx, Run, Step, figure
from orchestrator.choreographies.frames import alloc_pin, ctx_runs, give_up, transfer
from orchestrator.choreographies.state import VMM
from orchestrator.control import control, optional
from protocol.errors import RemoteError
from protocol.frames import from_runs

FIGURE = "fig4"


async def _vmm_space(run: Run, ctx: Ctx) -> dict[str, Any]:
    """The VMM's own address space (identity over the frames it owns), so that it can
    write its image into them; made once, kept across unloads (it owns nothing then)."""
    try:
        await run.call(run.memctl(ctx["host"]), "mem_create_space", {"space": VMM, "frames": []})
    except RemoteError as exc:
        if "exists already" not in exc.detail:
            raise
        return {"vmm_space": "existed"}
    return {"vmm_space": "created"}


async def _start_vmm(run: Run, ctx: Ctx) -> dict[str, Any]:
    return {"vmm_started": await run.orch.start_node(VMM)}


async def _stop_vmm(run: Run, ctx: Ctx) -> None:
    if ctx.get("vmm_started"):
        await run.orch.stop_node(VMM)


async def init_vmm(run: Run, ctx: Ctx) -> dict[str, Any]:
    """408: the VMM learns its frames (``ctx["runs"]``) and its host, and discovers the machine."""
    data = await run.call(VMM, "vmm_init", {"frames": from_runs(ctx_runs(ctx, "runs")), "host": ctx["host"]})
    return {"discovered": data}


@figure(FIGURE)
def build(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE, f"FIG. 4 load the VMM into {params.get('n')} frames of {params.get('host')}", [
        alloc_pin("host", "n", patent="402 kernel module allocates and pins frames"),
        give_up("host", "runs", "module_lets_go", patent="402 the module hands the pinned frames over"),
        transfer("runs", "host", None, "to_vmm", to_owner=VMM, patent="404 frames become the VMM's (zeroed)"),
        Step("vmm_space", _vmm_space, None, "404 the VMM's address space over its frames"),
        Step("start_vmm", _start_vmm, _stop_vmm, "406 VMM image loaded into them"),
        Step("vmm_init", init_vmm, None, "408 VMM initialised (resource discovery)"),
    ], params=params)


async def load_vmm(orch, host: str = "os1", frames: int = 64, budget_ms: float | None = None) -> dict[str, Any]:
    """Run FIG. 4 on a running cluster.

    Raises:
        ChoreographyError: refused before any step (already loaded, no vmm node, not an OS).
        ChoreographyFailed: a step failed; rolled back.
    """
    st = orch.virt
    if st.vmm_loaded:
        raise ChoreographyError(f"the VMM is loaded already (in {len(st.vmm_frames)} frames of {st.vmm_host}); "
                                "`hwemu vmm unload` first")
    if VMM not in orch.topology.nodes:
        raise ChoreographyError(f"topology {orch.topology.source} has no node named {VMM!r} to load")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames <= 0:
        raise ChoreographyError(f"the VMM needs a positive number of frames, got {frames!r}")
    chor = build({"host": host, "n": frames})
    Run(orch, "", FIGURE).os_option(host, "memctl", None)  # host must be an OS: refuse clearly

    def commit(ctx: Ctx) -> None:
        st.vmm_loaded, st.vmm_host, st.vmm_frames = True, host, from_runs(ctx_runs(ctx, "runs"))

    chor.on_commit = commit
    return await chor.run(orch, budget_ms)


@control("ctl_vmm_load", host=optional("str"), frames=optional("int"))
async def ctl_vmm_load(orch, host: str = "os1", frames: int = 64) -> dict[str, Any]:
    """FIG. 4: load the VMM into ``frames`` frames pinned by ``host``."""
    return {"reports": [await orch.exclusive(load_vmm, host, frames)]}
