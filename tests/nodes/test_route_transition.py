"""A node that sends in a route change and loses a flow as receiver keeps accepting what either
table routes until the change ends (orchestrator/routes.py, nodes/runtime.py ``transition``;
docs/concepts.md, "Route changes").

Seen on a loaded host (tests/integration/test_vmm_io.py, the key-value store under FIG. 5): at the
NIC's interposition ``{io:os1.nic: vmm, irq:nic0: vmm}``, nic0 sends ``irq:nic0`` and loses
``io:os1.nic``. Its switch used to install a table that kept ``io:os1.nic`` routed to nic0 itself,
which also replaced the change's new table it had been told of: between its switch and the end
install, the VMM's ``nic_send`` on behalf of os1 (os1 had switched and sent through the VMM) was
refused ``EPERM`` ("vmm may not act for os1"), and the store's reply never left.

In-process, on real ZeroMQ sockets: the route authority of the orchestrator, a real NIC node, and
os1 and the VMM as streamer nodes (they pause, drain, switch and resume as every node does).
"""

from __future__ import annotations

import trio

import nodes.streamer.node  # noqa: F401  (registers datum)
from nodes.nic.node import Nic
from nodes.runtime import NodeConfig
from nodes.streamer.node import StreamerOrSink
from orchestrator.routes import RouteAuthority
from protocol.routes import RouteTable
from protocol.transport import Party

NATIVE = {"io:os1.nic": "nic0", "irq:nic0": "os1"}


def the_nodes(tmp_path, eps: dict[str, str]) -> tuple[Nic, StreamerOrSink, StreamerOrSink]:
    """A real NIC node, and os1 and the VMM as streamer nodes, on the native routes."""
    def config(name: str, kind: str, options: dict) -> NodeConfig:
        return NodeConfig(name=name, kind=kind, endpoint=eps[name], directory=eps, orchestrator=None,
                          routes={"epoch": 1, "routes": NATIVE}, options=options, run_dir=str(tmp_path))

    return (Nic(config("nic0", "nic", {})), StreamerOrSink(config("os1", "streamer", {"role": "sink"})),
            StreamerOrSink(config("vmm", "streamer", {"role": "sink"})))


async def test_a_sender_losing_a_flow_accepts_both_tables_from_its_switch_to_the_end_install(tmp_path):
    eps = {n: f"ipc://{tmp_path}/{n}.sock" for n in ("nic0", "os1", "vmm", "orch")}
    nic0, os1, vmm = the_nodes(tmp_path, eps)
    orch = Party("orch", eps["orch"], eps)
    authority = RouteAuthority(orch, RouteTable(1, NATIVE), lambda: ["nic0", "os1", "vmm"])
    seen: list[set] = []
    original = nic0.on_route_install

    async def at_install(msg):  # the moment the change's end reaches nic0: it has switched already
        if not msg.body.get("receive_only"):
            seen.append(nic0.routed_to("io:os1.nic"))
        await original(msg)

    nic0._handlers["route_install"] = at_install  # what its inbox dispatches route_install to
    try:
        async with trio.open_nursery() as nursery:
            for node in (nic0, os1, vmm):
                nursery.start_soon(node.run)
            await nursery.start(orch.serve, lambda msg: trio.lowlevel.checkpoint())
            with trio.fail_after(20):
                report = await authority.change({"io:os1.nic": "vmm", "irq:nic0": "vmm"})
            assert report.epoch == 2
            # from its switch to the end install, nic0 takes the VMM acting for os1 (new table)
            # and os1's own last commands (old table)
            assert seen == [{"vmm", "nic0"}]
            assert nic0.routed_to("io:os1.nic") == {"vmm"} and nic0.transition is None
            nursery.cancel_scope.cancel()
    finally:
        orch.close()


async def test_a_node_that_dies_during_a_change_does_not_hold_it_for_its_timeout(tmp_path, caplog):
    """A node asked during a change that stops running (killed: the supervisor saw it exit) is given
    up at once, not after the change's timeout: its next life gets the table in force when it
    starts. Seen in the chaos campaign: cpu0, killed while FIG. 3 interposed a second OS, held that
    change 10 s (two requests waited out), and its restart behind it."""
    eps = {n: f"ipc://{tmp_path}/{n}.sock" for n in ("nic0", "os1", "vmm", "cpu0", "orch")}
    nic0, os1, vmm = the_nodes(tmp_path, eps)
    cpu0 = Party("cpu0", eps["cpu0"], eps)  # it reads its inbox and answers nothing: it is dying
    orch = Party("orch", eps["orch"], eps)
    live = ["nic0", "os1", "vmm", "cpu0"]
    asked = trio.Event()

    async def dying(msg) -> None:
        asked.set()
        await trio.lowlevel.checkpoint()

    # a timeout no test waits out: only giving the dead node up lets the change end
    authority = RouteAuthority(orch, RouteTable(1, NATIVE), lambda: list(live), timeout=600)
    try:
        async with trio.open_nursery() as nursery:
            for node in (nic0, os1, vmm):
                nursery.start_soon(node.run)
            await nursery.start(orch.serve, lambda msg: trio.lowlevel.checkpoint())
            await nursery.start(cpu0.serve, dying)

            async def kill_when_asked() -> None:
                await asked.wait()
                live.remove("cpu0")  # the supervisor saw it exit

            nursery.start_soon(kill_when_asked)
            with trio.fail_after(60):  # a hang guard; the timeout above is 600 s
                report = await authority.change({"io:os1.nic": "vmm", "irq:nic0": "vmm"})
            assert report.epoch == 2 and authority.table.get("io:os1.nic") == "vmm"
            assert "cpu0 stopped running before it answered 'route_install'" in caplog.text
            nursery.cancel_scope.cancel()
    finally:
        orch.close()
        cpu0.close()
