"""¶39: borrow memory from one running OS for another, through the VMM; and
give it back.

Patent steps → steps here (borrow):

- the kernel module of OS A allocates and pins N frames (``mod_alloc_pin``
  {n, min: 1} on A; its module pins them with the memory controller): A
  grants what it has above the lending floor it declares (``lend_floor``);
  a grant of fewer is reported (asked, granted, why: ``report["partial"]``),
  a refusal (nothing above the floor) is an error carrying A's reason; the
  module then hands them over (``mod_give_back``);
- the VMM takes them, zeroed (``mem_transfer`` A → vmm);
- the VMM hands them to OS B, zeroed again (``mem_transfer`` vmm → B);
- the kernel module of OS B adds them to its free list (``mod_add``; first,
  if the VMM manages B's memory, B's map is extended to reach them).

Giving back is the reverse: B's module gives them back (they must be free in
B: ``mod_give_back`` refuses frames in use; it pins them), B → vmm → A, A's
module adds them.

Frames travel, and are journaled, as runs [[first, count], ...]
(protocol/frames.py): a loan of 65536 frames is a pair or two per message.

Recovery after an orchestrator crash: rolled back.
"""

from __future__ import annotations

from typing import Any

from orchestrator.choreographies.base import Choreography, ChoreographyError, Ctx, Run, Step, figure
from orchestrator.choreographies.frames import alloc_pin, ctx_runs, give_up, hand_over, runs_of
from orchestrator.control import control, optional
from protocol.frames import count, from_runs

FIGURE = "p39_borrow"
FIGURE_RETURN = "p39_return"


async def _give_back_to(run: Run, ctx: Ctx) -> dict[str, Any]:
    try:
        data = await run.call(ctx["to_os"], "mod_give_back", {"runs": ctx_runs(ctx, "runs")})
    except Exception as exc:
        raise ChoreographyError(f"{ctx['to_os']} cannot give the frames back: {getattr(exc, 'detail', exc)}") from None
    return {"to_os_free": data.get("free")}


async def _readd_to(run: Run, ctx: Ctx) -> None:
    await run.call(ctx["to_os"], "mod_add", {"runs": ctx_runs(ctx, "runs")})


def _adds(os: str) -> str:
    return f"module in OS {os} adds them to its free list (its map reaches them while the VMM manages its memory)"


@figure(FIGURE)
def build(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE, f"¶39 borrow {params.get('n')} frames of {params.get('from_os')} "
                                f"for {params.get('to_os')}", [
        alloc_pin("from_os", "n", patent="module in OS A allocates and pins N frames (up to its floor)",
                  partial=True),
        give_up("from_os", "runs", "module_lets_go", patent="module in OS A hands them over"),
        *hand_over("runs", "from_os", "to_os", ("to_vmm", "to_os"),
                   ("the VMM takes them (zeroed)", "the VMM hands them to OS B (zeroed)", _adds("B")), remap=True),
    ], params=params)


@figure(FIGURE_RETURN)
def build_return(params: dict[str, Any]) -> Choreography:
    return Choreography(FIGURE_RETURN, f"¶39 return {count(runs_of(params.get('runs')))} frames of "
                                       f"{params.get('from_os')} from {params.get('to_os')}", [
        Step("give_back", _give_back_to, _readd_to, "module in OS B gives the frames back"),
        *hand_over("runs", "to_os", "from_os", ("to_vmm", "to_lender"),
                   ("the VMM takes them (zeroed)", "back to OS A (zeroed)", _adds("A")), remap=True),
    ], params=params)


def _check(orch, from_os: str, to_os: str) -> None:
    r = Run(orch, "", FIGURE)
    r.os_option(from_os, "memctl", None)
    r.os_option(to_os, "memctl", None)
    if from_os == to_os:
        raise ChoreographyError(f"an OS cannot borrow from itself ({from_os})")
    if not orch.virt.vmm_loaded:
        raise ChoreographyError("borrowing goes through the VMM, which is not loaded: `hwemu vmm load` first")


async def borrow(orch, from_os: str, to_os: str, n: int, budget_ms: float | None = None) -> dict[str, Any]:
    """Lend ``n`` frames of ``from_os`` to ``to_os`` (¶39).

    Raises:
        ChoreographyError: refused before any step.
        ChoreographyFailed: a step failed (e.g. the lender refused); rolled back.
    """
    _check(orch, from_os, to_os)
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ChoreographyError(f"the number of frames to borrow must be positive, got {n!r}")
    chor = build({"from_os": from_os, "to_os": to_os, "n": n})

    def commit(ctx: Ctx) -> None:
        # runs, not the frames spelled out: the state is saved after every step of every figure
        orch.virt.loans.append({"id": ctx["choreography"], "from": from_os, "to": to_os,
                                "runs": ctx["runs"], "count": count(ctx["runs"])})

    chor.on_commit = commit
    report = await chor.run(orch, budget_ms)
    first = report["steps"][0]["data"]
    report["runs"] = first["runs"]
    report["frames"] = from_runs(first["runs"])
    report["partial"] = first.get("partial")
    return report


async def give_back(orch, from_os: str, to_os: str, loan: str | None = None) -> list[dict[str, Any]]:
    """Return every loan ``from_os`` → ``to_os`` (or the one named ``loan``); one report each."""
    _check(orch, from_os, to_os)
    loans = [ln for ln in orch.virt.loans if ln["from"] == from_os and ln["to"] == to_os
             and (loan is None or ln["id"] == loan)]
    if loans and all(ln.get("boot") for ln in loans):
        raise ChoreographyError(f"the frames of {from_os} in {to_os} are the memory {to_os} booted on: "
                                f"`hwemu os shutdown {to_os}` returns them")
    loans = [ln for ln in loans if not ln.get("boot")]
    if not loans:
        raise ChoreographyError(f"no frames of {from_os} are lent to {to_os}"
                                + (f" under loan {loan}" if loan else ""))
    reports = []
    for ln in loans:
        chor = build_return({"from_os": from_os, "to_os": to_os, "runs": runs_of(ln.get("runs") or ln["frames"])})
        chor.on_commit = lambda ctx, ln=ln: orch.virt.loans.remove(ln)
        reports.append(await chor.run(orch))
    return reports


@control("ctl_memory_borrow", from_os="str", to_os="str", frames="int")
async def ctl_memory_borrow(orch, from_os: str, to_os: str, frames: int) -> dict[str, Any]:
    """¶39: lend ``frames`` frames of ``from_os`` to ``to_os`` through the VMM."""
    return {"reports": [await orch.exclusive(borrow, from_os, to_os, frames)]}


@control("ctl_memory_return", from_os="str", to_os="str", loan=optional("str"))
async def ctl_memory_return(orch, from_os: str, to_os: str, loan: str | None = None) -> dict[str, Any]:
    """¶39 in reverse: every loan ``from_os`` → ``to_os`` (or the one named) comes back."""
    return {"reports": await orch.exclusive(give_back, from_os, to_os, loan)}
