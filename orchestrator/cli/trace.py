"""`hwemu trace start|stop|save FILE`: a Perfetto trace of a running cluster.

Every node and the orchestrator record their events into a bounded ring
while a trace runs; ``save`` merges the rings into one Chrome JSON trace
(orchestrator/tracing.py) that https://ui.perfetto.dev (or chrome://tracing)
opens. ``hwemu run``, ``hwemu demo`` (and ``hwemu chaos``) take ``--trace
FILE`` and do all three around their work with :func:`begin` and :func:`end`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import trio
import typer
from rich.text import Text

from orchestrator import tracing
from orchestrator.cli.cluster import _call
from orchestrator.cli.common import Json, RunDir, command, console, emit_json, err_console, fail, new_app, run_dir_of
from orchestrator.client import call

SAVE_TIMEOUT = 900.0  # seconds: merging a whole demo's rings is seconds of CPU, minutes on a crowded host

app = new_app("Record a Perfetto (Chrome JSON) trace of the running cluster.",
              ["hwemu trace start", "hwemu trace stop", "hwemu trace save run.json"])

TraceFile = Annotated[Optional[Path], typer.Option(
    "--trace", metavar="FILE", help="Record a trace of the whole run and write it to FILE "
                                    "(Chrome JSON: open it in https://ui.perfetto.dev).")]
Size = Annotated[int, typer.Option("--size", min=1, max=tracing.MAX_RING,
                                   help="Events each node's ring keeps (the oldest go first).")]


async def begin(run_dir: Path, size: int = tracing.DEFAULT_RING) -> dict[str, Any]:
    """Start tracing on the cluster of ``run_dir`` (every node and the orchestrator)."""
    return await call(run_dir, "ctl_trace_start", {"size": size}, 30.0)


async def end(run_dir: Path, path: Path) -> dict[str, Any]:
    """Stop tracing and write the merged trace to ``path``; what was written."""
    await call(run_dir, "ctl_trace_stop", {}, 30.0)
    return await call(run_dir, "ctl_trace_save", {"path": str(Path(path).resolve())}, SAVE_TIMEOUT)


def _saved(data: dict[str, Any]) -> str:
    where = ", ".join([data["path"], *data.get("also", [])])
    line = f"trace of {len(data['nodes'])} parties, {data['events']} events: {where}"
    if data.get("dropped"):
        line += f" (rings overflowed, oldest events lost: {data['dropped']})"
    return line


def said(data: dict[str, Any]) -> None:
    """Tell where the trace went (on stderr: stdout may be a program's output)."""
    err_console.print(Text(f"{_saved(data)}", style="dim"))
    for note in data.get("notes", []):
        err_console.print(Text(f"{note}", style="yellow"))


@command(app, "start", ["hwemu trace start"])
def start(size: Size = tracing.DEFAULT_RING, run_dir: RunDir = None, json_out: Json = False) -> None:
    """Start recording: every node and the orchestrator keep their last SIZE events."""
    data = _call(run_dir_of(run_dir), "ctl_trace_start", {"size": size}, timeout=30.0)
    if json_out:
        emit_json(data)
        return
    console.print(f"tracing {len(data['nodes'])} nodes and the orchestrator, {size} events each")
    for miss in data["missing"]:
        console.print(Text(f"not traced: {miss}", style="yellow"))


@command(app, "stop", ["hwemu trace stop"])
def stop(run_dir: RunDir = None, json_out: Json = False) -> None:
    """Stop recording; the events stay in the rings for `hwemu trace save`."""
    data = _call(run_dir_of(run_dir), "ctl_trace_stop", timeout=30.0)
    if json_out:
        emit_json(data)
        return
    console.print(f"tracing stopped on {len(data['nodes'])} nodes and the orchestrator")


@command(app, "save", ["hwemu trace save run.json"])
def save(
    file: Annotated[Path, typer.Argument(help="Where to write the trace (Chrome JSON).")],
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Merge every ring into one trace at FILE (of the trace stopped last, or of the one running, as it is)."""
    data = _call(run_dir_of(run_dir), "ctl_trace_save", {"path": str(file.resolve())}, timeout=SAVE_TIMEOUT)
    if json_out:
        emit_json(data)
        return
    console.print(_saved(data), highlight=False)
    for note in data["notes"]:
        console.print(Text(f"{note}", style="yellow"))


def start_for(run_dir: Path, size: int = tracing.DEFAULT_RING) -> None:
    """:func:`begin` for a command's ``--trace FILE`` (a refusal is one line, exit 1)."""
    data = _call(run_dir, "ctl_trace_start", {"size": size}, timeout=30.0)
    for miss in data["missing"]:
        err_console.print(Text(f"not traced: {miss}", style="yellow"))


def check_file(path: Path | None) -> None:
    """Refuse (exit 2) a ``--trace FILE`` that cannot be written, before anything runs."""
    if path is not None and not path.resolve().parent.is_dir():
        fail(f"--trace {path}: directory {path.resolve().parent} does not exist", code=2)


def finish(run_dir: Path, *paths: Path | None) -> None:
    """Stop the trace of a ``--trace FILE`` run and write it to each of ``paths``
    (a failure is said, never raised: the run's own result matters more)."""
    paths = tuple(p for p in paths if p is not None)
    if not paths:
        return

    async def stop_and_save() -> dict[str, Any]:
        await call(run_dir, "ctl_trace_stop", {}, 30.0)
        where = [str(Path(p).resolve()) for p in paths]
        return await call(run_dir, "ctl_trace_save", {"path": where[0], "also": where[1:]}, SAVE_TIMEOUT)

    try:
        said(trio.run(stop_and_save))
    except Exception as exc:  # the trace is a by-product of the run
        err_console.print(Text(f"hwemu: trace not written: {exc}", style="yellow"))
