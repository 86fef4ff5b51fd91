"""Merging the rings into one trace (orchestrator/tracing.py) and its
Perfetto protobuf encoding (orchestrator/perfetto_proto.py), on rings
written here; read back with Perfetto's own protobuf definitions."""

from __future__ import annotations

from collections import Counter

import pytest
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

from orchestrator import perfetto_proto, tracing

MS = 1_000_000  # ns


def rings() -> dict[str, dict]:
    t = 10_000 * MS
    return {
        "orch": {"kind": "orchestrator", "events": [
            [t + 1 * MS, "msg", "send", {"kind": "route_switch", "dst": "cpu0", "seq": 7, "flow": None, "fseq": None,
                                         "epoch": 1, "size": 90}],
            [t + 9 * MS, "route", "change", {"flows": ["trap:cpu0"], "epoch": 2, "moves": {"trap:cpu0": ["os1", "vmm"]},
                                             "pause_ms": 3.0, "total_ms": 8.0}],
            [t + 10 * MS, "chor", "step", {"id": "c1", "figure": "fig3", "title": "FIG. 3", "step": "redirect_traps",
                                           "patent": "304", "start_ns": t, "ms": 10.0, "pause_ms": 3.0}],
            [t + 12 * MS, "chor", "end", {"id": "c1", "figure": "fig3", "title": "FIG. 3", "start_ns": t,
                                          "outcome": "committed", "pause_ms": 3.0}],
        ]},
        "cpu0": {"kind": "cpu", "events": [
            [t + 2 * MS, "msg", "recv", {"kind": "route_switch", "src": "orch", "seq": 7, "flow": None, "fseq": None,
                                         "size": 90}],
            [t + 2 * MS + 10, "route", "pause", {"flows": ["trap:cpu0"], "epoch": 1, "paused_ms": 0.0}],
            [t + 3 * MS, "cpu", "progress", {"instret": 1000}],
            [t + 5 * MS, "route", "resume", {"flows": ["trap:cpu0"], "epoch": 2, "paused_ms": 3.0, "flushed": 1}],
            [t + 5 * MS + 100, "trap", "raise", {"cause": 8, "pc": 4096, "instret": 1500}],
            [t + 13 * MS, "cpu", "progress", {"instret": 21000}],
            # a message from a node not on the trace: a slice, no arrow
            [t + 14 * MS, "msg", "recv", {"kind": "ping", "src": "cli-1", "seq": 1, "flow": None, "fseq": None,
                                          "size": 30}],
        ]},
    }


def test_the_merge_has_a_process_per_node_an_arrow_per_message_steps_pauses_and_counters():
    trace = tracing.chrome_trace(rings())
    ev = trace["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    assert procs == {1: "orch (orchestrator)", 2: "cpu0 (cpu)"}
    s = [e for e in ev if e["ph"] == "s"]
    f = [e for e in ev if e["ph"] == "f"]
    assert [(e["pid"], e["id"]) for e in s] == [(1, 1)] and [(e["pid"], e["id"], e["bp"]) for e in f] == [(2, 1, "e")]
    assert f[0]["ts"] - s[0]["ts"] == 1000.0  # µs from the first event, on the one shared clock
    by_name = {e["name"]: e for e in ev if e["ph"] == "X"}
    step, pause = by_name["fig3: redirect_traps"], by_name["pause"]
    assert (step["ts"], step["dur"], step["args"]["pause_ms"]) == (0.0, 10_000.0, 3.0)
    assert (pause["ts"], pause["dur"]) == (7_000.0, 3_000.0)  # inside the step, at its end
    assert by_name["FIG. 3"]["dur"] == 12_000.0  # the choreography holds its steps
    assert by_name["paused trap:cpu0"]["dur"] == 3_000.0  # the sender's pause, ending at its resume
    assert by_name["route change trap:cpu0"]["args"]["pause_ms"] == 3.0
    mips = [e for e in ev if e["ph"] == "C" and e["name"] == "MIPS"]
    assert [e["args"]["mips"] for e in mips] == [2.0]  # 20,000 instructions in 10 ms
    assert Counter(e["ph"] for e in ev if e.get("cat") == "msg")["X"] == 3


def test_the_protobuf_encoding_holds_the_same_slices_flows_and_counters():
    trace = tracing.chrome_trace(rings())
    pb = Trace.FromString(perfetto_proto.encode(trace))
    tracks = {p.track_descriptor.uuid: p.track_descriptor for p in pb.packet if p.HasField("track_descriptor")}
    assert {d.process.process_name for d in tracks.values() if d.HasField("process")} == {"orch (orchestrator)",
                                                                                        "cpu0 (cpu)"}
    te = [p for p in pb.packet if p.HasField("track_event")]
    assert [p.timestamp for p in te] == sorted(p.timestamp for p in te)
    begins = [p.track_event for p in te if p.track_event.type == TrackEvent.TYPE_SLICE_BEGIN]
    assert len(begins) == sum(1 for e in trace["traceEvents"] if e["ph"] == "X")
    assert len([p for p in te if p.track_event.type == TrackEvent.TYPE_SLICE_END]) == len(begins)
    assert [list(b.flow_ids) for b in begins if b.flow_ids] == [[1]]
    assert [list(b.terminating_flow_ids) for b in begins if b.terminating_flow_ids] == [[1]]
    counters = [p.track_event.double_counter_value for p in te if p.track_event.type == TrackEvent.TYPE_COUNTER]
    assert 21000.0 in counters and 2.0 in counters
    step = next(b for b in begins if b.name == "fig3: redirect_traps")
    assert {a.name: a.double_value for a in step.debug_annotations if a.name == "pause_ms"} == {"pause_ms": 3.0}
    # slices nest: on each track, every end closes the latest open begin
    open_: dict[int, int] = Counter()
    for p in te:
        if p.track_event.type == TrackEvent.TYPE_SLICE_BEGIN:
            open_[p.track_event.track_uuid] += 1
        elif p.track_event.type == TrackEvent.TYPE_SLICE_END:
            open_[p.track_event.track_uuid] -= 1
            assert open_[p.track_event.track_uuid] >= 0
    assert not any(open_.values())


def test_a_remote_clock_offset_is_estimated_from_the_shortest_round_trip():
    """NTP's estimate: offset = t1 - (t0 + t2) / 2 of the fastest ping, error at most half its round trip."""
    # the node's clock runs 1_000_000 ns ahead; the slow sample's answer sat in a queue
    samples = [(100, 1_000_400, 900), (2_000, 1_002_150, 2_300), (5_000, 1_009_000, 9_000)]
    assert tracing.clock_offset(samples) == (1_000_000, 150)
    with pytest.raises(ValueError):
        tracing.clock_offset([])
