"""Node options: one schema per kind (``OPTIONS``, nodes/options.py), checked by
the runtime before the kind reads them; a bad value stops the node with one
line naming the node, the option and the value, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nodes.errors import OptionError
from nodes.options import Option, boolean, integer, list_of, mapping, number, one_of, optional, pair, string, validate

ROOT = Path(__file__).resolve().parents[2]

SCHEMA = {
    "frames": Option(integer(min=1)),
    "tick_ms": Option(number(above=0), 10),
    "memory": Option(pair(integer(min=0), "first_frame, count"), [0, 0]),
    "boot": Option(optional(list_of(integer(min=0), distinct=True)), None),
    "parts": Option(optional(mapping(pair(integer(min=0)))), None),
    "mode": Option(one_of(512, 4096), 512),
    "flag": Option(boolean(), False),
    "name": Option(string(), "cpu0"),
}


def test_the_defaults_fill_what_is_not_given_and_the_rest_passes_through():
    got = validate("os", "os1", SCHEMA, {"frames": 4, "extra": "kept"})
    assert got == {"frames": 4, "extra": "kept", "tick_ms": 10, "memory": [0, 0], "boot": None, "parts": None,
                   "mode": 512, "flag": False, "name": "cpu0"}


@pytest.mark.parametrize("given, message", [
    ({}, "os os1: option 'frames': expected an integer >= 1 (it is required), got None"),
    ({"frames": True}, "os os1: option 'frames': expected an integer >= 1, got True"),
    ({"frames": 1, "tick_ms": 0}, "os os1: option 'tick_ms': expected a number > 0, got 0"),
    ({"frames": 1, "tick_ms": float("nan")}, "os os1: option 'tick_ms': expected a number > 0, got nan"),
    ({"frames": 1, "memory": [1, -1]}, "option 'memory': expected [first_frame, count], each an integer >= 0"),
    ({"frames": 1, "boot": [3, 3]}, "option 'boot': expected a list without repeats, each an integer >= 0 or nothing"),
    ({"frames": 1, "parts": {"os1": [0]}}, "option 'parts': expected a table of names to [first, count]"),
    ({"frames": 1, "mode": 1024}, "option 'mode': expected 512 or 4096, got 1024"),
    ({"frames": 1, "flag": 1}, "option 'flag': expected true or false, got 1"),
    ({"frames": 1, "name": ""}, "option 'name': expected a non-empty string, got ''"),
])
def test_a_bad_value_names_node_option_and_value(given, message):
    with pytest.raises(OptionError) as caught:
        validate("os", "os1", SCHEMA, given)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


# one bad option per node kind, as `hwemu up` starts the node: a process with a config file
BAD = [
    ("nodes.cpu", "cpu", {"quantum": 0}, "option 'quantum'"),
    ("nodes.memctl", "memctl", {"frames": "many"}, "option 'frames'"),
    ("nodes.uart", "uart", {"port": 70000}, "option 'port'"),
    ("nodes.timer", "timer", {"period_ms": -1}, "option 'period_ms'"),
    ("nodes.disk", "disk", {"block_size": 1000}, "option 'block_size'"),
    ("nodes.nic", "nic", {"mtu": 0}, "option 'mtu'"),
    ("nodes.guest_os", "os", {"tick_ms": "fast"}, "option 'tick_ms'"),
    ("nodes.vmm", "vmm", {"slice_ticks": False}, "option 'slice_ticks'"),
    ("nodes.streamer", "streamer", {"role": "both"}, "option 'role'"),
]


@pytest.mark.parametrize("module, kind, options, named", BAD, ids=[b[1] for b in BAD])
def test_every_kind_reports_a_bad_option_in_one_line_and_exits_2(tmp_path, module, kind, options, named):
    config = tmp_path / "node.json"
    config.write_text(json.dumps({"name": f"{kind}9", "kind": kind, "endpoint": f"ipc://{tmp_path}/{kind}9",
                                  "directory": {}, "options": options, "run_dir": str(tmp_path)}))
    done = subprocess.run([sys.executable, "-m", module, "--config", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"{kind} {kind}9: {named}: expected "), lines[0]
    assert repr(next(iter(options.values()))) in lines[0]
    assert not (tmp_path / f"{kind}9").exists()  # checked before the inbox was bound
