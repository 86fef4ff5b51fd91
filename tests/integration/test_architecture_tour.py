"""docs/architecture.md's tour does what it says: its files (each block
after a ``<!-- tour-file: PATH -->`` line) are written out as they stand and
its test runs with pytest in a fresh directory, against real processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"
MARK = re.compile(r"<!-- tour-file: (\S+) -->\n```\w*\n(.*?)\n```", re.S)


def tour_files() -> dict[str, str]:
    return {path: body + "\n" for path, body in MARK.findall(DOC.read_text())}


def test_the_tour_has_a_node_kind_a_choreography_a_topology_and_a_test():
    assert set(tour_files()) == {"toy/__init__.py", "toy/counter.py", "toy/swap.py", "toy/counters.toml",
                                 "test_toy.py"}


@pytest.mark.integration
def test_the_tour_runs_as_written(tmp_path):
    for path, body in tour_files().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(body)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_toy.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
