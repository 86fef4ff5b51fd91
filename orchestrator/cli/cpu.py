"""`hwemu cpu ...`: run programs on the CPU core outside a cluster.

`hwemu cpu run PROG.elf [--stats FILE.json] [-- ARGS...]` replaces itself
(os.execv) with `python -m nodes.cpu run ...`, so the guest's stdin, stdout
and exit status pass straight through and the orchestrator never imports
the CPU's internals (tests/test_layering.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator.cli.common import command, new_app

app = new_app("Run programs on the CPU core.", ["hwemu cpu run guest/build/samples/hello.elf -- a b"])


@command(
    app, "run",
    ["hwemu cpu run guest/build/samples/hello.elf -- a b",
     "printf 'one two\\n' | hwemu cpu run guest/build/samples/wc.elf",
     "hwemu cpu run guest/build/samples/bench.elf --stats stats.json -- 64"],
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def run(
    ctx: typer.Context,
    program: Annotated[Path, typer.Argument(metavar="PROGRAM", help="Static RV32IM ELF program to run.")],
    stats: Annotated[
        Optional[Path],
        typer.Option("--stats", help="Write instret, seconds and MIPS as JSON to this file."),
    ] = None,
) -> None:
    """Run PROGRAM like qemu-riscv32 would; arguments after `--` go to the guest."""
    command = [sys.executable, "-m", "nodes.cpu", "run", str(program)]
    if stats is not None:
        command += ["--stats", str(stats)]
    command += ["--", *ctx.args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, command)
