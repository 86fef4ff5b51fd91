"""`hwemu status --watch`'s view of two status answers a second apart
(orchestrator/cli/watch.py): rates from the counters' differences, each
device's I/O in its own words, the faults as the fault manager lists them,
who controls each resource."""

from __future__ import annotations

from rich.console import Console

from orchestrator.cli.watch import render


def node(name, kind, stats, pid=1, msgs=(0, 0)):
    return {"name": name, "kind": kind, "pid": pid, "state": "running", "alive": True, "restarts": 0,
            "msgs_in": msgs[0], "msgs_out": msgs[1], "stats": stats}


def shown(data, prev, dt=2.0) -> str:
    console = Console(width=200, record=True)
    console.print(render(data, prev, dt))
    return console.export_text()


def status(nodes, faults=(), virt=None):
    return {"cluster": "c", "routes": {"epoch": 3}, "orchestrator": {"state": "running"}, "nodes": nodes,
            "faults": list(faults), "virt": virt}


def test_rates_per_device_faults_and_who_controls_what():
    before = status([node("disk0", "disk", {"reads": 0, "writes": 0, "blocks_read": 0, "blocks_written": 0}),
                     node("nic0", "nic", {"ports": {"7000": {"rx": 0, "tx": 0}}}),
                     node("cpu0", "cpu", {"mips": 1.0, "cpu_state": "running"})])
    now = status([node("disk0", "disk", {"reads": 10, "writes": 6, "blocks_read": 80, "blocks_written": 40},
                       msgs=(400, 200)),
                  node("nic0", "nic", {"ports": {"7000": {"rx": 20, "tx": 18}}}),
                  node("cpu0", "cpu", {"mips": 2.5, "cpu_state": "trapped"}, pid=2)],
                 faults=[{"id": "f1", "type": "disk", "seed": 7, "targets": ["disk0"], "ends": None, "eio": 0.1}],
                 virt={"vmm": {"loaded": True, "frames": 64, "host": "os1"}, "loans": [],
                       "resources": {"os1.cpu": "vmm", "os1.memory": "os1"}})
    text = shown(now, before)
    disk = next(line for line in text.splitlines() if "disk0" in line and "ops/s" in line)
    assert "200" in disk and "100" in disk and "8.0 ops/s, 60 blocks/s" in disk  # per second over 2 s
    assert "port 7000: rx 10/s tx 9.0/s" in text
    assert "2.50 MIPS, trapped" in text
    assert "f1" in text and "disk0" in text and "eio=0.1" in text and "at clear" in text
    assert "os1.cpu" in text and "VMM" in text and "OS (os1)" in text


def test_a_first_view_or_a_restarted_node_has_no_rate():
    first = shown(status([node("disk0", "disk", {"reads": 5}, msgs=(10, 10))]), None)
    assert "ops/s" not in first and "none reported" in first
    restarted = shown(status([node("disk0", "disk", {"reads": 5}, pid=9, msgs=(10, 10))]),
                      status([node("disk0", "disk", {"reads": 50}, pid=8, msgs=(900, 900))]))
    assert "ops/s" not in restarted  # its counters started over: no negative rate, no rate at all
