"""The timer's tick schedule (nodes/timer, DESIGN.md §3) on trio's mock
clock: ticks sit on the grid ``start + k * period`` however long each emit
takes, and deadlines missed while a slow receiver back-pressured are skipped,
not fired in a burst. No processes: ``emit`` is replaced by a recorder."""

from __future__ import annotations

import pytest
import trio

from nodes.runtime import NodeConfig
from nodes.timer.node import Timer
from protocol.routes import RouteTable

PERIOD = 0.010


def make_timer(tmp_path, delays: dict[int, float]) -> tuple[Timer, list[tuple[float, int]]]:
    """A timer whose emit records (time, n) and then takes ``delays[n]`` s (default 3 ms)."""
    cfg = NodeConfig(name="timer0", kind="timer", endpoint=f"ipc://{tmp_path}/timer0.sock",
                     directory={}, routes={"epoch": 1, "routes": {"irq:timer0": "os1"}})
    timer = Timer(cfg)
    sent: list[tuple[float, int]] = []

    async def emit(flow, kind, body):
        assert (flow, kind) == ("irq:timer0", "tick")
        timer.routes.lookup(flow)  # as Node.emit does: no route raises ProtocolError
        sent.append((trio.current_time(), body["n"]))
        await trio.sleep(delays.get(body["n"], 0.003))

    timer.emit = emit
    return timer, sent


async def run_ticks(timer: Timer, seconds: float) -> float:
    async with trio.open_nursery() as nursery:
        timer.nursery = nursery
        start = trio.current_time()
        timer._set_period(PERIOD * 1000)
        await trio.sleep(seconds)
        timer._set_period(0)
    timer.party.close()
    return start


async def test_ticks_stay_on_the_start_grid_whatever_each_emit_costs(tmp_path, autojump_clock):
    timer, sent = make_timer(tmp_path, {})
    start = await run_ticks(timer, 100 * PERIOD + PERIOD / 2)
    assert [n for _, n in sent] == list(range(1, 101))
    for k, (t, _) in enumerate(sent, start=1):
        assert t == pytest.approx(start + k * PERIOD, abs=1e-9)
    assert (timer.ticks, timer.ticks_missed) == (100, 0)


async def test_a_slow_receiver_skips_missed_deadlines_instead_of_bursting(tmp_path, autojump_clock):
    # tick 5's emit is held 35 ms: deadlines 6, 7, 8 pass meanwhile
    timer, sent = make_timer(tmp_path, {5: 3.5 * PERIOD})
    start = await run_ticks(timer, 20 * PERIOD + PERIOD / 2)
    assert [n for _, n in sent] == list(range(1, len(sent) + 1))  # n counts ticks emitted
    slots = [round((t - start) / PERIOD, 6) for t, _ in sent]
    assert slots == [1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20]
    assert timer.ticks_missed == 3


async def test_ticks_without_a_route_are_counted_not_raised(tmp_path, autojump_clock):
    timer, sent = make_timer(tmp_path, {})
    timer.routes = RouteTable(1, {})
    await run_ticks(timer, 5 * PERIOD + PERIOD / 2)
    assert sent == [] and timer.unrouted == 5 and timer.ticks == 0
