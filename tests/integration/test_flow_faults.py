"""Reliable flows under injected faults (issue 14, parts 1-2; docs/reliability.md).

Each flow nemesis alone — drop, dup, delay with jitter, reorder, corrupt, and
a partition healed after a few seconds — is set in the *sender's* transport
(``fault_set``) while a flow streams (``compose/flip.toml``'s streamer), and
the receiver must still have consumed exactly the sent sequence, in order,
once; the flow audit of the cluster (``orchestrator/flowaudit.py``) agrees.
The same holds for a flow of requests, and across a route change made while
the fault is active. A guest program on the native cluster, with every flow
of every node lossy, prints exactly what it prints without faults. A
receiver killed with SIGKILL and restarted by the supervisor gets every
message its previous life did not acknowledge, and none it did, again.
"""

from __future__ import annotations

import os
import signal

import pytest
import trio

from hwemu import testing
from hwemu.testing import node_stats as stats
from orchestrator.topology import parse
from tests.integration.test_native import NATIVE, Client, elf_of, expected

FLOW = "data:src"
COUNT = 3000
RATE = 3000  # messages/s: about a second of streaming per case

NEMESES = {
    "drop": {"drop": 0.1},
    "dup": {"dup": 0.2},
    "delay": {"delay_ms": 5.0, "jitter_ms": 4.0},
    "reorder": {"reorder": 0.2},
    "corrupt": {"corrupt": 0.1},
}


def topology(**sink):
    node = lambda role, **o: {"kind": "testnode", "module": "tests.fixtures.streamer",  # noqa: E731
                              "options": {"role": role, **o}, "restart": "always"}
    return parse({
        "cluster": {"name": "flip"},
        "nodes": {"src": node("streamer"), "sink_a": node("sink", **sink), "sink_b": node("sink")},
        "routes": {FLOW: "sink_a"},
    }, "flow-faults")


async def consumed_all(orch, sinks: list[str], count: int, timeout: float = 60) -> dict[str, dict]:
    """Wait until the sinks together consumed ``count`` messages; their reports."""
    with trio.fail_after(timeout):
        while True:
            reports = {s: (await orch.request(s, "sink_report")).body["data"] for s in sinks}
            if sum(len(r["consumed"]) for r in reports.values()) >= count:
                return reports
            await trio.sleep(0.1)


async def flow_audit(orch) -> dict:
    """The audit of every flow's history (orchestrator/flowaudit.py), asserted clean."""
    result = await testing.flow_audit(orch)
    assert result["ok"], (result["problems"], result["notes"])
    return result


def stream_soon(nursery: trio.Nursery, orch, count: int) -> None:
    """``src`` streams ``count`` data on FLOW at RATE, in the background."""
    nursery.start_soon(lambda: orch.request("src", "stream_start", {"flow": FLOW, "count": count, "rate": RATE},
                                            timeout=120))


@pytest.mark.integration
@pytest.mark.parametrize("nemesis", sorted(NEMESES))
async def test_a_flow_nemesis_loses_duplicates_and_reorders_nothing(cluster, nemesis):
    orch = await cluster(topology())
    spec = {"id": f"f-{nemesis}", "type": "flow", "seed": 14, "flows": [FLOW], **NEMESES[nemesis]}
    assert (await orch.request("src", "fault_set", spec)).body["data"] == {"id": spec["id"]}
    reply = await orch.request("src", "stream_start", {"flow": FLOW, "count": COUNT, "rate": RATE}, timeout=120)
    assert reply.body["data"]["sent"] == COUNT
    reports = await consumed_all(orch, ["sink_a"], COUNT)
    assert reports["sink_a"]["consumed"] == list(range(1, COUNT + 1))
    injected = (await stats(orch, "src"))["faults"][0]["injected"]
    assert sum(injected.values()) > 0, injected
    assert (await orch.request("src", "fault_clear", {"id": None})).body["data"] == {"cleared": 1}
    assert "faults" not in await stats(orch, "src")
    assert (await flow_audit(orch))["flows"][FLOW]["sent"] == COUNT


@pytest.mark.integration
async def test_requests_on_a_lossy_flow_are_answered_once_each_across_a_route_change(cluster):
    """Requests dropped, then replies and acknowledgements too (a partition
    of the new receiver from the sender for a second): each request is
    consumed exactly once, in order, and answered; a route change in the
    middle drains the old receiver through the losses."""
    orch = await cluster(topology())
    await orch.request("src", "fault_set", {"id": "lossy", "type": "flow", "seed": 3, "flows": [FLOW], "drop": 0.1})
    count = 400
    async with trio.open_nursery() as n:
        sent = {}

        async def stream():
            r = await orch.request("src", "stream_start", {"flow": FLOW, "count": count, "requests": True},
                                   timeout=300)
            sent["n"] = r.body["data"]["sent"]

        n.start_soon(stream)
        with trio.fail_after(120):
            while (await stats(orch, "src"))["flows_out"].get(FLOW, 0) < count // 2:
                await trio.sleep(0.05)
        await orch.routes.change({FLOW: "sink_b"})
        await orch.request("sink_b", "fault_set", {"id": "cut", "type": "partition", "seed": 0, "peers": ["src"]})
        await trio.sleep(1.0)
        await orch.request("sink_b", "fault_clear", {"id": "cut"})
    assert sent["n"] == count
    reports = await consumed_all(orch, ["sink_a", "sink_b"], count)
    a, b = reports["sink_a"]["consumed"], reports["sink_b"]["consumed"]
    assert a and b and a + b == list(range(1, count + 1))
    await flow_audit(orch)


@pytest.mark.integration
async def test_a_partition_healed_after_seconds_loses_nothing(cluster):
    orch = await cluster(topology())
    count = 6000
    async with trio.open_nursery() as n:
        stream_soon(n, orch, count)
        await trio.sleep(0.3)
        # both ways: the data and the acknowledgements
        await orch.request("src", "fault_set", {"id": "cut", "type": "partition", "seed": 0, "peers": ["sink_a"]})
        await orch.request("sink_a", "fault_set", {"id": "cut", "type": "partition", "seed": 0, "peers": ["src"]})
        await trio.sleep(2.5)
        during = await stats(orch, "src")
        assert during["flows_unacked"].get(FLOW, 0) > 0, during  # the sender holds what is not acknowledged
        for node in ("src", "sink_a"):
            await orch.request(node, "fault_clear", {"id": "cut"})
    reports = await consumed_all(orch, ["sink_a"], count)
    assert reports["sink_a"]["consumed"] == list(range(1, count + 1))
    await flow_audit(orch)


@pytest.mark.integration
async def test_a_receiver_killed_and_restarted_gets_everything_it_had_not_acknowledged(cluster):
    orch = await cluster(topology())
    count = 6000
    node = orch.supervisor.nodes["sink_a"]
    async with trio.open_nursery() as n:
        stream_soon(n, orch, count)
        with trio.fail_after(30):
            while len((await orch.request("sink_a", "sink_report")).body["data"]["consumed"]) < 1000:
                await trio.sleep(0.05)
        before = (await orch.request("sink_a", "sink_report")).body["data"]["consumed"]
        acked = (await stats(orch, "src"))["flows_acked"][FLOW]
        pid = node.pid
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(30):
            while node.pid == pid or node.state != "running":
                await trio.sleep(0.05)
    assert before == list(range(1, len(before) + 1))  # the first life consumed a prefix, in order
    with trio.fail_after(60):
        while True:
            after = (await orch.request("sink_a", "sink_report")).body["data"]["consumed"]
            if after and after[-1] == count:
                break
            await trio.sleep(0.1)
    first = after[0]
    # the second life got a contiguous run up to the end, exactly once, starting right after
    # what the first life acknowledged: nothing it acknowledged came again, nothing after was lost
    assert after == list(range(first, count + 1))
    assert acked < first
    with trio.fail_after(30):  # the last acknowledgement is at most ACK_DELAY behind the consumption
        while (src := await stats(orch, "src"))["flows_acked"][FLOW] < count:
            await trio.sleep(0.05)
    assert src["flows_acked"][FLOW] == count and not src["flows_unacked"]
    assert src["resyncs"] >= 1


@pytest.mark.integration
async def test_a_guest_program_prints_exactly_its_output_with_every_flow_lossy(guest_build, cluster):
    orch = await cluster(NATIVE)
    for i, node in enumerate(("cpu0", "os1", "uart0", "timer0", "memctl")):
        await orch.request(node, "fault_set", {"id": "lossy", "type": "flow", "seed": 100 + i, "flows": ["*"],
                                               "drop": 0.05, "dup": 0.05, "reorder": 0.05, "corrupt": 0.02})
    client = Client(orch)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client._handle)
            pid = await client.exec(elf_of("primes"), ["primes"])
            exits = await client.wait_exits({pid}, timeout=240)
            assert exits[pid]["code"] == 0, exits
            logged = (await client.party.request("uart0", "uart_sync", timeout=30)).body["data"]["logged"]
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()
    log = (orch.run_dir / "uart0.console.log").read_bytes()[:logged]
    assert log == expected("primes")
    injected = {}
    for node in ("cpu0", "os1"):
        for k, v in (await stats(orch, node))["faults"][0]["injected"].items():
            injected[k] = injected.get(k, 0) + v
    assert injected.get("dropped", 0) > 0, injected
