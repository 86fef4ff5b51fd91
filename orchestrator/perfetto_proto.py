"""The merged trace in Perfetto's own protobuf format (``*.pftrace``).

:func:`orchestrator.tracing.chrome_trace` builds the trace as Chrome JSON
events; this module re-encodes those events as Perfetto ``TracePacket`` s with
the message classes generated from Perfetto's ``perfetto_trace.proto`` (the
``perfetto`` package on PyPI): a track per node (a process track) with a
child track per thread of the JSON trace, a counter track per counter,
``TYPE_SLICE_BEGIN``/``TYPE_SLICE_END`` per slice with its arguments as
debug annotations, ``TYPE_INSTANT`` per instant, and each flow arrow as a
``flow_ids`` / ``terminating_flow_ids`` pair on the slices it joins.
Timestamps are nanoseconds from the trace's first event.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import (
    CounterDescriptor,
    ProcessDescriptor,
    Trace,
    TracePacket,
    TrackDescriptor,
    TrackEvent,
)

SEQ = 1  # one writer: one trusted packet sequence


def _uuid(pid: int, tid: int = 0, counter: str | None = None) -> int:
    if counter is not None:
        return (pid << 32) | (1 << 31) | (zlib.crc32(counter.encode()) & 0x7FFFFFFF)
    return (pid << 32) | tid


def _annotate(ev: TrackEvent, args: dict[str, Any]) -> None:
    for k, v in args.items():
        a = ev.debug_annotations.add(name=str(k))
        if isinstance(v, bool):
            a.bool_value = v
        elif isinstance(v, int) and -(1 << 63) <= v < (1 << 63):
            a.int_value = v
        elif isinstance(v, float):
            a.double_value = v
        elif isinstance(v, str):
            a.string_value = v
        else:
            a.string_value = json.dumps(v, default=repr)


def encode(trace: dict[str, Any]) -> bytes:
    """The Chrome JSON trace ``trace`` as a serialized Perfetto ``Trace``."""
    events = trace["traceEvents"]
    out = Trace()
    names: dict[tuple[int, int], str] = {}
    for e in events:
        if e["ph"] == "M" and e["name"] in ("process_name", "thread_name"):
            names[(e["pid"], e["tid"] if e["name"] == "thread_name" else 0)] = e["args"]["name"]
    first = True
    for (pid, tid), name in sorted(names.items()):
        p = out.packet.add(trusted_packet_sequence_id=SEQ)
        if first:
            p.sequence_flags = TracePacket.SEQ_INCREMENTAL_STATE_CLEARED
            first = False
        if tid == 0:
            p.track_descriptor.CopyFrom(TrackDescriptor(uuid=_uuid(pid), name=name,
                                                        process=ProcessDescriptor(pid=pid, process_name=name)))
        else:
            p.track_descriptor.CopyFrom(TrackDescriptor(uuid=_uuid(pid, tid), parent_uuid=_uuid(pid), name=name))
    counters = sorted({(e["pid"], e["name"]) for e in events if e["ph"] == "C"})
    for pid, name in counters:
        p = out.packet.add(trusted_packet_sequence_id=SEQ)
        p.track_descriptor.CopyFrom(TrackDescriptor(uuid=_uuid(pid, counter=name), parent_uuid=_uuid(pid),
                                                    name=name, counter=CounterDescriptor()))
    # a flow joins the slices that begin where its ends are (Chrome's binding of s / f)
    flows_out: dict[tuple[int, int, float], list[int]] = {}
    flows_in: dict[tuple[int, int, float], list[int]] = {}
    for e in events:
        if e["ph"] in ("s", "f"):
            (flows_out if e["ph"] == "s" else flows_in).setdefault((e["pid"], e["tid"], e["ts"]), []).append(e["id"])
    timeline: list[tuple[int, int, int, TracePacket]] = []  # (ns, order, tiebreak, packet)
    for e in events:
        ph = e["ph"]
        if ph not in ("X", "i", "C"):
            continue
        ns = round(e["ts"] * 1000)
        p = TracePacket(timestamp=ns, trusted_packet_sequence_id=SEQ)
        ev = p.track_event
        if ph == "C":
            ev.type = TrackEvent.TYPE_COUNTER
            ev.track_uuid = _uuid(e["pid"], counter=e["name"])
            ev.double_counter_value = float(next(iter(e["args"].values())))
            timeline.append((ns, 1, 0, p))
            continue
        ev.track_uuid = _uuid(e["pid"], e["tid"])
        ev.name = e["name"]
        if e.get("cat"):
            ev.categories.append(e["cat"])
        _annotate(ev, e.get("args", {}))
        if ph == "i":
            ev.type = TrackEvent.TYPE_INSTANT
            timeline.append((ns, 1, 0, p))
            continue
        ev.type = TrackEvent.TYPE_SLICE_BEGIN
        key = (e["pid"], e["tid"], e["ts"])
        ev.flow_ids.extend(flows_out.pop(key, []))
        ev.terminating_flow_ids.extend(flows_in.pop(key, []))
        end_ns = round((e["ts"] + e["dur"]) * 1000)
        # at one instant: ends before begins; a longer slice begins first and ends last
        dur_ns = end_ns - ns
        timeline.append((ns, 1, -dur_ns, p))
        end = TracePacket(timestamp=end_ns, trusted_packet_sequence_id=SEQ)
        end.track_event.type = TrackEvent.TYPE_SLICE_END
        end.track_event.track_uuid = ev.track_uuid
        timeline.append((end_ns, 0, -ns, end))
    timeline.sort(key=lambda t: t[:3])
    for *_, p in timeline:
        out.packet.append(p)
    return out.SerializeToString()

