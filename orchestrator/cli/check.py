"""`hwemu check HISTORY`: re-check a recorded fault-injection history offline (orchestrator/checker.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from orchestrator import checker
from orchestrator.cli.common import Json, console, emit_json, fail

SHOWN = 20  # violations listed in the table (all of them with --json)


def show(rep: checker.Report) -> None:
    """Print the verdict: what was checked, then each violation (the first SHOWN)."""
    console.print("checked: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in rep.checked.items()),
                  highlight=False)
    for note in rep.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    if rep.ok:
        console.print("[bold green]history checked: no violation[/]")
        return
    table = Table(title=f"{len(rep.violations)} violations")
    for col in ("check", "what", "detail", "history line"):
        table.add_column(col)
    for v in rep.violations[:SHOWN]:
        table.add_row(v.check, v.what, v.detail, v.where)
    console.print(table)
    if len(rep.violations) > SHOWN:
        console.print(f"... and {len(rep.violations) - SHOWN} more (--json lists them all)")


EXAMPLES = [
    "hwemu check .hwemu/history",
    "hwemu check .hwemu/history --json",
]


def check(
    history: Annotated[Path, typer.Argument(help="A history file (.jsonl) or a directory of them "
                                                 "(<run dir>/history, or what `hwemu chaos --history` kept).")],
    json_out: Json = False,
) -> None:
    """Check a recorded history: flows exactly once in order, acknowledged writes durable, frames, key-value
    replies linearizable, guest outputs as in a fault-free run. Exit 0 only if every check held."""
    try:
        rep = checker.check(history)
    except checker.HistoryError as exc:
        fail(str(exc), code=2)
    if json_out:
        emit_json(rep.to_json())
    else:
        show(rep)
    if not rep.ok:
        if not json_out:
            fail(f"{len(rep.violations)} violations in {history}; the first: {rep.violations[0].text()}")
        raise typer.Exit(1)
