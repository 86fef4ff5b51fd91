"""The one error type of the message plane (STYLE.md: one error type that says
which field and what was expected)."""

from __future__ import annotations


class ProtocolError(Exception):
    """A message, frame or route table that does not follow the protocol.

    Attributes:
        reason: a short machine-readable code (``"bad_field"``, ``"unknown_kind"`` ...).
        field: the header or body field concerned, if any (``"body.flows"``).
        detail: the human sentence: what was found and what was expected.
    """

    def __init__(self, reason: str, detail: str, field: str | None = None):
        self.reason = reason
        self.field = field
        self.detail = detail
        where = f" [{field}]" if field else ""
        super().__init__(f"{reason}{where}: {detail}")


class RemoteError(Exception):
    """A peer answered a request with an ``error`` message."""

    def __init__(self, node: str, reason: str, detail: str):
        self.node = node
        self.reason = reason
        self.detail = detail
        super().__init__(f"{node}: {reason}: {detail}")


class RequestTimeout(Exception):
    """A request got no reply in time (the peer is down, slow or unroutable)."""

    reason = "timeout"

    def __init__(self, node: str, kind: str, seconds: float):
        self.node = node
        self.kind = kind
        super().__init__(f"no reply from {node} to {kind!r} within {seconds:g} s")
