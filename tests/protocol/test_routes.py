"""Route tables (DESIGN.md §2): flow names, who sends on a flow, and tables
that change only by making a new table with the next epoch."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import ProtocolError
from protocol.routes import RouteTable, check_flow, check_node_name, flow_sender

node_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9_-]{0,10}\Z")
flow_classes = st.from_regex(r"\A[a-z][a-z0-9_]{0,6}\Z")
flow_parts = st.from_regex(r"\A[A-Za-z0-9_-]{1,6}\Z")


@st.composite
def flows(draw):
    sender = draw(node_names)
    rest = draw(st.lists(flow_parts, max_size=3))
    return f"{draw(flow_classes)}:" + ".".join([sender, *rest])


tables = st.builds(RouteTable, st.integers(min_value=0, max_value=2**40),
                   st.dictionaries(flows(), node_names, max_size=8))


@pytest.mark.parametrize("flow", ["irq:nic0", "io:os1.nic", "trap:cpu0", "priv:os1", "mem:os1",
                                  "data:src", "x_1:a-b.c_d.9"])
def test_well_formed_flow_names_are_accepted(flow):
    assert check_flow(flow) == flow


@pytest.mark.parametrize("flow", ["irq", ":nic0", "irq:", "IRQ:nic0", "1rq:nic0", "irq:nic0.", "irq:.nic0",
                                  "irq:nic 0", "irq:nic0:x", "irq::nic0", "", " irq:nic0", "irq:nic0\n",
                                  5, None, b"irq:nic0"])
def test_malformed_flow_names_are_bad_flow(flow):
    with pytest.raises(ProtocolError) as info:
        check_flow(flow)
    assert (info.value.reason, info.value.field) == ("bad_flow", "flow")


@pytest.mark.parametrize("flow,sender", [("irq:nic0", "nic0"), ("io:os1.nic", "os1"), ("trap:cpu0", "cpu0"),
                                         ("io:os1.nic.queue2", "os1"), ("data:src", "src")])
def test_flow_sender_is_the_first_part_of_the_subject(flow, sender):
    assert flow_sender(flow) == sender


def test_flow_sender_of_a_malformed_flow_is_bad_flow():
    with pytest.raises(ProtocolError) as info:
        flow_sender("nic0")
    assert info.value.reason == "bad_flow"


@given(flows())
def test_flow_sender_of_any_well_formed_flow_names_its_first_subject_part(flow):
    assert flow_sender(flow) == flow.split(":")[1].split(".")[0]


@pytest.mark.parametrize("name", ["", "0cpu", "cpu 0", "cpu.0", "cpu0\n", "a" * 65, 3, None])
def test_bad_node_names_are_bad_node(name):
    with pytest.raises(ProtocolError) as info:
        check_node_name(name)
    assert (info.value.reason, info.value.field) == ("bad_node", "node")


def test_a_table_copies_the_mapping_it_is_given():
    given_routes = {"irq:nic0": "os1"}
    table = RouteTable(1, given_routes)
    given_routes["irq:nic0"] = "vmm"
    assert table.lookup("irq:nic0") == "os1"


def test_lookup_of_an_unrouted_flow_is_no_route():
    with pytest.raises(ProtocolError) as info:
        RouteTable(4, {"irq:nic0": "os1"}).lookup("irq:timer0")
    assert (info.value.reason, info.value.field) == ("no_route", "flow")
    assert "epoch 4" in info.value.detail


def test_a_table_refuses_a_bad_flow_or_node():
    with pytest.raises(ProtocolError) as info:
        RouteTable(1, {"irq": "os1"})
    assert info.value.reason == "bad_flow"
    with pytest.raises(ProtocolError) as info:
        RouteTable(1, {"irq:nic0": "os 1"})
    assert info.value.reason == "bad_node"


@given(tables, st.dictionaries(flows(), node_names, max_size=5))
def test_changed_bumps_the_epoch_and_never_mutates_the_old_table(table, changes):
    before_epoch, before_routes = table.epoch, dict(table.routes)
    new = table.changed(changes)
    assert new.epoch == before_epoch + 1
    assert new.routes == {**before_routes, **changes}
    assert (table.epoch, table.routes) == (before_epoch, before_routes)
    assert new.routes is not table.routes


@given(tables)
def test_changed_with_no_changes_still_makes_a_new_epoch(table):
    new = table.changed({})
    assert (new.epoch, new.routes) == (table.epoch + 1, table.routes)


def test_changed_with_a_bad_flow_is_bad_flow_and_leaves_the_table():
    table = RouteTable(2, {"irq:nic0": "os1"})
    with pytest.raises(ProtocolError):
        table.changed({"not a flow": "vmm"})
    assert (table.epoch, table.routes) == (2, {"irq:nic0": "os1"})


@given(tables)
def test_a_table_survives_the_wire(table):
    frame = msgpack.packb(table.to_wire(), use_bin_type=True)
    assert RouteTable.from_wire(msgpack.unpackb(frame)) == table


@pytest.mark.parametrize("data,reason", [
    (None, "bad_routes"),
    ([1, {}], "bad_routes"),
    ({}, "bad_routes"),
    ({"epoch": 1}, "bad_routes"),
    ({"routes": {}}, "bad_routes"),
    ({"epoch": "1", "routes": {}}, "bad_routes"),
    ({"epoch": 1.0, "routes": {}}, "bad_routes"),
    ({"epoch": True, "routes": {}}, "bad_routes"),
    ({"epoch": -1, "routes": {}}, "bad_routes"),
    ({"epoch": 1, "routes": ["irq:nic0", "os1"]}, "bad_routes"),
    ({"epoch": 1, "routes": {"irq": "os1"}}, "bad_flow"),
    ({"epoch": 1, "routes": {7: "os1"}}, "bad_flow"),
    ({"epoch": 1, "routes": {"irq:nic0": 7}}, "bad_node"),
    ({"epoch": 1, "routes": {"irq:nic0": ""}}, "bad_node"),
])
def test_bad_wire_data_is_a_protocol_error(data, reason):
    with pytest.raises(ProtocolError) as info:
        RouteTable.from_wire(data)
    assert info.value.reason == reason
