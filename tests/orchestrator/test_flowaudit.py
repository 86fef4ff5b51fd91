"""The flow audit (orchestrator/flowaudit.py) over histories recorded by the
node runtime's own per-flow record (nodes/runtime.py ``_InFlow.record``): a
flow delivered in pieces to several receivers one after the other is exact;
every message lost or delivered twice is found, with its fseq."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.runtime import HISTORY_RUNS, _InFlow
from orchestrator.flowaudit import audit

FLOW = "irq:nic0"


def histories(total: int, pieces: list[tuple[str, list[int]]]) -> dict:
    """The sender numbered 1..total; each receiver accepted its fseq, in order (one record per receiver,
    as a node keeps one per flow, across all the pieces it got)."""
    inflows: dict[str, _InFlow] = {}
    for node, seqs in pieces:
        inflow = inflows.setdefault(node, _InFlow())
        for s in seqs:
            inflow.record(s)
    out: dict = {"nic0": {"flows_out": {FLOW: total}, "flows_in": {}}}
    for node, inflow in inflows.items():
        h = out.setdefault(node, {"flows_out": {}, "flows_in": {}})
        h["flows_in"][FLOW] = {"runs": inflow.runs, "runs_dropped": inflow.runs_dropped}
    return out


@st.composite
def deliveries(draw):
    """1..total cut at route changes into consecutive pieces, each to one of three receivers."""
    total = draw(st.integers(1, 400))
    cuts = sorted(set(draw(st.lists(st.integers(1, total), max_size=12))))
    bounds = [0, *[c for c in cuts if c < total], total]
    pieces = []
    for lo, hi in zip(bounds, bounds[1:]):
        pieces.append((draw(st.sampled_from(["os1", "vmm", "os2"])), list(range(lo + 1, hi + 1))))
    return total, pieces


@settings(max_examples=200, deadline=None)
@given(deliveries())
def test_a_flow_delivered_in_pieces_to_several_receivers_is_exactly_once(d) -> None:
    total, pieces = d
    result = audit(histories(total, pieces))
    assert result["ok"], result["problems"]
    assert result["flows"][FLOW]["sent"] == total
    assert (result["flows"][FLOW]["lost_count"], result["flows"][FLOW]["duplicated_count"]) == (0, 0)


@settings(max_examples=200, deadline=None)
@given(deliveries(), st.data())
def test_a_lost_message_is_found_with_its_fseq(d, data) -> None:
    total, pieces = d
    victim = data.draw(st.integers(1, total))
    pieces = [(n, [s for s in seqs if s != victim]) for n, seqs in pieces]
    result = audit(histories(total, pieces))
    assert not result["ok"]
    f = result["flows"][FLOW]
    assert (f["lost_count"], f["lost"], f["duplicated_count"]) == (1, [victim], 0)
    assert result["problems"] == [f"{FLOW}: 1 of {total} lost (first: [{victim}])"]


@settings(max_examples=200, deadline=None)
@given(deliveries(), st.data())
def test_a_message_delivered_to_two_receivers_is_found_with_its_fseq(d, data) -> None:
    total, pieces = d
    victim = data.draw(st.integers(1, total))
    other = data.draw(st.sampled_from(["os1", "vmm", "os2", "uart0"]))
    pieces = [*pieces, (other, [victim])]
    f = audit(histories(total, pieces))["flows"][FLOW]
    assert (f["lost_count"], f["duplicated_count"], f["duplicated"]) == (0, 1, [victim])


def test_the_tail_of_a_flow_that_never_arrived_counts_as_lost() -> None:
    f = audit(histories(10, [("os1", [1, 2, 3]), ("vmm", [4, 5, 6, 7])]))["flows"][FLOW]
    assert (f["lost_count"], f["lost"], f["receivers"]) == (3, [8, 9, 10], ["os1", "vmm"])


def test_a_count_taken_earlier_accounts_for_that_much_and_later_messages_are_not_lost() -> None:
    result = audit(histories(12, [("os1", list(range(1, 13)))]), sent={FLOW: 9})
    assert result["ok"] and result["flows"][FLOW]["sent"] == 9


def test_a_receiver_without_a_sender_and_an_incomplete_history_are_problems() -> None:
    h = histories(3, [("os1", [1, 2, 3])])
    h["os1"]["flows_in"]["irq:uart9"] = {"runs": [[1, 1]], "runs_dropped": 0}
    h["os1"]["flows_in"][FLOW]["runs_dropped"] = 2
    assert audit(h)["problems"] == [f"{FLOW}: os1's history is incomplete (2 runs not recorded)",
                                    "irq:uart9: received, but no history of its sender"]


def test_a_receiver_records_at_most_its_bound_of_runs_and_counts_the_rest() -> None:
    inflow = _InFlow()
    for s in range(1, 2 * (HISTORY_RUNS + 10), 2):  # every other fseq: each its own run
        inflow.record(s)
    assert (len(inflow.runs), inflow.runs_dropped) == (HISTORY_RUNS, 10)
