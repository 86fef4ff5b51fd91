"""docs/cli.md is what `scripts/gen_cli_docs.py` generates from the CLI today."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_cli_reference_is_up_to_date():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_cli_docs.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_cli_reference_covers_every_command():
    text = (ROOT / "docs" / "cli.md").read_text()
    for command in ("up", "status", "down", "run", "console", "demo", "route set", "cpu run", "vmm load",
                    "interpose", "devirtualize", "memory borrow", "os boot"):
        assert f"## hwemu {command}\n" in text
