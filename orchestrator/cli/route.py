"""`hwemu route show|set`: the route table and the lossless route change."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.cluster import _call, _routes_table
from orchestrator.cli.common import Json, RunDir, console, emit_json, run_dir_of

app = typer.Typer(no_args_is_help=True, help="Show and change message routes.")


@app.command("show")
def show(run_dir: RunDir = None, json_out: Json = False) -> None:
    """The current route table and its epoch."""
    data = _call(run_dir_of(run_dir), "ctl_route_show")
    if json_out:
        emit_json(data)
    else:
        console.print(_routes_table(data))


@app.command("set")
def set_(
    flow: Annotated[str, typer.Argument(help="Flow name, e.g. irq:nic0.")],
    node: Annotated[str, typer.Argument(help="Node that receives the flow from now on.")],
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Re-route a flow with pause / drain / switch / resume (nothing lost)."""
    data = _call(run_dir_of(run_dir), "ctl_route_set", {"changes": {flow: node}})
    if json_out:
        emit_json(data)
    else:
        console.print(f"{flow} → {node}: epoch {data['epoch']}, senders paused {data['pause_ms']:.2f} ms")
