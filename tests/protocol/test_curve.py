"""CURVE on tcp endpoints (protocol/curve.py, docs/hosts.md), with real sockets on
127.0.0.1: a peer without a key or with an unknown one never reaches the inbox; a
valid key speaking under another node's name is refused and counted; bytes captured
on the wire and replayed into a new connection deliver nothing; an ipc inbox is 0600."""

from __future__ import annotations

import os
import socket
import stat
import threading
from pathlib import Path

import pytest
import trio
import zmq

from protocol import curve
from protocol.messages import Message, encode
from protocol.transport import Party


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def keys(tmp_path):
    """Keys for orch, alice, bob and carol in a private run directory; bob serves tcp."""
    rd = tmp_path / "run"
    public = curve.init_keys(rd, ["orch", "alice", "bob", "carol"])
    assert set(public) == {"orch", "alice", "bob", "carol", curve.CLIENT}
    return rd


def ident(rd: Path, name: str, bind: str | None = None) -> curve.CurveIdentity:
    return curve.load_identity(rd, name, bind=bind, authority="orch")


class Bob:
    """bob: an inbox on ipc and on tcp with CURVE; remembers what reached its handler."""

    def __init__(self, rd: Path):
        self.tcp = f"tcp://127.0.0.1:{free_port()}"
        self.directory = {"alice": f"ipc://{rd}/alice.sock", "bob": self.tcp, "carol": f"ipc://{rd}/carol.sock"}
        self.party = Party("bob", f"ipc://{rd}/bob.sock", self.directory, curve=ident(rd, "bob", self.tcp))
        self.got: list[Message] = []

    async def handler(self, msg: Message) -> None:
        self.got.append(msg)
        if msg.kind == "ping":
            await self.party.reply(msg, "pong", {"name": "bob"})


async def until(cond, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while not cond():
            await trio.sleep(0.02)


async def test_a_keyed_peer_talks_over_tcp_and_a_keyless_or_unknown_one_cannot_connect(keys, tmp_path):
    bob = Bob(keys)
    alice = Party("alice", f"ipc://{keys}/alice.sock", bob.directory, curve=ident(keys, "alice"))
    ctx = zmq.Context.instance()
    stray = ctx.socket(zmq.DEALER)  # no key at all: a NULL client against a CURVE server
    stray.linger = 0
    stray.routing_id = b"alice#1"
    unknown = ctx.socket(zmq.DEALER)  # a key pair nobody authorised
    unknown.linger = 0
    unknown.routing_id = b"alice#2"
    pub, sec = zmq.curve_keypair()
    unknown.curve_serverkey, unknown.curve_publickey, unknown.curve_secretkey = ident(keys, "bob").public, pub, sec
    try:
        async with trio.open_nursery() as n:
            await n.start(bob.party.serve, bob.handler)
            await n.start(alice.serve, lambda m: trio.lowlevel.checkpoint())
            reply = await alice.request("bob", "ping", {}, timeout=10)
            assert reply.kind == "pong"
            for sock in (stray, unknown):
                sock.connect(bob.tcp)
                sock.send(encode(Message("ping", "alice", "bob", 99, {})))
            await until(lambda: bob.party.counters["curve_refused"] >= 1)  # the unknown key's handshake
            await alice.request("bob", "ping", {}, timeout=10)  # bob still serves alice
            assert [m.src for m in bob.got] == ["alice", "alice"]
            assert bob.party.counters["msgs_in"] == 2 and bob.party.counters["wrong_key"] == 0
            n.cancel_scope.cancel()
    finally:
        stray.close(linger=0)
        unknown.close(linger=0)
        alice.close()
        bob.party.close()


async def test_a_valid_key_sending_as_another_node_is_refused_and_counted(keys):
    bob = Bob(keys)
    carol = ident(keys, "carol")
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.routing_id = b"alice#7"  # carol's key, alice's name (and src)
    carol.client(sock, "bob")
    try:
        async with trio.open_nursery() as n:
            await n.start(bob.party.serve, bob.handler)
            sock.connect(bob.tcp)
            sock.send(encode(Message("ping", "alice", "bob", 1, {})))
            await until(lambda: bob.party.counters["wrong_key"] == 1)
            # carol's key under carol's own name is taken
            sock2 = zmq.Context.instance().socket(zmq.DEALER)
            sock2.linger = 0
            sock2.routing_id = b"carol#7"
            carol.client(sock2, "bob")
            sock2.connect(bob.tcp)
            sock2.send(encode(Message("ping", "carol", "bob", 1, {})))
            await until(lambda: len(bob.got) == 1)
            sock2.close(linger=0)
            assert [(m.src, m.kind) for m in bob.got] == [("carol", "ping")]
            assert bob.party.counters["spoofed"] == 1
            n.cancel_scope.cancel()
    finally:
        sock.close(linger=0)
        bob.party.close()


class Tap:
    """A TCP relay that records what the client sends (a wire tap)."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.captured = bytearray()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        conn, _ = self.server.accept()
        up = socket.create_connection(self.target)
        for src, dst, record in ((conn, up, True), (up, conn, False)):
            threading.Thread(target=self._pipe, args=(src, dst, record), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, record: bool) -> None:
        try:
            while data := src.recv(65536):
                if record:
                    self.captured += data
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()


async def test_bytes_captured_on_the_wire_and_replayed_deliver_nothing(keys):
    bob = Bob(keys)
    host, port = bob.tcp[len("tcp://"):].split(":")
    tap = Tap((host, int(port)))
    directory = {**bob.directory, "bob": f"tcp://127.0.0.1:{tap.port}"}
    alice = Party("alice", f"ipc://{keys}/alice.sock", directory, curve=ident(keys, "alice"))
    try:
        async with trio.open_nursery() as n:
            await n.start(bob.party.serve, bob.handler)
            await n.start(alice.serve, lambda m: trio.lowlevel.checkpoint())
            await alice.request("bob", "ping", {}, timeout=10)
            assert len(bob.got) == 1 and b"ping" not in tap.captured  # encrypted on the wire
            wire = bytes(tap.captured)
            with socket.create_connection((host, int(port))) as replay:  # the whole session again
                replay.sendall(wire)
                await trio.sleep(1.0)
            assert len(bob.got) == 1 and bob.party.counters["msgs_in"] == 1
            n.cancel_scope.cancel()
    finally:
        tap.close()
        alice.close()
        bob.party.close()


def test_an_ipc_inbox_and_the_key_files_are_private(keys):
    p = Party("alice", f"ipc://{keys}/alice.sock", {}, curve=ident(keys, "alice"))
    try:
        assert stat.S_IMODE(os.stat(keys / "alice.sock").st_mode) == 0o600
        for f in curve.key_dir(keys).iterdir():
            assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert stat.S_IMODE(curve.key_dir(keys).stat().st_mode) == 0o700
    finally:
        p.close()


def test_a_key_file_open_to_others_or_malformed_is_refused_in_one_line(keys):
    path = curve.key_dir(keys) / "alice.key"
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="open to other accounts"):
        ident(keys, "alice")
    os.chmod(path, 0o600)
    path.write_text('{"public": "short", "secret": "x"}')
    with pytest.raises(ValueError, match="a CURVE key is 40 characters"):
        ident(keys, "alice")
