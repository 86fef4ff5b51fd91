"""A cluster across two "hosts" on loopback (127.0.0.1 and 127.0.0.2, docs/hosts.md):
the same guest output as on one host, tcp + CURVE between them, a node moved
from one host to the other, and the security of the tcp endpoints in a running
cluster: a peer without keys is refused, a valid key sending as another node is
refused and counted in `hwemu status`, and another account cannot reach an ipc
inbox of the run directory. (tests/integration/test_netns.py does the same across
network namespaces.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from tests.integration.hostsutil import ROOT, free_base, placed_native
from tests.integration.test_cli import hwemu, one_json_object, run_dir  # noqa: F401  (the fixture)

HELLO = "guest/build/samples/hello.elf"
PRIMES = "guest/build/samples/primes.elf"


@pytest.fixture
def placed(tmp_path):
    base = free_base(["127.0.0.1", "127.0.0.2"])
    return placed_native(tmp_path / "placed.toml", {"a": {"address": "127.0.0.1", "port_base": base},
                                                    "b": {"address": "127.0.0.2", "port_base": base}},
                         {"cpu0": "b", "timer0": "b"}, "a")


def status(rd) -> dict:
    out = hwemu(rd, "status", "--json")
    assert out.returncode == 0, out.stderr
    return one_json_object(out.stdout)


def test_output_is_byte_identical_across_hosts_and_after_a_move(run_dir, placed, tmp_path):  # noqa: F811
    rd, pids = run_dir
    one = hwemu(tmp_path / "one", "run", "compose/native.toml", PRIMES, "--", "300")
    hwemu(tmp_path / "one", "down")
    assert one.returncode == 0, one.stderr
    up = hwemu(rd, "up", str(placed), "--detach")
    assert up.returncode == 0, up.stderr
    data = status(rd)
    assert data["orchestrator"]["hosts"] == {"orch": "a", "memctl": "a", "cpu0": "b", "uart0": "a", "timer0": "b",
                                             "os1": "a"}
    endpoints = {n["name"]: n["endpoint"] for n in data["nodes"]}
    assert endpoints["cpu0"].startswith("tcp://127.0.0.2:") and endpoints["os1"].startswith("ipc://")
    conf = json.loads((rd / "conf" / "cpu0.json").read_text())
    assert conf["directory"]["os1"].startswith("tcp://127.0.0.1:") and conf["directory"]["timer0"].startswith("ipc")
    run = hwemu(rd, "run", str(placed), PRIMES, "--", "300")
    assert run.returncode == 0, run.stderr
    assert run.stdout == one.stdout and "primes below 300" in run.stdout

    moved = hwemu(rd, "move", "timer0", "a", "--json")
    assert moved.returncode == 0, moved.stderr
    assert one_json_object(moved.stdout)["to"] == "a"
    assert status(rd)["orchestrator"]["hosts"]["timer0"] == "a"
    again = hwemu(rd, "run", str(placed), PRIMES, "--", "300")
    assert again.returncode == 0, again.stderr
    assert again.stdout == one.stdout

    bad = hwemu(rd, "move", "timer0", "z")
    assert bad.returncode == 1 and bad.stderr.strip().startswith("hwemu: unknown host 'z' (hosts: a, b)")

    # an orchestrator killed after the move and started again re-attaches to the nodes where they run
    before = status(rd)
    pids_before = {n["name"]: n["pid"] for n in before["nodes"]}
    os.kill(before["orchestrator"]["pid"], signal.SIGKILL)
    again_up = hwemu(rd, "up", str(placed), "--detach")
    assert again_up.returncode == 0, again_up.stderr
    after = status(rd)
    assert {n["name"]: n["pid"] for n in after["nodes"]} == pids_before  # re-attached, not restarted
    assert after["orchestrator"]["hosts"]["timer0"] == "a"
    third = hwemu(rd, "run", str(placed), PRIMES, "--", "300")
    assert third.returncode == 0, third.stderr
    assert third.stdout == one.stdout


ATTACKER = textwrap.dedent("""
    import json, sys, time, zmq
    from protocol import curve
    from protocol.messages import Message, encode
    rd, endpoint, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.routing_id = b"cpu0#1"
    if mode == "timer0-key":  # a node's valid key, another node's name
        curve.load_identity(rd, "timer0").client(s, "os1")
    s.connect(endpoint)
    s.send(encode(Message("ping", "cpu0", "os1", 1, {})))
    time.sleep(1.5)
""")


def test_over_tcp_a_keyless_peer_is_refused_and_a_key_speaking_as_another_node_is_counted(run_dir, placed):  # noqa: F811
    rd, pids = run_dir
    up = hwemu(rd, "up", str(placed), "--detach")
    assert up.returncode == 0, up.stderr
    os1 = next(n for n in status(rd)["nodes"] if n["name"] == "os1")
    tcp = json.loads((rd / "conf" / "os1.json").read_text())["auth"]["curve"]["bind"]
    before = os1["stats"]
    for mode in ("no-key", "timer0-key"):
        done = subprocess.run([sys.executable, "-c", ATTACKER, str(rd), tcp, mode], cwd=ROOT, timeout=60)
        assert done.returncode == 0
    after = next(n for n in status(rd)["nodes"] if n["name"] == "os1")["stats"]
    assert after["wrong_key"] == before["wrong_key"] + 1  # timer0's key, cpu0's name: refused
    assert after["auth_failed"] == before["auth_failed"]  # nothing of either reached the MAC check
    table = hwemu(rd, "status")
    assert "1 refused" in table.stdout


def test_another_account_cannot_reach_an_ipc_inbox_of_the_run_directory(run_dir, placed):  # noqa: F811
    rd, pids = run_dir
    if os.getuid() != 0:
        pytest.fail("this test runs a process as another account (setpriv): it needs root, as CI has")
    up = hwemu(rd, "up", str(placed), "--detach")
    assert up.returncode == 0, up.stderr
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
             "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(13)\nsys.exit(0)\n")
    nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", probe]
    sock = str(rd / "os1.sock")
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600" and oct(os.stat(rd).st_mode & 0o777) == "0o700"
    assert subprocess.run([*nobody, sock], timeout=30).returncode == 13  # the run directory is closed to it
    os.chmod(rd, 0o711)  # even with the directory open to traverse, the socket itself is 0600
    try:
        assert subprocess.run([*nobody, sock], timeout=30).returncode == 13
    finally:
        os.chmod(rd, 0o700)


def test_keys_init_makes_private_key_pairs_and_keeps_them_unless_rotated(tmp_path):
    rd = tmp_path / "k"
    first = hwemu(rd, "keys", "init", "compose/native.toml", "--json")
    assert first.returncode == 0, first.stderr
    data = one_json_object(first.stdout)
    assert sorted(data["public"]) == sorted(["orch", "memctl", "cpu0", "uart0", "timer0", "os1", "*client"])
    keydir = rd / "keys" / "curve"
    assert oct(keydir.stat().st_mode & 0o777) == "0o700"
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in keydir.iterdir())
    again = one_json_object(hwemu(rd, "keys", "init", "compose/native.toml", "--json").stdout)
    assert again["public"] == data["public"]  # kept
    rotated = one_json_object(hwemu(rd, "keys", "init", "compose/native.toml", "--rotate", "--json").stdout)
    assert all(rotated["public"][n] != data["public"][n] for n in data["public"])
    shown = hwemu(rd, "keys", "show", "--json")
    assert one_json_object(shown.stdout) == rotated["public"]
    bad = hwemu(rd, "keys", "init", "no-such.toml")
    assert bad.returncode == 2 and bad.stderr.startswith("hwemu: no-such.toml: cannot read")
    os.chmod(rd, 0o755)
    opened = hwemu(rd, "keys", "init", "compose/native.toml")
    assert opened.returncode == 2 and "is open to other accounts" in opened.stderr


def test_move_on_a_cluster_without_hosts_is_refused_in_one_line(run_dir):  # noqa: F811
    rd, pids = run_dir
    up = hwemu(rd, "up", "compose/flip.toml", "--detach")
    assert up.returncode == 0, up.stderr
    moved = hwemu(rd, "move", "src", "a")
    assert moved.returncode == 1
    assert moved.stderr.strip() == (f"hwemu: topology {ROOT / 'compose' / 'flip.toml'} names no hosts: "
                                    "there is nowhere to move src to")


def test_a_tcp_endpoint_of_a_topology_without_hosts_is_curve_too(run_dir, tmp_path):  # noqa: F811
    rd, pids = run_dir
    port = free_base(["127.0.0.1"], 1)
    topo = tmp_path / "tcp.toml"
    topo.write_text((ROOT / "compose" / "flip.toml").read_text().replace(
        "[nodes.sink_b]", f'[nodes.sink_b]\nendpoint = "tcp://127.0.0.1:{port}"'))
    up = hwemu(rd, "up", str(topo), "--detach")
    assert up.returncode == 0, up.stderr
    assert "curve" in json.loads((rd / "conf" / "sink_b.json").read_text())["auth"]
    flip = hwemu(rd, "route", "set", "data:src", "sink_b")  # src -> sink_b over tcp + CURVE
    assert flip.returncode == 0, flip.stderr
    before = next(n for n in status(rd)["nodes"] if n["name"] == "sink_b")["stats"]
    done = subprocess.run([sys.executable, "-c", ATTACKER, str(rd), f"tcp://127.0.0.1:{port}", "no-key"], cwd=ROOT,
                          timeout=60)
    assert done.returncode == 0
    after = next(n for n in status(rd)["nodes"] if n["name"] == "sink_b")["stats"]
    assert after["auth_failed"] == before["auth_failed"] and after["bad_in"] == before["bad_in"]


def test_a_trace_of_a_placed_cluster_puts_the_other_hosts_nodes_on_the_orchestrators_clock(
        run_dir, placed, tmp_path):  # noqa: F811
    """`hwemu trace save` estimates each remote node's clock offset from ping round trips (NTP's
    estimate, docs/observability.md) and applies it; the nodes of the orchestrator's host need none."""
    rd, pids = run_dir
    assert hwemu(rd, "up", str(placed), "--detach").returncode == 0
    assert hwemu(rd, "trace", "start").returncode == 0
    ran = hwemu(rd, "run", str(placed), HELLO)
    assert ran.returncode == 0, ran.stderr
    out = tmp_path / "placed.json"
    saved = hwemu(rd, "trace", "save", str(out), "--json")
    assert saved.returncode == 0, saved.stderr
    notes = one_json_object(saved.stdout)["notes"]
    aligned = sorted(n.split(":")[0] for n in notes if "clock offset" in n)
    assert aligned == ["cpu0", "timer0"], notes
    events = json.loads(out.read_text())["traceEvents"]
    assert {e["args"]["name"].split()[0] for e in events if e.get("name") == "process_name"} >= {"cpu0", "timer0"}
    assert hwemu(rd, "down").returncode == 0
