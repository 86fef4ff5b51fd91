"""Dual-mode device drivers of the OS (DESIGN.md §4).

A driver has a ``mode`` bit. In ``native`` mode it issues I/O straight to the
device node on the flow ``io:<os>.<device>``; in ``virtual`` mode it forwards
to the VMM's driver for that device (the same flow, re-routed to the VMM by
the orchestrator, or ``virtual_flow`` if one is given). Switching mode
(:meth:`UartDriver.set_mode`) drains what is in flight, exports the driver's
state, flips the bit and imports the state on the other side.

The driver only needs an *emitter*: something with ``emit(flow, kind, body)``
and ``emit_request(flow, kind, body, timeout=)`` (the OS node).
"""

from __future__ import annotations

from typing import Any, Protocol

NATIVE, VIRTUAL = "native", "virtual"
UNCONFIRMED_MAX = 64 * 1024  # console bytes kept for a re-send before the driver asks the UART what it has
MODES = (NATIVE, VIRTUAL)


class Emitter(Protocol):
    async def emit(self, flow: str, kind: str, body: dict[str, Any]) -> int: ...

    async def emit_request(self, flow: str, kind: str, body: dict[str, Any], *, timeout: float = 5.0) -> Any: ...


class DualModeDriver:
    """What every dual-mode driver shares: the mode bit, the flow it picks,
    and the switch (drain, export the state, flip the bit, import the state).

    A subclass names its ``device`` and may override :meth:`quiesce` (wait
    until nothing is in flight), :meth:`after_switch` (re-program the device
    from the other side), :meth:`export_state` and :meth:`import_state`.
    """

    device = "?"

    def __init__(self, node: Emitter, os_name: str, mode: str = NATIVE, virtual_flow: str | None = None):
        if mode not in MODES:
            raise ValueError(f"driver mode must be one of {MODES}, got {mode!r}")
        self.node = node
        self.mode = mode
        self.native_flow = f"io:{os_name}.{self.device}"
        self.virtual_flow = virtual_flow or self.native_flow

    @property
    def flow(self) -> str:
        return self.native_flow if self.mode == NATIVE else self.virtual_flow

    async def quiesce(self) -> None:
        """Wait until no request of this driver is in flight (override)."""

    async def after_switch(self) -> None:
        """Bring the device up to date through the new mode (override)."""

    def export_state(self) -> dict[str, Any]:
        return {"device": self.device, "mode": self.mode}

    def import_state(self, state: dict[str, Any]) -> None:
        """Take over the state exported before the switch (override)."""

    async def set_mode(self, mode: str) -> dict[str, Any]:
        """Drain, export the state, flip the mode bit, import it; returns the state."""
        if mode not in MODES:
            raise ValueError(f"driver mode must be one of {MODES}, got {mode!r}")
        if mode == self.mode:
            return self.export_state()
        await self.quiesce()
        state = self.export_state()
        self.mode = mode
        self.import_state(state)
        await self.after_switch()
        return self.export_state()


class UartDriver(DualModeDriver):
    """The console driver: ``uart_write`` out, ``uart_sync`` to drain.

    Attributes:
        mode: ``native`` or ``virtual``.
        written: bytes handed to the device (or the VMM) so far.
        pending: writes emitted since the last completed :meth:`sync`.
    """

    device = "uart"

    def __init__(self, node: Emitter, os_name: str, mode: str = NATIVE, virtual_flow: str | None = None,
                 writer: str | None = None):
        super().__init__(node, os_name, mode, virtual_flow)
        self.written = 0
        self.writes = 0
        self.pending = 0
        self.syncs = 0
        self.resets = 0
        # the console is one byte stream per OS life (``writer``): each write says where it
        # starts in it, and what the device has not confirmed is kept to be sent again if the
        # device restarts (nodes/uart: a stream is logged exactly once)
        self.writer = writer
        self.unconfirmed = bytearray()  # written since ``confirmed``
        self.confirmed = 0  # stream offset the device's log is known to hold

    async def write(self, data: bytes) -> None:
        """Queue bytes for the console (ordered with every other write)."""
        if not data:
            return
        body: dict[str, Any] = {"data": bytes(data)}
        if self.writer is not None:
            body.update(writer=self.writer, at=self.written)
            self.unconfirmed += data
        await self.node.emit(self.flow, "uart_write", body)
        self.written += len(data)
        self.writes += 1
        self.pending += 1
        if len(self.unconfirmed) > UNCONFIRMED_MAX:
            await self.sync()  # what the log holds need not be kept

    async def sync(self, timeout: float = 10.0) -> int:
        """Wait until every write sent so far is in the device's log; returns
        the device's ``logged`` count."""
        body = {"writer": self.writer} if self.writer is not None else {}
        reply = await self.node.emit_request(self.flow, "uart_sync", body, timeout=timeout)
        self.pending = 0
        self.syncs += 1
        data = reply.body.get("data") or {}
        self._confirm(data.get("have"))
        return int(data.get("logged", 0))

    def _confirm(self, have: Any) -> None:
        if isinstance(have, int) and have > self.confirmed:
            del self.unconfirmed[:have - self.confirmed]
            self.confirmed = have

    async def reset(self) -> dict[str, Any]:
        """The UART restarted: what it had received but not logged died with it."""
        self.resets += 1
        return await self.resend()

    async def resend(self) -> dict[str, Any]:
        """Ask where the log ends in this OS's stream and send the rest again from
        there (the UART holds back, meanwhile, what reached it past the gap)."""
        if self.writer is None:
            return {"resent": 0}
        reply = await self.node.emit_request(self.flow, "uart_sync", {"writer": self.writer}, timeout=10.0)
        self._confirm((reply.body.get("data") or {}).get("have"))
        rest = bytes(self.unconfirmed)
        await self.node.emit(self.flow, "uart_write", {"data": rest, "writer": self.writer, "at": self.confirmed,
                                                       "resync": True})
        return {"resent": len(rest), "from": self.confirmed}

    async def after_switch(self) -> None:
        """The other way may have lost bytes in flight (a VMM that died): re-send them."""
        await self.resend()

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "written": self.written, "writes": self.writes, "syncs": self.syncs,
                "resets": self.resets, "unconfirmed": len(self.unconfirmed)}


class TimerDriver(DualModeDriver):
    """The interval timer: ``timer_set`` / ``timer_alarm`` on ``io:<os>.timer``."""

    device = "timer"

    def __init__(self, node: Emitter, os_name: str, mode: str = NATIVE, virtual_flow: str | None = None):
        super().__init__(node, os_name, mode, virtual_flow)
        self.period_ms = 0.0

    async def set_period(self, period_ms: float) -> None:
        await self.node.emit(self.flow, "timer_set", {"period_ms": float(period_ms)})
        self.period_ms = float(period_ms)

    def export_state(self) -> dict[str, Any]:
        return {**super().export_state(), "period_ms": self.period_ms}

    def import_state(self, state: dict[str, Any]) -> None:
        self.period_ms = float(state.get("period_ms", self.period_ms))

    async def after_switch(self) -> None:
        """The period is re-programmed on the other side."""
        if self.period_ms > 0:
            await self.set_period(self.period_ms)

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "period_ms": self.period_ms}
