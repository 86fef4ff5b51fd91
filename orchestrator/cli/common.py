"""What every CLI command family shares: the app factory (plain help text with
examples), the run-directory option, one-line errors with meaningful exit
codes (0 ok, 1 failed, 2 bad usage), JSON output (errors too with ``--json``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
import typer.core
from rich.console import Console

from orchestrator.client import default_run_dir

# markup off: our output is data (flows such as "irq:[...]", bytes such as
# "[b'bye']", paths), which rich markup would read as tags and swallow
console = Console(markup=False, highlight=False)
if not console.is_terminal:  # piped or logged: don't squeeze (and cut) tables into 80 columns
    console = Console(width=400, markup=False, highlight=False)
err_console = Console(stderr=True, markup=False, highlight=False)

_type_of = typer.core.TyperOption.display_type_rich


def _no_flag_type(self: typer.core.TyperOption, ctx: Any) -> str | None:
    """A flag takes no value: typer would show ``<bool>`` after it in every help screen."""
    return None if self.is_flag else _type_of(self, ctx)


typer.core.TyperOption.display_type_rich = _no_flag_type


def new_app(help: str, examples: list[str] | None = None, **kwargs: Any) -> typer.Typer:
    """A typer app (a command family) with hwemu's settings: plain help text
    (no rich markup, so ``[default: ...]`` and other brackets are shown)."""
    return typer.Typer(help=help, epilog=examples_text(examples) if examples else None, no_args_is_help=True,
                       add_completion=False, rich_markup_mode=None, **kwargs)


def examples_text(lines: list[str]) -> str:
    """An ``--help`` epilog listing example command lines, kept verbatim (click's ``\\b``)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


def command(app: typer.Typer, name: str, examples: list[str], **kwargs: Any):
    """Register a command on ``app`` with its examples in its ``--help``."""
    return app.command(name, epilog=examples_text(examples), **kwargs)


_json_errors = False  # set by --json: errors then go to stdout as one JSON object too


def _json_mode(value: bool) -> bool:
    global _json_errors
    _json_errors = _json_errors or bool(value)
    return value


RunDir = Annotated[
    Optional[Path],
    typer.Option("--run-dir", help="Directory of the cluster's sockets, configs and logs "
                                   "[default: $HWEMU_RUN_DIR or ./.hwemu].", show_default=False),
]
Json = Annotated[bool, typer.Option("--json", callback=_json_mode,
                                    help="Print one JSON object on stdout and nothing else (errors too).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.")]


def run_dir_of(value: Path | None) -> Path:
    return value.resolve() if value is not None else default_run_dir()


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one actionable line on stderr and exit with ``code``; with
    ``--json`` also ``{"ok": false, "error": ..., "exit": code}`` on stdout."""
    if _json_errors:
        emit_json({"ok": False, "error": message, "exit": code})
    err_console.print(f"hwemu: {message}", soft_wrap=True)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
