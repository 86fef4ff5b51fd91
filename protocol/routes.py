"""Route tables (DESIGN.md §2): a logical flow → the node that receives it.

A flow is named ``<class>:<subject>`` — ``irq:nic0``, ``io:os1.nic``,
``trap:cpu0``, ``priv:os1``, ``mem:os1``. The *subject*'s first dotted part
names the node that **sends** on the flow (``nic0`` raises ``irq:nic0``;
``os1`` issues ``io:os1.nic``), which is how the route authority knows whom
to pause during a route change. Tables are immutable; a change makes a new
table with ``epoch + 1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

from protocol.errors import ProtocolError

_FLOW = re.compile(r"^[a-z][a-z0-9_]*:[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_NODE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


def check_flow(flow: str) -> str:
    """Return ``flow`` if it is a well-formed flow name, else raise ProtocolError."""
    if not isinstance(flow, str) or not _FLOW.fullmatch(flow):
        raise ProtocolError("bad_flow", f"flow {flow!r} is not of the form class:node[.part...]", "flow")
    return flow


def check_node_name(name: str) -> str:
    """Return ``name`` if it is a valid node name (letters, digits, ``_``, ``-``)."""
    if not isinstance(name, str) or not _NODE.fullmatch(name):
        raise ProtocolError("bad_node", f"node name {name!r} must start with a letter and use [A-Za-z0-9_-]", "node")
    return name


def flow_sender(flow: str) -> str:
    """The node that emits on ``flow``: ``irq:nic0`` → ``nic0``, ``io:os1.nic`` → ``os1``."""
    return check_flow(flow).split(":", 1)[1].split(".", 1)[0]


@dataclass(frozen=True)
class RouteTable:
    """An immutable flow → node table with its epoch."""

    epoch: int = 0
    routes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for flow, node in self.routes.items():
            check_flow(flow)
            check_node_name(node)
        object.__setattr__(self, "routes", dict(self.routes))

    def lookup(self, flow: str) -> str:
        """The receiver of ``flow``.

        Raises:
            ProtocolError: no route for that flow.
        """
        try:
            return self.routes[flow]
        except KeyError:
            raise ProtocolError("no_route", f"no route for flow {flow!r} at epoch {self.epoch}", "flow") from None

    def get(self, flow: str) -> str | None:
        return self.routes.get(flow)

    def changed(self, changes: Mapping[str, str]) -> "RouteTable":
        """A new table (epoch + 1) with ``changes`` applied."""
        routes = dict(self.routes)
        routes.update(changes)
        return RouteTable(self.epoch + 1, routes)

    def to_wire(self) -> dict:
        return {"epoch": self.epoch, "routes": dict(self.routes)}

    @classmethod
    def from_wire(cls, data: Mapping) -> "RouteTable":
        epoch = data.get("epoch") if isinstance(data, Mapping) else None
        if (not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0
                or not isinstance(data.get("routes"), Mapping)):
            raise ProtocolError("bad_routes", "expected {epoch: int, routes: {flow: node}}", "routes")
        return cls(data["epoch"], data["routes"])
