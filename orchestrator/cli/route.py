"""`hwemu route show|set`: the route table and the lossless route change."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.cluster import _call, _routes_table
from orchestrator.cli.common import Json, RunDir, command, console, emit_json, new_app, run_dir_of

app = new_app("Show and change message routes.", ["hwemu route show", "hwemu route set data:src sink_b"])


@command(app, "show", ["hwemu route show", "hwemu route show --json"])
def show(run_dir: RunDir = None, json_out: Json = False) -> None:
    """The current route table and its epoch."""
    data = _call(run_dir_of(run_dir), "ctl_route_show")
    if json_out:
        emit_json(data)
    else:
        console.print(_routes_table(data))


@command(app, "set", ["hwemu route set data:src sink_b", "hwemu route set irq:timer0 os2 --json",
                      "hwemu route set data:new sink_a --create"])
def set_(
    flow: Annotated[str, typer.Argument(metavar="FLOW", help="Flow name, e.g. irq:nic0 (see `hwemu route show`).")],
    node: Annotated[str, typer.Argument(metavar="NODE", help="Node that receives the flow from now on.")],
    create: Annotated[bool, typer.Option("--create", help="Add the flow if the table has no route for it "
                                                          "(without: a flow not in the table is refused).")] = False,
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Re-route a flow with pause / drain / switch / resume (nothing lost)."""
    body = {"changes": {flow: node}, **({"create": True} if create else {})}
    data = _call(run_dir_of(run_dir), "ctl_route_set", body)
    if json_out:
        emit_json(data)
    else:
        console.print(f"{flow} → {node}: epoch {data['epoch']}, senders paused {data['pause_ms']:.2f} ms")
