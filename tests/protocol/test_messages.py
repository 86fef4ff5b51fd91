"""The message decoder holds against any input (DESIGN.md §2: a bad message
gets an ``error`` reply and is counted, never crashes the node): whatever
bytes ``decode`` is given, it returns a validated Message or raises
ProtocolError with a reason and the field concerned."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import protocol.hw  # noqa: F401  (registers the hardware kinds, so the round trip covers them)
from protocol.errors import ProtocolError
from protocol.messages import (
    _SCHEMAS,
    MAX_FRAME,
    PROTOCOL_VERSION,
    Message,
    _fast_ok,
    _validate_full,
    decode,
    encode,
    known_kinds,
)

HEADER_KEYS = ["v", "kind", "src", "dst", "seq", "corr", "epoch", "flow", "fseq", "reply_to", "body"]


def header(**over):
    """A valid raw header map (a ``ping`` from alice to bob), with overrides."""
    raw = {"v": PROTOCOL_VERSION, "kind": "ping", "src": "alice", "dst": "bob", "seq": 1, "corr": None,
           "epoch": 0, "flow": None, "fseq": None, "reply_to": None, "body": {}}
    raw.update(over)
    return raw


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def rejects(frame: bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    return info.value


# -- any input: only ProtocolError ---------------------------------------------------

msgpack_ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what msgpack can hold
msgpack_scalars = (
    st.none() | st.booleans() | msgpack_ints
    | st.floats(allow_nan=True) | st.text(max_size=20) | st.binary(max_size=20)
)
msgpack_values = st.recursive(
    msgpack_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8) | msgpack_ints, inner, max_size=4),
    max_leaves=20,
)
header_values = (
    msgpack_values | st.sampled_from(known_kinds()) | st.sampled_from(["alice", "bob", "irq:nic0", ""])
    | st.just(PROTOCOL_VERSION) | st.integers(min_value=-3, max_value=3)
)


def accept_or_protocol_error(frame: bytes) -> None:
    try:
        msg = decode(frame)
    except ProtocolError as exc:
        assert exc.reason and isinstance(exc.reason, str)
        return
    assert isinstance(msg, Message)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_decode_of_arbitrary_bytes_raises_only_protocol_error(frame):
    accept_or_protocol_error(frame)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(msgpack_values)
def test_decode_of_arbitrary_msgpack_values_raises_only_protocol_error(value):
    accept_or_protocol_error(pack(value))


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.fixed_dictionaries({}, optional={k: header_values for k in HEADER_KEYS}),
    kind=st.sampled_from(known_kinds()),
    body=st.dictionaries(st.text(max_size=10) | st.sampled_from(["name", "flows", "upto", "epoch", "routes",
                                                                  "stats", "data", "reason", "detail"]),
                         msgpack_values, max_size=5) | msgpack_values,
    extra=st.dictionaries(st.text(max_size=6), msgpack_values, max_size=3),
)
def test_decode_of_random_headers_and_nested_bodies_raises_only_protocol_error(base, kind, body, extra):
    raw = {**extra, "v": PROTOCOL_VERSION, "kind": kind, "src": "a", "dst": "b", "seq": 1, "epoch": 0}
    raw.update(base)
    raw["body"] = body
    accept_or_protocol_error(pack(raw))


@settings(max_examples=300)
@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=200))
def test_decode_of_a_valid_frame_truncated_or_corrupted_raises_only_protocol_error(noise, cut):
    frame = encode(Message("pong", "alice", "bob", 3, {"name": "bob", "kind": "testnode"}, corr=2))
    accept_or_protocol_error(frame[: cut % len(frame)])
    accept_or_protocol_error(frame[:cut] + noise + frame[cut:])


# -- each kind of bad input, with its exact reason and field ----------------------------

@pytest.mark.parametrize("frame", [b"\xc1", b"\x92\x01", b"", b"\x81\xa1v"], ids=["reserved-byte", "truncated-array",
                                                                                  "empty", "truncated-map"])
def test_malformed_msgpack_is_bad_msgpack(frame):
    exc = rejects(frame)
    assert (exc.reason, exc.field) == ("bad_msgpack", None)


def test_trailing_bytes_after_a_message_are_bad_msgpack():
    exc = rejects(pack(header()) + b"\x00")
    assert (exc.reason, exc.field) == ("bad_msgpack", None)


@pytest.mark.parametrize("value", [[1, 2], "ping", 7, None, b"\x00"], ids=["list", "str", "int", "nil", "bin"])
def test_a_msgpack_value_that_is_not_a_map_is_bad_message(value):
    exc = rejects(pack(value))
    assert (exc.reason, exc.field) == ("bad_message", None)


@pytest.mark.parametrize("v", [0, 2, "1", 1.0001, True, None], ids=["0", "2", "str", "float", "bool", "nil"])
def test_a_wrong_protocol_version_is_bad_version(v):
    exc = rejects(pack(header(v=v)))
    assert (exc.reason, exc.field) == ("bad_version", "v")


@pytest.mark.parametrize("key, reason", [("v", "bad_version"), ("kind", "bad_field"), ("src", "bad_field"),
                                         ("dst", "bad_field"), ("seq", "bad_field"), ("epoch", "bad_field"),
                                         ("body", "bad_field")])
def test_a_missing_header_field_is_refused_naming_it(key, reason):
    raw = header()
    del raw[key]
    exc = rejects(pack(raw))
    assert (exc.reason, exc.field) == (reason, key)


def test_an_unknown_kind_is_unknown_kind():
    exc = rejects(pack(header(kind="teleport")))
    assert (exc.reason, exc.field) == ("unknown_kind", "kind")


@pytest.mark.parametrize("kind", ["", 5, None, "k" * 65], ids=["empty", "int", "nil", "too-long"])
def test_a_kind_that_is_not_a_name_is_bad_field_kind(kind):
    exc = rejects(pack(header(kind=kind)))
    assert (exc.reason, exc.field) == ("bad_field", "kind")


@pytest.mark.parametrize("kind,body,field", [
    ("pong", {}, "body.name"),
    ("error", {"reason": "x"}, "body.detail"),
    ("route_install", {"routes": {}}, "body.epoch"),
])
def test_a_missing_body_field_is_missing_field(kind, body, field):
    exc = rejects(pack(header(kind=kind, body=body)))
    assert (exc.reason, exc.field) == ("missing_field", field)


@pytest.mark.parametrize("kind,body,field", [
    ("pong", {"name": 5}, "body.name"),
    ("pong", {"name": None}, "body.name"),
    ("ready", {"kind": "cpu", "pid": True, "endpoint": "ipc://x"}, "body.pid"),  # bool is not an int
    ("ready", {"kind": "cpu", "pid": 1.5, "endpoint": "ipc://x"}, "body.pid"),
    ("heartbeat", {"kind": "cpu", "pid": 1, "state": "running", "uptime": False, "stats": {}}, "body.uptime"),
    ("stats_reply", {"stats": [1]}, "body.stats"),
    ("route_pause", {"flows": "irq:nic0"}, "body.flows"),
    ("route_pause", {"flows": ["irq:nic0", 1]}, "body.flows[1]"),
    ("route_drain", {"upto": {"irq:nic0": "3"}}, "body.upto.irq:nic0"),
    ("route_drain", {"upto": {"irq:nic0": True}}, "body.upto.irq:nic0"),
    ("route_drain", {"upto": {1: 3}}, "body.upto"),
    ("irq_mask", {"masked": 1}, "body.masked"),
    ("uart_write", {"data": "text, not bytes"}, "body.data"),
])
def test_a_body_field_of_the_wrong_type_is_bad_field(kind, body, field):
    exc = rejects(pack(header(kind=kind, body=body)))
    assert (exc.reason, exc.field) == ("bad_field", field)


@pytest.mark.parametrize("body", [None, [], "x", 3], ids=["nil", "list", "str", "int"])
def test_a_body_that_is_not_a_map_is_bad_field_body(body):
    exc = rejects(pack(header(body=body)))
    assert (exc.reason, exc.field) == ("bad_field", "body")


@pytest.mark.parametrize("key,value", [
    ("seq", "1"), ("seq", True), ("seq", -1), ("seq", None), ("seq", 1.0),
    ("epoch", False), ("epoch", None), ("corr", True), ("corr", "2"), ("corr", -5),
])
def test_a_header_integer_of_the_wrong_type_is_bad_field(key, value):
    exc = rejects(pack(header(**{key: value})))
    assert (exc.reason, exc.field) == ("bad_field", key)


def test_an_oversized_frame_is_too_large_before_parsing():
    exc = rejects(b"\x00" * (MAX_FRAME + 1))
    assert (exc.reason, exc.field) == ("too_large", None)


def test_an_oversized_but_well_formed_message_is_too_large():
    frame = pack(header(kind="uart_write", body={"data": b"x" * MAX_FRAME}))
    assert len(frame) > MAX_FRAME
    exc = rejects(frame)
    assert (exc.reason, exc.field) == ("too_large", None)


def test_encode_refuses_a_message_over_max_frame():
    with pytest.raises(ProtocolError) as info:
        encode(Message("uart_write", "os1", "uart0", 1, {"data": b"x" * MAX_FRAME}))
    assert info.value.reason == "too_large"


def test_a_message_just_under_max_frame_is_accepted():
    overhead = len(pack(header(kind="uart_write", body={"data": b""})))
    size = MAX_FRAME - overhead - 8  # bin32 length prefix and slack
    frame = pack(header(kind="uart_write", body={"data": b"x" * size}))
    assert len(frame) <= MAX_FRAME
    assert len(decode(frame).body["data"]) == size


def test_a_flow_without_fseq_is_bad_field_fseq():
    exc = rejects(pack(header(flow="irq:nic0", fseq=None)))
    assert (exc.reason, exc.field) == ("bad_field", "fseq")


def test_an_fseq_without_flow_is_bad_field_fseq():
    exc = rejects(pack(header(flow=None, fseq=4)))
    assert (exc.reason, exc.field) == ("bad_field", "fseq")


@pytest.mark.parametrize("flow", ["", 3, ["irq:nic0"], "f" * 129], ids=["empty", "int", "list", "too-long"])
def test_a_flow_that_is_not_a_name_is_bad_field_flow(flow):
    exc = rejects(pack(header(flow=flow, fseq=1)))
    assert (exc.reason, exc.field) == ("bad_field", "flow")


@pytest.mark.parametrize("src", ["", 7, None, b"alice", "a" * 65], ids=["empty", "int", "nil", "bytes", "too-long"])
def test_a_bad_src_is_bad_field_src(src):
    exc = rejects(pack(header(src=src)))
    assert (exc.reason, exc.field) == ("bad_field", "src")


@pytest.mark.parametrize("dst", ["", 7, None], ids=["empty", "int", "nil"])
def test_a_bad_dst_is_bad_field_dst(dst):
    exc = rejects(pack(header(dst=dst)))
    assert (exc.reason, exc.field) == ("bad_field", "dst")


@pytest.mark.parametrize("reply_to", [5, "x" * 513], ids=["int", "too-long"])
def test_a_bad_reply_to_is_bad_field_reply_to(reply_to):
    exc = rejects(pack(header(reply_to=reply_to)))
    assert (exc.reason, exc.field) == ("bad_field", "reply_to")


def test_unknown_body_fields_are_accepted_and_kept():
    msg = decode(pack(header(kind="pong", body={"name": "bob", "future": [1, 2]})))
    assert msg.body == {"name": "bob", "future": [1, 2]}


def test_a_protocol_error_names_reason_and_field_in_its_text():
    exc = rejects(pack(header(kind="pong", body={"name": 5})))
    assert str(exc).startswith("bad_field [body.name]: expected str, got int")


# -- the fast path of validation agrees with the full check ------------------------------

@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(known_kinds()), st.data())
def test_the_fast_body_check_never_accepts_what_the_full_check_rejects(kind, data):
    names = list(_SCHEMAS[kind]) + ["extra"]
    values = msgpack_values | st.sampled_from([True, 0, 1.0, "s", b"b", [], {}, None, ["s"], {"k": 1}])
    body = data.draw(st.dictionaries(st.sampled_from(names), values, max_size=len(names)))
    if _fast_ok(kind, body):
        _validate_full(kind, body)  # must not raise


@pytest.mark.parametrize("kind", known_kinds())
def test_a_well_formed_body_of_every_kind_takes_the_fast_path_or_passes_the_full_check(kind):
    body = sample_body(kind, optional=True)
    _validate_full(kind, body)
    flat = all(f.items is None for f in _SCHEMAS[kind].values())
    assert _fast_ok(kind, body) == flat  # fields with item types always get the full check


# -- round trip of every registered kind --------------------------------------------------

_SAMPLES = {"int": 7, "str": "x", "bytes": b"\x00\xff", "bool": True, "float": 1.5, "any": {"a": [1, b"b"]},
            "list": [], "dict": {}}


def sample(f) -> object:
    if f.items is not None:
        item = _SAMPLES[f.items]
        return [item, item] if f.type == "list" else {"k1": item, "k2": item}
    return _SAMPLES[f.type]


def sample_body(kind: str, optional: bool) -> dict:
    return {name: sample(f) for name, f in _SCHEMAS[kind].items() if f.required or optional}


@pytest.mark.parametrize("kind", known_kinds())
@pytest.mark.parametrize("optional", [False, True], ids=["required", "all-fields"])
def test_every_registered_kind_round_trips_through_encode_and_decode(kind, optional):
    msg = Message(kind=kind, src="alice", dst="bob", seq=41, body=sample_body(kind, optional), corr=40,
                  epoch=3, flow="irq:alice", fseq=9, reply_to="ipc:///tmp/alice.sock")
    assert decode(encode(msg)) == msg


def test_every_kind_of_the_schema_is_covered_by_the_round_trip():
    # the kinds of the core protocol and of the hardware are all registered here
    assert {"ping", "pong", "error", "route_install", "trap", "mem_grant", "uart_write"} <= set(known_kinds())


def test_a_round_tripped_message_without_flow_keeps_nulls():
    msg = Message("ping", "alice", "bob", 1, {})
    back = decode(encode(msg))
    assert (back.corr, back.flow, back.fseq, back.reply_to, back.epoch) == (None, None, None, None, 0)
