"""A restarted sender and the orchestrator's re-install racing to its
receiver (nodes/runtime.py ``Node._install``; orchestrator/cluster.py
``Orchestrator._restarted``; docs/reliability.md).

When the supervisor restarts a crashed node, the orchestrator installs the
route table on every node with ``next`` {flow: 1} for each flow the node
sends (its new life numbers them from 1 again). That install may reach a
receiver after the new life's first messages: a receiver that was paused
(SIGSTOP) or slow when it was sent, whose inbox then fair-queues the
orchestrator's link and the sender's. The receiver already follows the new
life then (every message carries its sender's incarnation): the install must
not set it back to fseq 1, or the new life's first messages, sent again
because their acknowledgement had not come yet, are consumed a second time.

In-process, on real ZeroMQ sockets: the sink node, the sender's two lives
(two parties named ``src``, one after the other, as a restarted process is),
and the orchestrator's party sending the install the orchestrator sends.
"""

from __future__ import annotations

import trio

import nodes.streamer.node  # noqa: F401  (registers datum)
from nodes.runtime import NodeConfig
from nodes.streamer.node import StreamerOrSink
from protocol.transport import Party

FLOW = "data:src"


async def _until(cond) -> None:
    with trio.fail_after(10):  # on a loaded host too; only a hang fails it
        while not cond():
            await trio.sleep(0.01)


async def test_a_late_restart_install_does_not_make_a_receiver_consume_the_new_life_twice(tmp_path):
    eps = {n: f"ipc://{tmp_path}/{n}.sock" for n in ("sink", "src", "orch")}
    sink = StreamerOrSink(NodeConfig(name="sink", kind="streamer", endpoint=eps["sink"], directory=eps,
                                     routes={"epoch": 1, "routes": {FLOW: "sink"}}, orchestrator=None,
                                     options={"role": "sink"}))
    orch = Party("orch", eps["orch"], eps)
    lives = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.run)
            await nursery.start(orch.serve, lambda msg: trio.lowlevel.checkpoint())

            first = Party("src", eps["src"], eps)
            lives.append(first)
            for n in (1, 2, 3):
                await first.send("sink", "datum", {"n": n}, flow=FLOW, fseq=n)
            await _until(lambda: sink.consumed == [1, 2, 3])
            first.close()  # it crashed

            second = Party("src", eps["src"], eps)  # the supervisor started it again
            lives.append(second)
            assert second.incarnation > first.incarnation
            sent = [second.make("sink", "datum", {"n": n}, flow=FLOW, fseq=n) for n in (1, 2)]
            for msg in sent:
                await second.send_msg(msg)
            await _until(lambda: sink.consumed == [1, 2, 3, 1, 2])

            # the orchestrator's re-install for the restart of src, late
            await orch.request("sink", "route_install", {
                "epoch": 2, "routes": {FLOW: "sink"}, "next": {FLOW: 1},
                "restarted": {"src": first.incarnation}})

            # no acknowledgement came yet: the new life sends its first messages again, then goes on
            for msg in sent:
                await second.send_msg(msg)
            await second.send("sink", "datum", {"n": 3}, flow=FLOW, fseq=3)
            await _until(lambda: sink.consumed[-1:] == [3] and len(sink.consumed) >= 6)
            await trio.sleep(0.2)  # anything consumed twice would be in by now
            assert sink.consumed == [1, 2, 3, 1, 2, 3]
            assert sink.in_flows[FLOW].dups == 2
            nursery.cancel_scope.cancel()
    finally:
        orch.close()
        for party in lives:
            party.close()


async def test_a_new_life_ignores_an_acknowledgement_counted_in_its_previous_lifes_numbering(tmp_path):
    """The receiver built an acknowledgement while it still followed the sender's previous life (its
    ``of`` names that life); it reaches the new life after the new life's first messages left. Taken for
    the new life's, it reset the receiver to #1 (it names more than the new life sent: the new life's
    first messages were delivered twice, a restarted timer's ticks in demo seed 1022), or acknowledged
    what the receiver never got. Ignored, it changes nothing; the receiver's next one counts."""
    eps = {n: f"ipc://{tmp_path}/{n}.sock" for n in ("sink", "src")}
    src = StreamerOrSink(NodeConfig(name="src", kind="streamer", endpoint=eps["src"], directory=eps,
                                    routes={"epoch": 1, "routes": {FLOW: "sink"}}, orchestrator=None,
                                    options={"role": "sink"}))
    heard: list = []

    async def receiver(msg) -> None:
        heard.append(msg)

    sink = Party("sink", eps["sink"], eps)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(src.run)
            await nursery.start(sink.serve, receiver)
            for n in (1, 2, 3):
                await src.emit(FLOW, "datum", {"n": n})
            await _until(lambda: len(heard) == 3)
            previous = src.party.incarnation - 1
            for upto in (500, 2):
                await sink.send("src", "flow_ack", {"acks": {FLOW: upto}, "inc": sink.incarnation,
                                                    "of": {FLOW: previous}})
            await trio.sleep(0.3)  # a reset would have been sent by now
            # no route_next {reset}, nothing sent again (a probe of the sender's timer may have come)
            assert [(m.kind, m.body.get("reset")) for m in heard if "probe" not in m.body] == [("datum", None)] * 3
            assert [n for n, _, _ in src.out_flows[FLOW].unacked] == [1, 2, 3]
            await sink.send("src", "flow_ack", {"acks": {FLOW: 2}, "inc": sink.incarnation,
                                                "of": {FLOW: src.party.incarnation}})
            await _until(lambda: [n for n, _, _ in src.out_flows[FLOW].unacked] == [3])
            nursery.cancel_scope.cancel()
    finally:
        sink.close()
