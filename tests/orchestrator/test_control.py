"""The control-request registry (orchestrator/control.py) and the
orchestrator's one dispatch through it (no processes: handlers get a stand-in)."""

from __future__ import annotations

import pytest

from orchestrator import control
from orchestrator.cluster import Orchestrator
from protocol.errors import ProtocolError
from protocol.messages import Field, validate_body


async def _echo(orch, kind: str, body: dict) -> dict:
    return {"orch": orch, "kind": kind, "body": body}


def test_every_shipped_request_is_registered_once_with_its_module():
    kinds = control.kinds()
    for kind in ("ctl_status", "ctl_route_set", "ctl_request", "ctl_vmm_load", "ctl_interpose", "ctl_devirtualize",
                 "ctl_memory_borrow", "ctl_os_boot", "ctl_policy"):
        assert kind in kinds
    assert control.lookup("ctl_vmm_load").module == "orchestrator.choreographies.fig4_load_vmm"
    assert control.lookup("ctl_status").module == "orchestrator.cluster"


def test_registering_declares_the_schema_and_refuses_a_second_owner():
    control.register("ctl_test_echo", _echo, kind="str", body="dict")
    try:
        validate_body("ctl_test_echo", {"kind": "x", "body": {}})
        with pytest.raises(ProtocolError):
            validate_body("ctl_test_echo", {"kind": 3, "body": {}})
        control.register("ctl_test_echo", _echo)  # the same handler again: harmless (a module imported twice)

        async def other(orch):
            return {}

        with pytest.raises(ValueError, match="registered twice"):
            control.register("ctl_test_echo", other)
        with pytest.raises(ValueError, match="start with 'ctl_'"):
            control.register("test_echo", other)
    finally:
        control.unregister("ctl_test_echo")


async def test_the_orchestrator_dispatches_through_the_registry_and_a_body_may_hold_kind():
    control.register("ctl_test_echo2", _echo, kind=Field("str"), body="dict")
    try:
        stand_in = object()
        out = await Orchestrator.control(stand_in, "ctl_test_echo2", kind="os_ps", body={})
        assert out == {"orch": stand_in, "kind": "os_ps", "body": {}}
        with pytest.raises(ProtocolError, match="no control request 'ctl_nope'"):
            await Orchestrator.control(stand_in, "ctl_nope")
    finally:
        control.unregister("ctl_test_echo2")
