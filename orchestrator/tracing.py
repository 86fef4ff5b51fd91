"""One trace of the whole cluster, in the Chrome JSON trace format that Perfetto opens.

Every node records its events into a bounded ring (protocol/recorder.py,
``trace_start``); the orchestrator records its own (choreography steps, route
changes, the messages it sends and receives). :func:`collect` reads every
ring out, a page at a time (``trace_dump``), and :func:`chrome_trace` merges
them into one trace (https://docs.google.com/document/d/1CvAClvFfyA5R-PhYUmn5OOQtYMH4h6I0nSsKchNAySU,
"Trace Event Format"):

- one process per node (``pid``, named "node (kind)"), with threads:
  ``messages`` (a short slice per message sent or received, and a flow arrow
  from each send to its receive: ``ph: s`` / ``ph: f`` bound by one id),
  ``route`` (each pause of a flow as a slice, from the pause to the resume,
  the drain and switch as instants), ``events`` (traps, syscalls,
  interrupts raised and delivered, frame owner changes);
- guest progress as counter tracks of the CPU (instructions retired, MIPS);
- on the orchestrator's process, ``choreography``: each choreography a slice,
  each of its steps a slice inside it with its pause as an argument and, when
  it paused senders, a ``pause`` slice at its end as long as the pause; and
  ``route authority``: each route change with its pause.

Clocks: every node of one host stamps its events with ``CLOCK_MONOTONIC``,
which all processes of the host share, so the events merge as they are.
Nodes on several hosts would need an offset per host (see
docs/observability.md: estimated from ping round trips); :func:`chrome_trace`
takes one per node (``offsets``) and adds it to the node's stamps.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import msgpack
import trio

from orchestrator import perfetto_proto
from protocol.constants import ORCHESTRATOR
from protocol.errors import RemoteError, RequestTimeout

log = logging.getLogger("hwemu.tracing")

ORCH = ORCHESTRATOR
TIDS = {"messages": 1, "route": 2, "events": 3, "choreography": 4, "route authority": 5}
MSG_SLICE_US = 1.0  # a message's slice on its track (shortened so that slices never overlap)

Request = Callable[[str, str, dict], Awaitable[Any]]


async def collect(request: Request, nodes: list[str], timeout: float = 10.0) -> tuple[dict[str, dict], list[str]]:
    """Every node's ring, read out in pages: ``{node: {kind, pid, events, dropped, clock}}``
    and a note per node that did not answer (the trace is written without it)."""
    dumps: dict[str, dict] = {}
    notes: list[str] = []

    async def one(node: str) -> None:
        offset: int | None = 0
        events: list = []
        head: dict = {}
        try:
            while offset is not None:
                data = await request(node, "trace_dump", {"offset": offset})
                head = data
                events.extend(data["events"])
                offset = data["next"]
        except (RemoteError, RequestTimeout) as exc:
            notes.append(f"{node}: no trace ({exc})")
            return
        dumps[node] = {**{k: v for k, v in head.items() if k != "events"}, "events": events}

    async with trio.open_nursery() as n:
        for node in nodes:
            n.start_soon(one, node)
    return dumps, notes


def _us(t_ns: int, t0: int) -> float:
    return round((t_ns - t0) / 1000, 3)


def _short(fields: dict[str, Any]) -> dict[str, Any]:
    """An event's fields as slice arguments (long lists cut: a trace is for looking at)."""
    out = {}
    for k, v in fields.items():
        if isinstance(v, list) and len(v) > 16:
            v = v[:16] + [f"... {len(v) - 16} more"]
        out[k] = v
    return out


def chrome_trace(dumps: dict[str, dict], offsets: dict[str, int] | None = None,
                 notes: list[str] | None = None) -> dict[str, Any]:
    """Merge the rings of :func:`collect` (the orchestrator's under ``"orch"``)
    into one Chrome JSON trace (see the module docstring)."""
    offsets = offsets or {}
    names = sorted(dumps, key=lambda n: (n != ORCH, n))
    pids = {name: i + 1 for i, name in enumerate(names)}
    events: list[tuple[str, int, str, str, dict]] = []  # (node, t_ns, cat, name, fields)
    for node in names:
        off = offsets.get(node, 0)
        events.extend((node, t + off, cat, name, fields) for t, cat, name, fields in dumps[node]["events"])
    events.sort(key=lambda e: e[1])
    # the trace starts at its first event, or at the start of a step recorded at its end
    t0 = min([events[0][1]] + [e[4]["start_ns"] + offsets.get(e[0], 0) for e in events
                               if e[2] == "chor" and e[4].get("start_ns") is not None]) if events else 0
    out: list[dict[str, Any]] = []
    for node in names:
        pid = pids[node]
        kind = dumps[node].get("kind", "orchestrator" if node == ORCH else "?")
        out.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"{node} ({kind})"}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        for tname, tid in TIDS.items():
            out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": tname}})
    out.extend(_messages(events, pids, t0))
    for node, t, cat, name, fields in events:
        out.extend(_event(node, pids[node], _us(t, t0), t0, cat, name, fields))
    out.extend(_progress(events, pids, t0))
    return {"traceEvents": out, "displayTimeUnit": "ms",
            "otherData": {"generator": "hwemu", "clock": "CLOCK_MONOTONIC", "t0_ns": t0,
                          "nodes": {n: {"pid": pids[n], "kind": dumps[n].get("kind"),
                                        "os_pid": dumps[n].get("pid"), "events": len(dumps[n]["events"]),
                                        "dropped": dumps[n].get("dropped", 0)} for n in names},
                          "notes": list(notes or [])}}


def _messages(events: list, pids: dict[str, int], t0: int) -> list[dict[str, Any]]:
    """A slice per message sent or received, and a flow arrow from each send
    to its receive (matched by sender and sequence number)."""
    out: list[dict[str, Any]] = []
    msgs = [e for e in events if e[2] == "msg"]
    # the slices of one node's track are cut short of the next: they never overlap
    by_node: dict[str, list] = {}
    for e in msgs:
        by_node.setdefault(e[0], []).append(e)
    dur: dict[int, float] = {}
    for evs in by_node.values():
        for a, b in zip(evs, evs[1:] + [None]):
            gap = (b[1] - a[1]) / 1000 if b is not None else MSG_SLICE_US
            dur[id(a)] = max(0.001, min(MSG_SLICE_US, round(gap, 3) - 0.001)) if gap > 0.001 else 0.001
    sends: dict[tuple[str, int], list] = {}
    for e in msgs:
        if e[3] == "send" and e[4]["dst"] in pids:
            sends.setdefault((e[0], e[4]["seq"]), []).append(e)
    flow_id = 0
    for e in msgs:
        node, t, _, name, f = e
        ts = _us(t, t0)
        peer = f.get("dst") if name == "send" else f.get("src")
        label = f"{f['kind']} {'→' if name == 'send' else '←'} {peer}"
        if f.get("flow"):
            label += f" [{f['flow']}#{f['fseq']}]"
        out.append({"ph": "X", "name": label, "cat": "msg", "pid": pids[node], "tid": TIDS["messages"], "ts": ts,
                    "dur": dur[id(e)], "args": _short(f)})
        if name == "recv":
            match = sends.get((f["src"], f["seq"]))
            if match:
                s = match.pop(0)  # the earliest unmatched send of that number (a restart reuses numbers)
                flow_id += 1
                out.append({"ph": "s", "name": f["kind"], "cat": "msg", "id": flow_id, "pid": pids[s[0]],
                            "tid": TIDS["messages"], "ts": _us(s[1], t0)})
                out.append({"ph": "f", "bp": "e", "name": f["kind"], "cat": "msg", "id": flow_id,
                            "pid": pids[node], "tid": TIDS["messages"], "ts": ts})
    return out


def _event(node: str, pid: int, ts: float, t0: int, cat: str, name: str, f: dict) -> list[dict[str, Any]]:
    if cat == "msg" or cat == "cpu":
        return []  # messages: _messages; progress: _progress
    if cat == "route" and node != ORCH:
        if name == "resume" and f.get("paused_ms"):
            start = max(0.0, ts - f["paused_ms"] * 1000)
            return [{"ph": "X", "name": f"paused {', '.join(f['flows'])}", "cat": "route", "pid": pid,
                     "tid": TIDS["route"], "ts": round(start, 3), "dur": round(ts - start, 3), "args": _short(f)}]
        return [{"ph": "i", "s": "t", "name": f"route {name} {', '.join(f.get('flows', []))}", "cat": "route",
                 "pid": pid, "tid": TIDS["route"], "ts": ts, "args": _short(f)}]
    if cat == "route":  # the authority's view of a change: from its start to its end
        start = max(0.0, ts - f.get("total_ms", 0.0) * 1000)
        return [{"ph": "X", "name": f"route change {', '.join(f['flows'])}", "cat": "route", "pid": pid,
                 "tid": TIDS["route authority"], "ts": round(start, 3), "dur": round(ts - start, 3),
                 "args": _short(f)}]
    if cat == "chor":
        if f.get("start_ns") is None:
            return [{"ph": "i", "s": "t", "name": f"{f['title']}: {f['outcome']}", "cat": "chor", "pid": pid,
                     "tid": TIDS["choreography"], "ts": ts, "args": _short(f)}]
        start = _us(f["start_ns"], t0)
        if name == "end":
            return [{"ph": "X", "name": f["title"], "cat": "chor", "pid": pid, "tid": TIDS["choreography"],
                     "ts": start, "dur": round(ts - start, 3), "args": _short(f)}]
        step = {"ph": "X", "name": f"{f['figure']}: {f['step']}", "cat": "chor.step", "pid": pid,
                "tid": TIDS["choreography"], "ts": start, "dur": round(max(ts - start, 0.001), 3),
                "args": _short(f)}
        if not f.get("pause_ms"):
            return [step]
        pause = min(f["pause_ms"] * 1000, step["dur"])
        return [step, {"ph": "X", "name": "pause", "cat": "chor.pause", "pid": pid, "tid": TIDS["choreography"],
                       "ts": round(start + step["dur"] - pause, 3), "dur": round(pause, 3),
                       "args": {"pause_ms": f["pause_ms"], "step": f["step"], "figure": f["figure"]}}]
    label = {"trap": "trap", "syscall": "syscall", "irq": "irq", "frame": "frames", "flow": "flow"}.get(cat, cat)
    detail = f.get("flow") or f.get("cause") or f.get("nr") or f.get("new") or ""
    return [{"ph": "i", "s": "t", "name": f"{label} {name} {detail}".strip(), "cat": cat, "pid": pid,
             "tid": TIDS["events"], "ts": ts, "args": _short(f)}]


def _progress(events: list, pids: dict[str, int], t0: int) -> list[dict[str, Any]]:
    """Guest progress: instructions retired, and MIPS between two samples, as counters."""
    out: list[dict[str, Any]] = []
    last: dict[str, tuple[int, int]] = {}
    for node, t, cat, name, f in events:
        if cat != "cpu" or name != "progress":
            continue
        ts = _us(t, t0)
        out.append({"ph": "C", "name": "instructions retired", "pid": pids[node], "ts": ts,
                    "args": {"instret": f["instret"]}})
        if node in last and t > last[node][0]:
            mips = (f["instret"] - last[node][1]) / ((t - last[node][0]) / 1e9) / 1e6
            out.append({"ph": "C", "name": "MIPS", "pid": pids[node], "ts": ts, "args": {"mips": round(mips, 3)}})
        last[node] = (t, f["instret"])
    return out


PROTO_SUFFIXES = (".pftrace", ".perfetto-trace", ".pb")


def write(path: Path, trace: dict[str, Any]) -> None:
    """Write the trace atomically (a reader never sees half a file): in
    Perfetto's protobuf format if ``path`` ends in ``.pftrace`` (or
    ``.perfetto-trace``, ``.pb``), else as Chrome JSON."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix in PROTO_SUFFIXES:
        tmp.write_bytes(perfetto_proto.encode(trace))
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(trace, f, separators=(",", ":"), default=repr)
    os.replace(tmp, path)


# -- the orchestrator's side (Orchestrator.ctl_trace_*) -------------------------------

DEFAULT_RING = 65536
MAX_RING = 1 << 22


async def start(orch, size: int = DEFAULT_RING) -> dict[str, Any]:
    """Start the orchestrator's ring and every running node's (a fresh trace).
    A node that does not answer is named in ``missing``; the others trace."""
    if not 1 <= size <= MAX_RING:
        raise ValueError(f"trace ring size must be 1..{MAX_RING}, got {size}")
    orch.recorder.start_trace(size)
    orch.trace_events = None
    for left in (orch.run_dir / LEFT).glob("*.msgpack"):  # rings of an earlier trace's stopped nodes
        left.unlink(missing_ok=True)
    ok, missing = await _each(orch, "trace_start", {"size": size})
    return {"size": size, "nodes": ok, "missing": missing}


async def node_ready(orch, name: str) -> None:
    """A node (re)started while a trace is on: its ring starts too, as large as the
    orchestrator's (a restarted node's track goes on from its new life; the events of the
    life that was killed died with it)."""
    ring = orch.recorder.ring
    if ring is None:
        return
    try:
        await orch.party.request(name, "trace_start", {"size": ring.maxlen or DEFAULT_RING}, timeout=5.0)
    except (RemoteError, RequestTimeout) as exc:
        log.warning("%s started without its trace ring: %s", name, exc)


async def stop(orch) -> dict[str, Any]:
    """Stop every ring; the events stay where they are until the next start, for :func:`save`."""
    dropped = orch.recorder.dropped
    orch.trace_events = orch.recorder.stop_trace()
    ok, missing = await _each(orch, "trace_stop", {})
    return {"nodes": ok, "missing": missing, "orch_events": len(orch.trace_events), "orch_dropped": dropped}


PINGS = 5  # round trips per node whose clock is estimated; the shortest counts


def clock_offset(samples: list[tuple[int, int, int]]) -> tuple[int, int]:
    """A node's clock minus ours, as NTP estimates it, and the bound of its error
    (ns), from ``(t0, t1, t2)`` samples: a ping sent at our ``t0``, answered with the
    node's clock ``t1``, received at our ``t2``; the sample of the shortest round
    trip counts (its error is at most half of it).

    Raises:
        ValueError: no sample.
    """
    if not samples:
        raise ValueError("no clock sample")
    t0, t1, t2 = min(samples, key=lambda s: s[2] - s[0])
    return t1 - (t0 + t2) // 2, (t2 - t0 + 1) // 2


async def remote_offsets(orch, nodes: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """For each of ``nodes`` placed on another host than the orchestrator's, what to
    add to its stamps to put them on the orchestrator's clock, and its error (ns).
    Processes of one host read one CLOCK_MONOTONIC: nothing to do for them."""
    placement = orch.placement
    if not placement.placed:
        return {}, {}
    here = placement.where.get(ORCHESTRATOR)
    add: dict[str, int] = {}
    error: dict[str, int] = {}
    for node in nodes:
        if placement.where.get(node) in (None, here):
            continue
        samples = []
        for _ in range(PINGS):
            t0 = time.monotonic_ns()
            try:
                reply = await orch.party.request(node, "ping", {}, timeout=5.0)
            except (RemoteError, RequestTimeout) as exc:
                log.warning("clock of %s not estimated: %s", node, exc)
                break
            t2 = time.monotonic_ns()
            if isinstance(reply.body.get("now_ns"), int):
                samples.append((t0, reply.body["now_ns"], t2))
        if samples:
            offset, error[node] = clock_offset(samples)
            add[node] = -offset
    return add, error


async def save(orch, path: str, also: list[str] | None = None) -> dict[str, Any]:
    """Merge every ring (of the trace stopped last, or of the one still on, as it
    is now) into one trace at ``path`` and at each of ``also`` (each absolute: the
    orchestrator's working directory is not the caller's; Chrome JSON, or
    Perfetto's protobuf format for a ``.pftrace`` name: :func:`write`)."""
    paths = [path, *(also or [])]
    for p in paths:
        if not os.path.isabs(p):
            raise ValueError(f"trace path must be absolute, got {p!r}")
    if orch.recorder.tracing:
        mine = orch.recorder.snapshot()
    elif orch.trace_events is not None:
        mine = orch.trace_events
    else:
        raise ValueError("no trace recorded: `hwemu trace start` first")

    async def request(node: str, kind: str, body: dict) -> Any:
        return (await orch.party.request(node, kind, body, timeout=60.0)).body["data"]

    dumps, notes = await collect(request, orch.live_nodes())
    for name, left in (await trio.to_thread.run_sync(left_behind, orch.run_dir)).items():
        dumps.setdefault(name, left)  # a node restarted since: the running one's ring is on the trace
    dumps[ORCH] = {"kind": "orchestrator", "pid": os.getpid(), "events": [list(e) for e in mine],
                   "dropped": orch.recorder.dropped}
    offsets, errors = await remote_offsets(orch, [n for n in dumps if n in orch.live_nodes()])
    if offsets:
        notes = [*notes, *(f"{n}: clock offset {-v} ns (± {errors[n]} ns) to the orchestrator's, applied"
                           for n, v in sorted(offsets.items()))]
    trace = chrome_trace(dumps, offsets=offsets, notes=notes)
    for p in paths:
        await trio.to_thread.run_sync(write, Path(p), trace)
    return {"path": path, "also": paths[1:], "events": len(trace["traceEvents"]), "nodes": sorted(dumps),
            "notes": notes,
            "dropped": {n: d.get("dropped", 0) for n, d in dumps.items() if d.get("dropped")}}


LEFT = "trace"  # <run_dir>/trace: the rings nodes left when they stopped (nodes/runtime.py)


def left_behind(run_dir: Path) -> dict[str, dict]:
    """The rings that stopped nodes left in ``<run_dir>/trace``, by node name
    (of a node that stopped twice, its last life's)."""
    out: dict[str, dict] = {}
    for path in sorted((Path(run_dir) / LEFT).glob("*.msgpack"), key=lambda p: p.stat().st_mtime):
        try:
            data = msgpack.unpackb(path.read_bytes(), strict_map_key=False)
        except (OSError, ValueError) as exc:
            log.warning("trace left by a stopped node unreadable: %s: %s", path, exc)
            continue
        out[data["node"]] = data
    return out


async def _each(orch, kind: str, body: dict) -> tuple[list[str], list[str]]:
    ok: list[str] = []
    missing: list[str] = []

    async def one(node: str) -> None:
        try:
            await orch.party.request(node, kind, body, timeout=5.0)
            ok.append(node)
        except (RemoteError, RequestTimeout) as exc:
            missing.append(f"{node}: {exc}")

    async with trio.open_nursery() as n:
        for node in orch.live_nodes():
            n.start_soon(one, node)
    return sorted(ok), sorted(missing)
