"""The pytest plugin as a user has it: docs/examples/test_my_scenario.py (the
example docs/testing.md tells users to copy) run by pytest from a directory
outside the repository, against the installed ``hwemu`` package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "docs" / "examples"


def test_the_documented_example_passes_from_outside_the_repository(guest_build, tmp_path):
    mine = tmp_path / "my-project"
    mine.mkdir()
    for name in ("test_my_scenario.py", "pytest.ini"):
        shutil.copy(EXAMPLE / name, mine / name)
    assert REPO not in mine.resolve().parents
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HWEMU_GUEST"] = str(guest_build)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=mine, env=env,
                          capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 passed" in done.stdout
    # its rootdir was the copy, not the repository (no conftest of ours took part)
    assert f"rootdir: {mine}" in done.stdout or str(REPO) not in done.stdout
