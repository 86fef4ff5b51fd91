"""`hwemu compose export`: the stack files kept in compose/ are what it writes today,
and what it writes says what the topology says (services, restarts, placement)."""

import json
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from orchestrator import swarm
from orchestrator.cli.compose import stack_path
from orchestrator.health import health
from orchestrator.topology import load, parse

ROOT = Path(__file__).resolve().parents[2]
TOPOLOGIES = sorted((ROOT / "compose").glob("*.toml"))


@pytest.mark.parametrize("topology", TOPOLOGIES, ids=lambda p: p.stem)
def test_shipped_stack_file_is_up_to_date(topology):
    kept = stack_path(topology)
    assert kept.exists(), f"missing {kept.relative_to(ROOT)}: hwemu compose export {topology.relative_to(ROOT)} -o ..."
    want = swarm.export(load(topology), topology.relative_to(ROOT).as_posix())
    assert kept.read_text() == want, (f"{kept.relative_to(ROOT)} is stale: run `hwemu compose export "
                                      f"{topology.relative_to(ROOT)} -o {kept.relative_to(ROOT)}`")


def test_cli_check_and_output(tmp_path):
    hwemu = [sys.executable, "-m", "orchestrator.cli.main", "compose", "export"]
    out = tmp_path / "native.stack.yml"
    done = subprocess.run([*hwemu, "compose/native.toml", "-o", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_text() == (ROOT / "compose" / "native.stack.yml").read_text()
    ok = subprocess.run([*hwemu, "compose/native.toml", "--check", "-o", str(out)], cwd=ROOT, capture_output=True)
    assert ok.returncode == 0
    out.write_text(out.read_text().replace("replicas: 1", "replicas: 2", 1))
    stale = subprocess.run([*hwemu, "compose/native.toml", "--check", "-o", str(out)], cwd=ROOT,
                           capture_output=True, text=True)
    assert stale.returncode == 1 and "run it with -o" in stale.stderr
    bad = subprocess.run([*hwemu, str(tmp_path / "nope.toml")], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_one_service_per_node_with_secret_health_and_host_network():
    topo = load(ROOT / "compose" / "demo.toml")
    data = swarm.stack(topo)
    assert data["version"].startswith("3")
    assert set(data["services"]) == set(topo.nodes)
    assert data["networks"] == {"hostnet": {"external": True, "name": "host"}}
    for name, svc in data["services"].items():
        assert svc["networks"] == ["hostnet"]
        assert svc["secrets"] == [{"source": f"{name}.json", "target": f"{name}.json", "mode": 0o400}]
        assert data["secrets"][f"{name}.json"] == {"file": f"${{HWEMU_RUN_DIR}}/conf/{name}.json"}
        assert svc["healthcheck"]["test"][:4] == ["CMD", "python3", "-m", "orchestrator.health"]
        assert f"-m {topo.nodes[name].module} --config" in svc["command"][2]
        assert svc["volumes"] == ["${HWEMU_RUN_DIR}:${HWEMU_RUN_DIR}"]
        # a deferred node (os2) is deployed, not started: `hwemu os boot` starts it
        assert svc["deploy"]["replicas"] == (1 if topo.nodes[name].autostart else 0)


def test_restart_policy_and_placement_come_from_the_topology():
    topo = parse({"cluster": {"name": "t"},
                  "hosts": {"h1": {"address": "127.0.0.1"}, "h2": {"address": "127.0.0.2"}},
                  "nodes": {"a": {"kind": "timer", "restart": "never"},
                            "b": {"kind": "timer", "restart": "always", "max_restarts": 7, "host": "h1"},
                            "c": {"kind": "timer", "host": "h2"}},  # placement: docs/hosts.md
                  "routes": {}})
    deploy = {n: s["deploy"] for n, s in swarm.stack(topo)["services"].items()}
    assert deploy["a"]["restart_policy"]["condition"] == "none"
    assert deploy["b"]["restart_policy"] == {"condition": "any", "delay": "1s", "max_attempts": 7}
    assert deploy["c"]["restart_policy"]["condition"] == "on-failure"
    assert deploy["c"]["placement"] == {"constraints": ["node.labels.hwemu.host == h2"]}
    assert deploy["b"]["placement"] == {"constraints": ["node.labels.hwemu.host == h1"]}
    assert deploy["a"]["placement"] == deploy["b"]["placement"]  # no host: the orchestrator's (the first)
    supervised = swarm.stack(topo, run_dir="/r", image="img", supervised=True)["services"]
    assert all(s["deploy"]["replicas"] == 0 and s["deploy"]["restart_policy"] == {"condition": "none"}
               for s in supervised.values())
    assert supervised["a"]["image"] == "img" and supervised["a"]["volumes"] == ["/r:/r"]


def test_yaml_writer_quotes_what_yaml_would_misread():
    text = swarm.to_yaml({"a": {"b": ["x: y", "#z", True, 3]}, "e": {}, "s": "yes"})
    assert text == 'a:\n  b: ["x: y", "#z", true, 3]\ne: {}\ns: "yes"'


def test_stack_name_is_per_run_directory(tmp_path):
    topo = load(ROOT / "compose" / "native.toml")
    one, two = swarm.stack_name(topo, tmp_path / "a"), swarm.stack_name(topo, tmp_path / "b")
    assert one != two and one.startswith("hwemu-native-")
    assert swarm.stack_name(topo, tmp_path / "a") == one


def test_healthcheck_pings_the_inbox(tmp_path):
    conf = tmp_path / "n.json"
    sock_path = tmp_path / "n.sock"
    conf.write_text(json.dumps({"endpoint": f"ipc://{sock_path}"}))
    assert health(str(conf)) == 1  # nobody listens
    with socket.socket(socket.AF_UNIX) as srv:
        srv.bind(str(sock_path))
        srv.listen()
        assert health(str(conf)) == 0
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        conf.write_text(json.dumps({"endpoint": f"tcp://127.0.0.1:{srv.getsockname()[1]}"}))
        assert health(str(conf)) == 0


def test_the_image_source_digest_covers_every_package_the_project_installs():
    """`swarm.PACKAGES` (what an image's `org.hwemu.source` label digests) is the project's package list
    (pyproject.toml): a package left out would change in an image without the label saying so."""
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert sorted(p.removesuffix("*") for p in include) == sorted(swarm.PACKAGES)
    digest = swarm.source_digest()
    assert len(digest) == 16 and digest == swarm.source_digest()
