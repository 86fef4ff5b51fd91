"""One handler for several message kinds (nodes/runtime.py ``handles``): a node
answers each kind the method is marked for, on real ZeroMQ sockets, the same
way it answers a kind it has an ``on_<kind>`` method for."""

from __future__ import annotations

import pytest
import trio

from nodes.runtime import Node, NodeConfig, handles
from protocol.messages import register, unregister
from protocol.transport import Party

KINDS = ("test_handles_read", "test_handles_write")


class Device(Node):
    """Answers both kinds with the kind it ran for, from one method."""

    kind = "device"

    @handles(*KINDS)
    async def _command(self, msg):
        await self.party.reply(msg, "ok", {"data": {"ran": msg.kind}})


@pytest.fixture
def endpoints(tmp_path):
    for kind in KINDS:  # request kinds of this test's only, gone with it
        register(kind)
    yield {name: f"ipc://{tmp_path}/{name}.sock" for name in ("dev", "client")}
    for kind in KINDS:
        unregister(kind)


async def test_a_method_marked_with_handles_answers_each_of_its_kinds(endpoints):
    node = Device(NodeConfig(name="dev", kind="device", endpoint=endpoints["dev"], directory=endpoints,
                             routes={"epoch": 1, "routes": {}}, orchestrator=None))
    client = Party("client", endpoints["client"], endpoints)
    assert node.handler("test_handles_read") == node.handler("test_handles_write") == node._command
    assert node.handler("test_handles_erase") is None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(node.run)
            await nursery.start(client.serve, lambda msg: trio.lowlevel.checkpoint())
            with trio.fail_after(10):
                while node.state != "running":
                    await trio.sleep(0.01)
            for kind in KINDS:
                reply = await client.request("dev", kind, {}, timeout=10)
                assert reply.body["data"] == {"ran": kind}
            nursery.cancel_scope.cancel()
    finally:
        client.close()
        node.party.close()
