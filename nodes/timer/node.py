"""The ``timer`` node: the machine's interval timer and clock (DESIGN.md §3,
Devices; flows in :mod:`protocol.hw`).

Message interface:

- ``timer_set`` {period_ms} — start (or restart, or with 0 stop) the periodic
  ``tick`` {n, time_ns} on ``irq:<name>``. ``n`` counts the ticks this node
  has emitted since it started (1, 2, 3, ... across restarts of the period),
  so a receiver that counts too sees whether it missed any.
- ``timer_alarm`` {id, delay_ms} — one ``alarm`` {id, time_ns} on
  ``irq:<name>`` after the delay. Arming an id that is still pending re-arms
  it (the earlier one never fires).
- ``timer_now`` — reply ``ok`` {data: {"time_ns": wall clock in ns}}.

``timer_set``/``timer_alarm`` arrive on ``io:<os>.timer`` (not answered) or
directly (answered ``ok``). ``time_ns`` is the host's wall clock
(``time.time_ns()``) when the interrupt was raised.

Ticks are scheduled at ``start + k * period`` on trio's monotonic clock, so
they do not drift however long each emit takes. If the receiver is slow, the
emit back-pressures; deadlines that passed meanwhile are skipped, not fired
in a burst (``stats``: ``ticks_missed``), as a real timer's overrun.

Option: ``period_ms`` (default 0 = off) starts ticking at boot.

Fault (``fault_set`` type ``clock``, CONTRACTS.md; ``hwemu fault clock``):
``skew_ms`` is added to every wall-clock time this node reports (``time_ns``
of ticks, alarms and ``timer_now``), as a battery-backed clock that is off;
several clock faults add up; ``fault_clear`` puts it right. Deadlines stay on
the monotonic clock: a skew moves what the clock says, not when ticks come.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import trio

import protocol.hw  # noqa: F401  (registers the device message kinds)
from nodes.options import Option, number
from nodes.runtime import Node, NodeConfig
from protocol.errors import ProtocolError
from protocol.messages import Message

log = logging.getLogger("hwemu.timer")


def _duration_ms(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ProtocolError("bad_field", f"expected a finite number of milliseconds >= 0, got {value!r}", where)
    return float(value)


class Timer(Node):
    """The timer device. See the module docstring for its messages."""

    kind = "timer"
    OPTIONS = {"period_ms": Option(number(min=0), 0)}

    def __init__(self, cfg: NodeConfig):
        super().__init__(cfg)
        self.irq_flow = f"irq:{cfg.name}"
        self.boot_period_ms = float(self.options["period_ms"])
        self.period_ms = 0.0
        self.ticks = 0
        self.ticks_missed = 0
        self.unrouted = 0  # interrupts raised while irq:<name> had no route
        self.alarms_fired = 0
        self._ticker: trio.CancelScope | None = None
        self._alarms: dict[int, trio.CancelScope] = {}
        # kind_faults (nodes/runtime.py): clock fault id -> its skew in ns

    def wall_ns(self) -> int:
        """The wall clock this timer reports: the host's, plus any clock fault's skew."""
        return time.time_ns() + sum(self.kind_faults.values())

    def fault_clock(self, spec: dict[str, Any]) -> None:
        """``fault_set`` type ``clock``: ``skew_ms`` added to the wall clock it reports."""
        skew = spec.get("skew_ms")
        if isinstance(skew, bool) or not isinstance(skew, (int, float)) or not math.isfinite(skew):
            raise ProtocolError("bad_fault", f"skew_ms must be a finite number, got {skew!r}", "body.skew_ms")
        self.kind_faults[spec["id"]] = round(skew * 1_000_000)

    async def work(self, nursery: trio.Nursery) -> None:
        if self.boot_period_ms > 0:
            self._set_period(self.boot_period_ms)

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(period_ms=self.period_ms, ticks=self.ticks, ticks_missed=self.ticks_missed,
                 alarms_pending=len(self._alarms), alarms_fired=self.alarms_fired, unrouted=self.unrouted,
                 skew_ms=sum(self.kind_faults.values()) / 1e6)
        return s

    async def _raise_irq(self, kind: str, body: dict[str, Any]) -> bool:
        """Emit on ``irq:<name>``; False (and counted) if nobody takes it."""
        try:
            await self.emit(self.irq_flow, kind, body)
        except ProtocolError:  # no route (or it went while a route change held the emit)
            self.unrouted += 1
            return False
        return True

    # -- periodic tick ------------------------------------------------------------

    async def on_timer_set(self, msg: Message) -> None:
        self._set_period(_duration_ms(msg.body["period_ms"], "body.period_ms"))
        if msg.flow is None:
            await self.party.reply(msg, "ok", {"data": {"period_ms": self.period_ms}})

    def _set_period(self, period_ms: float) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        self.period_ms = period_ms
        if period_ms > 0:
            self._ticker = trio.CancelScope()
            self.nursery.start_soon(self._tick_loop, self._ticker, period_ms / 1000)

    async def _tick_loop(self, scope: trio.CancelScope, period: float) -> None:
        with scope:
            start = trio.current_time()
            k = 1
            while True:
                await trio.sleep_until(start + k * period)
                if await self._raise_irq("tick", {"n": self.ticks + 1, "time_ns": self.wall_ns()}):
                    self.ticks += 1
                # skip deadlines that passed while the emit waited: no burst of stale ticks
                due = int((trio.current_time() - start) / period) + 1
                nxt = max(k + 1, due)
                self.ticks_missed += nxt - k - 1
                k = nxt

    # -- one-shot alarms ------------------------------------------------------------

    async def on_timer_alarm(self, msg: Message) -> None:
        alarm_id = msg.body["id"]
        delay = _duration_ms(msg.body["delay_ms"], "body.delay_ms") / 1000
        old = self._alarms.pop(alarm_id, None)
        if old is not None:
            old.cancel()
        scope = self._alarms[alarm_id] = trio.CancelScope()
        self.nursery.start_soon(self._alarm, alarm_id, delay, scope)
        if msg.flow is None:
            await self.party.reply(msg, "ok", {"data": {"id": alarm_id}})

    async def _alarm(self, alarm_id: int, delay: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(delay)
            # fired: a re-arm from now on is a new alarm, not a cancellation of this one
            if self._alarms.get(alarm_id) is scope:
                del self._alarms[alarm_id]
            if await self._raise_irq("alarm", {"id": alarm_id, "time_ns": self.wall_ns()}):
                self.alarms_fired += 1

    # -- clock ----------------------------------------------------------------------

    async def on_timer_now(self, msg: Message) -> None:
        await self.party.reply(msg, "ok", {"data": {"time_ns": self.wall_ns()}})
