"""The `hwemu` command line: one typer sub-app per command family (STYLE.md, CLI)."""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from orchestrator.cli import (
    chaos,
    check,
    cluster,
    compose,
    console,
    cpu,
    demo,
    fault,
    image,
    keys,
    memory,
    route,
    run,
    trace,
    vmm,
)
from orchestrator.cli import os as os_cli
from orchestrator.cli.common import emit_json, examples_text, fail
from protocol.logs import level_from_env
from protocol.sched import slice_from_env
from protocol.transport import spin_from_env

app = typer.Typer(
    name="hwemu",
    help="A computer whose hardware is a cluster of processes.\n\n"
         "Environment: HWEMU_RUN_DIR (the run directory, default ./.hwemu), HWEMU_LOG (log level of every "
         "process: DEBUG, INFO, WARNING or ERROR; default INFO; logs in <run dir>/logs/), HWEMU_SPIN_US, "
         "HWEMU_SLICE_US (docs/topologies.md). Exit status: 0 success, 1 the operation failed, 2 bad usage.",
    epilog=examples_text([
        "hwemu run compose/native.toml guest/build/samples/hello.elf -- world",
        "hwemu up compose/native.toml --detach && hwemu status && hwemu down",
        "hwemu demo",
    ]),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


def _version() -> str:
    try:
        return version("hwemu")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: run `make setup`)"


def _show_version(value: bool) -> None:
    if value:
        print(f"hwemu {_version()}")
        raise typer.Exit(0)


@app.callback()
def _environment(
    _version_flag: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                                help="Print hwemu's version and exit.")] = False,
) -> None:
    """Check the environment every process of this command reads (see the app's help)."""
    try:
        level_from_env()  # every process of a cluster it starts logs at this level
        spin_from_env()  # every party of this command (and of a cluster it starts) reads it
        slice_from_env()  # every node but the CPU of a cluster it starts
    except ValueError as exc:
        fail(str(exc), code=2)


app.command("up", epilog=examples_text(cluster.UP_EXAMPLES))(cluster.up)
app.command("status", epilog=examples_text(cluster.STATUS_EXAMPLES))(cluster.status)
app.command("down", epilog=examples_text(cluster.DOWN_EXAMPLES))(cluster.down)
app.command("console", epilog=examples_text(console.EXAMPLES))(console.console)
app.command("run", epilog=examples_text(run.EXAMPLES))(run.run)
app.command("demo", epilog=examples_text(demo.EXAMPLES))(demo.demo)
app.command("check", epilog=examples_text(check.EXAMPLES))(check.check)
app.command("chaos", epilog=examples_text(chaos.EXAMPLES))(chaos.chaos)
app.add_typer(route.app, name="route")
app.add_typer(cpu.app, name="cpu")
app.add_typer(vmm.app, name="vmm")
app.add_typer(memory.app, name="memory")
app.add_typer(os_cli.app, name="os")
app.add_typer(trace.app, name="trace")
app.add_typer(fault.app, name="fault")
app.add_typer(image.app, name="image")
app.add_typer(compose.app, name="compose")
app.add_typer(keys.app, name="keys")
app.command("move", epilog=examples_text(keys.MOVE_EXAMPLES))(keys.move)
app.command("interpose", epilog=examples_text(vmm.INTERPOSE_EXAMPLES))(vmm.interpose)
app.command("devirtualize", epilog=examples_text(vmm.DEVIRTUALIZE_EXAMPLES))(vmm.devirtualize)


def main(argv: list[str] | None = None) -> None:
    """The ``hwemu`` command: :data:`app`, whose usage errors (an unknown option, a
    value of the wrong type ...) are also one JSON object on stdout when ``--json``
    is among the options, like every other error of a command given ``--json``."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        code = app(args=args, prog_name="hwemu", standalone_mode=False)
    except typer.Abort:
        print("Aborted!", file=sys.stderr)
        sys.exit(1)
    except typer.TyperException as exc:  # bad usage, found before the command ran
        options = args[:args.index("--")] if "--" in args else args
        if "--json" in options:
            emit_json({"ok": False, "error": exc.format_message(), "exit": exc.exit_code})
        exc.show()
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
