"""`hwemu down` stops every process of a cluster even when the state file is
stale: a node restarted by the supervisor has a new pid, and with the daemon
killed by SIGKILL nobody rewrites the file any more."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HWEMU = str(Path(sys.executable).parent / "hwemu")


def hwemu(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HWEMU, *args], cwd=ROOT, env={**os.environ, "HWEMU_RUN_DIR": str(run_dir)},
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def ours(run_dir: Path) -> list[int]:
    """Live (non-zombie) processes whose command line names the run directory."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if str(run_dir).encode() in cmd and stat.rpartition(")")[2].split()[0] != "Z":
            found.append(int(entry.name))
    return found


def assert_nothing_left(run_dir: Path, running=None) -> None:
    """Wait (10 s at most) until ``running()`` (default: our processes) is empty or false, then
    assert no process of the run directory and no socket file is left."""
    running = running or (lambda: ours(run_dir))
    deadline = time.monotonic() + 10
    while running() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert ours(run_dir) == []
    assert list(run_dir.glob("*.sock")) == []


def node_pid(run_dir: Path, node: str) -> int:
    status = json.loads(hwemu(run_dir, "status", "--json").stdout)
    return next(n["pid"] for n in status["nodes"] if n["name"] == node)


def test_down_after_a_node_restart_and_a_killed_daemon_leaves_no_process(tmp_path):
    run_dir = tmp_path / "r"
    try:
        assert hwemu(run_dir, "up", "compose/flip.toml", "--detach").returncode == 0
        first = node_pid(run_dir, "sink_b")
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        second = first
        while time.monotonic() < deadline:  # the supervisor restarts it (policy on-failure)
            status = json.loads(hwemu(run_dir, "status", "--json").stdout)
            node = next(n for n in status["nodes"] if n["name"] == "sink_b")
            if node["pid"] != first and node["state"] == "running":
                second = node["pid"]
                break
        assert second != first, "sink_b was not restarted"
        daemon = json.loads((run_dir / "cluster.json").read_text())["pid"]
        os.kill(daemon, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while daemon in ours(run_dir) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert second in ours(run_dir)  # the nodes outlive their orchestrator
        result = hwemu(run_dir, "down", "--timeout", "1")
        assert result.returncode == 0, result.stderr
        assert_nothing_left(run_dir)
    finally:
        for pid in ours(run_dir):
            os.kill(pid, signal.SIGKILL)
