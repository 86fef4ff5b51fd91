"""The orchestrator's control requests (``ctl_*``): one registry, one dispatch.

A control request is a message kind the CLI (or a test, or a tool) sends to
the orchestrator, with a body schema and a handler. Whoever owns a request
declares all three in one place and registers it; the orchestrator's inbox
looks the kind up here, checks nothing else, and calls
``await handler(orch, **body)``, whose return value is the ``data`` of the
``ok`` reply. A handler refuses by raising (see
:meth:`orchestrator.cluster.Orchestrator.control` for how each exception
becomes an ``error`` reply).

Two ways to register, for plain functions (a choreography's module, the
fault manager, the tracer):

    @control("ctl_vmm_load", host=Field("str", required=False))
    async def vmm_load(orch, host="os1"): ...

    register("ctl_fault_list", list_faults)          # an existing function

This module imports nothing of the orchestrator, so anything may register
without an import cycle (tests/test_layering.py checks there is none).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from protocol.messages import Field
from protocol.messages import register as register_schema
from protocol.messages import unregister as unregister_schema

Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class ControlRequest:
    """One control request: its kind, its handler and where it was declared."""

    kind: str
    handler: Handler
    module: str


REQUESTS: dict[str, ControlRequest] = {}


def register(kind: str, handler: Handler, /, **fields: Field | str) -> Handler:
    """Make ``handler(orch, **body)`` the handler of control request ``kind``
    and declare its body schema (:func:`protocol.messages.register`).

    Raises:
        ValueError: ``kind`` does not start with ``ctl_`` or is registered twice
            (two modules claiming one request is a bug, found at import).
    """
    if not kind.startswith("ctl_"):
        raise ValueError(f"control request kinds start with 'ctl_', got {kind!r}")
    known = REQUESTS.get(kind)
    if known is not None and known.handler is not handler:
        raise ValueError(f"control request {kind!r} is registered twice ({known.module} and {handler.__module__})")
    register_schema(kind, **fields)
    REQUESTS[kind] = ControlRequest(kind, handler, handler.__module__)
    return handler


def unregister(kind: str, /) -> None:
    """Forget control request ``kind`` and its schema (tests register requests for a while)."""
    REQUESTS.pop(kind, None)
    unregister_schema(kind)


def control(kind: str, /, **fields: Field | str) -> Callable[[Handler], Handler]:
    """Decorator form of :func:`register`."""
    def deco(handler: Handler) -> Handler:
        return register(kind, handler, **fields)
    return deco


def lookup(kind: str) -> ControlRequest | None:
    return REQUESTS.get(kind)


def kinds() -> list[str]:
    """Every registered control request, sorted."""
    return sorted(REQUESTS)


def optional(type_: str, **kw: Any) -> Field:
    """A field the body may leave out."""
    return Field(type_, required=False, **kw)
