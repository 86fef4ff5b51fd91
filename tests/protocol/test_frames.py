"""Frame sets as runs on the wire (protocol/frames.py): the conversion both
ways and the validation of what a peer sends (DESIGN.md §5 ¶39)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import protocol.hw  # registers mod_*
import protocol.vmm  # noqa: F401  (registers mem_pin, mem_transfer ...)
from protocol.errors import ProtocolError
from protocol.frames import body_frames, check_runs, count, from_runs, to_runs
from protocol.messages import validate_body

distinct_frames = st.lists(st.integers(min_value=0, max_value=5000), unique=True, max_size=300)


@given(distinct_frames)
def test_runs_of_any_distinct_frame_list_spell_out_the_same_list_in_the_same_order(frames):
    runs = to_runs(frames)
    assert from_runs(runs) == frames
    assert count(runs) == len(frames)
    assert all(c >= 1 for _f, c in runs)
    # maximal: two neighbouring runs never continue one another
    assert all(a[0] + a[1] != b[0] for a, b in zip(runs, runs[1:]))


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=70000))
def test_a_range_of_frames_is_one_run(first, n):
    assert to_runs(list(range(first, first + n))) == [[first, n]]


@given(distinct_frames, st.randoms(use_true_random=False))
def test_runs_in_any_order_are_accepted_when_they_do_not_overlap(frames, rnd):
    runs = to_runs(sorted(frames))
    rnd.shuffle(runs)
    assert sorted(from_runs(runs)) == sorted(frames)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 40)), min_size=2, max_size=12))
def test_overlapping_runs_are_refused_naming_the_run_and_the_field(pairs):
    runs = [list(p) for p in pairs]
    frames = [f for a, n in runs for f in range(a, a + n)]
    if len(set(frames)) == len(frames):
        assert from_runs(runs, "body.runs") == frames
        return
    with pytest.raises(ProtocolError, match="overlap") as info:
        check_runs(runs, "body.runs")
    assert info.value.reason == "bad_field" and info.value.field.startswith("body.runs[")


@pytest.mark.parametrize("runs, where, what", [
    ("0-9", "body.runs", "expected a list of \\[first, count\\] runs, got str"),
    ([[0, 4], 7], "body.runs[1]", "expected a run \\[first, count\\] of two integers, got 7"),
    ([[0, 4, 1]], "body.runs[0]", "two integers"),
    ([[0, True]], "body.runs[0]", "two integers"),
    ([[1.0, 2]], "body.runs[0]", "two integers"),
    ([[-1, 2]], "body.runs[0]", "first >= 0 and count >= 1, got \\[-1, 2\\]"),
    ([[5, 0]], "body.runs[0]", "first >= 0 and count >= 1, got \\[5, 0\\]"),
    ([[10, 5], [0, 3], [12, 1]], "body.runs[2]", "runs \\[10, 5\\] and \\[12, 1\\] overlap"),
])
def test_a_malformed_run_is_a_bad_field_error_naming_it(runs, where, what):
    with pytest.raises(ProtocolError, match=what) as info:
        from_runs(runs)
    assert (info.value.reason, info.value.field) == ("bad_field", where)


def test_a_body_names_its_frames_by_runs_or_by_the_former_list_exactly_once():
    assert body_frames({"runs": [[7, 3]]}) == [7, 8, 9]
    assert body_frames({"frames": [9, 4]}) == [9, 4]
    with pytest.raises(ProtocolError, match="name the frames once") as info:
        body_frames({"runs": [[7, 3]], "frames": [7]})
    assert (info.value.reason, info.value.field) == ("bad_field", "body.runs")
    with pytest.raises(ProtocolError, match="name the frames once") as info:
        body_frames({"owner": "os1"})
    assert (info.value.reason, info.value.field) == ("missing_field", "body.runs")


@pytest.mark.parametrize("kind", ["mod_add", "mod_give_back", "mem_pin", "mem_unpin", "mem_transfer"])
def test_the_frame_carrying_kinds_take_runs_and_check_each_run_is_a_list(kind):
    extra = {"from_owner": "os1", "to_owner": "vmm"} if kind == "mem_transfer" else {}
    validate_body(kind, {"runs": [[256, 65536]], **extra})
    validate_body(kind, {"frames": [256, 257], **extra})
    with pytest.raises(ProtocolError) as info:
        validate_body(kind, {"runs": [[256, 1], 3], **extra})
    assert info.value.field == "body.runs[1]"


@given(st.lists(st.tuples(st.integers(0, 10**5), st.integers(1, 3000)), min_size=1, max_size=40),
       st.randoms(use_true_random=False))
def test_a_list_made_of_long_runs_in_any_order_gives_back_exactly_those_runs_merged(pairs, rnd):
    frames = list(dict.fromkeys(f for a, n in pairs for f in range(a, a + n)))  # distinct, runs in their order
    runs = to_runs(frames)
    assert from_runs(runs) == frames
    assert all(a[0] + a[1] != b[0] for a, b in zip(runs, runs[1:]))  # maximal


@given(st.lists(st.integers(min_value=0, max_value=3000), unique=True, max_size=400))
def test_runs_of_a_sorted_set_taken_as_increasing_are_the_same_runs(frames):
    frames.sort()
    assert to_runs(frames, increasing=True) == to_runs(frames)
