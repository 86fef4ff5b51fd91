"""Placement of nodes on hosts (orchestrator/topology_hosts.py, docs/hosts.md):
each party's own view of the directory, deterministic ports, and one-line
errors naming the file and key for an unknown host, a bad address, a port clash."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.topology import ORCHESTRATOR, load
from tests.orchestrator.test_topology import error_of as topology_error
from tests.orchestrator.test_topology import write

TESTNODE = 'kind = "testnode"\nmodule = "tests.fixtures.streamer"\n'
HOSTS = '[hosts.a]\naddress = "10.77.0.1"\n[hosts.b]\naddress = "10.77.0.2"\nport_base = 7200\n' \
        'exec = ["ip", "netns", "exec", "hwb"]\n'


def error_of(tmp_path: Path, text: str) -> str:
    """The one line a bad placement gets, without its file name (which test_topology checks)."""
    exc = topology_error(tmp_path, text)
    assert "\n" not in str(exc)
    return str(exc)[len(f"{exc.source}: "):]


def test_each_party_sees_peers_on_its_host_over_ipc_and_others_over_tcp(tmp_path):
    topo = load(write(tmp_path, HOSTS + f'[nodes.x]\n{TESTNODE}[nodes.y]\n{TESTNODE}host = "b"\n'
                                            f'[nodes.z]\n{TESTNODE}host = "b"\nport = 7999\n'))
    assert topo.orchestrator_host == "a" and topo.nodes["x"].host == "a"  # the first host, by default
    rd = Path("/r")
    assert topo.directory(rd) == {ORCHESTRATOR: "ipc:///r/orch.sock", "x": "ipc:///r/x.sock",
                                  "y": "tcp://10.77.0.2:7202", "z": "tcp://10.77.0.2:7999"}
    assert topo.directory(rd, "y") == {ORCHESTRATOR: "tcp://10.77.0.1:7100", "x": "tcp://10.77.0.1:7101",
                                       "y": "ipc:///r/y.sock", "z": "ipc:///r/z.sock"}
    placement = topo.placement()
    assert placement.launcher("y") == ["ip", "netns", "exec", "hwb"] and placement.launcher("x") == []
    assert placement.tcp(ORCHESTRATOR) == "tcp://10.77.0.1:7100"


def test_a_moved_node_is_reached_at_its_new_host_with_its_port_index(tmp_path):
    topo = load(write(tmp_path, HOSTS + f'[nodes.x]\n{TESTNODE}[nodes.y]\n{TESTNODE}host = "b"\n'))
    placement = topo.placement()
    placement.move("y", "a")
    assert placement.tcp("y") == "tcp://10.77.0.1:7102"
    assert placement.view(ORCHESTRATOR, lambda n: f"ipc:///r/{n}.sock")["y"] == "ipc:///r/y.sock"
    with pytest.raises(ValueError, match="unknown host 'c'"):
        placement.move("y", "c")
    assert topo.placement().where["y"] == "b"  # the file's placement is not changed by a move


def test_without_hosts_everything_stays_ipc(tmp_path):
    topo = load(write(tmp_path, f"[nodes.x]\n{TESTNODE}"))
    assert not topo.placement().placed and topo.nodes["x"].host is None
    assert topo.directory(Path("/r")) == {"x": "ipc:///r/x.sock", ORCHESTRATOR: "ipc:///r/orch.sock"}


@pytest.mark.parametrize("text, expected", [
    (f'[nodes.x]\n{TESTNODE}host = "a"\n', "nodes.x.host: unknown host 'a' (hosts: none: add a [hosts.NAME]"),
    (HOSTS + f'[nodes.x]\n{TESTNODE}host = "c"\n', "nodes.x.host: unknown host 'c' (hosts: a, b)"),
    (HOSTS + f'[orchestrator]\nhost = "q"\n[nodes.x]\n{TESTNODE}', "orchestrator.host: unknown host 'q'"),
    ('[hosts.a]\naddress = "10.77.0.300"\n' + f'[nodes.x]\n{TESTNODE}',
     "hosts.a.address: '10.77.0.300' is not an IP address"),
    ('[hosts.a]\nport_base = 7000\n' + f'[nodes.x]\n{TESTNODE}', "hosts.a.address: missing or not a string"),
    ('[hosts.a]\naddress = "0.0.0.0"\n' + f'[nodes.x]\n{TESTNODE}', "hosts.a.address: '0.0.0.0': expected a unicast"),
    ('[hosts.a]\naddress = "10.0.0.1"\nport_base = 70000\n' + f'[nodes.x]\n{TESTNODE}',
     "hosts.a.port_base: expected a port number 1-65535, got 70000"),
    ('[hosts.a]\naddress = "10.0.0.1"\nexec = "ssh a"\n' + f'[nodes.x]\n{TESTNODE}', "hosts.a.exec: expected a list"),
    ('[hosts.a]\naddress = "10.0.0.1"\nname = "a"\n' + f'[nodes.x]\n{TESTNODE}', "hosts.a.name: unknown key"),
    (HOSTS + f'[nodes.x]\n{TESTNODE}port = 7100\n', "nodes.x.port: port clash: x and orch both use 10.77.0.1:7100"),
    (HOSTS + f'[nodes.x]\n{TESTNODE}port = 7300\n[nodes.y]\n{TESTNODE}port = 7300\n',
     "nodes.y.port: port clash: y and x both use 10.77.0.1:7300"),
    (HOSTS + f'[nodes.x]\n{TESTNODE}port = 0\n', "nodes.x.port: expected a port number 1-65535, got 0"),
    (HOSTS + f'[nodes.x]\n{TESTNODE}endpoint = "tcp://10.77.0.1:9000"\n',
     "nodes.x.endpoint: a placed node's endpoints follow from its host"),
])
def test_a_bad_placement_is_one_line_naming_the_key(tmp_path, text, expected):
    assert error_of(tmp_path, text).startswith(expected)


def test_two_hosts_on_one_address_clash_where_their_ports_meet(tmp_path):
    text = ('[hosts.a]\naddress = "127.0.0.2"\n[hosts.b]\naddress = "127.0.0.2"\nport_base = 7099\n'
            f'[nodes.x]\n{TESTNODE}[nodes.y]\n{TESTNODE}host = "b"\n')
    assert error_of(tmp_path, text) == "nodes.y.port: port clash: y and x both use 127.0.0.2:7101"
