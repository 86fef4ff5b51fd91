"""`hwemu cpu ...`: placeholder, filled in by the CPU work."""

import typer

app = typer.Typer(no_args_is_help=True)
