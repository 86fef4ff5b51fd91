"""The reply a flow's receiver keeps for a retransmitted request
(nodes/runtime.py ``Node._keep_reply``; docs/reliability.md).

In-process, on real ZeroMQ sockets: a node answering requests on the flow
``data:src``, the flow's sender ``src`` and a third party ``mallory``. A
request whose reply was lost comes again with its ``fseq``: the receiver does
not run it twice, it sends the reply it kept. A forged copy of that request
from anyone but the flow's sender is refused (``foreign_flow``), and the
refusal must not take the kept reply's place.
"""

from __future__ import annotations

import pytest
import trio

from nodes.runtime import Node, NodeConfig
from protocol.errors import RemoteError
from protocol.messages import register, unregister
from protocol.transport import Party

FLOW = "data:src"
ASK = "test_flow_ask"


class Counter(Node):
    """Answers ``test_flow_ask`` with how many of them it ran (a second run would show)."""

    kind = "counter"

    def __init__(self, cfg: NodeConfig):
        super().__init__(cfg)
        self.runs = 0

    async def on_test_flow_ask(self, msg):
        self.runs += 1
        await self.party.reply(msg, "ok", {"data": {"runs": self.runs, "n": msg.body["n"]}})


@pytest.fixture
def endpoints(tmp_path):
    register(ASK, n="int")  # a request kind of this test's only, gone with it
    yield {name: f"ipc://{tmp_path}/{name}.sock" for name in ("sink", "src", "mallory")}
    unregister(ASK)


async def test_a_forged_request_on_a_flow_does_not_replace_the_reply_kept_for_its_sender(endpoints):
    node = Counter(NodeConfig(name="sink", kind="counter", endpoint=endpoints["sink"], directory=endpoints,
                              routes={"epoch": 1, "routes": {FLOW: "sink"}}, orchestrator=None))
    src = Party("src", endpoints["src"], endpoints)
    mallory = Party("mallory", endpoints["mallory"], endpoints)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)
            await nursery.start(src.serve, lambda msg: trio.lowlevel.checkpoint())
            await nursery.start(mallory.serve, lambda msg: trio.lowlevel.checkpoint())
            with trio.fail_after(10):
                while node.state != "running":
                    await trio.sleep(0.01)
                request = src.make("sink", ASK, {"n": 1}, flow=FLOW, fseq=1)
                first = await src.request_msg(request)
                assert first.body["data"] == {"runs": 1, "n": 1}

                forged = mallory.make("sink", ASK, {"n": 666}, flow=FLOW, fseq=1)
                with pytest.raises(RemoteError) as refused:
                    await mallory.request_msg(forged)
                assert refused.value.reason == "foreign_flow"

                # the sender lost the reply and asks again: the same request, the same reply
                again = await src.request_msg(request)
                assert again.kind == "ok" and again.corr == request.seq
                assert again.body["data"] == {"runs": 1, "n": 1}
            assert node.runs == 1
            assert node.in_flows[FLOW].dups == 1
            nursery.cancel_scope.cancel()
    finally:
        src.close()
        mallory.close()
