"""Topology files (``compose/*.toml``): every error names the file and the key
(STYLE.md, CLI: "an error is one line a person can act on, with the file,
key or node it concerns")."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.topology import KINDS, ORCHESTRATOR, TopologyError, load, parse

ROOT = Path(__file__).resolve().parents[2]
TESTNODE = 'kind = "testnode"\nmodule = "tests.fixtures.streamer"\n'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topo.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> TopologyError:
    path = write(tmp_path, text)
    with pytest.raises(TopologyError) as info:
        load(path)
    exc = info.value
    assert exc.source == str(path)
    assert str(exc).startswith(f"{path}: ")
    return exc


def assert_key(exc: TopologyError, key: str) -> None:
    assert exc.key == key
    assert str(exc).startswith(f"{exc.source}: {key}: ")


def test_the_flip_topology_loads():
    topo = load(ROOT / "compose" / "flip.toml")
    assert (topo.name, sorted(topo.nodes), topo.routes) == ("flip", ["sink_a", "sink_b", "src"],
                                                            {"data:src": "sink_a"})
    assert topo.nodes["src"].module == "nodes.streamer"
    assert topo.nodes["src"].options == {"role": "streamer"}


def test_a_minimal_topology_takes_the_defaults(tmp_path):
    topo = load(write(tmp_path, f"[nodes.a]\n{TESTNODE}"))
    spec = topo.nodes["a"]
    assert (topo.name, spec.restart, spec.max_restarts, spec.endpoint, topo.routes) == (
        "topo", "on-failure", 3, None, {})
    assert topo.directory(Path("/r")) == {"a": "ipc:///r/a.sock", ORCHESTRATOR: "ipc:///r/orch.sock"}


def test_a_missing_file_names_the_file(tmp_path):
    with pytest.raises(TopologyError) as info:
        load(tmp_path / "nope.toml")
    assert str(info.value).startswith(f"{tmp_path / 'nope.toml'}: cannot read")


def test_bad_toml_names_the_file_and_the_line(tmp_path):
    exc = error_of(tmp_path, f"[nodes.a]\n{TESTNODE}restart = on-failure\n")
    assert exc.key is None
    assert "not valid TOML" in str(exc) and "line 4" in str(exc)


def test_a_file_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "topo.toml"
    path.write_bytes(b"[nodes.a]\nkind = \"\xff\"\n")
    with pytest.raises(TopologyError) as info:
        load(path)
    assert str(info.value) == f"{path}: not UTF-8 text"


def test_an_unknown_section_names_it(tmp_path):
    exc = error_of(tmp_path, f"[nodes.a]\n{TESTNODE}[rootes]\n\"data:a\" = \"a\"\n")
    assert_key(exc, "rootes")


def test_an_unknown_node_kind_names_the_key_and_lists_the_known_kinds(tmp_path):
    exc = error_of(tmp_path, '[nodes.g0]\nkind = "gpu"\n')
    assert_key(exc, "nodes.g0.kind")
    assert "'gpu'" in str(exc)
    for kind in KINDS:
        assert kind in exc.problem


def test_a_missing_kind_names_the_key(tmp_path):
    exc = error_of(tmp_path, '[nodes.a]\nmodule = "tests.fixtures.streamer"\n')
    assert_key(exc, "nodes.a.kind")


def test_a_module_that_cannot_be_imported_names_the_module_key(tmp_path):
    exc = error_of(tmp_path, '[nodes.a]\nkind = "testnode"\nmodule = "no_such_package.node"\n')
    assert_key(exc, "nodes.a.module")
    assert "'no_such_package.node' is not importable" in exc.problem


def test_a_route_to_a_missing_node_names_the_route(tmp_path):
    exc = error_of(tmp_path, f'[nodes.a]\n{TESTNODE}[routes]\n"irq:a" = "ghost"\n')
    assert_key(exc, "routes.irq:a")
    assert "'ghost'" in exc.problem


def test_a_route_with_a_dotted_flow_quotes_the_flow_in_the_key(tmp_path):
    exc = error_of(tmp_path, f'[nodes.a]\n{TESTNODE}[routes]\n"io:a.nic" = "ghost"\n')
    assert_key(exc, "routes.'io:a.nic'")


def test_a_bad_flow_name_names_the_route(tmp_path):
    exc = error_of(tmp_path, f'[nodes.a]\n{TESTNODE}[routes]\n"IRQ a" = "a"\n')
    assert_key(exc, "routes.IRQ a")
    assert "class:node" in exc.problem


@pytest.mark.parametrize("where,key", [("node", "nodes.a.restart"), ("default", "orchestrator.restart")])
def test_a_bad_restart_policy_names_the_key(tmp_path, where, key):
    text = f"[nodes.a]\n{TESTNODE}"
    text += 'restart = "sometimes"\n' if where == "node" else '[orchestrator]\nrestart = "sometimes"\n'
    exc = error_of(tmp_path, text)
    assert_key(exc, key)
    assert "never, on-failure, always" in exc.problem


@pytest.mark.parametrize("text", ['[cluster]\nname = "empty"\n', "[nodes]\n", 'nodes = "cpu0"\n'],
                         ids=["no-nodes-section", "empty-nodes", "nodes-not-a-table"])
def test_a_topology_without_nodes_names_the_nodes_key(tmp_path, text):
    assert_key(error_of(tmp_path, text), "nodes")


def test_the_reserved_name_orch_is_refused(tmp_path):
    exc = error_of(tmp_path, f"[nodes.{ORCHESTRATOR}]\n{TESTNODE}")
    assert_key(exc, f"nodes.{ORCHESTRATOR}")
    assert "reserved" in exc.problem


@pytest.mark.parametrize("name", ["0cpu", "cpu.0", "a b"])
def test_a_bad_node_name_names_the_node(tmp_path, name):
    exc = error_of(tmp_path, f'[nodes."{name}"]\n{TESTNODE}')
    assert_key(exc, f"nodes.{name}")


@pytest.mark.parametrize("line,key", [
    ("colour = 3", "nodes.a.colour"),
    ("max_restarts = -1", "nodes.a.max_restarts"),
    ("max_restarts = true", "nodes.a.max_restarts"),
    ('endpoint = "udp://x"', "nodes.a.endpoint"),
    ("options = 3", "nodes.a.options"),
])
def test_a_bad_node_key_names_it(tmp_path, line, key):
    assert_key(error_of(tmp_path, f"[nodes.a]\n{TESTNODE}{line}\n"), key)


def test_two_nodes_on_one_endpoint_name_the_second(tmp_path):
    text = (f'[nodes.a]\n{TESTNODE}endpoint = "tcp://127.0.0.1:7001"\n'
            f'[nodes.b]\n{TESTNODE}endpoint = "tcp://127.0.0.1:7001"\n')
    exc = error_of(tmp_path, text)
    assert_key(exc, "nodes.b.endpoint")
    assert "'a'" in exc.problem


@pytest.mark.parametrize("line,key", [("heartbeat = 0", "orchestrator.heartbeat"),
                                      ('ready_timeout = "soon"', "orchestrator.ready_timeout")])
def test_bad_orchestrator_settings_name_the_key(tmp_path, line, key):
    assert_key(error_of(tmp_path, f"[orchestrator]\n{line}\n[nodes.a]\n{TESTNODE}"), key)


def test_a_too_long_ipc_path_names_the_node_endpoint(tmp_path):
    topo = load(write(tmp_path, f"[nodes.a]\n{TESTNODE}"))
    run_dir = Path("/tmp") / ("d" * 100)
    with pytest.raises(TopologyError) as info:
        topo.check_run_dir(run_dir)
    assert_key(info.value, "nodes.a.endpoint")
    assert info.value.source == str(tmp_path / "topo.toml")
    assert "shorter run directory" in info.value.problem
    topo.check_run_dir(Path("/tmp/short"))  # a short one is fine


def test_parse_names_its_source_in_errors():
    with pytest.raises(TopologyError) as info:
        parse({"nodes": {}}, "<test topology>")
    assert str(info.value).startswith("<test topology>: nodes: ")


MEMCTL = '[nodes.memctl]\nkind = "memctl"\noptions = {{ frames = 1024, partitions = {{ {parts} }} }}\n'
OS = '[nodes.{name}]\nkind = "os"\noptions = {{ {memory}cpu = "cpu0" }}\n'


@pytest.mark.parametrize("parts,memory,problem", [
    ("os1 = [256, 512]", "memory = [256, 256], ",
     "[256, 256] does not match nodes.memctl.options.partitions.os1 = [256, 512] "
     "(the OS would boot with frames its memory controller does not give it)"),
    ("os2 = [768, 256]", "memory = [256, 512], ",
     "[256, 512], but memctl 'memctl' has no partition for os1 (add nodes.memctl.options.partitions.os1 = [256, 512])"),
    ("os1 = [256, 512]", "",
     "missing, but nodes.memctl.options.partitions.os1 = [256, 512] gives os1 that partition "
     "(give the same [first_frame, count] to both)"),
], ids=["different", "no-partition", "no-memory"])
def test_an_os_memory_that_disagrees_with_the_memctl_partition_names_the_file_and_key(tmp_path, parts, memory, problem):
    exc = error_of(tmp_path, MEMCTL.format(parts=parts) + OS.format(name="os1", memory=memory))
    assert_key(exc, "nodes.os1.options.memory")
    assert exc.problem == problem


def test_partitions_that_agree_and_an_os_booted_later_without_memory_load(tmp_path):
    text = (MEMCTL.format(parts="os1 = [256, 512]") + OS.format(name="os1", memory="memory = [256, 512], ")
            + OS.format(name="os2", memory=""))
    assert sorted(load(write(tmp_path, text)).nodes) == ["memctl", "os1", "os2"]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "compose").glob("*.toml")))
def test_every_shipped_topology_loads(name):
    assert load(ROOT / "compose" / name).nodes
