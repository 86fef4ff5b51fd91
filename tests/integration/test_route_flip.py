"""A route flip under load (DESIGN.md §2): a sender streams at least 100,000
sequenced messages on one flow while the route switches between two
receivers at least 100 times; together the receivers consumed exactly the
sent sequence, in order, with no gap and no duplicate. The same holds for a
flow of requests (each awaits its reply before the next goes out, as a
driver's privileged operations do): a request made while its flow is paused
waits for the resume and goes to the new receiver.

The stream has no fixed length: it runs until both counts are reached, then
stops, so the test shows the same thing on a fast machine and on a loaded
one (where a change waits longer for the old receiver to drain its backlog).
"""

from __future__ import annotations

import trio

from orchestrator.cluster import running
from orchestrator.topology import parse

COUNT = 100_000
RATE = 30_000  # messages/s: a busy device, so that the flips land mid-stream
FLIPS = 100
FLOW = "data:src"


def topology(**sink_a):
    def node(role, **o):
        return {"kind": "testnode", "module": "tests.fixtures.streamer", "options": {"role": role, **o}}
    return parse({
        "cluster": {"name": "flip"},
        "nodes": {"src": node("streamer"), "sink_a": node("sink", **sink_a), "sink_b": node("sink")},
        "routes": {FLOW: "sink_a"},
    }, "route-flip")


async def flip_while_streaming(orch, start: dict, flips_min: int, count_min: int, pace: float) -> tuple[int, dict]:
    """Stream per ``start`` while flipping FLOW between the sinks until both
    minimums are reached; returns what was sent and, per epoch, the receiver
    of FLOW and the last fseq sent before that epoch began."""
    receiver_at = {orch.routes.table.epoch: ("sink_a", 0)}
    flips = 0
    sent = 0
    async with trio.open_nursery() as n:
        stopped = trio.Event()

        async def stream():
            nonlocal sent
            reply = await orch.request("src", "stream_start", {"flow": FLOW, **start}, timeout=600)
            sent = reply.body["data"]["sent"]
            stopped.set()

        n.start_soon(stream)
        target = "sink_b"
        last = 0
        while flips < flips_min or last < count_min:  # every change here happens while the stream runs
            report = await orch.routes.change({FLOW: target})
            receiver_at[report.epoch] = (target, report.last[FLOW])
            assert report.last[FLOW] >= last
            # the sender accounts for its pause: waiting to run, draining, flushing
            assert set(report.spent) == {"src"} and set(report.spent["src"]) == {"start", "drain", "flush"}
            assert report.pause_ms >= report.spent["src"]["drain"]
            last = report.last[FLOW]
            flips += 1
            target = "sink_a" if target == "sink_b" else "sink_b"
            await trio.sleep(pace)  # pacing: let each epoch carry some of the stream
        await orch.request("src", "stream_stop")
        with trio.fail_after(60):
            await stopped.wait()
    # one more change drains the current receiver: everything sent is consumed
    final = await orch.routes.change({FLOW: target})
    assert final.last == {FLOW: sent}
    receiver_at[final.epoch] = (target, sent)
    assert sent >= count_min and flips >= flips_min
    return sent, receiver_at


async def assert_exactly_once_in_order(orch, sent: int, receiver_at: dict) -> None:
    reports = {}
    for sink in ("sink_a", "sink_b"):
        reply = await orch.request(sink, "sink_report", timeout=30)
        reports[sink] = reply.body["data"]
    a, b = reports["sink_a"]["consumed"], reports["sink_b"]["consumed"]
    assert a == sorted(a) and b == sorted(b), "a receiver consumed out of order"
    assert sorted(a + b) == list(range(1, sent + 1))
    assert len(set(a) & set(b)) == 0
    assert a and b, "both receivers must have taken part"
    # across receivers: each message came at the epoch of the receiver that
    # consumed it, and taken epoch by epoch the stream is the exact sequence
    by_epoch = sorted((epoch, i, fseq, sink) for sink, rep in reports.items()
                      for i, (fseq, epoch) in enumerate(zip(rep["consumed"], rep["epochs"])))
    assert [fseq for _e, _i, fseq, _s in by_epoch] == list(range(1, sent + 1))
    assert all(receiver_at[epoch][0] == sink for epoch, _i, _f, sink in by_epoch)
    # and the epoch of each message is the one in force when it was sent: a
    # sender paused for a change emits nothing on the old route after the
    # fseq it reported (what it emits meanwhile goes out after the switch)
    starts = sorted(receiver_at.items())
    for epoch, _i, fseq, _s in by_epoch:
        due = max(e for e, (_r, before) in starts if before < fseq)
        assert epoch == due, f"#{fseq} was sent at epoch {epoch}, the epoch in force was {due}"
    for sink, rep in reports.items():
        for flow, counters in rep["flows"].items():
            assert counters == {"gaps": 0, "dups": 0}, (sink, flow, counters)


async def test_route_flip_under_load_loses_duplicates_and_reorders_nothing(tmp_path):
    async with running(topology(), tmp_path) as orch:
        sent, receiver_at = await flip_while_streaming(orch, {"rate": RATE}, FLIPS, COUNT, 0.002)
        await assert_exactly_once_in_order(orch, sent, receiver_at)


async def test_a_flow_of_requests_flipped_while_it_runs_delivers_each_request_once_in_order(tmp_path):
    async with running(topology(), tmp_path) as orch:
        sent, receiver_at = await flip_while_streaming(orch, {"requests": True}, 40, 1000, 0.005)
        await assert_exactly_once_in_order(orch, sent, receiver_at)


async def test_a_change_while_the_link_to_the_old_receiver_is_full_waits_for_room_and_loses_nothing(tmp_path):
    """sink_a stops reading for 2 s at its first datum while src streams as
    fast as it can: src's link to sink_a fills up (its queues hold ~40,000)
    and src blocks. A change made then cannot queue its drain request at
    once; it goes as soon as there is room, behind the last message, and the
    change completes: sink_a got a prefix, sink_b the rest, nothing lost."""
    count = 60_000
    async with running(topology(stall_s=2.0), tmp_path) as orch:
        orch.routes.timeout = 20  # the drain waits for sink_a's whole backlog
        first = orch.routes.table.epoch
        async with trio.open_nursery() as n:
            done = trio.Event()

            async def stream():
                reply = await orch.request("src", "stream_start", {"flow": FLOW, "count": count}, timeout=120)
                assert reply.body["data"]["sent"] == count
                done.set()

            n.start_soon(stream)
            await trio.sleep(1.0)  # src is blocked on the full link by now
            report = await orch.routes.change({FLOW: "sink_b"})
            with trio.fail_after(60):
                await done.wait()
        final = await orch.routes.change({FLOW: "sink_a"})
        assert final.last == {FLOW: count}
        await assert_exactly_once_in_order(orch, count, {
            first: ("sink_a", 0), report.epoch: ("sink_b", report.last[FLOW]), final.epoch: ("sink_a", count)})
        assert 0 < report.last[FLOW] < count
