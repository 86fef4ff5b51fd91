"""The trio ⇄ ZeroMQ transport (``Party``): request/reply, timeouts, error
replies, and a sender that lies about who it is (DESIGN.md §2)."""

from __future__ import annotations

import contextlib
import functools
import time
from pathlib import Path

import pytest
import trio
import zmq
from zmq.utils.monitor import parse_monitor_message

from protocol import transport
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.messages import Message, decode, encode
from protocol.transport import INBOX_MAXMSGSIZE, Party


def ep(tmp_path: Path, name: str) -> str:
    return f"ipc://{tmp_path}/{name}.sock"


async def recv_raw(sock: zmq.Socket, timeout: float = 10.0) -> list[bytes]:
    """The next multipart message of a raw socket, waiting in trio (edge-triggered FD)."""
    fd = sock.getsockopt(zmq.FD)
    with trio.fail_after(timeout):
        while True:
            if sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                return sock.recv_multipart(zmq.NOBLOCK)
            await trio.lowlevel.wait_readable(fd)


def mallory(tmp_path: Path, target: Party) -> tuple[zmq.Socket, zmq.Socket]:
    """Raw sockets of a party named mallory: its inbox (where complaints come) and its link to ``target``."""
    ctx = zmq.Context.instance()
    inbox = ctx.socket(zmq.ROUTER)
    inbox.setsockopt(zmq.LINGER, 0)
    inbox.bind(ep(tmp_path, "mallory"))
    out = ctx.socket(zmq.DEALER)
    out.setsockopt(zmq.LINGER, 0)
    out.setsockopt(zmq.ROUTING_ID, b"mallory")
    out.connect(target.endpoint)
    return inbox, out


async def echo(party: Party, msg: Message) -> None:
    if msg.kind == "ping":
        await party.reply(msg, "pong", {"name": party.name})
    elif msg.kind == "stats":
        raise ProtocolError("not_today", "bob keeps its counters to itself", "kind")
    # anything else: silence


@pytest.fixture
async def pair(tmp_path):
    """alice and bob, each serving its inbox; bob answers ping, refuses stats, ignores the rest."""
    directory = {"alice": ep(tmp_path, "alice"), "bob": ep(tmp_path, "bob"), "mallory": ep(tmp_path, "mallory")}
    with Party("alice", directory["alice"], directory) as alice, Party("bob", directory["bob"], directory) as bob:
        async with trio.open_nursery() as n:
            await n.start(alice.serve, lambda msg: echo(alice, msg))
            await n.start(bob.serve, lambda msg: echo(bob, msg))
            yield alice, bob
            n.cancel_scope.cancel()


async def test_request_gets_the_reply_that_answers_it(pair):
    alice, bob = pair
    reply = await alice.request("bob", "ping")
    assert (reply.kind, reply.src, reply.dst, reply.body) == ("pong", "bob", "alice", {"name": "bob"})
    second = await alice.request("bob", "ping")
    assert second.corr == reply.corr + 1  # each reply answers its own request's seq
    assert bob.counters["msgs_in"] == 2 and alice.counters["msgs_in"] == 2


async def test_concurrent_requests_each_get_their_own_reply(pair):
    alice, _ = pair
    replies = {}

    async def one(i):
        replies[i] = await alice.request("bob", "ping")

    async with trio.open_nursery() as n:
        for i in range(20):
            n.start_soon(one, i)
    assert len({r.corr for r in replies.values()}) == 20


async def test_request_to_a_silent_peer_raises_request_timeout(pair):
    alice, _ = pair
    with pytest.raises(RequestTimeout) as info:
        await alice.request("bob", "shutdown", timeout=0.2)  # bob never answers shutdown
    assert (info.value.node, info.value.kind) == ("bob", "shutdown")
    assert alice._pending == {}  # the slot of the abandoned request is gone


async def test_an_error_reply_raises_remote_error_with_its_reason(pair):
    alice, bob = pair
    with pytest.raises(RemoteError) as info:
        await alice.request("bob", "stats")
    assert (info.value.node, info.value.reason) == ("bob", "not_today")
    assert "keeps its counters" in info.value.detail
    assert bob.counters["bad_in"] == 1


async def test_request_to_a_node_outside_the_directory_is_unknown_node(pair):
    alice, _ = pair
    with pytest.raises(ProtocolError) as info:
        await alice.request("carol", "ping")
    assert (info.value.reason, info.value.field) == ("unknown_node", "dst")


async def test_a_spoofed_source_is_counted_refused_and_the_party_keeps_serving(pair, tmp_path):
    alice, bob = pair
    inbox, out = mallory(tmp_path, bob)
    try:
        out.send(encode(Message("ping", "alice", "bob", 1, {})))  # well formed, but claims to be alice
        ident, frame = await recv_raw(inbox)
        complaint = decode(frame)
        # a party sends as name#incarnation (its life): a bare name never takes its connections over
        assert ident == f"bob#{bob.incarnation:x}".encode()
        assert (complaint.kind, complaint.src, complaint.dst) == ("error", "bob", "mallory")
        assert complaint.body["reason"] == "bad_source"
        assert bob.counters["spoofed"] == 1 and bob.counters["bad_in"] == 1
        # bob still serves, and never answered alice for the message she did not send:
        # the pong is the only message alice got (bob → alice is one ordered connection)
        assert (await alice.request("bob", "ping")).kind == "pong"
        assert alice.counters["msgs_in"] == 1
    finally:
        out.close(linger=0)
        inbox.close(linger=0)


async def test_a_request_from_a_sender_it_cannot_answer_is_dropped_and_the_party_keeps_serving(pair):
    alice, bob = pair
    out = zmq.Context.instance().socket(zmq.DEALER)
    out.setsockopt(zmq.LINGER, 0)
    out.setsockopt(zmq.ROUTING_ID, b"stranger")  # honest, but not in bob's directory and no reply_to
    out.connect(bob.endpoint)
    try:
        out.send(encode(Message("ping", "stranger", "bob", 1, {})))
        out.send(b"\xc1")  # and garbage it cannot be told about either
        # the same sender's messages are read in order; alice's request is on another
        # connection, so ask until bob has seen both of the stranger's messages
        with trio.fail_after(10):
            while bob.counters["msgs_in"] < 2:
                assert (await alice.request("bob", "ping")).kind == "pong"
        assert bob.counters["bad_in"] == 2
        assert (await alice.request("bob", "ping")).kind == "pong"
    finally:
        out.close(linger=0)


async def test_a_sender_outside_the_topology_is_answered_at_its_reply_to(tmp_path, pair):
    alice, bob = pair
    with Party("cli-1", ep(tmp_path, "cli-1"), {"bob": bob.endpoint}, advertise=True) as cli:
        async with trio.open_nursery() as n:
            await n.start(cli.serve, lambda msg: trio.lowlevel.checkpoint())
            reply = await cli.request("bob", "ping")
            n.cancel_scope.cancel()
    assert (reply.kind, reply.dst) == ("pong", "cli-1")


async def test_multipart_garbage_is_bad_message_and_answered(pair, tmp_path):
    _, bob = pair
    inbox, out = mallory(tmp_path, bob)
    try:
        out.send_multipart([b"", encode(Message("ping", "mallory", "bob", 1, {}))])  # a REQ-style envelope
        _, frame = await recv_raw(inbox)
        assert decode(frame).body["reason"] == "bad_message"
        assert bob.counters["bad_in"] == 1
    finally:
        out.close(linger=0)
        inbox.close(linger=0)


def test_close_removes_the_ipc_socket_file(tmp_path):
    party = Party("alice", ep(tmp_path, "alice"), {})
    assert (tmp_path / "alice.sock").exists()
    party.close()
    party.close()  # idempotent
    assert not (tmp_path / "alice.sock").exists()


def test_parties_learned_from_reply_to_are_bounded_and_the_topology_is_never_overridden(tmp_path):
    from protocol import transport
    from protocol.messages import Message

    party = transport.Party("orch", f"ipc://{tmp_path}/o", {"cpu0": f"ipc://{tmp_path}/cpu0"})
    try:
        for i in range(transport._LEARNED_MAX + 10):
            party.learn(Message("ping", f"cli-{i}", "orch", 1, {}, reply_to=f"ipc://{tmp_path}/cli-{i}"))
        party.learn(Message("ping", "cpu0", "orch", 1, {}, reply_to=f"ipc://{tmp_path}/evil"))
        learned = [n for n in party.directory if n.startswith("cli-")]
        assert len(learned) == transport._LEARNED_MAX
        assert "cli-0" not in party.directory and f"cli-{transport._LEARNED_MAX + 9}" in party.directory
        assert party.directory["cpu0"] == f"ipc://{tmp_path}/cpu0"
    finally:
        party.close()


async def test_a_frame_over_the_inbox_limit_drops_its_sender_unbuffered_and_the_party_keeps_serving(pair, tmp_path):
    alice, bob = pair
    inbox, out = mallory(tmp_path, bob)
    monitor = out.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    try:
        before = dict(bob.counters)
        out.send(b"\x00" * (INBOX_MAXMSGSIZE + 1))
        with trio.fail_after(10):  # ZeroMQ closes mallory's connection: nothing reaches bob's handler
            while True:
                event = parse_monitor_message(await recv_raw(monitor))
                if event["event"] == zmq.EVENT_DISCONNECTED:
                    break
        assert (await alice.request("bob", "ping")).body == {"name": "bob"}
        assert bob.counters["bad_in"] == before["bad_in"]
        assert bob.counters["msgs_in"] == before["msgs_in"] + 1  # alice's ping only
    finally:
        out.disable_monitor()
        monitor.close(linger=0)
        inbox.close(linger=0)
        out.close(linger=0)


async def test_a_short_timeout_behind_a_long_one_still_expires_on_its_own_deadline(pair):
    alice, _ = pair
    outcome = {}

    async def long_wait():
        try:
            await alice.request("bob", "shutdown", timeout=30)  # never answered
        except RequestTimeout:
            outcome["long"] = "timeout"

    async with trio.open_nursery() as n:
        n.start_soon(long_wait)
        await trio.sleep(0)
        with trio.fail_after(10):  # far below the 30 s request ahead of it
            with pytest.raises(RequestTimeout):
                await alice.request("bob", "shutdown", timeout=0.2)
        assert "long" not in outcome  # the long request is still waiting
        answered = await alice.request("bob", "ping", timeout=0.2)  # a timeout shared with the expired one
        assert answered.kind == "pong"
        n.cancel_scope.cancel()
    assert alice._pending == {}


async def test_requests_still_waiting_when_the_inbox_stops_being_served_end_with_request_timeout(tmp_path):
    directory = {"alice": ep(tmp_path, "alice"), "bob": ep(tmp_path, "bob")}
    with Party("alice", directory["alice"], directory) as alice, Party("bob", directory["bob"], directory):
        errors = []
        async with trio.open_nursery() as outer:
            serving = trio.CancelScope()

            async def serve():
                with serving:
                    await alice.serve(lambda msg: echo(alice, msg))

            async def ask():
                try:
                    await alice.request("bob", "ping", timeout=30)  # bob does not serve: no reply ever
                except RequestTimeout as exc:
                    errors.append(exc)

            outer.start_soon(serve)
            await trio.sleep(0.05)
            outer.start_soon(ask)
            await trio.sleep(0.05)
            serving.cancel()
        assert len(errors) == 1 and errors[0].kind == "ping"


@pytest.mark.parametrize("value, message", [
    ("abc", "HWEMU_SPIN_US must be a number of microseconds, got 'abc'"),
    ("-1", "HWEMU_SPIN_US must be between 0 and 100000, got '-1'"),
    ("1e9", "HWEMU_SPIN_US must be between 0 and 100000, got '1e9'"),
])
def test_a_bad_polling_window_in_the_environment_is_refused_by_name(monkeypatch, value, message):
    monkeypatch.setenv("HWEMU_SPIN_US", value)
    with pytest.raises(ValueError) as info:
        transport.spin_from_env()
    assert str(info.value) == message


def test_the_polling_window_comes_from_the_environment_in_microseconds(monkeypatch, tmp_path):
    monkeypatch.setenv("HWEMU_SPIN_US", "50")
    with Party("alice", ep(tmp_path, "alice"), {}) as alice:
        assert alice.spin == pytest.approx(50e-6)
    monkeypatch.setenv("HWEMU_SPIN_US", "0")
    with Party("alice", ep(tmp_path, "alice2"), {}) as alice:
        assert alice.spin == 0


def test_the_polling_window_halves_when_it_runs_out_and_widens_to_a_short_gap():
    """The adaptation rule of both polling windows (a hypervisor's halt polling)."""
    window = transport._PollWindow(200e-6)
    assert window.value == pytest.approx(200e-6)  # a conversation is assumed at first
    window.ran_out()
    assert window.value == pytest.approx(100e-6)
    window.slept(1.0)  # a slow flow: polling would not have caught it
    assert window.value == pytest.approx(100e-6)
    for _ in range(3):
        window.ran_out()
    assert window.value == pytest.approx(12.5e-6)
    window.ran_out()  # under the minimum worth a scheduler pass: off
    assert window.value == 0
    window.slept(120e-6)  # it would have: widened to the gap, with a margin
    assert window.value == pytest.approx(150e-6)
    window.slept(20e-6)  # never narrowed by a sleep, never past spin
    assert window.value == pytest.approx(200e-6)


@contextlib.asynccontextmanager
async def keeper(tmp_path: Path, spin: float, answer=None):
    """alice (polling window ``spin``) serving her inbox into a list of each
    message's body ``n``, and bob to send to her (serving with
    ``answer(bob, msg)`` if given): (alice, bob, that list)."""
    directory = {"alice": ep(tmp_path, "alice"), "bob": ep(tmp_path, "bob")}
    with Party("alice", directory["alice"], directory, spin=spin) as alice, \
            Party("bob", directory["bob"], directory) as bob:
        got: list[int] = []

        async def keep(msg):
            got.append(msg.body["n"])

        async with trio.open_nursery() as n:
            await n.start(alice.serve, keep)
            if answer is not None:
                await n.start(bob.serve, functools.partial(answer, bob))
            yield alice, bob, got
            n.cancel_scope.cancel()


async def test_an_inbox_polled_out_after_traffic_sleeps_and_still_gets_the_next_message(tmp_path):
    async with keeper(tmp_path, spin=1e-3) as (alice, bob, got):
        for i in range(5):
            bob.send_nowait(bob.make("alice", "ping", {"n": i}))
            await trio.sleep(0.01)  # ten times the window: each poll runs out, alice sleeps
        with trio.fail_after(10):
            while len(got) < 5:
                await trio.sleep(0.01)
        assert got == [0, 1, 2, 3, 4]
        assert alice._inbox_window.value < 1e-3  # the runs-out narrowed it


async def test_a_requester_that_reads_the_inbox_itself_leaves_every_other_message_to_the_handler_in_order(tmp_path):
    """While alice awaits her reply she polls her inbox herself; bob answers
    with 50 messages before the reply and 50 after it. Alice's handler gets
    all 100, in order, and the request its reply."""
    async def answer(bob, msg):
        for i in range(50):
            await bob.send("alice", "ping", {"n": i})
        await bob.reply(msg, "pong", {"name": "bob", "kind": "test"})
        for i in range(50, 100):
            await bob.send("alice", "ping", {"n": i})

    async with keeper(tmp_path, 0.05, answer) as (alice, _, got):
        for _ in range(20):
            got.clear()
            reply = await alice.request("bob", "ping")
            assert reply.kind == "pong"
            with trio.fail_after(10):
                while len(got) < 100:
                    await trio.sleep(0.001)
            assert got == list(range(100))
    assert alice.counters["polled_in"] > 0  # the requester did read (the path this test is for)
    assert alice.counters["msgs_in"] == 20 * 101 and alice.counters["late_replies"] == 0


async def test_a_message_behind_a_reply_a_requester_read_still_reaches_the_handler(tmp_path):
    """The requester's checks of EVENTS reset the FD the serving task sleeps
    on: when it leaves with a message still queued, it wakes that task."""
    async def answer(bob, msg):
        await bob.reply(msg, "pong", {"name": "bob", "kind": "test"})
        await bob.send("alice", "ping", {"n": msg.body["n"]})

    async with keeper(tmp_path, 0.05, answer) as (alice, _, got):
        for i in range(200):
            await alice.request("bob", "ping", {"n": i})
            with trio.fail_after(10):
                while len(got) <= i:
                    await trio.sleep(0)
    assert got == list(range(200))


async def test_a_requester_stops_polling_for_a_peer_slow_to_answer_and_polls_again_for_a_quick_one(tmp_path):
    slow = [True]

    async def answer(bob, msg):
        if slow[0]:
            await trio.sleep(0.02)  # twenty times the window
        await bob.reply(msg, "pong", {"name": "bob", "kind": "test"})

    async with keeper(tmp_path, 1e-3, answer) as (alice, _, got):
        for _ in range(8):
            await alice.request("bob", "ping")
        assert alice._reply_window.value == 0  # each poll ran out: halved to nothing
        slow[0] = False
        for _ in range(20):
            await alice.request("bob", "ping")
        assert alice._reply_window.value > 0  # the quick replies widened it again


async def test_a_look_at_the_inbox_from_a_task_that_does_not_yield_leaves_the_wakeup_intact(tmp_path):
    """``inbox_signalled`` (what the CPU node asks between two slices) sees a
    message arrive while the serving task sleeps on the FD, and asking changes
    nothing: the serving task still wakes and gets it (a check of EVENTS here
    would reset the FD's edge and leave it asleep)."""
    async with keeper(tmp_path, spin=0) as (alice, bob, got):
        await trio.sleep(0.05)  # alice's inbox task sleeps on its FD
        assert not alice.inbox_signalled()
        bob.send_nowait(bob.make("alice", "ping", {"n": 7}))
        deadline = time.monotonic() + 10
        while not alice.inbox_signalled():  # no yield: as a computing task looks
            assert time.monotonic() < deadline, "the message never showed"
        assert alice.inbox_signalled() and got == []
        with trio.fail_after(10):
            while not got:
                await trio.sleep(0.01)
        assert got == [7] and not alice.inbox_signalled()


async def test_a_reply_to_that_is_no_endpoint_keeps_the_link_to_the_good_one(tmp_path, pair):
    """A message of a learned party whose ``reply_to`` is no endpoint (the
    fuzzer sends ``"x" * 70``) changes nothing: its own reply and every reply
    queued before and after it reach the party's real inbox. (Learning it
    used to drop the good link first: the replies queued on it were lost, and
    those due until the next good ``reply_to`` had nobody to go to.)"""
    _, bob = pair
    with Party("cli-1", ep(tmp_path, "cli-1"), {"bob": bob.endpoint}, advertise=True) as cli:
        slots = []
        for i in range(301):  # sent before cli reads anything: bob's replies queue up on its link
            msg = cli.make("bob", "ping", {})
            if i == 150:
                msg.reply_to = "x" * 70
            slots.append(cli._expect(msg, 30))
            await cli.send_msg(msg)
        async with trio.open_nursery() as n:
            await n.start(cli.serve, lambda msg: trio.lowlevel.checkpoint())
            with trio.move_on_after(30):
                for done, _ in slots:
                    await done.wait()
            n.cancel_scope.cancel()
        assert [i for i, (_, reply) in enumerate(slots) if reply is None or reply.kind != "pong"] == []
        assert bob.directory["cli-1"] == cli.endpoint
