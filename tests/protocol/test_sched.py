"""protocol/sched.py: the time slice a node process asks the kernel for."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol import sched

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import sys
from protocol import sched
def slice_ns():
    for line in open("/proc/self/sched"):
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
print(sched.set_slice(int(sys.argv[1])), slice_ns())
print(sched.set_slice(0), slice_ns())
"""


def test_a_process_gets_the_slice_it_asks_for_and_0_gives_the_default_back():
    out = subprocess.run([sys.executable, "-c", PROBE, "250"], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         check=True).stdout.split()
    assert out[:2] == ["None", "250000"]  # taken, as the kernel reports it
    assert out[2] == "None" and int(out[3]) > 250_000  # the default (0.75 ms or more) is back


@pytest.mark.parametrize("value, message", [
    ("abc", "HWEMU_SLICE_US must be an integer number of microseconds, got 'abc'"),
    ("99", "HWEMU_SLICE_US must be 0 or 100..100000, got 99"),
    ("100001", "HWEMU_SLICE_US must be 0 or 100..100000, got 100001"),
])
def test_a_bad_slice_in_the_environment_is_refused_by_name(monkeypatch, value, message):
    monkeypatch.setenv("HWEMU_SLICE_US", value)
    with pytest.raises(ValueError, match=message):
        sched.slice_from_env()


@pytest.mark.parametrize("value, us", [(None, 0), ("", 0), ("0", 0), ("100", 100), (" 2000 ", 2000)])
def test_the_slice_comes_from_the_environment_in_microseconds(monkeypatch, value, us):
    if value is None:
        monkeypatch.delenv("HWEMU_SLICE_US", raising=False)
    else:
        monkeypatch.setenv("HWEMU_SLICE_US", value)
    assert sched.slice_from_env() == us


def test_a_node_started_with_a_bad_slice_exits_2_naming_it_and_binds_nothing(tmp_path):
    conf = tmp_path / "timer0.json"
    conf.write_text(json.dumps({"name": "timer0", "kind": "timer", "endpoint": f"ipc://{tmp_path}/timer0.sock",
                                "directory": {}, "orchestrator": None, "run_dir": str(tmp_path)}))
    out = subprocess.run([sys.executable, "-m", "nodes.timer", "--config", str(conf)], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "HWEMU_SLICE_US": "7"}, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == "timer timer0: HWEMU_SLICE_US must be 0 or 100..100000, got 7"
    assert not (tmp_path / "timer0.sock").exists()
