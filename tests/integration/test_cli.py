"""The ``hwemu`` console script, run as a user runs it (STYLE.md, CLI: exit
codes mean something, ``--json`` prints exactly one JSON object, errors are
one line naming the file, key or node; ``down`` leaves no process or socket).

Each test gets its own short run directory through ``HWEMU_RUN_DIR``; every
process of the cluster is stopped in a ``finally`` (``hwemu down``, then
SIGKILL by pid for anything of ours still alive).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.procs import alive, cluster_dir, recorded_pids

ROOT = Path(__file__).resolve().parents[2]
HWEMU = str(Path(sys.executable).parent / "hwemu")
NODE_KEYS = {"kind", "pid", "endpoint", "alive", "uptime", "msgs_in", "msgs_out"}


def hwemu(run_dir: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([HWEMU, *args], cwd=ROOT, env={**os.environ, "HWEMU_RUN_DIR": str(run_dir), **env},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_json_object(out: str) -> dict:
    """stdout holds exactly one JSON object and nothing else."""
    data, end = json.JSONDecoder().raw_decode(out)
    assert out[end:].strip() == "", f"more than one JSON object on stdout: {out!r}"
    assert isinstance(data, dict)
    return data


@pytest.fixture
def run_dir(tmp_path):
    """A short run directory; at the end, `hwemu down` and SIGKILL for anything of ours left."""
    with cluster_dir(tmp_path / "r", lambda rd: hwemu(rd, "down", timeout=60)) as dir_and_pids:
        yield dir_and_pids


def sched_slice_ns(pid: int) -> int:
    """The EEVDF slice the kernel gives ``pid`` (``se.slice`` of /proc/PID/sched)."""
    for line in Path(f"/proc/{pid}/sched").read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    raise AssertionError(f"/proc/{pid}/sched has no se.slice")


def test_up_status_route_set_show_second_up_and_down_leave_nothing_behind(run_dir):
    rd, pids = run_dir
    up = hwemu(rd, "up", "compose/flip.toml", "--detach", HWEMU_SLICE_US="250")
    pids |= recorded_pids(rd)
    assert up.returncode == 0, up.stderr

    status = hwemu(rd, "status", "--json")
    assert status.returncode == 0, status.stderr
    data = one_json_object(status.stdout)
    nodes = {n["name"]: n for n in data["nodes"]}
    assert sorted(nodes) == ["sink_a", "sink_b", "src"]
    for name, node in nodes.items():
        assert NODE_KEYS <= set(node), (name, node)
        assert (node["kind"], node["alive"], node["state"]) == ("streamer", True, "running"), (name, node)
        assert isinstance(node["pid"], int) and alive(node["pid"])
        assert node["endpoint"] == f"ipc://{rd}/{name}.sock"
        assert isinstance(node["uptime"], float) and node["uptime"] >= 0
        assert isinstance(node["msgs_in"], int) and isinstance(node["msgs_out"], int)
    cluster_pids = {data["orchestrator"]["pid"], *(n["pid"] for n in nodes.values())}
    pids |= cluster_pids
    # every one of them (none is a CPU) asked the kernel for the slice of HWEMU_SLICE_US (protocol/sched.py)
    assert {pid: sched_slice_ns(pid) for pid in cluster_pids} == {pid: 250_000 for pid in cluster_pids}
    epoch = data["routes"]["epoch"]
    assert data["routes"]["routes"] == {"data:src": "sink_a"}

    route_set = hwemu(rd, "route", "set", "data:src", "sink_b", "--json")
    assert route_set.returncode == 0, route_set.stderr
    assert one_json_object(route_set.stdout)["epoch"] == epoch + 1

    show = hwemu(rd, "route", "show", "--json")
    assert show.returncode == 0, show.stderr
    assert one_json_object(show.stdout) == {"epoch": epoch + 1, "routes": {"data:src": "sink_b"}}

    for args, expected in ((["notaflow", "sink_b"], "hwemu: bad_flow [flow]: flow 'notaflow' is not of the form"),
                           (["data:src", "ghost"], "hwemu: unknown_node [node]: cannot route data:src to 'ghost'"),
                           (["dta:src", "sink_b"], "hwemu: unknown_flow [changes]: no route for flow 'dta:src'")):
        refused = hwemu(rd, "route", "set", *args, "--json")
        assert refused.returncode == 1, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), refused.stderr
        error = one_json_object(refused.stdout)  # with --json the error is one JSON object on stdout too
        assert (error["ok"], error["exit"], f"hwemu: {error['error']}") == (False, 1, lines[0])
    assert one_json_object(hwemu(rd, "route", "show", "--json").stdout)["epoch"] == epoch + 1  # nothing changed

    again = hwemu(rd, "up", "compose/flip.toml", "--detach")
    assert again.returncode == 1
    assert "already running" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert all(alive(pid) for pid in cluster_pids), "a refused `up` must not disturb the running cluster"

    down = hwemu(rd, "down")
    assert down.returncode == 0, down.stderr
    assert [pid for pid in cluster_pids if alive(pid)] == []
    assert sorted(p.name for p in rd.glob("*.sock")) == []
    assert not (rd / "cluster.json").exists()

    after = hwemu(rd, "status")
    assert after.returncode == 1
    assert "no cluster is running" in after.stderr


@pytest.mark.parametrize("text,expected", [
    ('[nodes.a]\nkind = "testnode"\nmodule = "tests.fixtures.streamer"\nrestart = "sometimes"\n',
     "nodes.a.restart: expected one of never, on-failure, always"),
    ('[nodes.g0]\nkind = "gpu"\n', "nodes.g0.kind: unknown node kind 'gpu'"),
    ('[nodes.a]\nkind = "testnode"\nmodule = "no_such_package.node"\n',
     "nodes.a.module: node kind 'testnode': module 'no_such_package.node' is not importable"),
    (None, "cannot read"),
], ids=["bad-restart", "unknown-kind", "missing-module", "missing-file"])
def test_up_of_a_bad_topology_exits_2_with_one_line_naming_file_and_key(run_dir, tmp_path, text, expected):
    rd, _ = run_dir
    topo = tmp_path / "topo.toml"
    if text is not None:
        topo.write_text(text)
    result = hwemu(rd, "up", str(topo), "--detach")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"hwemu: {topo}: {expected}"), result.stderr
    assert not (rd / "cluster.json").exists()


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["route", "show"],
                                  ["route", "set", "data:src", "sink_b"]])
def test_a_command_with_no_cluster_exits_1_with_one_clear_line(run_dir, args):
    rd, _ = run_dir
    result = hwemu(rd, *args)
    assert result.returncode == 1
    message = f"no cluster is running in {rd} (start one with `hwemu up TOPOLOGY`)"
    assert result.stderr.strip().splitlines() == [f"hwemu: {message}"]
    if "--json" in args:  # the error as one JSON object on stdout too
        assert one_json_object(result.stdout) == {"ok": False, "error": message, "exit": 1}
    else:
        assert result.stdout == ""


@pytest.mark.parametrize("args", [["status"], ["up", "compose/native.toml", "--detach"]])
@pytest.mark.parametrize("var, value, message", [
    ("HWEMU_SPIN_US", "fast", "HWEMU_SPIN_US must be a number of microseconds, got 'fast'"),
    ("HWEMU_SLICE_US", "short", "HWEMU_SLICE_US must be an integer number of microseconds, got 'short'"),
    ("HWEMU_SLICE_US", "50", "HWEMU_SLICE_US must be 0 or 100..100000, got 50"),
])
def test_a_bad_polling_window_or_slice_in_the_environment_exits_2_naming_it_and_starts_nothing(
        run_dir, args, var, value, message):
    rd, _ = run_dir
    result = subprocess.run([HWEMU, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "HWEMU_RUN_DIR": str(rd), var: value})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"hwemu: {message}"]
    assert not rd.exists() or not any(rd.iterdir())  # no cluster was started


def test_down_with_no_cluster_is_a_no_op_that_succeeds(run_dir):
    rd, _ = run_dir
    result = hwemu(rd, "down", "--json")
    assert result.returncode == 0
    assert one_json_object(result.stdout) == {"stopped": [], "note": "no cluster running"}


@pytest.mark.parametrize("command", [[], ["up"], ["status"], ["down"], ["route"], ["route", "show"],
                                     ["route", "set"], ["cpu"], ["cpu", "run"]])
def test_help_works_for_every_command(run_dir, command):
    rd, _ = run_dir
    result = hwemu(rd, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: hwemu" in result.stdout


def wait_until_dead(pids: set[int], timeout: float = 30) -> list[int]:
    """Wait (bounded) for SIGKILLed processes to go; returns those still alive."""
    deadline = time.monotonic() + timeout
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    return sorted(p for p in pids if alive(p))


def test_a_hung_orchestrator_is_reported_and_down_still_stops_every_process(run_dir):
    rd, pids = run_dir
    up = hwemu(rd, "up", "compose/flip.toml", "--detach", "--json")
    pids |= recorded_pids(rd)
    assert up.returncode == 0, up.stderr
    data = one_json_object(up.stdout)
    orch_pid = data["orchestrator"]["pid"]
    cluster_pids = {orch_pid, *(n["pid"] for n in data["nodes"])}
    pids |= cluster_pids
    os.kill(orch_pid, signal.SIGSTOP)
    try:
        status = hwemu(rd, "status", "--json", "--timeout", "1")
        assert status.returncode == 1
        assert one_json_object(status.stdout)["error"].startswith(f"the orchestrator in {rd} does not answer")
        lines = status.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"hwemu: the orchestrator in {rd} does not answer within 1 s"), \
            status.stderr
        bad = hwemu(rd, "status", "--timeout", "0")
        assert bad.returncode == 2 and "--timeout" in bad.stderr and bad.stdout == "", bad.stderr

        down = hwemu(rd, "down", "--timeout", "1")
        assert down.returncode == 0, down.stderr
        assert wait_until_dead(cluster_pids) == []
        assert sorted(p.name for p in rd.glob("*.sock")) == []
    finally:
        if alive(orch_pid):
            os.kill(orch_pid, signal.SIGCONT)
