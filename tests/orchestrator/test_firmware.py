"""FIG. 2b's ``[firmware]`` table: validation (errors name the file and key),
the boot memory maps (the VMM's frames and nested partitions hidden) and the
interposed routes the cluster starts with."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from orchestrator.choreographies.fig2b_boot import boot_maps, interposed_routes
from orchestrator.topology import TopologyError, load, parse

VMMBOOT = Path(__file__).resolve().parents[2] / "compose" / "vmmboot.toml"


def test_vmmboot_maps_hide_the_vmm_and_the_nested_partition_from_os1_and_route_everything_to_the_vmm():
    topo = load(VMMBOOT)
    assert topo.firmware == {"vmm_at_boot": True, "vmm_frames": [0, 64], "vmm_host": "os1"}
    assert boot_maps(topo) == {"os1": list(range(64, 768)), "os2": list(range(768, 1024))}
    routes = interposed_routes(topo)
    assert {f: routes[f] for f in ("trap:cpu0", "irq:timer0", "priv:os1", "priv:os2", "trap:vmm.os2",
                                   "irq:vmm.os1", "priv:vmm", "io:os1.uart")} == {
        "trap:cpu0": "vmm", "irq:timer0": "vmm", "priv:os1": "vmm", "priv:os2": "vmm", "trap:vmm.os2": "os2",
        "irq:vmm.os1": "os1", "priv:vmm": "cpu0", "io:os1.uart": "uart0"}


@pytest.mark.parametrize("edit, key, problem", [
    (lambda d: d["firmware"].update(vmm_frames=[0]), "firmware.vmm_frames", "expected [first_frame, count > 0]"),
    (lambda d: d["firmware"].update(vmm_host="cpu0"), "firmware.vmm_host", "expected an OS node (os1, os2)"),
    (lambda d: d["firmware"].update(colour="red"), "firmware.colour", "unknown key"),
    (lambda d: d["nodes"]["vmm"].update(autostart=False), "firmware.vmm_at_boot", "started at boot"),
    (lambda d: d["nodes"]["os2"]["options"].update(memory=[700, 400]), "nodes.os2.options.memory",
     "overlaps the memory of os1 without one containing the other"),
])
def test_a_bad_firmware_table_names_its_key(edit, key, problem):
    data = tomllib.loads(VMMBOOT.read_text())
    edit(data)
    with pytest.raises(TopologyError) as info:
        parse(data, "vmmboot.toml")
    assert info.value.key == key and problem in info.value.problem
