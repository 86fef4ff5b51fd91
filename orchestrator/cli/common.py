"""What every CLI command family shares: the run-directory option, one-line
errors with meaningful exit codes (0 ok, 1 failed, 2 bad usage), JSON output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from orchestrator.client import default_run_dir

console = Console()
if not console.is_terminal:  # piped or logged: don't squeeze tables into 80 columns
    console = Console(width=160)
err_console = Console(stderr=True)

RunDir = Annotated[
    Optional[Path],
    typer.Option("--run-dir", help="Directory of the cluster's sockets, configs and logs "
                                   "[default: $HWEMU_RUN_DIR or ./.hwemu]."),
]
Json = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout and nothing else.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.")]


def run_dir_of(value: Path | None) -> Path:
    return value.resolve() if value is not None else default_run_dir()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one actionable line on stderr and exit with ``code``."""
    # escape: "[body.flows]" or a path with brackets in a message is text, not rich markup
    err_console.print(f"[bold red]hwemu:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True, default=str) + "\n")
