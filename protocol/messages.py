"""The message schema of hwemu in one place (DESIGN.md §2).

A message on the wire is one ZeroMQ frame holding a msgpack map:

    {"v": 1, "kind": "ping", "src": "orch", "dst": "cpu0", "seq": 7,
     "corr": null, "epoch": 3, "flow": null, "fseq": null, "body": {...}}

- ``seq`` numbers every message a sender emits (unique per ``src``), and
  ``corr`` on a reply is the ``seq`` of the request it answers.
- ``flow``/``fseq`` are set on messages of a logical flow (``irq:nic0``):
  ``fseq`` counts that flow's messages from 1, so a receiver detects a gap or
  a duplicate across a route change.
- ``epoch`` is the route-table epoch the sender routed with.
- ``reply_to`` (optional) is the sender's inbox endpoint, for parties that are
  not in the topology's directory (a CLI client): the receiver learns it.
- ``inc`` is the sender's incarnation (``Party.incarnation``: larger after a
  restart), so a receiver tells a restarted sender's new numbering of a flow
  from a retransmission (docs/reliability.md). Optional on the wire.

A burst of messages to one receiver may travel as one *batch* frame
(:func:`encode_batch`, first byte 0xc1, which no msgpack message starts with).

Every kind has a body schema, registered with :func:`register`; bodies are
validated on receipt by :func:`decode`, which raises only
:class:`~protocol.errors.ProtocolError` whatever bytes it is given.
"""

from __future__ import annotations

import re
import struct
import threading
from dataclasses import dataclass
from typing import Any

import msgpack

from protocol.errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_FRAME = 4 * 1024 * 1024  # bytes; a 4 KiB page or a disk burst fits easily
_NAME_MAX = 64

_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "str": (str,),
    "bytes": (bytes,),
    "bool": (bool,),
    "float": (float, int),
    "list": (list,),
    "dict": (dict,),
    "any": (object,),
}


@dataclass(frozen=True, slots=True)
class Field:
    """One body field: its type name (a key of ``_TYPES``), whether it must be
    present, whether ``None`` is allowed, and for lists/dicts the type of the
    items/values."""

    type: str
    required: bool = True
    nullable: bool = False
    items: str | None = None


_SCHEMAS: dict[str, dict[str, Field]] = {}
# kind -> ((field, exact types that pass without further checks), ...): the
# hot path of validate_body. A value whose type is not in the set (a bool
# where an int is due, a list whose items must be checked, a missing field)
# goes to the full check, which either accepts it or says what is wrong.
_FAST: dict[str, tuple[tuple[str, frozenset], ...]] = {}
_MISSING = type("_Missing", (), {"__slots__": ()})()
_EXACT = {"int": {int}, "str": {str}, "bytes": {bytes}, "bool": {bool}, "float": {float, int}, "dict": {dict},
          "list": {list}}


class _Present(frozenset):
    """The "types" of a required field of type ``any``: every type but missing."""

    def __contains__(self, t: object) -> bool:
        return t is not type(_MISSING)


_PRESENT = _Present()


def _fast_fields(spec: dict[str, Field]) -> tuple[tuple[str, frozenset], ...]:
    out = []
    for name, f in spec.items():
        if f.type == "any":
            if f.required:  # an optional `any` needs no check at all
                out.append((name, _PRESENT))
            continue
        types = set() if f.items is not None else set(_EXACT[f.type])
        if f.nullable:
            types.add(type(None))
        if not f.required:
            types.add(type(_MISSING))
        out.append((name, frozenset(types)))
    return tuple(out)


def register(kind: str, /, **fields: Field | str) -> None:
    """Register (or extend) the body schema of a message kind.

    ``register("route_pause", flows=Field("list", items="str"))``; a bare
    string is shorthand for a required field of that type. Unknown body
    fields are accepted and ignored (forward compatibility within a version).
    """
    if not kind.isidentifier():
        raise ValueError(f"message kind must be an identifier, got {kind!r}")
    spec = {}
    for name, f in fields.items():
        f = Field(f) if isinstance(f, str) else f
        if f.type not in _TYPES or (f.items is not None and f.items not in _TYPES):
            raise ValueError(f"{kind}.{name}: unknown type {f.type!r}/{f.items!r}")
        spec[name] = f
    _SCHEMAS.setdefault(kind, {}).update(spec)
    _FAST[kind] = _fast_fields(_SCHEMAS[kind])


def unregister(kind: str, /) -> None:
    """Forget ``kind``'s schema (for kinds declared for a while, as tests do)."""
    _SCHEMAS.pop(kind, None)
    _FAST.pop(kind, None)


def known_kinds() -> list[str]:
    """All registered message kinds, sorted."""
    return sorted(_SCHEMAS)


@dataclass(slots=True)
class Message:
    """A decoded, validated message. ``body`` is a plain dict."""

    kind: str
    src: str
    dst: str
    seq: int
    body: dict[str, Any]
    corr: int | None = None
    epoch: int = 0
    flow: str | None = None
    fseq: int | None = None
    reply_to: str | None = None
    inc: int | None = None


_unpackb = msgpack.unpackb

# one Packer per thread (a Packer is not thread-safe; building one per call
# costs as much as the packing itself)
_packers = threading.local()


def encode(msg: Message) -> bytes:
    """Serialise a message to one frame (msgpack map).

    Raises:
        ProtocolError: the frame would exceed ``MAX_FRAME``.
    """
    packer = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    frame = packer.pack(
        {
            "v": PROTOCOL_VERSION,
            "kind": msg.kind,
            "src": msg.src,
            "dst": msg.dst,
            "seq": msg.seq,
            "corr": msg.corr,
            "epoch": msg.epoch,
            "flow": msg.flow,
            "fseq": msg.fseq,
            "reply_to": msg.reply_to,
            "inc": msg.inc,
            "body": msg.body,
        }
    )
    if len(frame) > MAX_FRAME:
        raise ProtocolError("too_large", f"frame of {len(frame)} bytes exceeds the maximum {MAX_FRAME}")
    return frame


def _check(value: Any, f: Field, where: str) -> None:
    if value is None:
        if f.nullable:
            return
        raise ProtocolError("bad_field", f"expected {f.type}, got null", where)
    allowed = _TYPES[f.type]
    if not isinstance(value, allowed) or (isinstance(value, bool) and f.type in ("int", "float")):
        raise ProtocolError("bad_field", f"expected {f.type}, got {type(value).__name__}", where)
    if f.items is not None:
        inner = Field(f.items)
        if f.type == "list":
            for i, item in enumerate(value):
                _check(item, inner, f"{where}[{i}]")
        elif f.type == "dict":
            for k, item in value.items():
                if not isinstance(k, str):
                    raise ProtocolError("bad_field", f"expected string keys, got {type(k).__name__}", where)
                _check(item, inner, f"{where}.{k}")


def validate_body(kind: str, body: Any) -> None:
    """Check ``body`` against the schema of ``kind``.

    Raises:
        ProtocolError: unknown kind, or a field missing or of the wrong type.
    """
    if not _fast_ok(kind, body):
        _validate_full(kind, body)


def _fast_ok(kind: str, body: Any) -> bool:
    """True if ``body`` surely fits ``kind`` by the exact types of its fields
    alone; False means "ask :func:`_validate_full`", not "invalid"."""
    fast = _FAST.get(kind)
    if fast is None or type(body) is not dict:
        return False
    get = body.get
    for name, types in fast:
        if type(get(name, _MISSING)) not in types:
            return False
    return True


def _validate_full(kind: str, body: Any) -> None:
    schema = _SCHEMAS.get(kind)
    if schema is None:
        raise ProtocolError("unknown_kind", f"no message kind {kind!r}", "kind")
    if not isinstance(body, dict):
        raise ProtocolError("bad_field", f"expected a map, got {type(body).__name__}", "body")
    for name, f in schema.items():
        if name in body:
            _check(body[name], f, f"body.{name}")
        elif f.required:
            raise ProtocolError("missing_field", f"{kind} needs field {name!r} ({f.type})", f"body.{name}")


def _header_str(raw: dict, key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value or len(value) > _NAME_MAX:
        raise ProtocolError("bad_field", f"expected a non-empty string of at most {_NAME_MAX} characters", key)
    return value


def _header_int(raw: dict, key: str, nullable: bool) -> int | None:
    value = raw.get(key)
    if value is None and nullable:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError("bad_field", f"expected a non-negative integer, got {value!r:.40}", key)
    return value


def decode(frame: bytes) -> Message:
    """Parse and validate one frame.

    Raises:
        ProtocolError: and nothing else, whatever ``frame`` holds.
    """
    if len(frame) > MAX_FRAME:
        raise ProtocolError("too_large", f"frame of {len(frame)} bytes exceeds the maximum {MAX_FRAME}")
    try:
        raw = _unpackb(frame, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, UnicodeDecodeError ...)
        raise ProtocolError("bad_msgpack", f"not a msgpack message: {exc.__class__.__name__}: {exc}") from None
    if type(raw) is dict and len(raw) == 12:
        # Fast path: the exact header encode() writes, checked in one
        # expression; any doubt falls through to the field-by-field checks,
        # which say what is wrong.
        try:
            v, kind, src, dst, seq = raw["v"], raw["kind"], raw["src"], raw["dst"], raw["seq"]
            corr, epoch, flow, fseq = raw["corr"], raw["epoch"], raw["flow"], raw["fseq"]
            reply_to, inc, body = raw["reply_to"], raw["inc"], raw["body"]
        except KeyError:
            return _decode_checked(raw)
        if (v == PROTOCOL_VERSION and type(v) is int
                and type(kind) is str and type(src) is str and type(dst) is str and 0 < len(kind) <= _NAME_MAX
                and 0 < len(src) <= _NAME_MAX and 0 < len(dst) <= _NAME_MAX
                and type(seq) is int and seq >= 0 and type(epoch) is int and epoch >= 0
                and (corr is None or (type(corr) is int and corr >= 0))
                and ((flow is None and fseq is None)
                     or (type(flow) is str and 0 < len(flow) <= 2 * _NAME_MAX and type(fseq) is int and fseq >= 0))
                and (reply_to is None or (type(reply_to) is str and len(reply_to) <= 512))
                and (inc is None or (type(inc) is int and inc >= 0))
                and type(body) is dict):
            if not _fast_ok(kind, body):
                _validate_full(kind, body)
            return Message(kind, src, dst, seq, body, corr, epoch, flow, fseq, reply_to, inc)
    return _decode_checked(raw)


def _decode_checked(raw: Any) -> Message:
    """The slow path of :func:`decode`: every header field checked in turn."""
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", f"expected a msgpack map, got {type(raw).__name__}")
    v = raw.get("v")
    if v != PROTOCOL_VERSION or isinstance(v, bool):
        raise ProtocolError("bad_version", f"protocol version {v!r:.20} is not {PROTOCOL_VERSION}", "v")
    kind = _header_str(raw, "kind")
    body = raw.get("body")
    validate_body(kind, body)
    flow = raw.get("flow")
    if flow is not None and (not isinstance(flow, str) or not flow or len(flow) > 2 * _NAME_MAX):
        raise ProtocolError("bad_field", "expected a flow name or null", "flow")
    fseq = _header_int(raw, "fseq", nullable=True)
    if (flow is None) != (fseq is None):
        raise ProtocolError("bad_field", "flow and fseq must be both set or both null", "fseq")
    reply_to = raw.get("reply_to")
    if reply_to is not None and (not isinstance(reply_to, str) or len(reply_to) > 512):
        raise ProtocolError("bad_field", "expected an endpoint string or null", "reply_to")
    return Message(
        kind=kind,
        src=_header_str(raw, "src"),
        dst=_header_str(raw, "dst"),
        seq=_header_int(raw, "seq", nullable=False),
        corr=_header_int(raw, "corr", nullable=True),
        epoch=_header_int(raw, "epoch", nullable=False),
        flow=flow,
        fseq=fseq,
        reply_to=reply_to,
        inc=_header_int(raw, "inc", nullable=True),
        body=body,
    )


# --- the kinds every party speaks -------------------------------------------------

register("ping")
register("pong", name="str", kind=Field("str", required=False), now_ns=Field("int", required=False))
register("ok", data=Field("any", required=False, nullable=True))
register("error", reason="str", detail="str", ref=Field("str", required=False))
register("stats")
register("stats_reply", stats="dict")
register("shutdown")
register("ready", kind="str", pid="int", endpoint="str")
register("heartbeat", kind="str", pid="int", state="str", uptime="float", stats="dict")

# The route-change protocol (DESIGN.md §2): pause / drain / switch / resume.
register("route_pause", flows=Field("list", items="str"))
register("route_drain", upto=Field("dict", items="int"), timeout=Field("float", required=False))
# (``receive_only``: a route change begins; until it ends (the plain install at its end) the node accepts
# what its table in force or ``routes`` allows, and routes what it sends by its table until its own switch)
register(
    "route_install",
    epoch="int",
    routes=Field("dict", items="str"),
    next=Field("dict", items="int", required=False),
    receive_only=Field("bool", required=False),
    # sender -> the incarnation of its life that died: ``next`` is about the life after it, and a
    # receiver already following a later life (heard from it first) keeps its place
    restarted=Field("dict", items="int", required=False),
)
register("route_resume", flows=Field("list", items="str"), epoch=Field("int", required=False),
         routes=Field("dict", items="str", required=False))  # the new table may ride along: one round trip less
# the sender runs its side of a change itself: pause, drain the old receivers,
# switch and flush; ``old`` names each flow whose previous receiver still runs
# (the sender drains the receiver its own table names)
register("route_switch", flows=Field("list", items="str"), epoch="int", routes=Field("dict", items="str"),
         old=Field("dict", items="str", required=False), timeout=Field("float", required=False))
# sender -> receiver, ahead of a resumed flow, or of a retransmission (``inc``: the sender's incarnation)
# (``reset``: the receiver takes ``next`` even if it thinks it is further: it follows a numbering the sender
# never reached, its previous life's)
# (``probe``: the receiver acknowledges the flow at once, naming this fseq, the last one sent before: the
# sender's timeout asks where it stands)
register("route_next", next=Field("dict", items="int"), inc=Field("int", required=False),
         reset=Field("bool", required=False), probe=Field("int", required=False))
# receiver -> sender of flows: cumulative acknowledgements, batched (docs/reliability.md): ``acks`` is the
# last fseq consumed per flow, ``inc`` the receiver's incarnation, ``gap`` the flows where it saw one
# (``probe``: the flows it answers a probe for, with the fseq the probe named; ``holes``: per flow, fseq
# missing below ``top``, the highest one it holds; ``of``: per flow, the incarnation of the sender whose
# numbering ``acks`` counts)
register("flow_ack", acks=Field("dict", items="int"), inc="int", gap=Field("list", items="str", required=False),
         probe=Field("dict", items="int", required=False), holes=Field("dict", items="list", required=False),
         top=Field("dict", items="int", required=False), of=Field("dict", items="int", required=False))
# orchestrator -> every node: ``node`` died with its state and every flow it received moved away from it
# (the VMM, docs/recovery.md): give up what was sent to it and not acknowledged; ok {data: {flow: given up}}
register("flow_abandon", node="str")
# fault injection in a node's transport (protocol/faults.py); orchestrator -> node
register("fault_set", id="str", type="str", seed="int")
register("fault_clear", id=Field("str", nullable=True))


_REASON = re.compile(r"[a-z][a-z0-9_]*")  # a reason code: snake_case
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")  # where CamelCase words meet


def error_body(exc: ProtocolError | Exception, ref: str | None = None) -> dict[str, Any]:
    """The body of an ``error`` reply for an exception: its ``reason`` code if it has
    one (snake_case), else its class name in snake_case (``OSError`` -> ``os_error``)."""
    reason = getattr(exc, "reason", None)
    if not (isinstance(reason, str) and _REASON.fullmatch(reason)):
        reason = _CAMEL.sub("_", type(exc).__name__).lower()
    body = {"reason": reason, "detail": str(exc)}
    if ref is not None:
        body["ref"] = ref
    return body

# The control plane: CLI / tests ↔ orchestrator. Replies are ``ok`` {data} or ``error``.
register("ctl_status")
register("ctl_route_show")
register("ctl_route_set", changes=Field("dict", items="str"), create=Field("bool", required=False))
register("ctl_down", timeout=Field("float", required=False))
register("ctl_request", node="str", kind="str", body="dict", timeout=Field("float", required=False))

# Tracing (nodes/runtime.py, orchestrator/tracing.py): a node's recorder keeps
# its last ``size`` events in a ring; ``trace_dump`` reads them out a page at
# a time (``offset`` into the events; the reply says where the next page starts)
register("trace_start", size=Field("int", required=False))
register("trace_stop")
register("trace_dump", offset=Field("int", required=False))
register("ctl_trace_start", size=Field("int", required=False))
register("ctl_trace_stop")
register("ctl_trace_save", path="str", also=Field("list", items="str", required=False))  # more copies

# The fault manager's control requests (orchestrator/faults.py); fault_set / fault_clear are above.
register("ctl_fault_add", spec="dict")
register("ctl_fault_list")
register("ctl_fault_clear", id=Field("str", required=False, nullable=True))


# -- batches: several messages to one receiver in one frame -----------------------------
#
#   batch = 0xc1 || <H: n> || <I: length of message 1> ... <I: length of message n>
#           || message 1 || ... || message n
#
# 0xc1 is the one byte msgpack never uses, so no message (a msgpack map) starts
# with it: a receiver tells a batch from a message by its first byte. A sender
# puts a burst to one receiver in one batch, which costs one ZeroMQ send and
# receive and one MAC for all of it (protocol/transport.py, docs/security.md).

BATCH = b"\xc1"
BATCH_MAX = 64  # messages in one batch (also the most a receiver takes in one)
_BATCH_HEAD = struct.Struct("<cH")
_LENGTHS = [struct.Struct(f"<{n}I") for n in range(BATCH_MAX + 1)]


def encode_batch(frames: list[bytes]) -> bytes:
    """One frame holding the encoded messages ``frames`` (2 to :data:`BATCH_MAX`), in order."""
    n = len(frames)
    return b"".join((_BATCH_HEAD.pack(BATCH, n), _LENGTHS[n].pack(*map(len, frames)), *frames))


def split_batch(batch: bytes | memoryview) -> list[memoryview]:
    """The message frames of a batch (:func:`encode_batch`), not yet decoded.

    Raises:
        ProtocolError: ``bad_batch``, if its header does not describe it exactly.
    """
    size = len(batch)
    if size < _BATCH_HEAD.size:
        raise ProtocolError("bad_batch", f"a batch of {size} bytes has no room for its header")
    n = _BATCH_HEAD.unpack_from(batch)[1]
    start = _BATCH_HEAD.size + 4 * n
    if not 2 <= n <= BATCH_MAX or size < start:
        raise ProtocolError("bad_batch", f"a batch of {n} messages in {size} bytes (2 to {BATCH_MAX} fit)")
    lengths = _LENGTHS[n].unpack_from(batch, _BATCH_HEAD.size)
    if start + sum(lengths) != size:
        raise ProtocolError("bad_batch", f"a batch's lengths add up to {sum(lengths)}, its messages hold "
                                         f"{size - start} bytes")
    view = memoryview(batch)
    out = []
    for length in lengths:
        out.append(view[start:start + length])
        start += length
    return out
