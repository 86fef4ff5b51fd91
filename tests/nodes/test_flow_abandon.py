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


@pytest.mark.parametrize("abandon", [True, False], ids=["abandoned", "kept"])
async def test_what_a_dead_receiver_had_not_acknowledged_does_not_reach_its_next_life(tmp_path, abandon):
    eps = {n: f"ipc://{tmp_path}/{n}.sock" for n in ("sink", "src")}
    src = _node(eps, "src")
    heard: list[int] = []

    async def first_life(msg) -> None:  # it runs what it gets, and dies before acknowledging any
        heard.append(msg.fseq)
        await trio.lowlevel.checkpoint()

    first = Party("sink", eps["sink"], eps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.run)
            async with trio.open_nursery() as life:
                await life.start(first.serve, first_life)
                for n in (1, 2, 3):
                    await src.emit(FLOW, "datum", {"n": n})
                with trio.fail_after(10):
                    while len(heard) < 3:
                        await trio.sleep(0.01)
                life.cancel_scope.cancel()
            first.close()  # killed: what it consumed, and its place in the flow, died with it

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
