"""Nemeses on a real cluster (issue 14 part 2; docs/faults.md): each fault the
orchestrator's fault manager owns, alone, against each node kind it applies
to, through the ``hwemu fault`` command line, on ``compose/io.toml``:

- ``kill``: every node kind is restarted with a new pid, and ``hwemu status``
  counts the restart;
- ``pause``: every node kind shows ``unresponsive`` while SIGSTOPped, and
  ``running`` again (same pid) once cleared or its ``--for`` has run out;
- ``disk``: the guest program (``faultprobe.elf``) sees ``-EIO`` (-5) from
  ``pwrite64``/``pread64``/``fsync`` as each fault kind says, and the real
  values again once the fault is cleared;
- ``clock``: the guest's ``clock_gettime(CLOCK_REALTIME)`` is off by the skew,
  and right again after ``clear``;
- ``list``/``clear``/``--for``, the journal, and one-line refusals (exit 2) of
  bad arguments.

Deadlines guard every wait; nothing is timed. Every process is stopped by pid
at the end (the ``run_dir`` fixture).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests.integration import test_native
from tests.integration.test_io import IO, status, up
from tests.integration.test_native import BUILD, hwemu, show

pytestmark = pytest.mark.integration

DEADLINE_S = 60.0
KINDS = ("memctl", "cpu0", "uart0", "timer0", "disk0", "nic0", "os1")  # one node of every kind in io.toml
EIO = -5


# a run directory right under /tmp, so `hwemu status`'s table (160 columns when piped) keeps every
# column whole; at the end `hwemu down` and SIGKILL for anything of ours left
cluster_dir = test_native.tiny_run_dir


def ok(rd: Path, *args: str) -> dict:
    """``hwemu ARGS --json``, which must succeed; its JSON."""
    run = hwemu(rd, *args, "--json", timeout=120)
    assert run.returncode == 0, show(run)
    return json.loads(run.stdout)


def refused(rd: Path, *args: str) -> str:
    """``hwemu ARGS``, which must fail as bad usage: exit 2 and one line on stderr; that line."""
    run = hwemu(rd, *args, timeout=120)
    lines = run.stderr.decode().strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("hwemu: "), show(run)
    return lines[0]


def nodes(rd: Path) -> dict[str, dict]:
    return {n["name"]: n for n in status(rd)["nodes"]}


def wait_until(what: str, check, deadline_s: float = DEADLINE_S):
    """Poll ``check()`` until it returns something true; fail with ``what`` after the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {deadline_s} s"
        time.sleep(0.2)


def probe(rd: Path, *args: str) -> list[str]:
    """Run ``faultprobe.elf ARGS`` on os1; its output lines (it must finish with status 0)."""
    run = hwemu(rd, "run", IO, str(BUILD / "faultprobe.elf"), "--", *args, timeout=180)
    assert run.returncode == 0, show(run)
    lines = run.stdout.decode().splitlines()
    assert lines[-1] == "faultprobe done", show(run)
    return lines[:-1]


def disk_rounds(lines: list[str]) -> list[dict[str, int]]:
    """``disk <i> write=<r> fsync=<r> read=<r> same=<b>`` lines as dicts."""
    out = []
    for line in lines:
        word, _, rest = line.partition(" ")
        assert word == "disk", line
        fields = dict(kv.split("=") for kv in rest.split()[1:])
        out.append({k: int(v) for k, v in fields.items()})
    return out


def test_kill_of_every_node_kind_restarts_it_with_a_new_pid_and_status_counts_it(guest_build, cluster_dir):
    rd, pids = cluster_dir
    up(rd)
    before = nodes(rd)
    for name in KINDS:
        done = ok(rd, "fault", "kill", name)
        assert done["fault"]["type"] == "kill" and done["fault"]["pid"] == before[name]["pid"], done
        after = wait_until(f"{name} restarted", lambda: (lambda n: n if n["pid"] != before[name]["pid"]
                                                         and n["alive"] and n["state"].startswith("running")
                                                         else None)(nodes(rd)[name]))
        assert after["restarts"] == 1, after
    # a kill is over at once: listed nowhere but in the journal
    assert ok(rd, "fault", "list")["faults"] == []
    journal = [json.loads(line) for line in (rd / "faults.jsonl").read_text().splitlines()]
    assert [(j["event"], j["targets"], j["pid"]) for j in journal] == [
        ("kill", [name], before[name]["pid"]) for name in KINDS]
    table = hwemu(rd, "status")
    assert table.returncode == 0, show(table)
    for name in KINDS:  # the restarts column of the table
        row = next(line for line in table.stdout.decode().splitlines() if line.startswith(f"│ {name} "))
        assert [cell.strip() for cell in row.split("│")][9] == "1", row


def proc_state(pid: int) -> str:
    """The kernel's one-letter state of ``pid`` (T: stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_pause_of_every_node_kind_shows_it_unresponsive_then_running_again_with_the_same_pid(guest_build, cluster_dir):
    rd, pids = cluster_dir
    up(rd)
    before = nodes(rd)
    ids = [ok(rd, "fault", "pause", name)["id"] for name in KINDS]
    listed = ok(rd, "fault", "list")["faults"]
    assert [(f["id"], f["type"], f["targets"]) for f in listed] == [(i, "pause", [n]) for i, n in zip(ids, KINDS)]
    for name in KINDS:  # SIGSTOP reached exactly the pid the supervisor launched
        assert proc_state(before[name]["pid"]) == "T", name
    paused = wait_until("every paused node unresponsive",
                        lambda: (lambda ns: ns if all(ns[n]["state"] == "unresponsive" for n in KINDS) else None)(
                            nodes(rd)))
    assert all(paused[n]["alive"] and paused[n]["pid"] == before[n]["pid"] for n in KINDS), paused
    assert sorted(f["id"] for f in status(rd)["faults"]) == sorted(ids)
    table = hwemu(rd, "status")
    assert table.returncode == 0 and b"unresponsive (no heartbeat" in table.stdout, show(table)
    assert b"active faults" in table.stdout and b"pause cpu0" in table.stdout, show(table)
    assert ok(rd, "fault", "clear", "--all") == {"cleared": ids}
    # SIGCONT: heartbeats again, nothing restarted
    back = wait_until("every node running again after clear",
                      lambda: (lambda ns: ns if all(ns[n]["state"].startswith("running") for n in KINDS) else None)(
                          nodes(rd)))
    assert {n: (back[n]["pid"], back[n]["restarts"]) for n in KINDS} == {n: (before[n]["pid"], 0) for n in KINDS}

    # --for: continued by the manager itself when it runs out
    timed = ok(rd, "fault", "pause", "os1", "--for", "2")
    assert timed["fault"]["ends"] is not None
    wait_until("os1 continued after --for", lambda: proc_state(before["os1"]["pid"]) != "T")
    assert ok(rd, "fault", "list")["faults"] == []
    events = [(j["event"], j["id"]) for j in map(json.loads, (rd / "faults.jsonl").read_text().splitlines())]
    assert events == ([("add", i) for i in ids] + [("clear", i) for i in ids]
                      + [("add", timed["id"]), ("clear", timed["id"])])
    wait_until("os1 running", lambda: nodes(rd)["os1"]["state"].startswith("running"))


def test_sigstop_by_hand_shows_the_node_unresponsive_not_running(guest_build, cluster_dir):
    """Issue 14 part 7: a frozen node was shown `running`, `alive: yes`."""
    rd, pids = cluster_dir
    up(rd)
    cpu = nodes(rd)["cpu0"]
    os.kill(cpu["pid"], 19)  # SIGSTOP
    try:
        frozen = wait_until("cpu0 unresponsive", lambda: (lambda n: n if n["state"] == "unresponsive" else None)(
            nodes(rd)["cpu0"]))
        assert frozen["silent_s"] > 2.0, frozen
    finally:
        os.kill(cpu["pid"], 18)  # SIGCONT
    wait_until("cpu0 running again", lambda: nodes(rd)["cpu0"]["state"].startswith("running"))


def test_disk_faults_reach_the_guest_as_eio_and_clear(guest_build, cluster_dir):
    rd, pids = cluster_dir
    up(rd)
    clean = disk_rounds(probe(rd, "disk", "/dev/disk0", "2"))
    assert clean == [{"write": 512, "fsync": 0, "read": 512, "same": 1}] * 2

    eio = ok(rd, "fault", "disk", "disk0", "--eio", "1", "--seed", "5")
    assert eio["fault"]["seed"] == 5
    assert disk_rounds(probe(rd, "disk", "/dev/disk0", "2")) == [
        {"write": EIO, "fsync": 0, "read": EIO, "same": 0}] * 2
    ok(rd, "fault", "clear", eio["id"])

    torn = ok(rd, "fault", "disk", "disk0", "--torn-write", "1")
    rounds = disk_rounds(probe(rd, "disk", "/dev/disk0", "2"))
    assert [(r["write"], r["read"]) for r in rounds] == [(EIO, 512)] * 2, rounds  # reads still work
    ok(rd, "fault", "clear", torn["id"])

    sync = ok(rd, "fault", "disk", "disk0", "--fsync-fail", "1")
    rounds = disk_rounds(probe(rd, "disk", "/dev/disk0", "2"))
    # never a silent success: the write (synced before its completion) and fsync both fail
    assert [(r["write"], r["fsync"], r["read"]) for r in rounds] == [(EIO, EIO, 512)] * 2, rounds
    counted = nodes(rd)["disk0"]["stats"]["faults_injected"]
    assert counted == {"eio": 4, "torn_write": 2, "fsync_fail": 4}, counted
    ok(rd, "fault", "clear", sync["id"])

    assert disk_rounds(probe(rd, "disk", "/dev/disk0", "2")) == [
        {"write": 512, "fsync": 0, "read": 512, "same": 1}] * 2


def test_clock_skew_shows_in_the_guests_clock_gettime_and_clears(guest_build, cluster_dir):
    rd, pids = cluster_dir
    up(rd)
    skew_s = 3600
    ok(rd, "fault", "clock", "timer0", "--skew", str(skew_s * 1000))
    assert nodes(rd)["timer0"]["stats"]["skew_ms"] == skew_s * 1000
    before = time.time()
    lines = probe(rd, "clock", "2")
    after = time.time()
    seen = [int(line.split()[1]) for line in lines]
    assert all(before + skew_s - 2 <= t <= after + skew_s + 2 for t in seen), (before, seen, after)
    ok(rd, "fault", "clear", "--all")
    before = time.time()
    lines = probe(rd, "clock", "2")
    after = time.time()
    seen = [int(line.split()[1]) for line in lines]
    assert all(before - 2 <= t <= after + 2 for t in seen), (before, seen, after)


def test_list_clear_for_and_bad_arguments(guest_build, cluster_dir):
    rd, pids = cluster_dir
    up(rd)
    long = ok(rd, "fault", "clock", "timer0", "--skew", "-250")
    other = ok(rd, "fault", "disk", "disk0", "--fsync-fail", "0.25", "--seed", "9")
    listed = ok(rd, "fault", "list")["faults"]
    assert [f["id"] for f in listed] == [long["id"], other["id"]]
    assert listed[1]["spec"] == {"type": "disk", "node": "disk0", "eio": 0.0, "torn_write": 0.0,
                                 "fsync_fail": 0.25} and listed[1]["seed"] == 9 and listed[1]["ends"] is None
    # --for: cleared by the manager, on the node too (no timing asserted: a loaded host may take
    # longer than the duration to run the next command)
    short = ok(rd, "fault", "disk", "disk0", "--eio", "0.5", "--for", "1")
    assert short["fault"]["spec"]["for_s"] == 1.0 and short["fault"]["ends"] is not None
    wait_until("the --for fault cleared", lambda: any(
        j["event"] == "clear" and j["id"] == short["id"]
        for j in map(json.loads, (rd / "faults.jsonl").read_text().splitlines())))
    assert [f["id"] for f in ok(rd, "fault", "list")["faults"]] == [long["id"], other["id"]]
    assert nodes(rd)["disk0"]["stats"]["faults"] == [other["id"]]
    assert ok(rd, "fault", "clear", other["id"]) == {"cleared": [other["id"]]}
    assert [f["id"] for f in status(rd)["faults"]] == [long["id"]]
    assert ok(rd, "fault", "clear", "--all") == {"cleared": [long["id"]]}
    assert nodes(rd)["timer0"]["stats"]["skew_ms"] == 0
    assert hwemu(rd, "fault", "list").stdout.decode().strip() == "no active faults"

    # bad arguments: exit 2, one line naming what is wrong, nothing applied
    assert "eio must be in [0, 1], got 1.5" in refused(rd, "fault", "disk", "disk0", "--eio", "1.5")
    assert "torn_write must be in [0, 1]" in refused(rd, "fault", "disk", "disk0", "--torn-write", "-0.1")
    assert "unknown node 'disk9'" in refused(rd, "fault", "disk", "disk9", "--eio", "0.5")
    assert "node cpu0 is a cpu, a disk fault needs a disk node" in refused(rd, "fault", "disk", "cpu0", "--eio", "1")
    assert "node disk0 is a disk, a clock fault needs a timer node" in refused(
        rd, "fault", "clock", "disk0", "--skew", "5")
    assert "nothing to inject" in refused(rd, "fault", "disk", "disk0")
    assert "unknown node 'nope'" in refused(rd, "fault", "kill", "nope")
    assert "unknown node 'nope'" in refused(rd, "fault", "pause", "nope", "--for", "1")
    assert "for_s must be > 0" in refused(rd, "fault", "pause", "cpu0", "--for", "0")
    assert "unknown flow 'irq:nothing'" in refused(rd, "fault", "flow", "irq:nothing", "--drop", "0.5")
    assert "drop must be in [0, 1]" in refused(rd, "fault", "flow", "irq:timer0", "--drop", "2")
    assert "--delay must be MS or MS:JITTER" in refused(rd, "fault", "flow", "irq:timer0", "--delay", "x")
    assert "on both sides" in refused(rd, "fault", "partition", "os1,disk0", "--from", "disk0")
    assert "unknown node 'zz'" in refused(rd, "fault", "partition", "os1", "--from", "zz")
    assert "no active fault 'f99'" in refused(rd, "fault", "clear", "f99")
    assert "give a fault ID or --all" in refused(rd, "fault", "clear")
    assert ok(rd, "fault", "list")["faults"] == []
    assert all(n["state"].startswith("running") and n["restarts"] == 0 for n in nodes(rd).values())


def test_a_node_fault_outlives_a_restart_of_its_node_and_not_one_of_the_orchestrator(guest_build, cluster_dir):
    rd, pids = cluster_dir
    up(rd)
    disk = ok(rd, "fault", "disk", "disk0", "--eio", "0.5")
    first = nodes(rd)["disk0"]
    ok(rd, "fault", "kill", "disk0")
    # the restarted disk node gets the fault again once it is ready: it is on the node, not the process
    again = wait_until("disk0 restarted with its fault", lambda: (lambda n: n if n["pid"] != first["pid"]
                       and n["stats"].get("faults") == [disk["id"]] else None)(nodes(rd)["disk0"]))
    assert again["restarts"] == 1
    paused = ok(rd, "fault", "pause", "cpu0")
    cpu = nodes(rd)["cpu0"]["pid"]
    # the orchestrator dies (kill -9) with cpu0 stopped; a new one on the run dir continues it
    # (a stopped node could not be re-attached) and clears what the old one left on the nodes
    daemon = json.loads((rd / "cluster.json").read_text())["pid"]
    os.kill(daemon, 9)
    wait_until("the daemon gone", lambda: not Path(f"/proc/{daemon}").exists() or proc_state(daemon) == "Z")
    up(rd)
    after = nodes(rd)
    assert after["cpu0"]["pid"] == cpu and after["cpu0"]["state"].startswith("running"), after["cpu0"]
    assert proc_state(cpu) != "T"
    assert after["disk0"]["stats"]["faults"] == [] and ok(rd, "fault", "list")["faults"] == []
    cleared = [j for j in map(json.loads, (rd / "faults.jsonl").read_text().splitlines()) if j["event"] == "clear"]
    assert sorted(j["id"] for j in cleared) == sorted([disk["id"], paused["id"]])
    assert all(j["why"] == "the orchestrator was restarted" for j in cleared)
    # ids go on after the predecessor's
    assert ok(rd, "fault", "clock", "timer0", "--skew", "5")["id"] == "f4"


def test_flow_and_partition_faults_go_to_the_senders_and_the_guest_sees_nothing_of_them(guest_build, cluster_dir):
    """The plane's own recovery (reliable flows) hides what the senders' transports drop,
    duplicate, reorder and delay, and a partition that heals: the program's I/O is exact."""
    rd, pids = cluster_dir
    up(rd)
    clean = [{"write": 512, "fsync": 0, "read": 512, "same": 1}] * 3
    flow = ok(rd, "fault", "flow", "io:os1.disk,irq:disk0", "--drop", "0.3", "--dup", "0.2", "--reorder", "0.2",
              "--delay", "1:1", "--seed", "11")
    assert flow["fault"]["targets"] == ["os1", "disk0"]  # each flow's sender
    assert disk_rounds(probe(rd, "disk", "/dev/disk0", "3")) == clean
    ok(rd, "fault", "clear", flow["id"])
    cut = ok(rd, "fault", "partition", "os1", "--from", "disk0", "--for", "2")
    assert cut["fault"]["targets"] == ["os1", "disk0"] and cut["fault"]["spec"]["oneway"] is False
    assert disk_rounds(probe(rd, "disk", "/dev/disk0", "3")) == clean
    wait_until("the partition healed", lambda: ok(rd, "fault", "list")["faults"] == [])
