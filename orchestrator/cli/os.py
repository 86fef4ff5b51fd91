"""`hwemu os boot|shutdown OS`: OS instances joining and leaving a running
cluster (¶49). ``boot --frames N`` boots a second instance on the VMM in N
frames borrowed (zeroed, through the VMM) from the running host OS: they are
its boot memory map; ``shutdown`` gives its devices back, detaches it from
the VMM, stops it and returns that memory to where it came from (then the
policy may devirtualize the one OS left). ``boot`` without ``--frames``
starts a deferred node (``autostart = false``) on its own partition.
``start``/``stop`` are the former names, kept hidden."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from orchestrator.cli.cluster import _call
from orchestrator.cli.common import Json, RunDir, command, console, emit_json, new_app, run_dir_of
from orchestrator.cli.vmm import TIMEOUT, Budget, show_reports

app = new_app("Boot and shut down OS instances (¶49).", ["hwemu os boot os2 --frames 64", "hwemu os shutdown os2"])

Name = Annotated[str, typer.Argument(metavar="OS", help="The OS instance (a node of kind os).")]


@command(app, "boot", ["hwemu os boot os2 --frames 64      # on compose/demo.toml, after hwemu interpose",
                        "hwemu os boot os2                  # a deferred node, on its own partition",
                        "hwemu os boot os2 --frames 64 --from os1 --json"])
def boot(
    os_name: Name,
    frames: Annotated[Optional[int], typer.Option(
        "--frames", min=1, help="Boot it on the VMM in N frames borrowed from the host OS (its boot memory map); "
                                "the CPU must be virtualized. Without: its own topology partition.")] = None,
    host: Annotated[Optional[str], typer.Option(
        "--from", help="The running OS that lends the frames (default: the VMM's host).")] = None,
    budget_ms: Budget = None,
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Boot an OS instance that is not running, on borrowed memory (--frames) or its own partition."""
    body = {"os": os_name, **{k: v for k, v in (("frames", frames), ("host", host), ("budget_ms", budget_ms))
                              if v is not None}}
    data = _call(run_dir_of(run_dir), "ctl_os_boot", body, TIMEOUT)
    if json_out:
        emit_json(data)
        return
    if data["reports"]:
        show_reports({"reports": data["reports"]}, False)
    if data.get("frames"):
        f = data["frames"]
        console.print(f"{os_name}: booted on the VMM in {len(f)} frames borrowed from "
                      f"{data['reports'][0]['params']['host']}")
    else:
        console.print(f"{os_name}: {'booted' if data['started'] else 'running already'}")


@command(app, "shutdown", ["hwemu os shutdown os2", "hwemu os shutdown os2 --json"])
def shutdown(os_name: Name, run_dir: RunDir = None, json_out: Json = False) -> None:
    """Shut an OS instance down: devices back, detached from the VMM, stopped, borrowed memory returned."""
    data = _call(run_dir_of(run_dir), "ctl_os_shutdown", {"os": os_name}, TIMEOUT)
    show_reports({"reports": data["reports"] + data.get("policy", [])} if not json_out else data, json_out)


@app.command("start", hidden=True)
def start(os_name: Name, run_dir: RunDir = None, json_out: Json = False) -> None:
    """Former name of `os boot` without --frames."""
    data = _call(run_dir_of(run_dir), "ctl_os_start", {"os": os_name}, TIMEOUT)
    if json_out:
        emit_json(data)
    else:
        console.print(f"{os_name}: {'started' if data['started'] else 'running already'}")


@app.command("stop", hidden=True)
def stop(os_name: Name, run_dir: RunDir = None, json_out: Json = False) -> None:
    """Former name of `os shutdown`."""
    shutdown(os_name, run_dir, json_out)
