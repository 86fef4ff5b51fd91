"""The native cluster across three hosts made of network namespaces (docs/hosts.md):
hosts a, b, c joined by a bridge (10.77.0.1-3, no traffic leaves them), the
nodes placed across them over tcp + CURVE, the CLI on the orchestrator's host.
The guest's output is byte-identical to the one-host run's, and stays so after
a node is killed on one host and restarted on another (its peers reconnect to
it by name, at its new endpoint).

Needs root (CI runs as root): without it the test fails saying so. The
namespaces and every process in them are removed at the end, pass or fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hwemu.netns import NetHosts, NetnsError
from tests.integration.hostsutil import ROOT, placed_native
from tests.integration.procs import alive, recorded_pids
from tests.integration.test_cli import hwemu, one_json_object

HWEMU = str(Path(sys.executable).parent / "hwemu")
PRIMES = "guest/build/samples/primes.elf"
HELLO = "guest/build/samples/hello.elf"


@pytest.fixture
def net():
    try:
        hosts = NetHosts(["a", "b", "c"])
    except NetnsError as exc:
        pytest.fail(f"the across-hosts test cannot run: {exc}")
    with hosts:
        yield hosts


def on(net: NetHosts, host: str, rd: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``hwemu ARGS`` run on ``host`` (in its namespace)."""
    return subprocess.run([*net.exec(host), HWEMU, *args], cwd=ROOT, env={**os.environ, "HWEMU_RUN_DIR": str(rd)},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_native_across_three_netns_hosts_is_byte_identical_and_a_node_rejoins_from_another_host(net, tmp_path):
    one_rd = tmp_path / "one"
    reference = {}
    try:
        for prog, args in ((HELLO, ["world"]), (PRIMES, ["300"])):
            run = hwemu(one_rd, "run", "compose/native.toml", prog, "--", *args)
            assert run.returncode == 0, run.stderr
            reference[prog] = run.stdout
    finally:
        hwemu(one_rd, "down")

    hosts = {h: {"address": net.address(h), "exec": net.exec(h)} for h in ("a", "b", "c")}
    topo = placed_native(tmp_path / "netns.toml", hosts,
                         {"memctl": "a", "os1": "a", "cpu0": "b", "uart0": "c", "timer0": "c"}, "a")
    rd = tmp_path / "r"
    try:
        up = on(net, "a", rd, "up", str(topo), "--detach")
        assert up.returncode == 0, up.stderr + up.stdout
        status = one_json_object(on(net, "a", rd, "status", "--json").stdout)
        pids = {n["name"]: n["pid"] for n in status["nodes"]}
        for node, host in (("cpu0", "b"), ("uart0", "c"), ("os1", "a")):  # each process in its host's namespace
            assert os.readlink(f"/proc/{pids[node]}/ns/net") == _netns_id(net.ns(host)), node
        endpoints = {n["name"]: n["endpoint"] for n in status["nodes"]}
        assert endpoints["cpu0"] == f"tcp://10.77.0.2:{7100 + 2}" and endpoints["uart0"].startswith("tcp://10.77.0.3:")

        for prog, args in ((HELLO, ["world"]), (PRIMES, ["300"])):
            run = on(net, "a", rd, "run", str(topo), prog, "--", *args)
            assert run.returncode == 0, run.stderr
            assert run.stdout == reference[prog]

        for node, to in (("timer0", "b"), ("uart0", "a")):
            moved = on(net, "a", rd, "move", node, to, "--json")
            assert moved.returncode == 0, moved.stderr
            pid = one_json_object(moved.stdout)["pid"]
            assert os.readlink(f"/proc/{pid}/ns/net") == _netns_id(net.ns(to))
        run = on(net, "a", rd, "run", str(topo), PRIMES, "--", "300")
        assert run.returncode == 0, run.stderr
        assert run.stdout == reference[PRIMES]
        status = one_json_object(on(net, "a", rd, "status", "--json").stdout)
        assert all(n["stats"].get("wrong_key", 0) == 0 and n["stats"].get("auth_failed", 0) == 0
                   for n in status["nodes"])
        down = on(net, "a", rd, "down")
        assert down.returncode == 0, down.stderr
    finally:
        left = recorded_pids(rd)
        on(net, "a", rd, "down", timeout=60)
        for pid in left:
            if alive(pid):
                os.kill(pid, 9)


def _netns_id(ns: str) -> str:
    """The ``net:[inode]`` of namespace ``ns`` (as /proc/PID/ns/net reads for its processes)."""
    return f"net:[{os.stat(f'/run/netns/{ns}').st_ino}]"
