"""The node recorder: a bounded trace ring and an append-only JSON-lines history."""

import json

import pytest

from nodes.recorder import Recorder


def test_a_recorder_with_no_sink_is_off_and_records_nothing(tmp_path):
    rec = Recorder("n1")
    assert not rec.on
    rec("msg", "send", kind="ping")
    assert rec.snapshot() == []


def test_the_trace_ring_keeps_the_last_events_and_counts_what_it_pushed_out():
    rec = Recorder("n1")
    rec.start_trace(size=3)
    assert rec.on
    for i in range(5):
        rec("flow", "deliver", flow="irq:t", fseq=i + 1)
    events = rec.stop_trace()
    assert [e[3]["fseq"] for e in events] == [3, 4, 5]
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    assert rec.dropped == 2
    assert not rec.on


def test_a_ring_of_no_size_is_refused():
    with pytest.raises(ValueError, match="at least 1"):
        Recorder("n1").start_trace(size=0)


def test_the_history_appends_one_json_line_per_event_across_reopenings(tmp_path):
    path = tmp_path / "n1.history.jsonl"
    rec = Recorder("n1")
    rec.open_history(str(path))
    rec("disk", "write_acked", block=7, req=1)
    rec.close_history()
    rec.open_history(str(path))  # a restarted node appends to its predecessor's record
    rec("disk", "write_acked", block=8, req=2)
    rec.close_history()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(e["node"], e["cat"], e["ev"], e["block"]) for e in lines] == [("n1", "disk", "write_acked", 7),
                                                                          ("n1", "disk", "write_acked", 8)]
    assert not rec.on
