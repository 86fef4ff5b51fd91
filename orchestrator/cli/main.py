"""The `hwemu` command line: one typer sub-app per command family (STYLE.md, CLI)."""

from __future__ import annotations

import typer

from orchestrator.cli import cluster, console, cpu, demo, fault, memory, route, run, trace, vmm
from orchestrator.cli import os as os_cli
from orchestrator.cli.common import fail
from protocol.sched import slice_from_env
from protocol.transport import spin_from_env

app = typer.Typer(
    name="hwemu",
    help="A computer whose hardware is a cluster of processes.",
    no_args_is_help=True,
    add_completion=False,
)


@app.callback()
def _environment() -> None:
    """A computer whose hardware is a cluster of processes."""
    try:
        spin_from_env()  # every party of this command (and of a cluster it starts) reads it
        slice_from_env()  # every node but the CPU of a cluster it starts
    except ValueError as exc:
        fail(str(exc), code=2)


app.command("up")(cluster.up)
app.command("status")(cluster.status)
app.command("down")(cluster.down)
app.command("console")(console.console)
app.command("run")(run.run)
app.command("demo")(demo.demo)
app.add_typer(route.app, name="route")
app.add_typer(cpu.app, name="cpu", help="Run programs on the CPU core.")
app.add_typer(vmm.app, name="vmm")
app.add_typer(memory.app, name="memory")
app.add_typer(os_cli.app, name="os")
app.add_typer(trace.app, name="trace")
app.add_typer(fault.app, name="fault")
app.command("interpose")(vmm.interpose)
app.command("devirtualize")(vmm.devirtualize)


if __name__ == "__main__":  # pragma: no cover
    app()
