"""Critical paths of guest operations, read from a cluster trace.

A guest operation (a UDP echo, a disk write, a syscall) costs what the
longest chain of messages it waits for in sequence costs: its *critical
path*. This module finds that chain in a merged trace (``hwemu trace save``,
Chrome JSON: :func:`from_chrome`) by walking back from the operation's end:
at each node, the message that arrived last before the node sent the next
one of the chain is what the node waited for; its sender is the previous
node of the chain, and so on back to the operation's start.

Only messages causally after the start count (a timer tick that happened to
arrive in between is not part of the chain), and transport bookkeeping is
left out (``flow_ack`` and heartbeats: nothing waits for them on the path).
The result is the number of *hops* (one-way messages) a benchmark compares
with the floor of the message plane (hops × a raw one-way latency) and that
tests pin, so that a path that grows fails CI.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

# transport bookkeeping, never on a guest operation's critical path
IGNORED = frozenset({"flow_ack", "heartbeat", "trace_start", "trace_stop", "trace_dump", "stats", "stats_reply",
                     "ping", "pong"})


@dataclass(frozen=True)
class Hop:
    """One message of a chain: sent by ``src`` at ``sent``, received by ``dst`` at ``recv`` (µs)."""

    kind: str
    src: str
    dst: str
    sent: float
    recv: float
    flow: str | None = None


@dataclass
class Timeline:
    """A trace's messages matched send to receive, and its other events, per node."""

    hops: list[Hop] = field(default_factory=list)
    # (µs, node, cat, name, args) of every other event: syscalls, traps, interrupts
    events: list[tuple[float, str, str, str, dict[str, Any]]] = field(default_factory=list)

    def marks(self, node: str, cat: str, name: str, **match: Any) -> list[float]:
        """The times (µs) of ``node``'s events ``cat``/``name`` whose fields include ``match``."""
        return [t for t, n, c, nm, a in self.events
                if n == node and c == cat and nm.startswith(name) and all(a.get(k) == v for k, v in match.items())]

    def received(self, node: str, kind: str) -> list[float]:
        """The times ``node`` received a message of ``kind``."""
        return sorted(h.recv for h in self.hops if h.dst == node and h.kind == kind)

    def sent(self, node: str, kind: str) -> list[float]:
        """The times ``node`` sent a message of ``kind``."""
        return sorted(h.sent for h in self.hops if h.src == node and h.kind == kind)


def from_chrome(trace: dict[str, Any]) -> Timeline:
    """The :class:`Timeline` of a Chrome JSON trace written by ``hwemu trace save``."""
    names = {e["pid"]: e["args"]["name"].split(" ")[0] for e in trace["traceEvents"]
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    sends: dict[tuple[str, int], list[tuple[float, dict]]] = {}
    recvs: list[tuple[str, float, dict]] = []
    out = Timeline()
    for e in sorted((e for e in trace["traceEvents"] if "ts" in e), key=lambda e: e["ts"]):
        node, args = names.get(e["pid"], "?"), e.get("args") or {}
        if e.get("cat") == "msg" and e.get("ph") == "X":
            if "dst" in args:
                sends.setdefault((node, args["seq"]), []).append((e["ts"], args))
            else:
                recvs.append((node, e["ts"], args))
        elif e.get("ph") == "i":
            out.events.append((e["ts"], node, e.get("cat", ""), e["name"], args))
    for node, t, args in recvs:
        match = sends.get((args["src"], args["seq"]))
        if not match:
            continue  # its send is not on the trace (before it started, or a client outside it)
        t_sent, _ = match.pop(0)
        out.hops.append(Hop(args["kind"], args["src"], node, t_sent, t, args.get("flow")))
    out.hops.sort(key=lambda h: h.sent)
    return out


def critical_path(tl: Timeline, start: tuple[str, float], end: tuple[str, float]) -> list[Hop]:
    """The chain of messages from ``start`` (node, µs) to ``end`` (node, µs), oldest first.

    A message counts if it was sent at or after the start by a node the start
    had reached by then (``start``'s node from its time on, any other node
    from its first receipt of such a message on). From ``end`` back: the
    message the node received last before that time is the hop it waited
    for; then the same at its sender, before it sent it; until a node that
    received nothing of the operation before (the start).
    """
    s_node, t0 = start
    reach = {s_node: t0}
    counted: list[Hop] = []
    for h in tl.hops:  # by send time: a message's receipt is after its send
        if h.kind in IGNORED or h.sent < t0 or h.sent > end[1]:
            continue
        if reach.get(h.src, float("inf")) <= h.sent:
            counted.append(h)
            if h.recv < reach.get(h.dst, float("inf")):
                reach[h.dst] = h.recv
    by_dst: dict[str, list[Hop]] = {}
    for h in counted:
        by_dst.setdefault(h.dst, []).append(h)
    chain: list[Hop] = []
    node, t = end
    while True:
        before = [h for h in by_dst.get(node, ()) if h.recv <= t]
        if not before:
            break
        last = max(before, key=lambda h: h.recv)
        chain.append(last)
        node, t = last.src, last.sent
        if node == s_node and t <= t0:
            break
    chain.reverse()
    return chain


def cycles(tl: Timeline, node: str, marks: list[float], skip: int = 1) -> list[list[Hop]]:
    """The critical path of each cycle between consecutive ``marks`` (times at
    ``node``, such as its receipts of the traps of one syscall in a loop);
    the first ``skip`` cycles are left out (warm-up)."""
    marks = sorted(marks)
    return [critical_path(tl, (node, a), (node, b)) for a, b in zip(marks, marks[1:])][skip:]


def spans(tl: Timeline, node: str, first: str, last: str, skip: int = 1) -> list[list[Hop]]:
    """The critical path from each message ``first`` that ``node`` sent to the
    next message ``last`` it received (a UDP echo: ``nic_rx`` out of the NIC,
    ``nic_send`` into it); the first ``skip`` are left out (warm-up)."""
    ends = tl.received(node, last)
    out = []
    for s in tl.sent(node, first):
        later = [e for e in ends if e > s]
        if later:
            out.append(critical_path(tl, (node, s), (node, later[0])))
    return out[skip:]


def between(tl: Timeline, node: str, starts: list[float], ends: list[float], skip: int = 1) -> list[list[Hop]]:
    """The critical path from each time in ``starts`` to the first of ``ends``
    after it, both at ``node`` (a datagram's arrival at the NIC and the
    NIC's next send of one); the first ``skip`` are left out (warm-up)."""
    ends = sorted(ends)
    out = []
    for s in sorted(starts):
        later = [e for e in ends if e > s]
        if later:
            out.append(critical_path(tl, (node, s), (node, later[0])))
    return out[skip:]


def hop_count(paths: list[list[Hop]]) -> int:
    """The median number of hops of ``paths`` (a typical cycle; a rare one that
    also fetched a page or met a route change does not move it)."""
    if not paths:
        raise ValueError("no complete cycle on the trace")
    return int(statistics.median_low(len(p) for p in paths))


def describe(path: list[Hop]) -> str:
    """One line: each hop as ``kind src→dst``."""
    return ", ".join(f"{h.kind} {h.src}→{h.dst}" for h in path)
