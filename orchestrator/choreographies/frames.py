"""Steps shared by the figures that move frames (FIG. 4, ¶39, FIG. 8): the
kernel module's allocate-and-pin, the memory controller's zeroing transfer,
the module's add. Each with its undo.
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies import ChoreographyError, Ctx, Run, Step
from protocol.errors import RemoteError


def alloc_pin(os_key: str, n_key: str, out: str = "frames", patent: str = "", partial: bool = False) -> Step:
    """``mod_alloc_pin`` {n} on the OS named by ``ctx[os_key]``, then ``mem_pin`` so
    the memory controller knows the frames are off the OS's free list.

    With ``partial`` the OS may grant fewer than asked (what it has above the
    lending floor it declares, ¶39): the grant is reported as
    ``<out>_partial`` {asked, granted, why}, never hidden. Without, it is all
    or nothing. A refusal (nothing or too little above the floor) is an error
    carrying the OS's own reason.
    """

    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        os_name, n = ctx[os_key], ctx[n_key]
        body = {"n": n, "min": 1} if partial else {"n": n}
        try:
            data = await run.call(os_name, "mod_alloc_pin", body)
        except RemoteError as exc:
            raise ChoreographyError(f"{os_name} refused to allocate and pin {n} frames: {exc.detail}") from None
        frames = list(data["frames"])
        result: dict[str, Any] = {out: frames, f"{out}_free_left": data.get("free")}
        if not frames:
            raise ChoreographyError(f"{os_name} granted no frame of the {n} asked")
        if len(frames) < n:
            floor = data.get("lend_floor") or 0
            why = (f"{os_name} keeps {floor} frames free (its lending floor)" if floor
                   else f"{os_name} had only {len(frames)} frames free")
            result[f"{out}_partial"] = {"asked": n, "granted": len(frames), "why": why}
        await run.call(run.memctl(os_name), "mem_pin", {"frames": frames, "owner": os_name})
        return result

    async def undo(run: Run, ctx: Ctx) -> None:
        os_name, frames = ctx[os_key], ctx.get(out) or []
        if not frames:
            return
        await run.call(run.memctl(os_name), "mem_unpin", {"frames": frames, "owner": os_name})
        # the module has no "unpin": the frames leave it and come back onto its free list
        await run.call(os_name, "mod_give_back", {"frames": frames})
        await run.call(os_name, "mod_add", {"frames": frames})

    return Step(f"alloc_pin_{os_key}" if os_key != "host" else "alloc_pin", do, undo, patent)


def give_up(os_key: str, frames_key: str, name: str, patent: str = "") -> Step:
    """``mod_give_back`` {frames} on the OS: its module lets go of the pinned
    frames before they change owner (the OS will not count them as its own);
    undone by ``mod_add`` (back on its free list)."""

    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        try:
            data = await run.call(ctx[os_key], "mod_give_back", {"frames": ctx[frames_key]})
        except RemoteError as exc:
            raise ChoreographyError(f"{ctx[os_key]} cannot give up frames {ctx[frames_key]}: {exc.detail}") from None
        return {f"{os_key}_free": data.get("free")}

    async def undo(run: Run, ctx: Ctx) -> None:
        await run.call(ctx[os_key], "mod_add", {"frames": ctx[frames_key]})

    return Step(name, do, undo, patent)


def transfer(frames_key: str, from_key: str | None, to_key: str | None, name: str, patent: str = "",
             from_owner: str | None = None, to_owner: str | None = None) -> Step:
    """``mem_transfer`` of ``ctx[frames_key]`` (zeroed on the way), undone by the reverse transfer."""

    def owners(ctx: Ctx) -> tuple[str, str]:
        return (from_owner or ctx[from_key], to_owner or ctx[to_key])

    async def move(run: Run, ctx: Ctx, src: str, dst: str) -> None:
        memctl = run.memctl(ctx.get("host") or ctx.get("from_os") or ctx.get("os"))
        frames = ctx[frames_key]
        if src != "vmm" and src != "free":
            # an OS gives away only frames it pinned (the memory controller checks it)
            await run.call(memctl, "mem_pin", {"frames": frames, "owner": src})
        await run.call(memctl, "mem_transfer", {"frames": frames, "from_owner": src, "to_owner": dst})

    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        src, dst = owners(ctx)
        await move(run, ctx, src, dst)
        return {}

    async def undo(run: Run, ctx: Ctx) -> None:
        src, dst = owners(ctx)
        await move(run, ctx, dst, src)

    return Step(name, do, undo, patent)


def via_vmm(frames_key: str, src_key: str, dst_key: str, names: tuple[str, str],
            patents: tuple[str, str] = ("the VMM takes them (zeroed)", "the VMM hands them on (zeroed)")) -> list[Step]:
    """The two transfers of frames handed from one OS to another through the VMM
    (zeroed at each change of owner): ``ctx[src_key]`` → vmm → ``ctx[dst_key]``."""
    return [transfer(frames_key, src_key, None, names[0], to_owner="vmm", patent=patents[0]),
            transfer(frames_key, None, dst_key, names[1], from_owner="vmm", patent=patents[1])]


def add_frames(os_key: str, frames_key: str, name: str, patent: str = "") -> Step:
    """``mod_add`` {frames} on the OS: received frames join its free list; undone by ``mod_give_back``."""

    async def do(run: Run, ctx: Ctx) -> dict[str, Any]:
        data = await run.call(ctx[os_key], "mod_add", {"frames": ctx[frames_key]})
        return {f"{os_key}_free": data.get("free")}

    async def undo(run: Run, ctx: Ctx) -> None:
        await run.call(ctx[os_key], "mod_give_back", {"frames": ctx[frames_key]})

    return Step(name, do, undo, patent)


async def remap_if_virtualized(run: Run, os_name: str) -> dict[str, Any]:
    """While the VMM manages ``os_name``'s memory, its explicit map follows what it owns."""
    if run.state.attached.get(os_name, {}).get("memory") != "vmm":
        return {}
    owners = await run.call(run.memctl(os_name), "mem_owners")
    mapping = {str(f): f for f in owners.get(os_name, [])}
    await run.call(run.memctl(os_name), "mem_set_map", {"space": os_name, "map": mapping})
    return {"remapped": os_name}
