"""`hwemu vmm load|unload`, `hwemu interpose`, `hwemu devirtualize`: the
choreographies of DESIGN.md §5 on a running cluster (FIG. 3-8).

Each command is one control request (``ctl_*``); the orchestrator runs the
journaled choreography and answers with every step and its pause (the time
the senders of re-routed flows were held: "interrupts disabled"). A refusal
or a step that failed (and was rolled back) is one line on stderr, exit 1.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from orchestrator.cli.cluster import _call
from orchestrator.cli.common import Json, RunDir, command, console, emit_json, new_app, run_dir_of

app = new_app("Load and unload the VMM at runtime (patent figures 4 and 8).",
              ["hwemu vmm load --host os1 --frames 64", "hwemu vmm unload", "hwemu vmm policy --auto-devirtualize"])

INTERPOSE_EXAMPLES = ["hwemu interpose                 # CPU, memory and every device of the OS on the CPU",
                      "hwemu interpose --cpu --io uart", "hwemu interpose --io disk --io nic --json"]
DEVIRTUALIZE_EXAMPLES = ["hwemu devirtualize --unload     # everything back, then the VMM goes",
                         "hwemu devirtualize --io uart", "hwemu devirtualize --memory --json"]

TIMEOUT = 120.0  # a choreography starts nodes and waits for programs' traps: seconds, not ms

Budget = Annotated[Optional[float], typer.Option(
    "--budget-ms", min=0.0, help="Pause budget: abort and roll back if interrupts stay disabled longer (default 300).")]
Os = Annotated[Optional[str], typer.Option("--os", help="The OS instance (default: the one on the CPU).")]


def show_reports(data: dict[str, Any], json_out: bool) -> None:
    """One table per choreography: its steps, each with its duration and pause."""
    if json_out:
        emit_json(data)
        return
    reports = data.get("reports") or []
    if not reports:
        console.print("nothing to do: nothing asked is virtualized")
    for rep in reports:
        if "steps" not in rep:  # a policy that did not act
            console.print(Text.assemble((f"{rep.get('figure')}:", "yellow"),
                                        f" {rep.get('error') or rep.get('outcome')}"))
            continue
        table = Table(title=f"{rep['title']}  [{rep['outcome']}]  pause {rep['pause_ms']:.2f} ms "
                            f"(budget {rep['budget_ms']:g} ms)  journal id {rep['id']}")
        for col in ("step", "patent", "ms", "pause ms", "result"):
            table.add_column(col, justify="right" if col in ("ms", "pause ms") else "left")
        for s in rep["steps"]:
            result = ", ".join(f"{k}={_short(v)}" for k, v in s["data"].items())
            table.add_row(s["name"], s["patent"], f"{s['ms']:.2f}", f"{s['pause_ms']:.2f}" if s["pause_ms"] else "",
                          result)
        console.print(table)
        if rep.get("partial"):
            part = rep["partial"]
            console.print(Text.assemble(("partial grant:", "yellow"),
                                        f" asked {part['asked']} frames, got {part['granted']}: {part['why']}"))


def _short(v: Any) -> str:
    if isinstance(v, list) and len(v) > 6:
        return f"[{v[0]}..{v[-1]}] ({len(v)})"
    if isinstance(v, dict):
        shown = ", ".join(f"{k}: {_short(x)}" for k, x in list(v.items())[:4])
        return "{" + shown + (", ..." if len(v) > 4 else "") + "}"
    return str(v)


@command(app, "load", ["hwemu vmm load", "hwemu vmm load --host os1 --frames 64 --json"])
def load(
    host: Annotated[str, typer.Option("--host", help="The OS whose kernel module gives the VMM its frames.")] = "os1",
    frames: Annotated[int, typer.Option("--frames", min=1, help="Frames the VMM is loaded into.")] = 64,
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Load the VMM: the host's kernel module pins frames, the VMM takes them (zeroed), starts (figure 4)."""
    show_reports(_call(run_dir_of(run_dir), "ctl_vmm_load", {"host": host, "frames": frames}, TIMEOUT), json_out)


@command(app, "unload", ["hwemu vmm unload", "hwemu devirtualize --unload   # give everything back first"])
def unload(run_dir: RunDir = None, json_out: Json = False) -> None:
    """Stop the VMM and return its frames to the host; refused while it manages anything (figure 8, 808)."""
    show_reports(_call(run_dir_of(run_dir), "ctl_vmm_unload", {}, TIMEOUT), json_out)


def _body(**fields: Any) -> dict[str, Any]:
    """A control body without the options not given (the schema has no nulls)."""
    return {k: v for k, v in fields.items() if v is not None}


def _io(values: list[str] | None) -> list[str] | None:
    return [v for part in values for v in part.split(",") if v] if values else None


def interpose(
    cpu: Annotated[bool, typer.Option("--cpu", help=(
        "Interpose on the CPU (FIG. 3 302-306, 310-312): traps, interrupts and privileged operations to the "
        "VMM; the OS keeps direct addressability of its memory unless --memory is given too."))] = False,
    memory: Annotated[bool, typer.Option("--memory", help=(
        "Virtualize memory (FIG. 3 308: the OS loses direct addressability, the VMM manages its map). Implies "
        "--cpu if the CPU is not virtualized yet: in FIG. 3 memory comes after the CPU's traps reach the VMM."))
    ] = False,
    io: Annotated[Optional[list[str]], typer.Option(
        "--io", help="Interpose on a device (FIG. 5): uart, disk, nic, or all (repeatable).")] = None,
    os_name: Os = None,
    budget_ms: Budget = None,
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Put the loaded VMM under a running OS, while it runs; no option: CPU, memory and every device."""
    body = _body(cpu=cpu or None, memory=memory or None, io=_io(io), os=os_name, budget_ms=budget_ms)
    show_reports(_call(run_dir_of(run_dir), "ctl_interpose", body, TIMEOUT), json_out)


def devirtualize(
    cpu: Annotated[bool, typer.Option("--cpu", help="Give the CPU back (FIG. 7; implies memory and devices).")] = False,
    io: Annotated[Optional[list[str]], typer.Option(
        "--io", help="Give a device back (FIG. 6): uart, disk, nic, or all (repeatable).")] = None,
    memory: Annotated[bool, typer.Option("--memory", help=(
        "Give direct addressability back (FIG. 7 712 alone; the CPU stays virtualized)."))] = False,
    unload_vmm: Annotated[bool, typer.Option("--unload",
                                             help="Then unload the VMM and return its frames (FIG. 8).")] = False,
    os_name: Os = None,
    budget_ms: Budget = None,
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Take the VMM out again (figures 6-8); no option: everything allowed."""
    body = _body(cpu=cpu, io=_io(io), memory=memory, unload=unload_vmm, os=os_name, budget_ms=budget_ms)
    show_reports(_call(run_dir_of(run_dir), "ctl_devirtualize", body, TIMEOUT), json_out)


@command(app, "policy", ["hwemu vmm policy --auto-devirtualize", "hwemu vmm policy --no-auto-devirtualize --json"])
def policy(
    auto: Annotated[bool, typer.Option("--auto-devirtualize/--no-auto-devirtualize",
                                       help="Devirtualize everything as soon as one OS remains.")],
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Set the devirtualization policy (off by default)."""
    data = _call(run_dir_of(run_dir), "ctl_policy", {"auto_devirtualize": auto})
    if json_out:
        emit_json(data)
    else:
        console.print(f"auto-devirtualize {'on' if data['auto_devirtualize'] else 'off'}")
