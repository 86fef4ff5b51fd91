"""The CPU node's own options (``quantum``, ``slice``): a bad value stops the
node with a message naming the option, before it binds anything."""

from __future__ import annotations

import pytest

from nodes.cpu.node import CpuNode
from nodes.errors import OptionError
from nodes.runtime import NodeConfig


def config(tmp_path, **options) -> NodeConfig:
    return NodeConfig(name="cpu0", kind="cpu", endpoint=f"ipc://{tmp_path}/cpu0", directory={}, options=options)


@pytest.mark.parametrize("options, message", [
    ({"quantum": 0}, "cpu cpu0: option 'quantum': expected an integer >= 1, got 0"),
    ({"quantum": 100, "slice": 200}, r"cpu cpu0: option 'slice': expected 1..quantum \(100\), got 200"),
    ({"slice": 0}, r"cpu cpu0: option 'slice': expected an integer >= 1 or nothing, got 0"),
    ({"tlb": True}, r"cpu cpu0: option 'tlb': expected an integer >= 1, got True"),
])
def test_a_bad_quantum_or_slice_stops_the_node_naming_it(tmp_path, options, message):
    with pytest.raises(OptionError, match=message):
        CpuNode(config(tmp_path, **options))
    assert not (tmp_path / "cpu0").exists()  # nothing was bound


def test_the_slice_defaults_to_1000_or_the_quantum_if_smaller(tmp_path):
    for options, want in (({}, 1000), ({"quantum": 300}, 300), ({"quantum": 5000, "slice": 64}, 64)):
        node = CpuNode(config(tmp_path, **options))
        try:
            assert node.slice == want
        finally:
            node.party.close()
