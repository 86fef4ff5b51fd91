"""Process bookkeeping shared by the integration tests that drive the
``hwemu`` console script: is a pid alive, which pids a run directory's state
file records."""

from __future__ import annotations

import json
from pathlib import Path


def alive(pid: int) -> bool:
    """A zombie (exited, not yet reaped by a parent that is not ours) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def recorded_pids(run_dir: Path) -> set[int]:
    """The daemon's and nodes' pids from the run directory's state file, if any."""
    try:
        state = json.loads((run_dir / "cluster.json").read_text())
    except (OSError, ValueError):
        return set()
    return {state["pid"], *state.get("nodes", {}).values()} - {None}


def identity(pong: dict) -> dict:
    """A ``pong`` body without its clock reading: what stays the same while
    the same node keeps running (``now_ns`` changes with every ping)."""
    return {key: value for key, value in pong.items() if key != "now_ns"}
