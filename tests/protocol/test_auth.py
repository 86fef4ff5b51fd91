"""protocol/auth.py: a frame is taken only as its true sender's, once, and only from its
sender's newest life; the keys of one link say nothing of another's."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import trio
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import auth
from protocol.auth import AuthError, Keyring
from protocol.messages import Message, decode, encode
from tests.protocol.keyed import MASTER, alice_and_bob


def link(a: str, b: str, inc: int = 1) -> tuple[Keyring, Keyring]:
    """Keyrings of ``a`` (sends to b) and ``b`` (receives from a) as the orchestrator hands them out."""
    ka = auth.keyring_from_config(a, auth.node_auth(MASTER, a, [a, b]))
    kb = auth.keyring_from_config(b, auth.node_auth(MASTER, b, [a, b]))
    ka.incarnation = inc
    return ka, kb


def frame(src: str = "os1", dst: str = "memctl", seq: int = 1) -> bytes:
    return encode(Message("mem_read", src, dst, seq, {"space": "os1", "addr": 0, "length": 8}))


def test_a_sealed_frame_opens_to_the_same_message_at_its_receiver():
    a, b = link("os1", "memctl")
    assert b.open("os1", a.seal("memctl", frame())) == frame()


def test_any_flipped_bit_is_refused():
    a, b = link("os1", "memctl")
    sealed = a.seal("memctl", frame())
    for i in range(len(sealed)):
        for bit in (0x01, 0x80):
            bad = bytearray(sealed)
            bad[i] ^= bit
            with pytest.raises(AuthError) as info:
                b.open("os1", bytes(bad))
            assert info.value.reason == "bad_mac"
    assert b.open("os1", sealed) == frame()  # nothing of the failures stuck: the original still opens


def test_a_frame_shorter_than_its_trailer_is_refused():
    _, b = link("os1", "memctl")
    for n in (0, 1, auth.TRAILER - 1):
        with pytest.raises(AuthError, match="no room"):
            b.open("os1", b"x" * n)


def test_a_replay_is_refused_and_reordering_within_the_window_is_not():
    a, b = link("os1", "memctl")
    first, second, third = (a.seal("memctl", frame(seq=i)) for i in (1, 2, 3))
    b.open("os1", first)
    b.open("os1", third)
    assert b.open("os1", second) == frame(seq=2)  # late, but new
    for old in (first, second, third):
        with pytest.raises(AuthError) as info:
            b.open("os1", old)
        assert info.value.reason == "replay"


def test_a_counter_below_the_window_is_refused_even_if_never_seen():
    a, b = link("os1", "memctl")
    early = a.seal("memctl", frame())
    for _ in range(auth.WINDOW + 1):
        b.open("os1", a.seal("memctl", frame()))
    with pytest.raises(AuthError) as info:
        b.open("os1", early)
    assert info.value.reason == "replay"


def test_a_restarted_sender_is_taken_and_its_previous_life_refused():
    a, b = link("os1", "memctl", inc=100)
    before = a.seal("memctl", frame())
    late = a.seal("memctl", frame())
    b.open("os1", before)
    a2, _ = link("os1", "memctl", inc=200)  # a restart: a larger incarnation, its counter from 1 again
    assert b.open("os1", a2.seal("memctl", frame())) == frame()
    with pytest.raises(AuthError) as info:
        b.open("os1", late)  # never seen, valid MAC: but of the old life
    assert info.value.reason == "old_incarnation"


def test_a_wrong_key_or_a_wrong_claimed_sender_is_refused():
    a, b = link("os1", "memctl")
    evil = Keyring("os1", {"memctl": os.urandom(32)}, {})
    with pytest.raises(AuthError) as info:
        b.open("os1", evil.seal("memctl", frame()))
    assert info.value.reason == "bad_mac"
    # os1's genuine frame presented as another sender's
    b2 = auth.keyring_from_config("memctl", auth.node_auth(MASTER, "memctl", ["os1", "os2", "memctl"]))
    with pytest.raises(AuthError):
        b2.open("os2", a.seal("memctl", frame()))


def test_a_frame_for_one_receiver_does_not_open_at_another():
    master = MASTER
    os1 = auth.keyring_from_config("os1", auth.node_auth(master, "os1", ["os1", "cpu0", "memctl"]))
    cpu0 = auth.keyring_from_config("cpu0", auth.node_auth(master, "cpu0", ["os1", "cpu0", "memctl"]))
    with pytest.raises(AuthError):
        cpu0.open("os1", os1.seal("memctl", frame()))


def test_a_node_holds_no_key_that_makes_another_nodes_frames():
    """os2's keys (all it is handed) seal nothing memctl takes as os1's."""
    nodes = ["os1", "os2", "memctl", "cpu0"]
    given_to_os2 = auth.node_auth(MASTER, "os2", nodes)
    memctl = auth.keyring_from_config("memctl", auth.node_auth(MASTER, "memctl", nodes))
    keys = [bytes.fromhex(k) for k in (*given_to_os2["send"].values(), *given_to_os2["recv"].values(),
                                       given_to_os2["client"])]
    keys.append(auth.client_keys(bytes.fromhex(given_to_os2["client"]), "os1")[0])  # even as os2's "client"
    genuine = auth.link_key(MASTER, "os1", "memctl")
    assert genuine not in keys
    for key in keys:
        forged = Keyring("os1", {"memctl": key}, {})
        forged.incarnation = 1
        with pytest.raises(AuthError):
            memctl.open("os1", forged.seal("memctl", frame()))


def test_a_node_derives_a_clients_keys_but_not_another_nodes_clients():
    nodes = ["os1", "uart0"]
    uart = auth.keyring_from_config("uart0", auth.node_auth(MASTER, "uart0", nodes))
    os1 = auth.keyring_from_config("os1", auth.node_auth(MASTER, "os1", nodes))
    secret_os1 = bytes.fromhex(auth.node_auth(MASTER, "os1", nodes)["client"])
    as_client = Keyring("cli-1", {"uart0": auth.client_keys(secret_os1, "cli-1")[0]}, {})
    with pytest.raises(AuthError):  # os1 cannot speak to uart0 as a client with what it holds
        uart.open("cli-1", as_client.seal("uart0", frame("cli-1", "uart0")))
    with pytest.raises(AuthError):
        os1.open("uart0", as_client.seal("os1", frame("cli-1", "os1")))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=0, max_value=2**64 - 1),
       st.integers(min_value=0, max_value=2**64 - 1))
def test_garbage_never_opens_and_never_raises_anything_but_auth_error(data, inc, ctr):
    _, b = link("os1", "memctl")
    person = auth._PERSON.pack(inc, ctr)
    with pytest.raises(AuthError):
        b.open("os1", data + person + os.urandom(auth.TAG))


def test_run_dir_and_keys_are_private_and_an_open_run_dir_is_refused(tmp_path: Path):
    rd = tmp_path / "rd"
    master = auth.master_secret(rd)
    assert stat.S_IMODE(os.stat(rd / "keys").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(rd / "keys" / "master.key").st_mode) == 0o600
    assert auth.master_secret(rd) == master  # a restarted orchestrator gets the same one
    auth.write_client_file(rd, master, ["orch", "os1"])
    assert stat.S_IMODE(os.stat(rd / "keys" / "client.json").st_mode) == 0o600
    os.chmod(rd / "keys" / "client.json", 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        auth.client_keyring(rd, "cli-1")
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    with pytest.raises(PermissionError, match="open to other accounts .*chmod 700"):
        auth.make_private_dir(open_dir)


async def test_parties_with_keys_talk_and_a_keyless_or_replayed_frame_is_dropped_and_counted(tmp_path):
    captured: list[bytes] = []

    async def pong(bob, msg):
        if msg.kind == "ping":
            await bob.reply(msg, "pong", {"name": "bob"})

    async with alice_and_bob(tmp_path, pong) as (alice, bob, _):
        assert (await alice.request("bob", "ping")).kind == "pong"
        ping = alice.make("bob", "ping", {})
        captured.append(alice._seal(ping, encode(ping)))
        out = zmq.Context.instance().socket(zmq.DEALER)
        out.setsockopt(zmq.LINGER, 0)
        out.setsockopt(zmq.ROUTING_ID, b"alice")  # alice's name, not her key
        out.connect(bob.endpoint)
        try:
            out.send(encode(Message("ping", "alice", "bob", 99, {})))  # unsigned
            out.send(captured[0])  # signed by alice: taken once
            out.send(captured[0])  # ... and never again
            with trio.fail_after(10):
                while bob.counters["msgs_in"] < 4:
                    await trio.sleep(0.01)
        finally:
            out.close(linger=0)
        assert bob.counters["auth_failed"] == 2
        assert bob.auth_failures == {"bad_mac": 1, "replay": 1}
        assert (await alice.request("bob", "ping")).kind == "pong"  # alice's own link is untouched
    assert decode(captured[0][:-auth.TRAILER]).kind == "ping"
