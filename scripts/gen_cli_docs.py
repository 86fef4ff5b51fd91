#!/usr/bin/env python3
"""Write docs/cli.md: every `hwemu` command's --help, generated from the typer app.

    .venv/bin/python scripts/gen_cli_docs.py          # rewrite docs/cli.md
    .venv/bin/python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is out of date

tests/test_cli_docs.py runs the check, so a changed option or help text
fails the suite until this script is run again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import typer.main
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator.cli.main import app  # noqa: E402  (after the path: runnable from a checkout)

OUT = ROOT / "docs" / "cli.md"
HEADER = """# CLI reference

Generated from the command line itself by `scripts/gen_cli_docs.py` (do not
edit by hand; `tests/test_cli_docs.py` fails when this page is out of date).
Every command also answers `--help`.
"""


def commands() -> list[list[str]]:
    """Every visible command and group, depth first, as argv prefixes."""
    found: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        found.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            if not sub.hidden:
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return found


def render() -> str:
    runner = CliRunner()
    parts = [HEADER]
    for path in commands():
        result = runner.invoke(app, [*path, "--help"], prog_name="hwemu", env={"COLUMNS": "100"})
        if result.exit_code != 0:
            raise SystemExit(f"hwemu {' '.join(path)} --help failed: {result.output}")
        parts.append(f"## hwemu {' '.join(path)}".rstrip() + "\n\n```text\n" + result.output.strip() + "\n```\n")
    return "\n".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md differs from what it would be")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT.relative_to(ROOT)} is out of date: run .venv/bin/python scripts/gen_cli_docs.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
