"""Bad input against a real node process (DESIGN.md §2: "a bad message gets
an ``error`` reply with a reason and is counted, never crashes the node").

A probe is a pair of raw pyzmq sockets outside the topology: a DEALER whose
routing id is the probe's name, and a ROUTER inbox the node learns from the
``reply_to`` of the probe's first (valid) ``ping``: a node can only answer
names it knows. Each case uses its own probe, since complaints are
rate-limited per sender.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgpack
import trio
import zmq

from protocol.auth import Keyring, client_keyring
from protocol.messages import MAX_FRAME, PROTOCOL_VERSION, Message, decode, encode
from tests.integration.procs import identity

TOPOLOGY = {
    "cluster": {"name": "bad-input"},
    "nodes": {"n1": {"kind": "testnode", "module": "tests.fixtures.streamer", "options": {"role": "sink"},
                     "restart": "on-failure"}},
}


def raw(kind="ping", body=None, **over) -> bytes:
    """A msgpack map shaped like a message, any field overridable (even to nonsense)."""
    m = {"v": PROTOCOL_VERSION, "kind": kind, "src": "?", "dst": "n1", "seq": 1, "corr": None, "epoch": 0,
         "flow": None, "fseq": None, "reply_to": None, "body": body if body is not None else {}}
    m.update(over)
    return msgpack.packb(m, use_bin_type=True)


class Probe:
    """Raw sockets named ``name`` talking to one node."""

    def __init__(self, run: Path, name: str, node_endpoint: str, keys: Keyring):
        ctx = zmq.Context.instance()
        self.name = name
        self.keys = keys  # the user's own client: its bad messages are authenticated, and answered
        self.endpoint = f"ipc://{run}/{name}.sock"
        self.inbox = ctx.socket(zmq.ROUTER)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.inbox.bind(self.endpoint)
        self.out = ctx.socket(zmq.DEALER)
        self.out.setsockopt(zmq.LINGER, 0)
        self.out.setsockopt(zmq.ROUTING_ID, name.encode())
        self.out.connect(node_endpoint)
        self.seq = 0

    def message(self, kind: str, body: dict | None = None, advertise: bool = True) -> bytes:
        self.seq += 1
        return encode(Message(kind, self.name, "n1", self.seq, body or {},
                              reply_to=self.endpoint if advertise else None))

    async def next_reply(self) -> Message:
        sock, fd = self.inbox, self.inbox.getsockopt(zmq.FD)
        with trio.fail_after(10):
            while not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                await trio.lowlevel.wait_readable(fd)
        ident, frame = sock.recv_multipart(zmq.NOBLOCK)
        assert ident.split(b"#")[0] == b"n1"
        return decode(self.keys.open("n1", frame))

    def send(self, payload: bytes | list[bytes]) -> None:
        """Send ``payload`` sealed with this client's key (a multipart one as it is)."""
        if isinstance(payload, list):
            self.out.send_multipart(payload)
        else:
            self.out.send(self.keys.seal("n1", payload))

    async def introduce(self) -> None:
        """A valid ping with reply_to: from now on the node can answer this probe."""
        self.send(self.message("ping"))
        pong = await self.next_reply()
        assert (pong.kind, pong.corr) == ("pong", self.seq)

    def close(self) -> None:
        self.out.close(linger=0)
        self.inbox.close(linger=0)


CASES = {
    # probe name: (what it sends, the reason of the error it gets back)
    "p-msgpack": (b"\x92\xc1\x00", "bad_msgpack"),
    # 0xc1, the byte msgpack never uses, starts a batch (protocol/messages.py): this one is cut short
    "p-batch": (b"\xc1\x00\x93", "bad_batch"),
    "p-notmap": (msgpack.packb([1, 2, 3]), "bad_message"),
    "p-type": (raw("stream_start", {"count": "ten", "flow": "data:n1"}, src="p-type"), "bad_field"),
    "p-bool": (raw("ping", seq=True, src="p-bool"), "bad_field"),
    "p-kind": (raw("teleport", src="p-kind"), "unknown_kind"),
    "p-large": (b"\x92" + b"\x00" * MAX_FRAME, "too_large"),
    "p-version": (raw("ping", v=PROTOCOL_VERSION + 1, src="p-version"), "bad_version"),
    "p-multi": ([b"\x81\xa1v\x01", b"garbage", b""], "bad_message"),
    "p-spoof": (raw("ping", src="n1"), "bad_source"),
    "p-unhandled": (None, "unhandled_kind"),  # a registered kind this node does not handle
}


async def test_a_node_answers_every_bad_message_with_its_reason_counts_it_and_keeps_running(cluster, tmp_path):
    orch = await cluster(TOPOLOGY)
    node = orch.supervisor.nodes["n1"]
    pid = node.pid
    run = tmp_path / "p"
    run.mkdir()
    probes = []
    got = {}
    try:
        for name, (payload, _) in CASES.items():
            probe = Probe(run, name, orch.directory["n1"], client_keyring(orch.run_dir, name))
            probes.append(probe)
            await probe.introduce()
            if payload is None:
                payload = probe.message("ctl_status")
            probe.send(payload)
            error = await probe.next_reply()
            assert error.kind == "error", (name, error)
            got[name] = error.body["reason"]
        assert got == {name: reason for name, (_, reason) in CASES.items()}

        # a sender the node cannot answer (outside the topology, no reply_to): dropped and counted;
        # its later ping with reply_to is answered, so the first was consumed before it
        stranger = Probe(run, "p-stranger", orch.directory["n1"], client_keyring(orch.run_dir, "p-stranger"))
        probes.append(stranger)
        stranger.send(stranger.message("ping", advertise=False))
        await stranger.introduce()

        stats = (await orch.request("n1", "stats")).body["stats"]
        assert stats["bad_in"] == len(CASES) + 1
        assert stats["spoofed"] == 1
        assert identity((await orch.request("n1", "ping")).body) == {"name": "n1", "kind": "testnode"}
        os.kill(pid, 0)  # still the same process: it neither died nor was restarted
        assert (node.pid, node.proc.returncode, node.restarts, node.state) == (pid, None, 0, "running")
    finally:
        for probe in probes:
            probe.close()


async def test_a_wrong_field_type_names_the_field_in_the_error_detail(cluster, tmp_path):
    orch = await cluster(TOPOLOGY)
    probe = Probe(tmp_path, "p-detail", orch.directory["n1"], client_keyring(orch.run_dir, "p-detail"))
    try:
        await probe.introduce()
        probe.send(raw("stream_start", {"count": True, "flow": "data:n1"}, src="p-detail"))
        error = await probe.next_reply()
        assert (error.body["reason"], error.body["detail"]) == (
            "bad_field", "bad_field [body.count]: expected int, got bool")
    finally:
        probe.close()
