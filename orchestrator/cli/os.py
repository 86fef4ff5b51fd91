"""`hwemu os start|stop OS`: OS instances joining and leaving a running
cluster (a deferred OS node, ``autostart = false``, is started here; a stop
gives its devices back and detaches it from the VMM first, then the policy
may devirtualize the one OS left)."""

from __future__ import annotations

from typing import Annotated

import typer

from orchestrator.cli.cluster import _call
from orchestrator.cli.common import Json, RunDir, console, emit_json, run_dir_of
from orchestrator.cli.vmm import TIMEOUT, show_reports

app = typer.Typer(no_args_is_help=True, help="Start and stop OS instances.")

Name = Annotated[str, typer.Argument(help="The OS instance (a node of kind os).")]


@app.command("start")
def start(os_name: Name, run_dir: RunDir = None, json_out: Json = False) -> None:
    """Launch an OS node that is not running (e.g. one with autostart = false)."""
    data = _call(run_dir_of(run_dir), "ctl_os_start", {"os": os_name}, TIMEOUT)
    if json_out:
        emit_json(data)
    else:
        console.print(f"{os_name}: {'started' if data['started'] else 'running already'}")


@app.command("stop")
def stop(os_name: Name, run_dir: RunDir = None, json_out: Json = False) -> None:
    """Stop an OS instance (its devices back and the VMM detached first)."""
    data = _call(run_dir_of(run_dir), "ctl_os_stop", {"os": os_name}, TIMEOUT)
    show_reports({"reports": data["reports"] + data.get("policy", [])} if not json_out else data, json_out)
