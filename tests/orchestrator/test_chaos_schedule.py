"""`hwemu chaos` draws its fault schedule from the seed alone (FoundationDB's way: one seed, one run)."""

import subprocess
import sys
from pathlib import Path

from orchestrator.cli import chaos

HWEMU = str(Path(sys.executable).parent / "hwemu")


def test_the_same_seed_draws_the_same_schedule_and_another_seed_another():
    a = chaos.draw_schedule(5, 30, list(chaos.FAULT_KINDS), "io")
    assert a == chaos.draw_schedule(5, 30, list(chaos.FAULT_KINDS), "io")
    assert a != chaos.draw_schedule(6, 30, list(chaos.FAULT_KINDS), "io")
    assert [f["at"] for f in a] == sorted(f["at"] for f in a)
    assert all(chaos.WARMUP_S <= f["at"] <= 30 - chaos.SETTLE_S for f in a)


def test_every_kind_is_drawn_on_targets_of_the_scenario_and_nothing_held_back_is():
    kinds = {f["kind"] for s in range(40) for f in chaos.draw_schedule(s, 60, list(chaos.FAULT_KINDS), "io")}
    assert kinds == set(chaos.FAULT_KINDS)
    tg = chaos.targets("io")
    held = ["pause", "kill:cpu", "kill:os"]
    for s in range(40):
        for f in chaos.draw_schedule(s, 60, ["kill", "pause"], "io", held):
            assert f["kind"] == "kill" and f["target"] in tg["kill"]
            assert tg["_kinds"][f["target"]] not in ("cpu", "os")


def test_flow_faults_hit_flows_of_the_topology_and_the_sender_is_who_injects_them():
    tg = chaos.targets("io")
    assert "irq:timer0" in tg["drop"] and chaos._sender("irq:timer0") == "timer0"
    assert chaos._sender("io:os1.disk") == "os1"


def test_a_bad_fault_kind_or_scenario_is_refused_in_one_line():
    for args in (["--faults", "kill,meteor"], ["--scenario", "moon"]):
        done = subprocess.run([HWEMU, "chaos", "--seed", "1", *args], capture_output=True, text=True)
        assert done.returncode == 2, done.stderr
        assert "meteor" in done.stderr or "moon" in done.stderr
        assert "Traceback" not in done.stderr


def test_a_scheduled_fault_becomes_the_fault_managers_spec_or_the_nodes_fault_set():
    flow = {"kind": "drop", "target": "irq:timer0", "for_s": 1.5, "params": {"drop": 0.2}, "seed": 9}
    assert chaos.manager_spec(flow) == {"type": "flow", "flows": ["irq:timer0"], "drop": 0.2, "seed": 9,
                                        "for_s": 1.5}
    assert chaos.node_specs(flow) == [("timer0", {"id": "chaos-9", "seed": 9, "type": "flow",
                                                  "flows": ["irq:timer0"], "drop": 0.2})]
    part = {"kind": "partition", "target": "os1", "for_s": 1.0, "params": {"from": "disk0", "oneway": False},
            "seed": 3}
    assert chaos.manager_spec(part)["nodes"] == ["os1"] and chaos.manager_spec(part)["from"] == ["disk0"]
    assert [(n, b["peers"]) for n, b in chaos.node_specs(part)] == [("os1", ["disk0"]), ("disk0", ["os1"])]


def test_the_held_back_list_applies_to_the_default_kinds_and_can_be_overridden():
    assert chaos.parse_faults(None) == (list(chaos.FAULT_KINDS), chaos.HELD_BACK)
    assert chaos.parse_faults("kill,pause") == (["kill", "pause"], [])
    assert chaos.parse_faults("kill", "kill:cpu,kill:nic") == (["kill"], ["kill:cpu", "kill:nic"])
    assert chaos.parse_faults(None, "none") == (list(chaos.FAULT_KINDS), [])
    # the reproduce command draws the same schedule: it names what differs from the default
    assert "--faults" not in chaos.repro(3, 8, list(chaos.FAULT_KINDS), "io", list(chaos.HELD_BACK))
    assert chaos.repro(3, 8, ["kill"], "io", []).endswith("--faults kill --held-back none --scenario io")


def test_a_killed_programs_console_copy_leaves_out_the_ready_lines_of_servers_started_again():
    """A program killed by its OS's crash: its ``hwemu run`` copies the console until it learns of the
    crash, and the workload's servers, started again on the OS's next life, print their ready lines
    meanwhile (seed 84 of the io scenario). Those are not the program's output; its own lines still
    must be a prefix of the fault-free run's, and a server's own ready line stays its own."""
    mine = b"C1: line 1 of 8, work 0x092ad627\nC1: line 2 of 8, work 0x0f677fb0\n"
    copy = mine + b"udpecho listening on 7000\n[os1] pid 3 (timeshare) killed: os1 crashed\nkvstore ready: 12 keys\n"
    others = tuple(ready for *_, ready in chaos.SERVERS.values())
    out, said = chaos._os_lines(copy, others)
    assert out == mine and said == ["[os1] pid 3 (timeshare) killed: os1 crashed"]
    assert chaos._os_lines(copy)[0] == mine + b"udpecho listening on 7000\nkvstore ready: 12 keys\n"
    # a line of the program's own that is not in the fault-free output still shows (not a prefix)
    assert chaos._os_lines(mine + b"C1: line 2 of 8, work 0x0f677fb0\n", others)[0] != mine
