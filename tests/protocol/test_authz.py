"""protocol/authz.py: the rules table, as a matrix of request kind × sender × receiver on the
demo machine (compose/demo.toml), native and with the VMM interposed.

The receivers read the same table (nodes/runtime.py, the orchestrator); the
integration part (tests/integration/test_security.py) sends the matrix to a
running cluster and checks each node refuses exactly what the table refuses.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import nodes.streamer.node  # noqa: F401  (registers the streamer's kinds)
import protocol.hw  # noqa: F401  (registers the hardware kinds)
import protocol.recovery  # noqa: F401
import protocol.vmm  # noqa: F401
from orchestrator.topology import load
from protocol import authz
from protocol.messages import Message, known_kinds
from protocol.routes import RouteTable

REPO = Path(__file__).resolve().parents[2]
DEMO = load(REPO / "compose" / "demo.toml")
KINDS = {n: s.kind for n, s in DEMO.nodes.items()}
SENDERS = [*KINDS, "orch", "cli-1"]  # every node, the orchestrator, a client of the user
NATIVE = RouteTable(1, DEMO.routes)
# FIG. 3 / FIG. 5: the VMM under os1 (CPU, timer and the disk), os2 attached
INTERPOSED = NATIVE.changed({"trap:cpu0": "vmm", "priv:os1": "vmm", "priv:os2": "vmm", "priv:vmm": "cpu0",
                             "irq:timer0": "vmm", "trap:vmm.os1": "os1", "irq:vmm.os1": "os1",
                             "io:os1.disk": "vmm", "io:vmm.disk0": "disk0", "irq:disk0": "vmm"})

BODIES = {
    "mem_read": {"space": "os1", "addr": 0, "length": 1},
    "mem_write": {"space": "os1", "addr": 0, "data": b"x"},
    "mem_acquire": {"space": "os1", "gpn": 300, "write": True},
    "mem_pin": {"frames": [300], "owner": "os1"},
    "mem_unpin": {"frames": [300], "owner": "os1"},
}


def ctx(me: str, routes: RouteTable) -> authz.Context:
    return authz.Context(me, routes, KINDS, "orch")


def msg(kind: str, src: str, dst: str, flow: str | None = None) -> Message:
    return Message(kind, src, dst, 1, dict(BODIES.get(kind, {})), flow=flow, fseq=1 if flow else None)


def accepted(kind: str, routes: RouteTable, body: dict | None = None, flow_of=None) -> dict[str, set[str]]:
    """target -> the senders whose ``kind`` it accepts (flow_of(sender): the flow it rides on)."""
    out: dict[str, set[str]] = {}
    for target in [*KINDS, "orch"]:
        ok = set()
        for src in SENDERS:
            if src == target:
                continue
            m = msg(kind, src, target, flow_of(src) if flow_of else None)
            if body is not None:
                m.body = body
            if authz.allowed(m, ctx(target, routes)):
                ok.add(src)
        out[target] = ok
    return out


def test_every_kind_a_node_or_the_orchestrator_handles_has_its_rule():
    """No handler of a node kind is left to the open default by oversight."""
    handled = set()
    for path in (REPO / "nodes").rglob("*.py"):
        handled |= set(re.findall(r"async def on_([a-z_]+)\(", path.read_text()))
    handled |= {k for k in known_kinds() if k.startswith("ctl_")} | {"ready", "heartbeat"}
    assert sorted(handled - set(authz.RULES)) == []


def test_every_rule_in_the_table_is_for_a_registered_or_announced_kind():
    assert sorted(set(authz.RULES) - set(known_kinds())) == []


@pytest.mark.parametrize("routes", [NATIVE, INTERPOSED], ids=["native", "interposed"])
@pytest.mark.parametrize("kind", sorted(authz.RULES))
def test_the_orchestrator_passes_every_rule_and_nobody_else_passes_the_orchestrators(kind, routes):
    got = accepted(kind, routes)
    for target, senders in got.items():
        if target != "orch":
            assert "orch" in senders, (kind, target)
    if authz.RULES[kind] is authz.ORCH_ONLY:
        assert got == {t: ({"orch"} if t != "orch" else set()) for t in got}


@pytest.mark.parametrize("kind", sorted(authz.RULES))
def test_a_client_may_only_query_and_ask_what_the_user_asks(kind):
    rule = authz.RULES[kind]
    for target, senders in accepted(kind, NATIVE).items():
        assert ("cli-1" in senders) == (rule in (authz.ANY, authz.USER)), (kind, target)


@pytest.mark.parametrize("kind", sorted(k for k in authz.RULES if k.startswith("ctl_")))
def test_no_node_may_steer_the_cluster(kind):
    assert accepted(kind, NATIVE)["orch"] == {"cli-1"}


@pytest.mark.parametrize("routes", [NATIVE, INTERPOSED], ids=["native", "interposed"])
@pytest.mark.parametrize("kind", ["mem_read", "mem_write", "mem_acquire"])
def test_os1s_memory_is_reached_by_os1_the_vmm_the_cpu_and_os1s_devices_only(kind, routes):
    want = {"orch", "os1", "vmm", "cpu0", "uart0", "timer0", "disk0", "nic0"}
    # a device reaches os1's space if an io:os1.* flow is routed to it, or it serves the VMM (io:vmm.*)
    if routes is INTERPOSED:  # io:os1.disk goes to the VMM now, but disk0 serves io:vmm.disk0
        assert routes.get("io:vmm.disk0") == "disk0"
    assert accepted(kind, routes)["memctl"] == want
    for space, owner in (("os2", "os2"), ("vmm", "vmm")):
        got = accepted(kind, routes, {**BODIES[kind], "space": space})["memctl"]
        assert "os1" not in got and {owner, "orch"} <= got


def test_os2_reaches_no_byte_of_os1_by_any_memory_request():
    for kind in ("mem_read", "mem_write", "mem_acquire"):
        for routes in (NATIVE, INTERPOSED):
            assert "os2" not in accepted(kind, routes)["memctl"]
    for kind in ("mem_pin", "mem_unpin", "mem_transfer", "mem_set_map", "mem_set_identity", "mem_destroy_space",
                 "mem_owners"):
        assert "os2" not in accepted(kind, NATIVE)["memctl"], kind
    assert "os2" in accepted("mem_pin", NATIVE, {"frames": [800], "owner": "os2"})["memctl"]  # its own: checked there


@pytest.mark.parametrize("kind", ["cpu_resume", "cpu_save", "tlb_write", "tlb_flush", "cpu_preempt", "cpu_halt",
                                  "irq_mask"])
def test_the_cpu_obeys_whoever_the_priv_route_names_on_that_flow_only(kind):
    on_own_priv = lambda src: f"priv:{src}"  # noqa: E731 - each sender on its own priv flow
    assert accepted(kind, NATIVE, flow_of=on_own_priv)["cpu0"] == {"orch", "os1"}
    assert accepted(kind, INTERPOSED, flow_of=on_own_priv)["cpu0"] == {"orch", "vmm"}
    # and the VMM, once interposed, obeys os1 and os2 on theirs
    assert accepted(kind, INTERPOSED, flow_of=on_own_priv)["vmm"] == {"orch", "os1", "os2"}
    # a flow named after someone else, or no flow at all, is nobody's
    assert accepted(kind, NATIVE, flow_of=lambda src: "priv:os1")["cpu0"] == {"orch", "os1"}
    assert accepted(kind, NATIVE)["cpu0"] == {"orch"}


@pytest.mark.parametrize("kind,device,flow", [("uart_write", "uart0", "uart"), ("timer_set", "timer0", "timer"),
                                              ("disk_read", "disk0", "disk"), ("nic_send", "nic0", "nic")])
def test_a_device_takes_io_from_whoever_its_io_route_names(kind, device, flow):
    own_io = lambda src: f"io:{src}.{flow}"  # noqa: E731
    users = {"orch", "os1", "os2"} if device == "timer0" else {"orch", "os1"}  # os2 has io:os2.timer too
    assert accepted(kind, NATIVE, flow_of=own_io)[device] == users
    if flow == "disk":
        vmm_io = lambda src: f"io:{src}.disk0" if src == "vmm" else f"io:{src}.disk"  # noqa: E731
        assert accepted(kind, INTERPOSED, flow_of=vmm_io)[device] == {"orch", "vmm"}
        assert accepted(kind, INTERPOSED, flow_of=own_io)["vmm"] == {"orch", "os1"}


@pytest.mark.parametrize("kind,flow,receiver,sender", [("trap", "trap:cpu0", "os1", "cpu0"),
                                                       ("tick", "irq:timer0", "os1", "timer0"),
                                                       ("uart_rx", "irq:uart0", "os1", "uart0"),
                                                       ("disk_done", "irq:disk0", "os1", "disk0"),
                                                       ("nic_rx", "irq:nic0", "os1", "nic0")])
def test_an_interrupt_or_trap_comes_only_from_its_flows_sender_to_its_routed_receiver(kind, flow, receiver, sender):
    got = accepted(kind, NATIVE, flow_of=lambda src: flow)
    assert got[receiver] == {"orch", sender}
    assert all(got[t] == {"orch"} for t in got if t not in (receiver, "orch"))


def test_an_os_cannot_make_the_cpu_run_in_another_os_space():
    at = ctx("cpu0", NATIVE)
    resume = lambda src, space: Message("cpu_resume", src, "cpu0", 1, {"space": space}, flow=f"priv:{src}", fseq=1)  # noqa: E731
    assert authz.allowed(resume("os1", "os1"), at)
    assert not authz.allowed(resume("os1", "os2"), at)
    at = ctx("cpu0", INTERPOSED)
    assert authz.allowed(resume("vmm", "os2"), at)  # the VMM runs each OS it manages in its space


def test_route_drain_and_route_next_come_from_the_sender_of_every_flow_they_name():
    at = ctx("sink", NATIVE)
    assert authz.allowed(Message("route_drain", "os1", "uart0", 1, {"upto": {"io:os1.uart": 3}}), at)
    assert not authz.allowed(Message("route_drain", "os2", "uart0", 1, {"upto": {"io:os1.uart": 3}}), at)
    assert not authz.allowed(Message("route_next", "os2", "uart0", 1, {"next": {"io:os1.uart": 3}}), at)


def test_a_refusal_names_the_rule_and_the_sender():
    m = msg("mem_read", "os2", "memctl")
    text = authz.refusal(m, ctx("memctl", NATIVE))
    assert text.startswith("mem_read from os2 (os) refused by rule 'memory': accepted only from the space's own OS")


def test_during_a_route_change_what_either_table_routes_is_accepted():
    """A route change's senders switch one by one, so a receiver may hear a sender that
    switched before it (new table) or one that has not yet (old): until the change ends
    (``transition``), both tables are accepted; nothing else is."""
    interposed = NATIVE.changed({"io:os1.disk": "vmm", "irq:disk0": "vmm"})
    back = RouteTable(interposed.epoch + 1, NATIVE.routes)
    on_io = msg("disk_write", "os1", "disk0", flow="io:os1.disk")
    disk0 = ctx("disk0", interposed)
    assert not authz.RULES["disk_write"].allows(on_io, disk0)
    disk0.transition = back
    assert authz.RULES["disk_write"].allows(on_io, disk0)
    assert authz.RULES["disk_write"].allows(msg("disk_write", "os1", "disk0"), disk0)  # by the sender's flows
    assert not authz.RULES["disk_write"].allows(msg("disk_write", "os2", "disk0", flow="io:os1.disk"), disk0)
    assert not authz.RULES["cpu_resume"].allows(msg("cpu_resume", "os1", "disk0", flow="priv:os1"), disk0)
    disk0.transition = None
    assert not authz.RULES["disk_write"].allows(on_io, disk0)
