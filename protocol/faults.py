"""Seeded fault injection in a party's transport (issue 14; docs/reliability.md).

A node's :class:`Injector` sits on its send path (``Party.faults``): every
frame the node sends passes :meth:`Injector.outgoing`, which lets it through,
drops it, mangles it, or holds it back to send it later (late, twice, or
behind frames sent after it). Faults are injected at the *sender*, so what
is tested is the plane's own recovery: the receiver sees what a lossy link
would give it. Two fault types live here (the orchestrator sends them as
``fault_set``, ``nodes/runtime.py`` installs them):

- ``flow``: on the messages of the named flows (``flows``; ``"*"``: every
  flow), each with its probability: ``drop``, ``dup``, ``reorder`` (held back
  1-10 ms, so what follows overtakes it), ``corrupt`` (bytes flipped and the
  frame cut short: a frame the receiver cannot decode, a lost one to it);
  ``delay_ms`` with ``jitter_ms`` (uniform ±, so a jitter reorders too). A
  flow's ``route_next`` (its sender's word on where it stands) is part of it.
- ``partition``: every message to the parties in ``peers`` is dropped (a
  two-way partition is set on both sides).

Every random choice comes from ``random.Random(seed)`` of its fault, so a
seed and the same traffic give the same injections. With no fault set the
send path costs one attribute test (``Party.faults is None``).
"""

from __future__ import annotations

import heapq
import itertools
import random
from typing import Any, Callable

import trio

from protocol.errors import ProtocolError
from protocol.messages import Message

PROBABILITIES = ("drop", "dup", "reorder", "corrupt")
MAX_DELAY_MS = 10_000.0
REORDER_HOLD_MS = (1.0, 10.0)  # how long a reordered frame is held back
_COMMON = {"id", "type", "seed"}


def _bad(detail: str, field: str = "body") -> ProtocolError:
    return ProtocolError("bad_fault", detail, field)


def probability(spec: dict[str, Any], key: str) -> float:
    """``spec[key]`` (default 0) as a probability; a fault spec's, here and in the node kinds' own faults.

    Raises:
        ProtocolError: ``bad_fault``: not a number between 0 and 1.
    """
    p = spec.get(key, 0.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
        raise _bad(f"{key} must be a probability between 0 and 1, got {p!r:.40}", f"body.{key}")
    return float(p)


def _ms(spec: dict[str, Any], key: str) -> float:
    v = spec.get(key, 0.0)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= MAX_DELAY_MS:
        raise _bad(f"{key} must be between 0 and {MAX_DELAY_MS:g} ms, got {v!r:.40}")
    return float(v)


def _names(spec: dict[str, Any], key: str) -> frozenset[str]:
    v = spec.get(key)
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x for x in v):
        raise _bad(f"{key} must be a non-empty list of names, got {v!r:.60}")
    return frozenset(v)


def _unknown(spec: dict[str, Any], known: set[str]) -> None:
    extra = sorted(set(spec) - _COMMON - known)
    if extra:
        raise _bad(f"unknown parameter(s) for a {spec.get('type')} fault: {', '.join(extra)}")


class _Fault:
    """One active fault: its spec, its random stream, what it did."""

    __slots__ = ("id", "type", "spec", "rng", "counts")

    def __init__(self, spec: dict[str, Any]):
        self.id: str = spec["id"]
        self.type: str = spec["type"]
        self.spec = spec
        self.rng = random.Random(spec["seed"])
        self.counts: dict[str, int] = {}

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1


class FlowFault(_Fault):
    __slots__ = ("flows", "drop", "dup", "reorder", "corrupt", "delay", "jitter")

    def __init__(self, spec: dict[str, Any]):
        _unknown(spec, {"flows", "delay_ms", "jitter_ms", *PROBABILITIES})
        super().__init__(spec)
        self.flows = _names(spec, "flows")
        self.drop, self.dup, self.reorder, self.corrupt = (probability(spec, k) for k in PROBABILITIES)
        self.delay = _ms(spec, "delay_ms") / 1e3
        self.jitter = _ms(spec, "jitter_ms") / 1e3

    def matches(self, msg: Message) -> bool:
        flows = self.flows
        if msg.flow is not None:
            return msg.flow in flows or "*" in flows
        if msg.kind == "route_next":
            nxt = msg.body.get("next")
            return isinstance(nxt, dict) and ("*" in flows or not flows.isdisjoint(nxt))
        return False


class PartitionFault(_Fault):
    __slots__ = ("peers",)

    def __init__(self, spec: dict[str, Any]):
        _unknown(spec, {"peers"})
        super().__init__(spec)
        self.peers = _names(spec, "peers")


TYPES: dict[str, type[_Fault]] = {"flow": FlowFault, "partition": PartitionFault}


def mangle(frame: bytes, rng: random.Random) -> bytes:
    """A damaged copy of ``frame``: 1-4 bytes flipped, and cut short at a
    random point. Without a checksum on the wire a flipped byte alone could
    still decode (to another message); a cut one never does (a msgpack map
    cut short is incomplete), and with a MAC any change is caught."""
    b = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b[:rng.randrange(len(b))])


class Injector:
    """The faults set on one party's send path, and the frames they hold back.

    Args:
        send: sends an encoded frame to a party now, never waiting (``Party.send_frame_nowait``).
        nursery: where the task that sends held-back frames runs.
    """

    def __init__(self, send: Callable[[str, bytes], bool], nursery: trio.Nursery):
        self._send = send
        self._nursery = nursery
        self.faults: dict[str, _Fault] = {}
        self._flow: list[FlowFault] = []
        self._partition: frozenset[str] = frozenset()
        self._later: list[tuple[float, int, str, bytes]] = []  # (due, tie, dst, frame), a heap
        self._tie = itertools.count()
        self._kick = trio.Event()
        self._task = False

    def add(self, spec: dict[str, Any]) -> None:
        """Set a fault (one with the same id is replaced).

        Raises:
            ProtocolError: ``unknown_fault`` (a type this module does not inject) or ``bad_fault``.
        """
        cls = TYPES.get(spec.get("type"))
        if cls is None:
            raise ProtocolError("unknown_fault", f"no transport fault of type {spec.get('type')!r}", "body.type")
        if not isinstance(spec.get("id"), str) or isinstance(spec.get("seed"), bool) \
                or not isinstance(spec.get("seed"), int):
            raise _bad("a fault needs an id (string) and a seed (integer)")
        self.faults[spec["id"]] = cls(spec)
        self._index()

    def clear(self, fault_id: str | None) -> int:
        """Remove one fault (or all: None); how many were removed. Frames held
        back still go out (a healed link delivers what was in flight)."""
        if fault_id is None:
            n = len(self.faults)
            self.faults.clear()
        else:
            n = 1 if self.faults.pop(fault_id, None) is not None else 0
        self._index()
        return n

    def _index(self) -> None:
        self._flow = [f for f in self.faults.values() if isinstance(f, FlowFault)]
        self._partition = frozenset().union(*(f.peers for f in self.faults.values()
                                              if isinstance(f, PartitionFault)))

    def describe(self) -> list[dict[str, Any]]:
        """The active faults, each with its spec and what it did so far."""
        return [{**f.spec, "injected": dict(f.counts)} for f in self.faults.values()]

    def __bool__(self) -> bool:
        return bool(self.faults) or bool(self._later)

    # -- the send path ------------------------------------------------------------

    def outgoing(self, msg: Message, frame: bytes) -> bytes | None:
        """The frame to send now (maybe mangled), or None: dropped, or held back."""
        if msg.dst in self._partition:
            for f in self.faults.values():
                if isinstance(f, PartitionFault) and msg.dst in f.peers:
                    f.count("dropped")
                    break
            return None
        for f in self._flow:
            if not f.matches(msg):
                continue
            rng = f.rng
            if f.drop and rng.random() < f.drop:
                f.count("dropped")
                return None
            if f.corrupt and rng.random() < f.corrupt:
                f.count("corrupted")
                frame = mangle(frame, rng)
            if f.dup and rng.random() < f.dup:
                f.count("duplicated")
                self._hold(msg.dst, frame, rng.uniform(0.0, 0.005))
            hold = 0.0
            if f.delay or f.jitter:
                hold = max(0.0, f.delay + rng.uniform(-f.jitter, f.jitter))
                f.count("delayed")
            if f.reorder and rng.random() < f.reorder:
                f.count("reordered")
                hold += rng.uniform(*REORDER_HOLD_MS) / 1e3
            if hold > 0.0:
                self._hold(msg.dst, frame, hold)
                return None
        return frame

    def _hold(self, dst: str, frame: bytes, seconds: float) -> None:
        heapq.heappush(self._later, (trio.current_time() + seconds, next(self._tie), dst, frame))
        if not self._task:
            self._task = True
            self._nursery.start_soon(self._release)
        self._kick.set()

    async def _release(self) -> None:
        """Send each held-back frame when it is due (dropped if its link is full then)."""
        later = self._later
        while True:
            now = trio.current_time()
            while later and later[0][0] <= now:
                _, _, dst, frame = heapq.heappop(later)
                self._send(dst, frame)
            self._kick = trio.Event()
            with trio.move_on_at(later[0][0] if later else now + 3600):
                await self._kick.wait()
