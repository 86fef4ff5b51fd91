"""Steps shared by the figures that move frames (FIG. 4, ¶39, FIG. 8): the
kernel module's allocate-and-pin, the memory controller's zeroing transfer,
the module's add. Each with its undo.

Frames travel and are journaled as runs ``[[first, count], ...]``
(protocol/frames.py): a context key names a frame set as runs (or, from an
older journal or loan, as a list; :func:`runs_of` takes either).

Pinning happens once, where DESIGN.md §5 ¶39 puts it: the kernel module
allocates *and pins* (``mod_alloc_pin``), and a module giving back frames
that were free in its OS pins those (``mod_give_back``); the memory
controller refuses to move an OS's frames it has not pinned. Only the undos
pin on an OS's behalf (frames handed to it and taken back before its module
ever saw them).
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies.base import ChoreographyError, Ctx, Run, Step
from orchestrator.choreographies.state import VMM
from protocol.errors import RemoteError
from protocol.frames import Runs, check_runs, count, to_runs


def runs_of(value: Any) -> Runs:
    """A frame set as runs: runs as they are, a frame list converted."""
    if value and all(type(f) is int for f in value):
        return to_runs(value)
    return check_runs(value or [], "frames")


def ctx_runs(ctx: Ctx, key: str) -> Runs:
    """The frame set ``ctx[key]`` as runs; a journal written before frames
    travelled as runs named every frame set ``frames``."""
    return runs_of(ctx[key] if key in ctx else ctx.get("frames"))


def alloc_pin(os_key: str, n_key: str, out: str = "runs", patent: str = "", partial: bool = False) -> Step:
    """``mod_alloc_pin`` {n} on the OS named by ``ctx[os_key]``: its module
    allocates the frames and pins them with the memory controller (one
    request: the frames are off its free list and may change owner); their
    runs go to ``ctx[out]``.

    With ``partial`` the OS may grant fewer than asked (what it has above the
    lending floor it declares, ¶39): the grant is reported as ``partial``
    {asked, granted, why}, never hidden. Without, it is all or nothing. A
    refusal (nothing or too little above the floor) is an error carrying the
    OS's own reason.
    """

    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        os_name, n = ctx[os_key], ctx[n_key]
        body = {"n": n, "min": 1} if partial else {"n": n}
        try:
            data = await run.call(os_name, "mod_alloc_pin", body)
        except RemoteError as exc:
            raise ChoreographyError(f"{os_name} refused to allocate and pin {n} frames: {exc.detail}") from None
        runs = check_runs(data["runs"], f"{os_name} mod_alloc_pin reply runs")
        granted = count(runs)
        result: dict[str, Any] = {out: runs, "free_left": data.get("free")}
        if not granted:
            raise ChoreographyError(f"{os_name} granted no frame of the {n} asked")
        if granted < n:
            floor = data.get("lend_floor") or 0
            why = (f"{os_name} keeps {floor} frames free (its lending floor)" if floor
                   else f"{os_name} had only {granted} frames free")
            result["partial"] = {"asked": n, "granted": granted, "why": why}
        return result

    async def undo(run: Run, ctx: Ctx) -> None:
        os_name, runs = ctx[os_key], ctx_runs(ctx, out)
        if not runs:
            return
        await run.call(run.memctl(os_name), "mem_unpin", {"runs": runs, "owner": os_name})
        # the module has no "unpin": the frames leave it and come back onto its free list
        await run.call(os_name, "mod_give_back", {"runs": runs})
        await run.call(os_name, "mod_add", {"runs": runs})

    return Step(f"alloc_pin_{os_key}" if os_key != "host" else "alloc_pin", do, undo, patent)


def give_up(os_key: str, frames_key: str, name: str, patent: str = "") -> Step:
    """``mod_give_back`` {runs} on the OS: its module lets go of the frames
    before they change owner (the OS will not count them as its own; those
    that were free there it pins); undone by ``mod_add`` (back on its free list)."""

    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        try:
            data = await run.call(ctx[os_key], "mod_give_back", {"runs": ctx_runs(ctx, frames_key)})
        except RemoteError as exc:
            raise ChoreographyError(f"{ctx[os_key]} cannot give up frames {ctx_runs(ctx, frames_key)} "
                                    f"([first, count] runs): {exc.detail}") from None
        return {f"{os_key}_free": data.get("free")}

    async def undo(run: Run, ctx: Ctx) -> None:
        await run.call(ctx[os_key], "mod_add", {"runs": ctx_runs(ctx, frames_key)})

    return Step(name, do, undo, patent)


def transfer(frames_key: str, from_key: str | None, to_key: str | None, name: str, patent: str = "",
             from_owner: str | None = None, to_owner: str | None = None, pin: bool = False,
             through_vmm: bool = False) -> Step:
    """``mem_transfer`` of ``ctx[frames_key]`` (zeroed on the way), undone by the reverse transfer.

    ``through_vmm``: frames lent from one OS to another (¶39, ¶49) are taken
    and handed on by the VMM itself (``vmm_frames``), which asks the memory
    controller; the VMM's own image frames (FIG. 4, FIG. 8) are placed by the
    loader (the orchestrator) directly.

    Frames leaving an OS were pinned by its module (``mod_alloc_pin`` or
    ``mod_give_back``); with ``pin`` the source OS is shut down (it has no
    module running to let go of them) and the step pins them for it. The
    undo pins them for the OS they go back from, which received them in this
    very choreography and may not have.
    """

    def owners(ctx: Ctx) -> tuple[str, str]:
        return (from_owner or ctx[from_key], to_owner or ctx[to_key])

    def memctl(run: Run, ctx: Ctx) -> str:
        return run.memctl(ctx.get("host") or ctx.get("from_os") or ctx.get("os"))

    async def move(run: Run, ctx: Ctx, src: str, dst: str, runs: list) -> dict[str, Any]:
        if through_vmm and VMM in (src, dst):  # the VMM takes them or hands them on itself
            return await run.call(VMM, "vmm_frames", {"runs": runs, "from_owner": src, "to_owner": dst,
                                                      "memctl": memctl(run, ctx)}, timeout=60.0)
        await run.call(memctl(run, ctx), "mem_transfer", {"runs": runs, "from_owner": src, "to_owner": dst})
        return {}

    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        src, dst = owners(ctx)
        runs = ctx_runs(ctx, frames_key)
        if pin:
            await run.call(memctl(run, ctx), "mem_pin", {"runs": runs, "owner": src})
        out = await move(run, ctx, src, dst, runs)
        return {"vmm_holds": out["held"]} if "held" in out else {}

    async def undo(run: Run, ctx: Ctx) -> None:
        src, dst = owners(ctx)
        runs = ctx_runs(ctx, frames_key)
        if dst != VMM and dst != "free":
            await run.call(memctl(run, ctx), "mem_pin", {"runs": runs, "owner": dst})
        await move(run, ctx, dst, src, runs)

    return Step(name, do, undo, patent)


def via_vmm(frames_key: str, src_key: str, dst_key: str, names: tuple[str, str],
            patents: tuple[str, str] = ("the VMM takes them (zeroed)", "the VMM hands them on (zeroed)"),
            pin: bool = False) -> list[Step]:
    """The two transfers of frames handed from one OS to another through the VMM
    (zeroed at each change of owner): ``ctx[src_key]`` → vmm → ``ctx[dst_key]``
    (``pin``: see :func:`transfer`)."""
    return [transfer(frames_key, src_key, None, names[0], to_owner=VMM, patent=patents[0], pin=pin, through_vmm=True),
            transfer(frames_key, None, dst_key, names[1], from_owner=VMM, patent=patents[1], through_vmm=True)]


def hand_over(frames_key: str, src_key: str, dst_key: str, names: tuple[str, str], patents: tuple[str, str, str],
              remap: bool = False, pin: bool = False) -> list[Step]:
    """Frames handed from one OS to another through the VMM (:func:`via_vmm`, zeroed at each
    change of owner), then added to the free list of the OS that receives them
    (:func:`add_frames`, step ``add_to_free_list``): ``patents`` are the three steps'."""
    return [*via_vmm(frames_key, src_key, dst_key, names, patents[:2], pin=pin),
            add_frames(dst_key, frames_key, "add_to_free_list", patent=patents[2], remap=remap)]


def add_frames(os_key: str, frames_key: str, name: str, patent: str = "", remap: bool = False) -> Step:
    """``mod_add`` {runs} on the OS: received frames join its free list; undone by ``mod_give_back``.

    With ``remap``, first (and again after the undo) the OS's map follows
    what it owns while the VMM manages its memory (:func:`remap_if_virtualized`):
    one step, not two journaled ones, since the map only matters once the
    module hands the frames out.
    """

    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        out = await remap_if_virtualized(run, ctx[os_key]) if remap else {}
        data = await run.call(ctx[os_key], "mod_add", {"runs": ctx_runs(ctx, frames_key)})
        return {**out, f"{os_key}_free": data.get("free")}

    async def undo(run: Run, ctx: Ctx) -> None:
        await run.call(ctx[os_key], "mod_give_back", {"runs": ctx_runs(ctx, frames_key)})
        if remap:
            await remap_if_virtualized(run, ctx[os_key])

    return Step(name, do, undo, patent)


async def remap_if_virtualized(run: Run, os_name: str) -> dict[str, Any]:
    """While the VMM manages ``os_name``'s memory, its explicit map follows what it owns."""
    if run.state.attached.get(os_name, {}).get("memory") != "vmm":
        return {}
    await map_owned(run, os_name)
    return {"remapped": os_name}


async def map_owned(run: Run, os_name: str) -> int:
    """Direct addressability off (FIG. 3 308): ``os_name``'s explicit map is the
    identity made explicit over every frame it owns (guest page = frame); the
    number of pages mapped."""
    owners = await run.call(run.memctl(os_name), "mem_owners")
    frames = owners.get(os_name, [])
    await run.call(run.memctl(os_name), "mem_set_map", {"space": os_name, "map": {str(f): f for f in frames}})
    return len(frames)


async def map_identity(run: Run, os_name: str) -> None:
    """Direct addressability on (FIG. 7 712): ``os_name`` addresses its frames directly again."""
    await run.call(run.memctl(os_name), "mem_set_identity", {"space": os_name})
