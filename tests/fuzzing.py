"""Messages for fuzzing a node's inbox, drawn from the schema (protocol/messages.py).

Two sources, both driven by the registered body schemas of every kind:

- :func:`body_strategy` / :func:`frame_strategy`: hypothesis strategies (a valid
  body per kind, then the same with one field broken), for property tests of
  the decoder;
- :class:`Fuzzer`: a seeded generator of the same shapes plus byte-level
  mutations of valid frames, fast enough to send 100,000 of them to a live
  cluster (hypothesis draws cost a millisecond each; this costs microseconds).

A live node must survive anything, but a *valid* message of a kind that
changes the machine (``mem_write``, ``shutdown``, ``route_install``...) would
change it as asked: the fuzzer sends valid bodies only of :data:`SAFE` kinds
(read-only requests), and every mutated frame that still decodes to another
kind is dropped before it is sent (checked with the real decoder).
"""

from __future__ import annotations

import random
from typing import Any

import msgpack
from hypothesis import strategies as st

import protocol.hw  # registers the hardware kinds
import protocol.vmm  # noqa: F401  (registers the VMM's kinds)
from protocol.errors import ProtocolError
from protocol.messages import _SCHEMAS, PROTOCOL_VERSION, Field, Message, _check, decode, encode, known_kinds

# read-only requests: a valid one is answered and changes nothing
SAFE = ("ping", "stats", "mem_info", "uart_sync", "timer_now", "disk_info", "os_ps", "vmm_status")
# a node decodes only the kinds its process registered: the VMM's are known to the VMM (to another
# node a vmm_status is an unknown kind, a malformed message, answered without naming the request)
ONLY = {"vmm_status": "vmm"}
# replies and notifications: never answered (a node must not reply to a reply)
UNANSWERED = ("ok", "error", "pong", "stats_reply", "heartbeat", "ready", "flow_ack")

_INT_EDGES = [0, 1, -1, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -(2**63), 2**64 - 1]
_STR_EDGES = ["", "a", "x" * 65, "ü" * 10, "irq:timer0", "os1", "\x00", "../../etc/passwd"]


# -- hypothesis strategies from the schema -------------------------------------------

def _value_strategy(f: Field) -> st.SearchStrategy:
    t = f.type
    if t in ("list", "dict"):
        inner = _value_strategy(Field(f.items or "int"))
        base = st.lists(inner, max_size=4) if t == "list" else \
            st.dictionaries(st.text(min_size=1, max_size=8), inner, max_size=4)
    else:
        base = {
            "int": st.integers(min_value=0, max_value=2**32),
            "str": st.text(min_size=1, max_size=16),
            "bytes": st.binary(max_size=64),
            "bool": st.booleans(),
            "float": st.floats(min_value=0, max_value=1e6, allow_nan=False),
            "any": st.none() | st.integers(0, 2**32) | st.text(max_size=8),
        }[t]
    return st.none() | base if f.nullable else base


def body_strategy(kind: str) -> st.SearchStrategy:
    """Valid bodies of ``kind``: every required field, some optional ones."""
    schema = _SCHEMAS[kind]
    return st.fixed_dictionaries({n: _value_strategy(f) for n, f in schema.items() if f.required},
                                 optional={n: _value_strategy(f) for n, f in schema.items() if not f.required})


@st.composite
def frame_strategy(draw, valid: bool = True) -> tuple[str, bytes]:
    """(kind, frame) of a valid message; with ``valid=False`` one field of
    its body is given a value of another type or removed."""
    kind = draw(st.sampled_from(known_kinds()))
    body = draw(body_strategy(kind))
    if not valid:
        schema = _SCHEMAS[kind]
        required = [n for n, f in schema.items() if f.required and f.type != "any"]
        if not required:
            body = draw(st.sampled_from([None, [], "x", 3]))
        else:
            name = draw(st.sampled_from(required))
            if draw(st.booleans()):
                del body[name]
            else:
                body[name] = draw(st.sampled_from([_wrong(schema[name].type), None if not schema[name].nullable
                                                   else _wrong(schema[name].type)]))
    msg = Message(kind=kind, src="fuzz", dst="n1", seq=draw(st.integers(0, 2**40)), body=body,
                  inc=draw(st.none() | st.integers(0, 2**63)))
    return kind, encode(msg) if isinstance(body, dict) else _raw_frame(msg, body)


def _wrong(type_name: str) -> Any:
    """A value that is not of ``type_name`` (a bool is not an int here)."""
    return {"int": "1", "str": 1, "bytes": "x", "bool": 1, "float": "1.0", "list": {"a": 1}, "dict": [1],
            "any": None}[type_name]


def _raw_frame(msg: Message, body: Any) -> bytes:
    return msgpack.packb({"v": PROTOCOL_VERSION, "kind": msg.kind, "src": msg.src, "dst": msg.dst, "seq": msg.seq,
                          "corr": None, "epoch": 0, "flow": None, "fseq": None, "reply_to": None, "inc": msg.inc,
                          "body": body}, use_bin_type=True)


# -- the seeded bulk generator ---------------------------------------------------------

class Fuzzer:
    """Seeded frames for one sender (``src``) and its inbox (``reply_to``).

    :meth:`next` returns ``(frames, request)``: the ZeroMQ parts to send and,
    if it is a well-formed request the node must answer, the decoded
    message (its ``seq`` is what the reply's ``corr`` names)."""

    def __init__(self, seed: int, src: str, reply_to: str, make: Any):
        self.rng = random.Random(seed)
        self.src = src
        self.reply_to = reply_to
        self.make = make  # Party.make: a well-formed message with a fresh seq
        self.kinds = known_kinds()
        self.corpus: list[bytes] = []  # valid frames of every kind, to mutate
        self.counts = {"mutated": 0, "bad_body": 0, "bad_header": 0, "garbage": 0, "request": 0,
                       "foreign_flow": 0, "unsolicited": 0, "skipped": 0}

    # values ----------------------------------------------------------------------

    def value(self, f: Field, depth: int = 0) -> Any:
        r = self.rng
        if f.nullable and r.random() < 0.1:
            return None
        t = f.type if f.type != "any" else r.choice(["int", "str", "bytes", "bool"])
        if t == "int":
            return r.choice(_INT_EDGES) if r.random() < 0.2 else r.randrange(0, 1 << r.choice((4, 16, 32)))
        if t == "str":
            return r.choice(_STR_EDGES[1:]) if r.random() < 0.2 else "".join(
                r.choice("abcdefgh:._019") for _ in range(r.randint(1, 12)))
        if t == "bytes":
            return r.randbytes(r.choice((0, 1, 8, 64, 600)))
        if t == "bool":
            return r.random() < 0.5
        if t == "float":
            return r.choice([0.0, 0.001, 1.5, 1e9, -1.0])
        inner = Field(f.items) if f.items else Field("int")
        if t == "list":
            return [self.value(inner, depth + 1) for _ in range(r.randint(0, 3 if depth < 2 else 0))]
        if t == "dict":
            return {self.value(Field("str")): self.value(inner, depth + 1)
                    for _ in range(r.randint(0, 3 if depth < 2 else 0))}
        return None

    def wrong(self, f: Field) -> Any:
        r = self.rng
        options = [r.choice(_STR_EDGES), r.randrange(-5, 5), True, 1.5, b"\x00", [1, "a"], {"k": None}, None]
        v = r.choice(options)
        ok = Field(f.type, nullable=f.nullable, items=f.items)
        try:  # make sure it is really wrong for the field (the schema's own check)
            _check(v, ok, "x")
        except ProtocolError:
            return v
        return {"wrong": v}

    def body(self, kind: str) -> dict[str, Any]:
        schema = _SCHEMAS[kind]
        body = {n: self.value(f) for n, f in schema.items() if f.required or self.rng.random() < 0.5}
        if self.rng.random() < 0.2:
            body[self.value(Field("str"))] = self.value(Field("any"))  # unknown fields are ignored
        return body

    # messages --------------------------------------------------------------------

    def valid_frame(self, kind: str, dst: str) -> bytes:
        m = self.make(dst, kind, self.body(kind))
        return encode(m)

    def next(self, dst: str) -> tuple[list[bytes] | bytes, Message | None]:
        r = self.rng
        x = r.random()
        if x < 0.35 and self.corpus:
            return self._mutated(dst), None
        if x < 0.6:
            self.counts["bad_body"] += 1
            return self._bad_body(dst), None
        if x < 0.75:
            self.counts["bad_header"] += 1
            return self._bad_header(dst), None
        if x < 0.8:
            self.counts["garbage"] += 1
            return self._garbage(), None
        if x < 0.85:
            self.counts["unsolicited"] += 1
            kind = r.choice(UNANSWERED)
            return encode(self.make(dst, kind, self.body(kind))), None
        if x < 0.9:
            # a flow only its own sender may number: a forgery is refused with a typed error
            self.counts["foreign_flow"] += 1
            flow = r.choice(["irq:timer0", "trap:cpu0", "priv:os1", "io:os1.disk", "irq:nic0", "mem:os1"])
            m = self.make(dst, self._safe(dst), {}, flow=flow, fseq=r.randint(1, 5))
            m.body = self.body(m.kind)
            return encode(m), m
        self.counts["request"] += 1
        kind = self._safe(dst)
        m = self.make(dst, kind, self.body(kind))
        if r.random() < 0.3:
            self.corpus.append(encode(self.make(dst, r.choice(self.kinds), {})))
        self.corpus.append(encode(m))
        if len(self.corpus) > 512:
            del self.corpus[: len(self.corpus) - 512]
        return encode(m), m

    def _safe(self, dst: str) -> str:
        """A read-only request kind ``dst`` knows."""
        while True:
            kind = self.rng.choice(SAFE)
            if ONLY.get(kind, dst) == dst:
                return kind

    def _bad_body(self, dst: str) -> bytes:
        r = self.rng
        kind = r.choice(self.kinds)
        schema = _SCHEMAS[kind]
        body = self.body(kind)
        required = [n for n, f in schema.items() if f.required and f.type != "any"]
        if required:
            name = r.choice(required)
            if r.random() < 0.4:
                body.pop(name, None)
            else:
                body[name] = self.wrong(schema[name])
        else:
            body = r.choice([None, [], "body", 7])
        m = self.make(dst, kind, {})
        return _raw_frame(m, body)

    def _bad_header(self, dst: str) -> bytes:
        r = self.rng
        raw = {"v": PROTOCOL_VERSION, "kind": "ping", "src": self.src, "dst": dst, "seq": r.randrange(1 << 30),
               "corr": None, "epoch": 0, "flow": None, "fseq": None, "reply_to": self.reply_to, "inc": 1, "body": {}}
        key = r.choice(list(raw))
        choice = r.random()
        if choice < 0.3:
            del raw[key]
        elif choice < 0.5 and key == "src":
            raw["src"] = r.choice(["os1", "orch", "cpu0", "memctl"])  # a forged source
        else:
            raw[key] = r.choice([None, -1, True, "x" * 70, 2**64 - 1, [1], {"a": 1}, b"\xff", 1.5,
                                 PROTOCOL_VERSION + 1])
        if r.random() < 0.2:
            raw[r.choice(["extra", "mac", "zz"])] = r.randrange(10)
        return msgpack.packb(raw, use_bin_type=True)

    def _garbage(self) -> list[bytes] | bytes:
        r = self.rng
        x = r.random()
        if x < 0.4:
            return r.randbytes(r.randrange(0, 300))
        if x < 0.6:
            return [r.randbytes(8), r.randbytes(8)]  # two parts: not one frame
        if x < 0.8:
            return msgpack.packb(r.choice([[1, 2, 3], "ping", 7, None, {1: 2}, {"v": 1}]))
        return b"\xdf\xff\xff\xff\xff"  # a map claiming 4 billion entries

    def _mutated(self, dst: str) -> bytes:
        """A valid frame with bytes flipped, inserted, removed, cut or spliced;
        one that still decodes is sent only if its kind is SAFE (else a
        mutation could have written memory or stopped a node, as asked)."""
        r = self.rng
        for _ in range(8):
            b = bytearray(r.choice(self.corpus))
            for _ in range(r.randint(1, 4)):
                op = r.random()
                if op < 0.5 and b:
                    b[r.randrange(len(b))] = r.randrange(256)
                elif op < 0.65:
                    b.insert(r.randrange(len(b) + 1), r.randrange(256))
                elif op < 0.8 and b:
                    del b[r.randrange(len(b))]
                elif op < 0.9 and b:
                    del b[r.randrange(len(b)):]
                else:
                    other = r.choice(self.corpus)
                    cut = r.randrange(len(other) + 1)
                    b[r.randrange(len(b) + 1):] = other[cut:]
            frame = bytes(b)
            try:
                m = decode(frame)
            except ProtocolError:
                self.counts["mutated"] += 1
                return frame
            if m.src != self.src:
                self.counts["mutated"] += 1
                return frame  # refused whatever it says: its source is not the socket's
            # else a valid message (of a kind that may change the machine, or a request
            # that would need tracking): draw again
        self.counts["skipped"] += 1
        return r.randbytes(16)
