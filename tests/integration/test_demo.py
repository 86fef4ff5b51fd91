"""`hwemu demo` (issue #7 part 4), run as a user runs it: exit 0, and its JSON
report lists every step of every choreography with its pause and every check
passed (guest outputs exact, UDP replies, frame conservation, no gap or
duplicate, native again)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guest"


def test_demo_runs_every_choreography_and_every_check_passes(guest_build, tmp_path: Path) -> None:
    out = tmp_path / "demo.json"
    run_dir = tmp_path / "run"
    exe = str(Path(sys.executable).parent / "hwemu")
    done = subprocess.run([exe, "demo", "--json", str(out)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "HWEMU_RUN_DIR": str(run_dir)}, timeout=180,
                          stdin=subprocess.DEVNULL)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    failed = [c for c in report["checks"] if not c["ok"]]
    assert (done.returncode, failed) == (0, []), done.stderr[-2000:]
    assert report["ok"] and report["failed"] == []

    figures = {s["figure"] for s in report["steps"]}
    assert {"fig4", "fig3", "fig5", "p39_borrow", "p39_return", "fig6", "fig7", "fig8_unload"} <= figures
    assert all(isinstance(s["pause_ms"], (int, float)) and s["pause_ms"] >= 0 for s in report["steps"])
    assert all(s["outcome"] == "committed" for s in report["steps"])
    paused = {s["step"] for s in report["steps"] if s["pause_ms"] > 0}
    assert {"redirect_traps", "route_priv", "traps_to_os"} <= paused  # FIG. 3 and FIG. 7 disable "interrupts"
    names = {c["check"] for c in report["checks"]}
    assert "os1 timeshare A1 output exact" in names and report["io"]["compute_rounds"] >= 1
    for want in ("os2 timeshare output exact", "os1 console byte-identical",
                 "UDP echo: every datagram echoed exactly", "frame conservation (mem_owners)",
                 "no gap or duplicate in any flow of any node", "native again"):
        assert want in names
    assert report["io"]["udp_replies"] == report["io"]["udp_sent"] > 0
    # the cluster was stopped: no socket or state left in the demo's run directory
    demo_dir = run_dir / "demo"
    assert not list(demo_dir.glob("*.sock")) and not (demo_dir / "cluster.json").exists()
