"""What a receiver that died with its state had not acknowledged is given up, not sent to its next
life (nodes/runtime.py ``Node.abandon_to``; docs/recovery.md, "cpu: a machine check").

Seen in the chaos campaign (``hwemu chaos --seed 183 --scenario demo``, 1 run in 4): cpu0 was killed
under the VMM; the VMM's ``priv:vmm`` flow held some 25 messages the dead CPU had not acknowledged
(``cpu_resume`` of os1's process, which the machine check then stopped, ``tlb_write``, ``cpu_preempt``).
The flow sent them all again to the new CPU, which ran the dead context; the VMM kept the trap it
raised as the context of another OS, and when that OS's turn came its process trapped with an
address space it did not know (``stray trap 12``): nobody resumed the CPU and every guest stopped.

In-process, on real ZeroMQ sockets: the sender is a real node; the receiver's first life is a bare
party that consumes nothing and acknowledges nothing (it dies holding it all), its second life a
real node named the same.
"""

from __future__ import annotations

import pytest
import trio

import nodes.streamer.node  # noqa: F401  (registers datum)
from nodes.runtime import NodeConfig
from nodes.streamer.node import StreamerOrSink
from protocol.transport import Party

FLOW = "data:src"


def _node(eps: dict[str, str], name: str) -> StreamerOrSink:
    return StreamerOrSink(NodeConfig(name=name, kind="streamer", endpoint=eps[name], directory=eps,
                                     routes={"epoch": 1, "routes": {FLOW: "sink"}}, orchestrator=None,
                                     options={"role": "sink"}))


async def _dies_holding_three(src: StreamerOrSink, party: Party) -> list[int]:
    """``party`` takes #1-#3 of the flow from ``src`` and dies (closed) before acknowledging any: what it got."""
    heard: list[int] = []

    async def take(msg) -> None:  # it runs what it gets, and dies before acknowledging any
        heard.append(msg.fseq)
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as life:
        await life.start(party.serve, take)
        for n in (1, 2, 3):
            await src.emit(FLOW, "datum", {"n": n})
        with trio.fail_after(10):
            while len(heard) < 3:
                await trio.sleep(0.01)
        life.cancel_scope.cancel()
    party.close()  # killed: what it consumed, and its place in the flow, died with it
    return heard


@pytest.mark.parametrize("abandon", [True, False], ids=["abandoned", "kept"])
async def test_what_a_dead_receiver_had_not_acknowledged_does_not_reach_its_next_life(tmp_path, abandon):
    eps = {n: f"ipc://{tmp_path}/{n}.sock" for n in ("sink", "src")}
    src = _node(eps, "src")
    first = Party("sink", eps["sink"], eps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.run)
            heard = await _dies_holding_three(src, first)
            given_up = src.abandon_to("sink") if abandon else 0
            await src.emit(FLOW, "datum", {"n": 4})  # sent after the notice of its death
            second = _node(eps, "sink")  # its next life
            nursery.start_soon(second.run)
            want = [4] if abandon else [1, 2, 3, 4]
            with trio.fail_after(10):  # on a loaded host too; only a hang fails it
                while second.consumed[-1:] != [4]:
                    await trio.sleep(0.01)
            await trio.sleep(0.3)  # anything sent again would be in by now
            assert heard == [1, 2, 3]
            assert second.consumed == want
            assert given_up == (3 if abandon else 0)
            assert not src.out_flows[FLOW].unacked  # the next life acknowledged what it got
            nursery.cancel_scope.cancel()
    finally:
        first.close()


async def test_a_flow_moved_away_from_a_dead_receiver_gives_up_only_what_went_to_it(tmp_path):
    """The VMM's death (docs/recovery.md, "vmm"): a flow sent #1-#3 to it, it died without acknowledging
    them, the flow moved to its native receiver, which gets #4 on. The sender gives up what went to the dead
    one (``abandon(flow, to)``: ``flow_abandon`` from the orchestrator), and only that: what the new receiver
    got is acknowledged by it as usual, and #1-#3 reach nobody. (Kept, they went to the VMM's next life
    while #4 on were delivered: the checker's lost ticks of irq:timer0, demo seed 702.)"""
    eps = {n: f"ipc://{tmp_path}/{n}.sock" for n in ("sink", "src", "dead")}
    src = _node(eps, "src")
    src.routes = src.routes.changed({FLOW: "dead"})
    dead = Party("dead", eps["dead"], eps)
    sink = _node(eps, "sink")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.run)
            heard = await _dies_holding_three(src, dead)
            # the route change away from it (it is not drained: it is dead): paused, switched, flushed
            src._pause([FLOW])
            src._install(src.routes.epoch + 1, {FLOW: "sink"}, {})
            await src._flush([FLOW])
            nursery.start_soon(sink.run)
            for n in (4, 5):
                await src.emit(FLOW, "datum", {"n": n})
            with trio.fail_after(10):
                while sink.consumed[-1:] != [5]:
                    await trio.sleep(0.01)
            assert [n for n, dst, _ in src.out_flows[FLOW].unacked][:3] == [1, 2, 3]  # held for "dead"
            assert src.abandon(FLOW, ("dead",)) == 3
            with trio.fail_after(10):  # the sink's acknowledgements count again: #4 and #5 go
                while src.out_flows[FLOW].unacked:
                    await trio.sleep(0.01)
            assert (heard, sink.consumed) == ([1, 2, 3], [4, 5])
            assert src.out_flows[FLOW].acked == 5
            nursery.cancel_scope.cancel()
    finally:
        dead.close()
