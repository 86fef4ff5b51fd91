"""`hwemu down` with a hung orchestrator (issue 3: "SIGTERM, then SIGKILL
after a timeout"): the daemon is stopped (SIGSTOP), so it answers nothing and
stops no node. `down` then sends SIGTERM to every process left, the nodes exit
on it by themselves, and only the daemon, which cannot act on it, gets
SIGKILL. No process or socket is left."""

from __future__ import annotations

import json
import os
import signal

from tests.integration.procs import alive
from tests.integration.test_down_strays import assert_nothing_left, hwemu, ours


def test_down_with_a_hung_orchestrator_sends_sigterm_first_and_sigkill_only_to_what_ignores_it(tmp_path):
    run_dir = tmp_path / "r"
    try:
        assert hwemu(run_dir, "up", "compose/flip.toml", "--detach").returncode == 0
        state = json.loads((run_dir / "cluster.json").read_text())
        daemon, nodes = state["pid"], state["nodes"]
        os.kill(daemon, signal.SIGSTOP)
        result = hwemu(run_dir, "down", "--timeout", "1", "--json")
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout)
        assert out == {"stopped": sorted(["orch", *nodes]), "terminated": ["orch", *nodes], "killed": ["orch"]}
        assert_nothing_left(run_dir, lambda: any(alive(p) for p in [daemon, *nodes.values()]))
    finally:
        for pid in ours(run_dir):
            os.kill(pid, signal.SIGKILL)
