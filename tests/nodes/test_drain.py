"""A drain asked again (nodes/runtime.py ``Node._drained`` asks every ``DRAIN_RETRY`` s while no
answer comes) replaces the wait of the same question at the old receiver (``Node._drain``): one
wait per question, one answer, to the newest request; the requests before it, which their sender
gave up, get none (each used to keep its own wait, and its own late answer, for the whole timeout).

In-process, on real ZeroMQ sockets: the receiver is a real node, the sender a bare party that asks
``route_drain`` twice before sending what the drain waits for.
"""

from __future__ import annotations

import trio

import nodes.streamer.node  # noqa: F401  (registers datum)
from nodes.runtime import NodeConfig
from nodes.streamer.node import StreamerOrSink
from protocol.transport import Party

FLOW = "data:src"


async def test_a_drain_asked_again_replaces_the_wait_of_the_same_question(tmp_path):
    eps = {n: f"ipc://{tmp_path}/{n}.sock" for n in ("sink", "src")}
    sink = StreamerOrSink(NodeConfig(name="sink", kind="streamer", endpoint=eps["sink"], directory=eps,
                                     routes={"epoch": 1, "routes": {FLOW: "sink"}}, orchestrator=None,
                                     options={"role": "sink"}))
    src = Party("src", eps["src"], eps)
    answers: list[tuple[str, str]] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sink.run)
            await nursery.start(src.serve, lambda msg: trio.lowlevel.checkpoint())
            drain = {"upto": {FLOW: 3}, "timeout": 30}
            waits = [src.start_request("sink", "route_drain", drain, timeout=30) for _ in range(2)]

            async def answer(i: int) -> None:
                reply = await waits[i]()
                answers.append((f"request {i + 1}", reply.kind))

            for i in range(2):
                nursery.start_soon(answer, i)
            with trio.fail_after(10):  # both reached the sink: one wait is left, the second's
                while sink.party.counters["msgs_in"] < 2:
                    await trio.sleep(0.01)
                while sink._drains_superseded:
                    await trio.sleep(0.01)
            assert len(sink._drain_waits) == 1
            for n in (1, 2, 3):
                await src.send("sink", "datum", {"n": n}, flow=FLOW, fseq=n)
            with trio.fail_after(10):
                while not answers:
                    await trio.sleep(0.01)
            await trio.sleep(0.3)  # a late answer to the first would be in by now
            assert answers == [("request 2", "ok")]
            assert sink._drain_waits == {} and sink._drains_superseded == set()
            nursery.cancel_scope.cancel()
    finally:
        src.close()
