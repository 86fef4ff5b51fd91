"""Batches (protocol/messages.py encode_batch, protocol/transport.py): a burst of a flow's
messages to one peer goes as one frame under one MAC. The batch is checked whole before
any of it is parsed: one altered byte refuses all of it (counted once), a replayed batch
is refused, each message still has to name its true sender, and batches and single
frames share one counter per link, so they interleave in order."""

from __future__ import annotations

import pytest
import trio
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import auth
from protocol.errors import ProtocolError
from protocol.faults import Injector
from protocol.messages import BATCH, BATCH_MAX, Field, Message, decode, encode, encode_batch, register, split_batch
from protocol.transport import Party
from tests.protocol.keyed import alice_and_bob, keyring

register("batch_probe", n=Field("int"))


def probe(src: str, n: int, dst: str = "bob", seq: int | None = None) -> Message:
    return Message("batch_probe", src, dst, seq or n, {"n": n}, flow=f"data:{src}", fseq=n, inc=1)


async def wait_for(cond, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.005)


def test_a_batch_splits_into_its_messages_in_order():
    frames = [encode(probe("alice", n)) for n in range(1, 6)]
    batch = encode_batch(frames)
    assert batch[:1] == BATCH and frames[0][:1] != BATCH  # no message starts as a batch does
    assert [bytes(f) for f in split_batch(batch)] == frames
    assert [decode(f).body["n"] for f in split_batch(batch)] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("bad", [
    BATCH,  # no count
    BATCH + b"\x01\x00" + b"\x03\x00\x00\x00abc",  # one message is no batch
    BATCH + (BATCH_MAX + 1).to_bytes(2, "little") + b"\x00" * 4 * (BATCH_MAX + 1),  # too many
    BATCH + b"\x02\x00" + b"\x01\x00\x00\x00",  # lengths cut short
    BATCH + b"\x02\x00" + b"\x01\x00\x00\x00\x01\x00\x00\x00" + b"ab!",  # a byte more than the lengths say
    BATCH + b"\x02\x00" + b"\x02\x00\x00\x00\x02\x00\x00\x00" + b"abc",  # a byte less
])
def test_a_batch_whose_header_does_not_describe_it_is_bad_batch(bad):
    with pytest.raises(ProtocolError) as exc:
        split_batch(bad)
    assert exc.value.reason == "bad_batch"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_after_the_batch_byte_never_raises_anything_but_protocol_error(data):
    try:
        parts = split_batch(BATCH + data)
    except ProtocolError:
        return
    assert sum(map(len, parts)) + 3 + 4 * len(parts) == len(data) + 1


def opened(ring: auth.Keyring, src: str, frame: bytes) -> list[bytes]:
    body = ring.open(src, frame)
    return [bytes(p) for p in split_batch(body)] if body[:1] == BATCH else [bytes(body)]


@pytest.fixture
async def alice_to_wire(tmp_path):
    """alice serving with her keys, and bob's inbox read raw: ``deliveries(n)`` waits for
    ``n`` messages and returns what each frame held, opened with bob's keys."""
    directory = {"alice": f"ipc://{tmp_path}/alice", "bob": f"ipc://{tmp_path}/bob"}
    kb = keyring("bob", list(directory))
    wire = zmq.Context.instance().socket(zmq.ROUTER)
    wire.setsockopt(zmq.LINGER, 0)
    wire.bind(directory["bob"])

    async def deliveries(n: int) -> list[list[bytes]]:
        got: list[list[bytes]] = []
        with trio.fail_after(10):
            while sum(map(len, got)) < n:
                if wire.poll(0):
                    got.append(opened(kb, "alice", wire.recv_multipart()[1]))
                else:
                    await trio.sleep(0.005)
        return got

    try:
        with Party("alice", directory["alice"], directory, auth=keyring("alice", list(directory))) as alice:
            async with trio.open_nursery() as n:
                await n.start(alice.serve, lambda m: trio.lowlevel.checkpoint())
                yield alice, deliveries, n
                n.cancel_scope.cancel()
    finally:
        wire.close(linger=0)


def flow_probe(alice: Party, fseq: int) -> Message:
    return alice.make("bob", "batch_probe", {"n": fseq}, flow="data:alice", fseq=fseq)


async def test_a_burst_goes_as_one_batch_under_one_mac_ended_by_a_message_without_more(alice_to_wire):
    """What alice puts on the wire: a burst (each but its last sent with ``more``) in one
    frame sealed once for bob; a message alone in a frame of its own; a request sent after
    a burst that is still open joins it. Opened with bob's keys each holds exactly what was
    sent, in order."""
    alice, deliveries, _ = alice_to_wire
    sent = []

    async def send(msg: Message, more: bool = False) -> None:
        sent.append(encode(msg))
        await alice.send_msg(msg, sent[-1], more=more)

    for i in range(1, 6):
        await send(flow_probe(alice, i), more=i < 5)
    await send(alice.make("bob", "ping", {}))  # alone: at once
    for i in range(6, 10):
        await send(flow_probe(alice, i), more=True)
    await send(alice.make("bob", "ping", {}))  # not a flow's, no more: it ends the burst it joins
    got = await deliveries(len(sent))
    assert [f for delivery in got for f in delivery] == sent
    assert [len(d) for d in got] == [5, 1, 5]
    assert alice.counters["msgs_out"] == len(sent)
    assert (alice.counters["batches_out"], alice.counters["batched_out"]) == (2, 10)


async def test_a_burst_whose_sender_yields_before_it_ends_goes_at_the_yield(alice_to_wire):
    alice, deliveries, _ = alice_to_wire
    for i in (1, 2, 3):
        await alice.send_msg(flow_probe(alice, i), more=True)
    await trio.lowlevel.checkpoint()  # the flusher runs: no message waits for one that may never come
    assert [len(d) for d in await deliveries(3)] == [3]


async def test_messages_without_more_and_a_burst_under_a_fault_go_frame_by_frame(alice_to_wire):
    """Only a burst is batched: messages sent without ``more`` go each in its own frame, and
    so does a burst while a fault is set on the sender (faults act on each frame)."""
    alice, deliveries, nursery = alice_to_wire
    for fseq in (1, 2, 3):
        await alice.send_msg(flow_probe(alice, fseq))
    alice.faults = Injector(alice.send_frame_nowait, nursery)
    alice.faults.add({"type": "partition", "id": "p", "seed": 1, "peers": ["carol"]})  # not bob
    for fseq in range(4, 9):
        await alice.send_msg(flow_probe(alice, fseq), more=True)
    got = await deliveries(8)
    assert [decode(d[0]).body["n"] for d in got] == list(range(1, 9))
    assert [len(d) for d in got] == [1] * 8 and alice.counters["batches_out"] == 0


@pytest.fixture
async def bob(tmp_path):
    """bob serving with his keys; what his handler gets, in order; alice's keys and a raw
    link to bob that sends as alice (a capture of her frames, replayed or altered)."""
    directory = {"alice": f"ipc://{tmp_path}/alice", "bob": f"ipc://{tmp_path}/bob"}
    ka, kb = keyring("alice", list(directory)), keyring("bob", list(directory))
    ka.incarnation = 1
    got: list[Message] = []

    async def handler(msg):
        got.append(msg)

    raw = zmq.Context.instance().socket(zmq.DEALER)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.ROUTING_ID, b"alice#1")
    with Party("bob", directory["bob"], directory, auth=kb) as party:
        raw.connect(directory["bob"])
        async with trio.open_nursery() as n:
            await n.start(party.serve, handler)
            yield party, got, ka, raw
            n.cancel_scope.cancel()
    raw.close(linger=0)


async def test_one_altered_byte_refuses_the_whole_batch_and_is_counted_once(bob):
    party, got, ka, raw = bob
    batch = ka.seal("bob", encode_batch([encode(probe("alice", n)) for n in range(1, 6)]))
    for where in (3, 40, len(batch) // 2, len(batch) - auth.TRAILER - 1, len(batch) - 1):
        bad = bytearray(batch)
        bad[where] ^= 0x01  # the header, a message, the last message's last byte, the tag
        raw.send(bytes(bad))
    raw.send(batch)  # the genuine one, after its altered copies: still new, taken whole
    await wait_for(lambda: party.counters["msgs_in"] >= 5 + 5)
    assert party.counters["auth_failed"] == 5 and party.auth_failures == {"bad_mac": 5}
    assert [m.body["n"] for m in got] == [1, 2, 3, 4, 5]  # none of an altered batch reached the handler


async def test_a_replayed_batch_is_refused_whole_and_counted(bob):
    party, got, ka, raw = bob
    batch = ka.seal("bob", encode_batch([encode(probe("alice", n)) for n in range(1, 4)]))
    raw.send(batch)
    raw.send(batch)
    await wait_for(lambda: party.counters["auth_failed"] >= 1)
    raw.send(ka.seal("bob", encode(probe("alice", 4))))  # the link goes on after it
    await wait_for(lambda: len(got) >= 4)
    assert party.auth_failures == {"replay": 1}
    assert [m.body["n"] for m in got] == [1, 2, 3, 4]


async def test_each_message_of_a_batch_must_name_its_true_sender(bob):
    party, got, ka, raw = bob
    forged = probe("carol", 2)  # inside a batch alice signed: still alice's, not carol's
    raw.send(ka.seal("bob", encode_batch([encode(probe("alice", 1)), encode(forged), encode(probe("alice", 3))])))
    await wait_for(lambda: len(got) >= 2 and party.counters["spoofed"] >= 1)
    assert [(m.src, m.body["n"]) for m in got] == [("alice", 1), ("alice", 3)]
    assert party.counters["auth_failed"] == 0 and party.counters["bad_in"] == 1


async def test_batches_and_single_frames_interleave_in_order_on_one_link(bob):
    party, got, ka, raw = bob
    n = 0
    for size in (1, 3, 1, 1, BATCH_MAX, 2, 1):
        frames = [encode(probe("alice", n + i)) for i in range(1, size + 1)]
        n += size
        raw.send(ka.seal("bob", frames[0] if size == 1 else encode_batch(frames)))
    await wait_for(lambda: len(got) >= n)
    assert [m.body["n"] for m in got] == list(range(1, n + 1))
    assert party.counters["msgs_in"] == n and party.counters["auth_failed"] == 0


async def test_parties_batch_a_burst_and_keep_it_in_order_with_requests_between(tmp_path):
    """Two real parties with keys: alice's bursts (batched) and her requests (sent at once)
    reach bob in the order she sent them, and nothing is refused."""
    got: list[tuple[str, int]] = []

    async def on_bob(bob, msg):
        got.append((msg.kind, msg.body.get("n", -1)))
        if msg.kind == "ping":
            await bob.reply(msg, "pong", {"name": "bob"})

    async with alice_and_bob(tmp_path, on_bob) as (alice, bob, _):
        want, fseq = [], 0
        for burst in (5, 40, 1, 100):
            for _ in range(burst):
                fseq += 1
                msg = alice.make("bob", "batch_probe", {"n": fseq}, flow="data:alice", fseq=fseq)
                await alice.send_msg(msg, more=True)
                want.append(("batch_probe", fseq))
            assert (await alice.request("bob", "ping")).kind == "pong"  # it ends the burst, behind it
            want.append(("ping", -1))
        await wait_for(lambda: len(got) >= len(want))
    assert got == want
    assert bob.counters["auth_failed"] == 0 and bob.counters["bad_in"] == 0
    assert bob.counters["msgs_in"] == alice.counters["msgs_out"] == len(want)
    assert bob.counters["batches_in"] >= 4  # every burst went in one batch or more, with the ping that ended it
