"""The trio ⇄ ZeroMQ transport (DESIGN.md §2).

pyzmq has no trio integration, so this module adapts it. Each party owns one
inbox (a ``ROUTER`` bound at its endpoint) and one ``DEALER`` per peer it
sends to, connected lazily by name through a *directory* (name → endpoint).
Replies travel like any message: to the requester's inbox.

A ZeroMQ socket's ``FD`` is edge-triggered and only says "events may have
changed": we check ``EVENTS`` before waiting on it, drain with ``NOBLOCK``,
and re-check after a send. All sockets belong to the one trio thread, and a
send never awaits except to wait out a full queue (high-water mark), under a
per-peer lock so two tasks never wait on one FD.

The inbox is read by its serve task (:meth:`Party.serve`), which hands
every message but a reply to the handler, in arrival order. An inbox that
just saw traffic is *polled* for a short while before that task sleeps in
trio's epoll: a check of ``EVENTS`` per scheduler pass, other tasks running
in between. Waking a sleeping process costs more than the round trip itself
on a loaded host (``bench/msgplane.py`` prints both), and a conversation's
next message usually comes within that window. The window is bounded
(``HWEMU_SPIN_US``, default 200 µs, 0 turns it off) and adapts to the
traffic (:meth:`Party._wait_inbox`), so an idle node or a slowly paced flow
costs no polling.

A task that awaits a reply polls the inbox itself instead, within a window
of its own that adapts the same way (:meth:`Party._poll_for`; one such task
at a time, the serve task stays out of its way): a reply it reads ends its
wait at once, without a wake-up of one task by another (a scheduler pass and
trio's Event: 12 µs of a 100 µs round trip), and anything else it reads is
queued, in order, for the serve task, which reads that queue before the
socket.

A burst of messages to one peer, each sent with ``more`` (more follow at
once: :meth:`Party.send_msg`), goes out as one *batch*: one frame, one MAC,
one ZeroMQ send and receive for all of it
(:func:`protocol.messages.encode_batch`, docs/security.md). A message sent
without ``more`` goes out at once (with the burst it ends, if there is one).

``bench/msgplane.py`` measures this adapter against raw pyzmq and against a
poller thread feeding a trio channel; this one is faster (see README).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import os
import select
import time
from collections import deque
from typing import Any, Awaitable, Callable, Hashable, Mapping

import trio
import zmq

from protocol.auth import AuthError, Keyring
from protocol.curve import CLIENT, MOVED, CurveIdentity, ipc_private, zap_handler
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.messages import (
    BATCH,
    BATCH_MAX,
    MAX_FRAME,
    Message,
    decode,
    encode,
    encode_batch,
    error_body,
    split_batch,
)
from protocol.recorder import Recorder

log = logging.getLogger("hwemu.transport")

Handler = Callable[[Message], Awaitable[None]]

_COMPLAINTS_PER_S = 5
_LEARNED_MAX = 64
_YIELD_EVERY = 16
_BURST = 64  # inbox messages handled in a row before other tasks get a turn
SNDHWM = 20000
RCVHWM = 20000
# ZeroMQ drops the connection of a peer whose frame exceeds this, before
# buffering it: a frame a little over MAX_FRAME still arrives and gets its
# `too_large` error reply; a huge one costs no memory (the slack covers the
# routing-id part and a reply's margin)
INBOX_MAXMSGSIZE = MAX_FRAME + 64 * 1024
# plain ints: pyzmq's enum members cost an Enum construction per `&`
_EVENTS, _POLLIN, _POLLOUT = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)
# pyzmq's Socket.send is a Python layer (routing ids, groups, copy
# thresholds: none of which we use) over the backend's send; calling the
# backend's costs 0.7 µs a send where the layer costs 1.6
_send = zmq.backend.Socket.send
_now = time.perf_counter
_MIN_WINDOW = 20e-6  # a polling window narrower than this is not worth a scheduler pass
_BATCH_BYTES = 256 * 1024  # a batch is sent once its messages hold this much (well under MAX_FRAME)


def spin_from_env() -> float:
    """Seconds an idle inbox is polled before its task sleeps in epoll:
    ``HWEMU_SPIN_US`` (microseconds, 0 turns polling off), default 200."""
    raw = os.environ.get("HWEMU_SPIN_US", "200")
    try:
        us = float(raw)
    except ValueError:
        raise ValueError(f"HWEMU_SPIN_US must be a number of microseconds, got {raw!r}") from None
    if not 0 <= us <= 100_000:
        raise ValueError(f"HWEMU_SPIN_US must be between 0 and 100000, got {raw!r}")
    return us / 1e6


# what one request of a protocol step can fail with: the peer refused, did
# not answer, or could not be addressed
REQUEST_FAILURES = (RemoteError, RequestTimeout, ProtocolError)


async def gather(calls: Mapping[Hashable, Callable[[], Awaitable[Any]]]) -> dict:
    """Run ``calls`` concurrently and return their results by key.

    Every call runs to its end even when another fails (a step that did take
    effect must be known, to be undone), and the caller gets one plain
    exception, never trio's ``ExceptionGroup``.

    Raises:
        RemoteError, RequestTimeout, ProtocolError: the first call that failed
            (the others' failures are logged).
    """
    results: dict = {}
    if len(calls) == 1:  # the usual single peer: no nursery to open and close
        (key, fn), = calls.items()
        results[key] = await fn()
        return results
    failures: list[Exception] = []

    async def one(key, fn):
        try:
            results[key] = await fn()
        except REQUEST_FAILURES as exc:
            failures.append(exc)

    async with trio.open_nursery() as n:
        for key, fn in calls.items():
            n.start_soon(one, key, fn)
    if failures:
        for exc in failures[1:]:
            log.warning("also failed: %s", exc)
        raise failures[0]
    return results


def _outcome(reply: Message | None, dst: str, kind: str, timeout: float) -> Message:
    """A request's reply, or the exception it amounts to."""
    if reply is None:
        raise RequestTimeout(dst, kind, timeout)
    if reply.kind == "error":
        raise RemoteError(dst, reply.body.get("reason", "?"), reply.body.get("detail", ""))
    return reply


def ipc_path(endpoint: str) -> str | None:
    """The file behind an ``ipc://`` endpoint, or None for other transports."""
    return endpoint[len("ipc://"):] if endpoint.startswith("ipc://") else None


class _PollWindow:
    """How long to poll before sleeping, adapted as a hypervisor's halt
    polling adapts: a poll that runs out halves it (a flow paced slower than
    ``spin``, or a peer slow to answer, stops costing CPU: on 2 vCPUs a
    process that polls in vain keeps the one that would answer from running),
    a sleep shorter than ``spin`` widens it to that gap with a margin (a
    conversation is caught by polling again). Never past ``spin``; 0 is off
    (and a spin of 0 keeps it off: no gap is shorter)."""

    __slots__ = ("spin", "value")

    def __init__(self, spin: float):
        self.spin = spin
        self.value = spin  # a conversation is assumed at first

    def ran_out(self) -> None:
        self.value = self.value / 2 if self.value > _MIN_WINDOW else 0.0

    def slept(self, gap: float) -> None:
        if gap < self.spin:
            self.value = min(self.spin, max(2 * self.value, 1.25 * gap, _MIN_WINDOW))


class _Peer:
    __slots__ = ("name", "sock", "fd", "lock", "batch", "batch_bytes")

    def __init__(self, name: str, sock: zmq.Socket):
        self.name = name
        self.sock = sock
        self.fd = sock.getsockopt(zmq.FD)
        self.lock = trio.Lock()
        self.batch: list[bytes] | None = None  # encoded messages of a burst, not sent yet (in order)
        self.batch_bytes = 0


class Party:
    """One participant of the message plane: an inbox plus its outgoing links.

    Args:
        name: this party's node name (also the ZeroMQ routing id it sends with).
        endpoint: where to bind the inbox (``ipc://...`` or ``tcp://...``).
        directory: node name → endpoint of every peer it may address.
        ctx: a ZeroMQ context (a new one if omitted).
        spin: seconds the inbox is polled after traffic before sleeping
            (default from ``HWEMU_SPIN_US``; 0: sleep at once).
        auth: this party's keys (:mod:`protocol.auth`): every frame it sends
            is sealed with a MAC and every frame it receives must verify
            (else it is dropped and counted as ``auth_failed``). None: no
            MAC either way (unit tests, the bench's baseline).
        curve: its CURVE identity (:mod:`protocol.curve`; default: the
            keyring's ``curve``): it serves ``curve.bind`` (tcp) besides its
            endpoint, connects to every tcp endpoint as a CURVE client, and
            drops a message whose sender is not its connection key's owner.
    """

    def __init__(self, name: str, endpoint: str, directory: Mapping[str, str] | None = None,
                 ctx: zmq.Context | None = None, advertise: bool = False, spin: float | None = None,
                 auth: Keyring | None = None, curve: CurveIdentity | None = None):
        self.name = name
        self.endpoint = endpoint
        self.directory: dict[str, str] = dict(directory or {})
        self._static = frozenset(self.directory)  # topology names; reply_to never overrides these
        self._learned: dict[str, None] = {}  # parties known from reply_to, oldest first
        self.ctx = ctx or zmq.Context.instance()
        # this process's life: a restarted party has a larger one (wall-clock
        # ns at start), so a peer can tell a restart from a replay or a delay
        self.incarnation = time.time_ns()
        self._auth = auth
        if auth is not None:
            auth.incarnation = self.incarnation
        # the ZeroMQ routing id this party sends with: its name and its life, so
        # another process that connects with the bare name (or a restarted
        # self) never takes over this one's connections (ROUTER_HANDOVER)
        self._routing_id = f"{name}#{self.incarnation:x}".encode()
        self._senders: dict[bytes, str] = {}  # routing id -> the name it claims, for parse
        self.epoch = 0
        self._advertise = advertise  # put reply_to on every message (clients not in the topology)
        self._seq = itertools.count(1)
        self._peers: dict[str, _Peer] = {}
        self._pending: dict[int, list] = {}  # seq -> [trio.Event, reply]
        # polled_in: deliveries a requester read itself while it awaited its reply
        # what this party sends and receives, when a trace or a history is on
        # (``("msg", "send"|"recv", ...)``; one attribute test when off)
        self.recorder = Recorder(name)
        # auth_failed: frames dropped because their MAC did not verify or they were replays
        # batches_in/out: frames that held several messages (a burst: Party.send_msg's more),
        # batched_in/out: the messages they held
        self.counters = {"msgs_in": 0, "msgs_out": 0, "bad_in": 0, "late_replies": 0, "spoofed": 0,
                         "handler_errors": 0, "polled_in": 0, "auth_failed": 0,
                         "batches_in": 0, "batched_in": 0, "batches_out": 0, "batched_out": 0}
        curve = curve if curve is not None else getattr(auth, "curve", None)
        self._curve = CurveIdentity.from_config(name, curve) if isinstance(curve, Mapping) else curve
        if self._curve is not None:
            # wrong_key: messages refused because their sender is not the owner of the connection's
            # CURVE key; curve_refused: handshakes the context's ZAP handler refused (no/unknown key)
            self.counters.update(wrong_key=0, curve_refused=0)
        self.auth_failures: dict[str, int] = {}  # reason -> count (protocol.auth.AuthError reasons)
        self._inbox = self.ctx.socket(zmq.ROUTER)
        self._inbox.setsockopt(zmq.RCVHWM, RCVHWM)
        self._inbox.setsockopt(zmq.MAXMSGSIZE, INBOX_MAXMSGSIZE)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self._inbox.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted peer takes its name back
        path = ipc_path(endpoint)
        if path is not None and os.path.exists(path):
            os.unlink(path)  # stale socket file from a killed predecessor
        self._zap = None
        binds = [endpoint]
        if self._curve is not None and self._curve.bind:
            self._zap = zap_handler(self.ctx, self._curve)  # before the CURVE bind: it answers the handshakes
            self._zap.count_into(self.counters)
            binds.append(self._curve.bind)
        for where in binds:
            if where.startswith("tcp://") and self._curve is not None:
                self._curve.serve(self._inbox)  # a bind takes the socket's options as they are now
            try:
                self._inbox.bind(where)
            except zmq.ZMQError as exc:  # in use, no such directory, ...: one line, not a zmq traceback
                self._inbox.close()
                raise ProtocolError("bind_failed", f"cannot bind {where}: {os.strerror(exc.errno)}",
                                    "endpoint") from None
        if path is not None:
            ipc_private(path)  # 0600: only this account may connect (the run directory is 0700 too)
        self._inbox_fd = self._inbox.getsockopt(zmq.FD)
        self._busy = False  # the inbox task is handling what it read (not waiting for the next)
        # deliveries a polling requester read that are not replies, for the
        # serve task (in arrival order, before anything still in the socket)
        self._deferred: deque[tuple[list[bytes], Message | ProtocolError]] = deque()
        self._polling = False  # a requester polls the inbox now (the serve task stays out of its way)
        self._poll_over = trio.Event()  # set when that requester stops
        self._sleep: trio.CancelScope | None = None  # the serve task's sleep on the FD, to wake it
        self._inbox_poll = select.poll()
        self._inbox_poll.register(self._inbox_fd, select.POLLIN)
        self._closed = False
        self._complaints: dict[str, tuple[float, int]] = {}
        self._unyielded = 0
        self.spin = spin_from_env() if spin is None else spin
        self._serving = False  # serve() runs: its timer task expires requests
        self._deadlines: dict[float, deque[tuple[float, int]]] = {}  # timeout -> (deadline, seq), in order
        self._expiry_next = math.inf
        self._expiry_kick = trio.Event()
        self._active = 0.0  # perf_counter of the last traffic (the polling window starts there)
        self._inbox_window = _PollWindow(self.spin)  # how long the serve task polls after traffic
        self._reply_window = _PollWindow(self.spin)  # how long a requester polls for its reply
        # the fault injector (protocol/faults.py) every frame passes on its way
        # out, or None: then sending costs one attribute test more
        self.faults: Any = None
        # peers whose batch waits for the flusher task (Party._queue), in the order they were opened
        self._batched: deque[_Peer] = deque()
        self._flush_kick = trio.Event()
        # called with (request, reply) when a message of a flow is answered:
        # the node keeps the reply for a retransmitted request (nodes/runtime.py)
        self.on_flow_reply: Callable[[Message, Message], None] | None = None

    # -- outgoing ---------------------------------------------------------------

    def _peer(self, dst: str) -> _Peer:
        peer = self._peers.get(dst)
        if peer is None:
            endpoint = self.directory.get(dst)
            if endpoint is None:
                raise ProtocolError("unknown_node", f"{self.name} has no endpoint for node {dst!r}", "dst")
            peer = self._peers[dst] = _Peer(dst, self._connect(dst, endpoint))
        return peer

    def _connect(self, dst: str, endpoint: str) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, self._routing_id)
        sock.setsockopt(zmq.SNDHWM, SNDHWM)
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve is not None and endpoint.startswith("tcp://"):
            try:
                self._curve.client(sock, dst)
            except KeyError:
                sock.close(linger=0)
                raise ProtocolError("no_key", f"{self.name} has no CURVE key of {dst!r} to connect to {endpoint}",
                                    "dst") from None
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:  # a reply_to that is no endpoint (a fuzzer's, a bug's)
            sock.close(linger=0)
            raise ProtocolError("bad_endpoint", f"cannot connect to {dst} at {endpoint!r:.80}: {exc}",
                                "reply_to") from None
        return sock

    def moved(self, node: str, endpoint: str) -> None:
        """``node`` is now reached at ``endpoint`` (it was restarted on another host):
        the link to its old place is dropped, the next send connects to the new one."""
        self.directory[node] = endpoint
        self.forget(node)

    def forget(self, dst: str) -> None:
        """Drop the link to ``dst`` (it moved or is gone); the next send reconnects."""
        peer = self._peers.pop(dst, None)
        if peer is not None:
            peer.batch = None  # what it queued for the old link is lost with it (a flow sends it again)
            peer.sock.close(linger=0)

    def next_seq(self) -> int:
        return next(self._seq)

    def number_from(self, start: int) -> None:
        """Number the next messages from ``start``: a party that takes over from an
        earlier one under the same name starts past its numbers, so that a late
        reply to the earlier one's request is never taken for a reply to its own."""
        self._seq = itertools.count(start)

    def make(self, dst: str, kind: str, body: dict[str, Any], *, corr: int | None = None,
             flow: str | None = None, fseq: int | None = None) -> Message:
        return Message(kind=kind, src=self.name, dst=dst, seq=next(self._seq), body=body, corr=corr,
                       epoch=self.epoch, flow=flow, fseq=fseq,
                       reply_to=self.endpoint if self._advertise else None, inc=self.incarnation)

    def _seal(self, msg: Message, frame: bytes) -> bytes:
        """``frame`` (``msg`` encoded) sealed with its MAC for ``msg.dst``: at each
        send, so a frame sent again (a retransmission) is a new one, not a replay."""
        try:
            return self._auth.seal(msg.dst, frame)
        except AuthError as exc:
            raise ProtocolError("no_key", str(exc), "dst") from None

    async def send_msg(self, msg: Message, frame: bytes | None = None, *, more: bool = False) -> None:
        """Send a built message (``frame``: its encoding, if the caller has it);
        waits only while the peer's queue is full.

        ``more``: more messages to the same peer follow at once (a burst, as
        :meth:`nodes.runtime.Node.emit` of a stream sends it). The message
        then waits for them, and the burst goes out as one batch (one frame,
        one MAC, one ZeroMQ send: :func:`protocol.messages.encode_batch`)
        with the next message sent to that peer without ``more`` (which joins
        it), once ``BATCH_MAX`` are queued, or when the sending task yields
        (:meth:`_flusher`), whichever comes first; the peer gets every message
        in the order they were sent. A message without ``more`` and no burst
        before it goes out at once, as every request and reply does (a round
        trip never waits for a batch); so does everything while a fault is
        set on this party (faults act on each frame).
        """
        peer = self._peer(msg.dst)
        if frame is None:
            frame = encode(msg)
        if peer.batch is not None:
            if self.faults is None:
                await self._queue(peer, msg, frame, more)  # it joins the burst (which goes now, unless more follow)
                return
            await self._flush(peer)  # a fault was set meanwhile: the burst goes as it is, this one alone
        elif more and self._serving and self.faults is None:
            await self._queue(peer, msg, frame, more)
            return
        plain = None
        if self._auth is not None:
            plain, frame = frame, self._seal(msg, frame)
        if self.faults is not None:  # after signing: a corrupted frame is a lost one to its receiver
            frame = self.faults.outgoing(msg, frame, plain)
            if frame is None:  # dropped, or held back to go out later: it is gone as far as we know
                self.counters["msgs_out"] += 1
                return
        sock = peer.sock
        if self.recorder.on:  # before it leaves: its receiver may record it before we run again
            self._record_send(msg, frame, time.monotonic_ns())
        try:
            if peer.lock.locked():  # others wait for room: queue behind them, keep order
                raise zmq.Again
            _send(sock, frame, _NOBLOCK)
        except zmq.Again:
            await self._put(peer, frame)
        self.counters["msgs_out"] += 1
        self._active = _now()
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            # a producer that never blocks must still let the inbox be read
            # (a route_pause waits there), so yield to trio now and then
            self._unyielded = 0
            await trio.lowlevel.checkpoint()

    async def _put(self, peer: _Peer, frame: bytes) -> None:
        """Send ``frame`` to ``peer`` once its queue has room, behind whoever waits already."""
        sock = peer.sock
        async with peer.lock:
            while True:
                if sock.getsockopt(_EVENTS) & _POLLOUT:
                    try:
                        _send(sock, frame, _NOBLOCK)
                        return
                    except zmq.Again:
                        pass
                await trio.lowlevel.wait_readable(peer.fd)

    async def _queue(self, peer: _Peer, msg: Message, frame: bytes, more: bool) -> None:
        """Put a message in ``peer``'s batch (opened if need be), and send the batch
        unless ``more`` follow (or it is full)."""
        queued = peer.batch
        if queued is None:
            queued = peer.batch = []
            peer.batch_bytes = 0
            self._batched.append(peer)
            self._flush_kick.set()  # the flusher sends it if this task yields before the burst ends
        queued.append(frame)
        peer.batch_bytes += len(frame)
        if self.recorder.on:
            self._record_send(msg, frame, time.monotonic_ns())
        self.counters["msgs_out"] += 1
        self._active = _now()
        if not more or len(queued) >= BATCH_MAX or peer.batch_bytes >= _BATCH_BYTES:
            await self._flush(peer)
        self._unyielded += 1
        if self._unyielded >= _YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.checkpoint()  # (and the flusher sends the batch)

    def _batch_frame(self, peer: _Peer) -> bytes:
        """``peer``'s batch as one frame, sealed (the batch is emptied)."""
        queued, peer.batch = peer.batch, None
        if len(queued) == 1:
            frame = queued[0]
        else:
            frame = encode_batch(queued)
            self.counters["batches_out"] += 1
            self.counters["batched_out"] += len(queued)
        if self._auth is not None:
            try:
                frame = self._auth.seal(peer.name, frame)
            except AuthError as exc:
                raise ProtocolError("no_key", str(exc), "dst") from None
        return frame

    async def _flush(self, peer: _Peer) -> None:
        """Send ``peer``'s batch, if it has one, waiting for room if need be."""
        if peer.batch is None:
            return
        frame = self._batch_frame(peer)
        if peer.lock.locked():
            await self._put(peer, frame)
            return
        try:
            _send(peer.sock, frame, _NOBLOCK)
        except zmq.Again:
            await self._put(peer, frame)

    def _flush_nowait(self, peer: _Peer) -> bool:
        """Send ``peer``'s batch unless its queue is full (then it stays queued); True if nothing is queued now."""
        if peer.batch is None:
            return True
        if peer.lock.locked():
            return False
        queued = peer.batch
        frame = self._batch_frame(peer)
        try:
            _send(peer.sock, frame, _NOBLOCK)
        except zmq.Again:
            peer.batch = queued  # as it was (sealed again when it goes: a counter skipped is no harm)
            if len(queued) > 1:
                self.counters["batches_out"] -= 1
                self.counters["batched_out"] -= len(queued)
            return False
        return True

    async def _flusher(self) -> None:
        """The task that sends the batches queued while another task ran (:meth:`_queue`):
        it runs once that task yields."""
        while True:
            await self._flush_kick.wait()
            self._flush_kick = trio.Event()
            batched = self._batched
            while batched:
                peer = batched.popleft()
                if peer.batch is not None:
                    try:
                        await self._flush(peer)
                    except (ProtocolError, zmq.ZMQError, trio.ClosedResourceError) as exc:  # no key, a closed link
                        log.warning("%s: a batch to %s is lost: %s", self.name, peer.name, exc)

    def send_nowait(self, msg: Message, frame: bytes | None = None) -> bool:
        """Send unless the peer's queue is full (then drop and return False).
        For messages that must never block the data plane, like heartbeats."""
        peer = self._peer(msg.dst)
        if peer.lock.locked() or (peer.batch is not None and not self._flush_nowait(peer)):
            return False  # what waits for room (or its batch) goes first: never overtake it
        sock = peer.sock
        if frame is None:
            frame = encode(msg)
        plain = None
        if self._auth is not None:
            plain, frame = frame, self._seal(msg, frame)
        if self.faults is not None:
            frame = self.faults.outgoing(msg, frame, plain)
            if frame is None:
                self.counters["msgs_out"] += 1
                return True
        t = time.monotonic_ns() if self.recorder.on else 0
        try:
            _send(sock, frame, _NOBLOCK)
        except zmq.Again:
            return False
        self.counters["msgs_out"] += 1
        if t:
            self._record_send(msg, frame, t)
        return True

    def _record_send(self, msg: Message, frame: bytes, t: int) -> None:
        self.recorder.at(t, "msg", "send", kind=msg.kind, dst=msg.dst, seq=msg.seq, flow=msg.flow, fseq=msg.fseq,
                         epoch=msg.epoch, size=len(frame))

    def send_frame_nowait(self, dst: str, frame: bytes, seal: bool = False) -> bool:
        """Send an encoded frame unless the link is full (the fault injector's
        late, duplicated and reordered frames; they bypass it); ``seal``: seal
        it first (an unsealed copy of a message: a duplicate, sent anew)."""
        try:
            peer = self._peer(dst)
            if peer.batch is not None and not self._flush_nowait(peer):
                return False
            if seal and self._auth is not None:
                frame = self._auth.seal(dst, frame)
            _send(peer.sock, frame, _NOBLOCK)
        except (zmq.Again, ProtocolError, zmq.ZMQError, AuthError):
            return False
        return True

    async def send(self, dst: str, kind: str, body: dict[str, Any] | None = None, **hdr: Any) -> Message:
        msg = self.make(dst, kind, body or {}, **hdr)
        await self.send_msg(msg)
        return msg

    def learn(self, msg: Message) -> None:
        """Remember the inbox of a party outside the topology (a CLI client).

        At most ``_LEARNED_MAX`` such parties are kept (least recently heard
        from are dropped with their socket), so many short-lived clients do
        not pile up sockets."""
        if not msg.reply_to or msg.src in self._static:
            return
        if self.directory.get(msg.src) != msg.reply_to:
            try:  # connected first: an endpoint it cannot connect to changes nothing
                sock = self._connect(msg.src, msg.reply_to)
            except ProtocolError:
                return
            self.forget(msg.src)
            self.directory[msg.src] = msg.reply_to
            self._peers[msg.src] = _Peer(msg.src, sock)
        self._learned.pop(msg.src, None)
        self._learned[msg.src] = None
        while len(self._learned) > _LEARNED_MAX:
            old = next(iter(self._learned))
            del self._learned[old]
            self.forget(old)
            self.directory.pop(old, None)

    async def reply(self, to: Message, kind: str = "ok", body: dict[str, Any] | None = None) -> None:
        """Answer ``to`` (sets ``corr``)."""
        self.learn(to)
        msg = self.make(to.src, kind, body or {}, corr=to.seq)
        if to.flow is not None and self.on_flow_reply is not None:
            self.on_flow_reply(to, msg)
        await self.send_msg(msg)

    async def request(self, dst: str, kind: str, body: dict[str, Any] | None = None, *,
                      timeout: float = 5.0, **hdr: Any) -> Message:
        """Send a request and wait for its reply (needs :meth:`serve` running).

        Raises:
            RemoteError: the peer answered with ``error``.
            RequestTimeout: no reply within ``timeout`` seconds.
        """
        return await self.request_msg(self.make(dst, kind, body or {}, **hdr), timeout=timeout)

    async def request_msg(self, msg: Message, *, timeout: float = 5.0, frame: bytes | None = None) -> Message:
        """:meth:`request` for a message already built (a flow's, kept for retransmission)."""
        slot = self._expect(msg, timeout)
        try:
            await self.send_msg(msg, frame)
        except BaseException:
            self._pending.pop(msg.seq, None)
            raise
        return await self._reply_to(msg, slot, timeout)

    def start_request(self, dst: str, kind: str, body: dict[str, Any] | None = None, *,
                      timeout: float = 5.0) -> Callable[[], Awaitable[Message]]:
        """Send a request now, from a handler that must not wait (its order
        behind what was sent before matters, as a drain's does); returns the
        coroutine function that waits for the reply (needs :meth:`serve`).

        Raises:
            ProtocolError: ``dst`` unknown, or its queue full (``busy``: nothing was sent).
        """
        msg = self.make(dst, kind, body or {})
        slot = self._expect(msg, timeout)
        try:
            if not self.send_nowait(msg):
                raise ProtocolError("busy", f"the queue to {dst} is full: {kind} not sent")
        except BaseException:
            self._pending.pop(msg.seq, None)
            raise
        return functools.partial(self._reply_to, msg, slot, timeout)

    def _expect(self, msg: Message, timeout: float) -> list:
        """The slot the reply to ``msg`` will fill; while :meth:`serve` runs,
        its timer task wakes the slot ``timeout`` seconds from now."""
        slot = [trio.Event(), None]
        self._pending[msg.seq] = slot
        if self._serving:
            # a cancel scope per request would cost as much as decoding the reply
            self._expire_at(timeout, msg.seq)
        return slot

    async def _reply_to(self, msg: Message, slot: list, timeout: float) -> Message:
        """Wait for the reply to ``msg`` (or its timeout): polling for it
        within the reply window (:meth:`_poll_for`), then on its slot."""
        try:
            if self._serving:
                window = self._reply_window
                asked = _now()
                if window.value and not self._polling:
                    await self._poll_for(slot, window.value)  # it checkpoints
                    if not slot[0].is_set():
                        window.ran_out()
                if not slot[0].is_set():  # (waiting on a set Event would cost a scheduler pass)
                    await slot[0].wait()
                    if slot[1] is not None:  # a reply, not the timeout
                        window.slept(_now() - asked)
            else:
                with trio.move_on_after(timeout):
                    await slot[0].wait()
        finally:
            self._pending.pop(msg.seq, None)
        return _outcome(slot[1], msg.dst, msg.kind, timeout)

    def _expire_at(self, timeout: float, seq: int) -> None:
        """Have request ``seq`` woken without a reply ``timeout`` seconds from now.

        Deadlines are queued per timeout value, so each queue is in deadline
        order; answered requests at its front are dropped as new ones come,
        which keeps it as short as the requests in flight."""
        deadline = trio.current_time() + timeout
        queue = self._deadlines.get(timeout)
        if queue is None:
            queue = self._deadlines[timeout] = deque()
        pending = self._pending
        while queue and queue[0][1] not in pending:
            queue.popleft()
        queue.append((deadline, seq))
        if deadline < self._expiry_next:
            self._expiry_kick.set()

    async def _expire(self) -> None:
        """The timer task of :meth:`request`: wakes each request whose deadline
        passed without a reply (it then raises RequestTimeout)."""
        pending = self._pending
        while True:
            now = trio.current_time()
            nxt = math.inf
            for timeout, queue in list(self._deadlines.items()):
                while queue:
                    deadline, seq = queue[0]
                    slot = pending.get(seq)
                    if slot is not None and deadline > now:
                        nxt = min(nxt, deadline)
                        break
                    queue.popleft()
                    if slot is not None:
                        slot[0].set()  # no reply in time: slot[1] stays None
                if not queue:
                    del self._deadlines[timeout]
            self._expiry_next = nxt
            self._expiry_kick = trio.Event()
            with trio.move_on_at(nxt):
                await self._expiry_kick.wait()

    # -- incoming ---------------------------------------------------------------

    def _recv_now(self) -> list[bytes] | None:
        """The next [routing id, frame...] delivery if one is queued; never waits.

        A failed ``recv`` (EAGAIN) processes the socket's pending commands
        as a check of ``EVENTS`` does, so it resets the FD's edge: the caller
        may sleep on the FD right after a None. The parts after the routing
        id are read as frames, whose ``more`` flag costs nothing (a
        ``RCVMORE`` query costs as much as a receive)."""
        sock = self._inbox
        try:
            ident = sock.recv(_NOBLOCK)
        except zmq.Again:
            return None
        part = sock.recv(_NOBLOCK, copy=False)  # a message's parts arrive together
        frames = [ident, part.bytes]
        while part.more:
            part = sock.recv(_NOBLOCK, copy=False)
            frames.append(part.bytes)
        if self._curve is not None and not self._key_owns(part, ident):
            return []  # dropped (counted): the caller takes the next one
        return frames

    def _key_owns(self, part: zmq.Frame, ident: bytes) -> bool:
        """True unless the delivery came over a CURVE connection whose key is
        not its sender's (docs/hosts.md): a node's key speaks only as that node,
        the client key only as a party outside the topology."""
        try:
            owner = part.get("User-Id")
        except zmq.ZMQError:
            owner = ""
        if not owner:  # not a CURVE connection: ipc (private files) or the party's own tcp endpoint
            return True
        sender = self._sender(ident)
        if owner == sender or (owner == CLIENT and sender not in self._static and sender != self.name):
            return True
        self.counters["wrong_key"] += 1
        self.counters["spoofed"] += 1
        n = self.counters["wrong_key"]
        if n & (n - 1) == 0:
            log.warning("%s: refused a message from %r over a connection authenticated as %s (%d so far)",
                        self.name, ident[:64], owner, n)
        if self.recorder.on:
            self.recorder("auth", "drop", src=sender, reason="wrong_key")
        return False

    def inbox_signalled(self) -> bool:
        """True if the inbox has work for its task: something reached it since
        it was last looked at (its FD is readable), or the task is between two
        messages it read (it yielded with more in hand: a burst's checkpoint, a
        handler that awaits), or a polling requester queued something for it.
        Unlike a check of ``EVENTS`` this changes nothing (the FD stays
        readable, so the task that sleeps on it still wakes), so a task that
        computes without yielding may ask between two pieces of work whether
        to yield now (the CPU node between two slices). The second case
        matters because trio runs a batch of tasks in turn: the inbox task may
        be due after the asker in the same batch, where nothing shows it but
        this flag."""
        return self._busy or bool(self._deferred) or bool(self._inbox_poll.poll(0))

    def _pending_in(self) -> bool:
        """True if a message is queued (checks ``EVENTS``, which resets the FD's edge)."""
        return bool(self._inbox.getsockopt(_EVENTS) & _POLLIN)

    async def _wait_inbox(self) -> bool:
        """Wait until the inbox may have a message (the caller re-checks);
        called right after :meth:`_recv_now` or :meth:`_pending_in` found it
        empty. Returns True if nothing says a message is there (the caller
        had better ask ``EVENTS`` than try a receive).

        Within the polling window of the last traffic the inbox is polled,
        one check of ``EVENTS`` per scheduler pass (other tasks run in
        between); after that the task sleeps on the FD. The window adapts to
        the traffic (:class:`_PollWindow`). While a requester polls
        (:meth:`_poll_for`) the task waits for it to stop instead (so that a
        reply does not wake it too); if it slept on the FD already, that
        requester wakes it when it stops with something left to read."""
        if self._polling:
            await self._poll_over.wait()
            return True
        window = self._inbox_window
        if window.value:
            while _now() < self._active + window.value:
                await trio.lowlevel.checkpoint()
                if self._deferred or self._polling:
                    return True
                if self._pending_in():
                    return False
            window.ran_out()
        with trio.CancelScope() as self._sleep:
            await trio.lowlevel.wait_readable(self._inbox_fd)
        self._sleep = None
        window.slept(_now() - self._active)
        return False

    async def _poll_for(self, slot: list, window: float) -> None:
        """Poll the inbox from the task that awaits ``slot``'s reply, for up
        to ``window`` seconds or until the reply came (then the caller's wait
        on the slot returns at once). Each delivery read is taken as the
        serve task takes it (:meth:`_take`): a reply goes to its requester,
        anything else is queued for the serve task. On leaving, the serve
        task is woken if anything is left for it: this task's checks of
        ``EVENTS`` reset the FD it may sleep on."""
        self._polling = True
        over = self._poll_over = trio.Event()
        end = _now() + window
        try:
            done = slot[0]
            while not done.is_set() and _now() < end:
                await trio.lowlevel.checkpoint()
                while not done.is_set() and self._pending_in():
                    frames = self._recv_now()
                    if frames is None:
                        break
                    self.counters["polled_in"] += 1
                    item = self._take(frames)
                    if item is not None:
                        self._deferred.append(item)
        finally:
            self._polling = False
            over.set()
            self._active = _now()
            if self._sleep is not None and (self._deferred or (not self._closed and self._pending_in())):
                self._sleep.cancel()

    def _sender(self, ident: bytes) -> str:
        """The name a routing id (``name#incarnation``) claims."""
        name = self._senders.get(ident)
        if name is None:
            name = ident.split(b"#", 1)[0].decode("utf-8", "replace")
            if len(self._senders) >= 4 * _LEARNED_MAX:
                self._senders.clear()
            self._senders[ident] = name
        return name

    def _open(self, frames: list[bytes]) -> tuple[str, bytes]:
        """The sender's name and the message (or batch) of an inbox delivery,
        its MAC checked (if this party has keys) before anything of it is parsed.

        Raises:
            AuthError: its MAC does not verify as its claimed sender's, or it is a replay.
            ProtocolError: not one frame.
        """
        if len(frames) != 2:
            raise ProtocolError("bad_message", f"expected one frame per message, got {len(frames) - 1}")
        ident, frame = frames
        sender = self._sender(ident)
        if self._auth is not None:
            frame = self._auth.open(sender, frame)  # before parsing anything of it
        return sender, frame

    def _decoded(self, sender: str, ident: bytes, frame: bytes) -> Message:
        """``frame`` decoded, its ``src`` checked against the name it came from."""
        msg = decode(frame)
        if sender != msg.src:
            self.counters["spoofed"] += 1
            raise ProtocolError("bad_source", f"message claims src {msg.src!r} but came from {ident[:64]!r}", "src")
        return msg

    def parse(self, frames: list[bytes]) -> Message:
        """Check an inbox delivery's MAC (if this party has keys), decode it and
        check its claimed source (a delivery of one message, not a batch).

        Raises:
            AuthError: its MAC does not verify as its claimed sender's, or it is a replay.
            ProtocolError: malformed, or ``src`` differs from the sending socket's id.
        """
        sender, frame = self._open(frames)
        return self._decoded(sender, frames[0], frame)

    async def serve(self, handler: Handler, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Read the inbox forever: replies wake their requester; everything
        else goes to ``handler`` in arrival order. A malformed message is
        counted and answered with ``error``; it never stops the loop."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expire)
            nursery.start_soon(self._flusher)
            self._serving = True
            try:
                await self._serve(handler, task_status)
            finally:
                self._serving = False
                for slot in self._pending.values():  # nobody reads their replies any more
                    slot[0].set()
                nursery.cancel_scope.cancel()

    def _take(self, frames: list[bytes]) -> tuple[list[bytes], Message | ProtocolError] | None:
        """Count and parse one inbox delivery. A reply is given to its
        requester here (None returned), a frame that fails authentication is
        dropped and counted (None returned); anything else is returned for
        the handler, with the frames (a malformed one: with its error)."""
        counters = self.counters
        counters["msgs_in"] += 1
        if not frames:
            return None  # refused by _recv_now (counted there)
        try:
            sender, frame = self._open(frames)
            if frame[:1] == BATCH:  # several messages, authenticated as one
                self._take_batch(frames[0], sender, frame)
                return None
            msg = self._decoded(sender, frames[0], frame)
        except ProtocolError as exc:
            counters["bad_in"] += 1
            return frames, exc
        except AuthError as exc:
            # dropped unanswered: an unauthenticated party learns nothing, not even an error
            counters["auth_failed"] += 1
            self.auth_failures[exc.reason] = self.auth_failures.get(exc.reason, 0) + 1
            if counters["auth_failed"] & (counters["auth_failed"] - 1) == 0:  # 1, 2, 4, 8 ...: a flood logs little
                log.warning("%s: dropped a frame from %r (%s): %s (%d so far)", self.name, frames[0][:80],
                            exc.reason, exc, counters["auth_failed"])
            if self.recorder.on:
                self.recorder("auth", "drop", src=self._sender(frames[0]), reason=exc.reason)
            return None
        return self._delivered(frames, msg)

    def _delivered(self, frames: list[bytes], msg: Message) -> tuple[list[bytes], Message] | None:
        """A reply given to its requester (None), or anything else with its frames, for the handler."""
        if self.recorder.on:
            self.recorder("msg", "recv", kind=msg.kind, src=msg.src, seq=msg.seq, flow=msg.flow, fseq=msg.fseq,
                          size=len(frames[1]))
        if msg.corr is None:
            return frames, msg
        slot = self._pending.get(msg.corr)
        if slot is not None:
            slot[1] = msg
            slot[0].set()
        else:
            self.counters["late_replies"] += 1
        return None

    def _take_batch(self, ident: bytes, sender: str, batch: bytes) -> None:
        """Take each message of a batch its MAC let in (:meth:`_take`), in
        order: what is for the handler is queued for the serve task, which
        reads that queue before the socket.

        Raises:
            ProtocolError: its header does not describe it (nothing of it is taken).
        """
        parts = split_batch(batch)
        counters = self.counters
        counters["batches_in"] += 1
        counters["batched_in"] += len(parts)
        counters["msgs_in"] += len(parts) - 1
        deferred = self._deferred
        for part in parts:
            frames = [ident, part]
            try:
                msg = self._decoded(sender, ident, part)
            except ProtocolError as exc:
                counters["bad_in"] += 1
                deferred.append((frames, exc))
                continue
            item = self._delivered(frames, msg)
            if item is not None:
                deferred.append(item)

    async def _serve(self, handler: Handler, task_status) -> None:
        task_status.started()
        counters = self.counters
        deferred = self._deferred
        burst = 0
        probe = False  # ask EVENTS before a receive: nothing says a message is there
        while True:
            # every message that is ready is handled in this wake-up; a
            # checkpoint every _BURST of them lets the other tasks run. What
            # a polling requester queued comes first (it arrived first). After
            # the first message of a wake-up, EVENTS is asked before trying a
            # receive: a request or a reply usually comes alone, and a receive
            # that finds nothing costs 3 times as much (pyzmq raises Again)
            if deferred:
                item = deferred.popleft()
            else:
                frames = None if (probe or burst == 1) and not self._pending_in() else self._recv_now()
                probe = False
                if frames is None:
                    self._busy = False
                    if burst:
                        burst = 0
                        self._active = _now()  # traffic just now: poll a while before sleeping
                    probe = await self._wait_inbox()
                    continue
                item = self._take(frames)
            self._busy = True
            burst += 1
            if burst >= _BURST:
                burst = 0
                await trio.lowlevel.checkpoint()
            if item is None:
                continue  # a reply, handed to its requester
            frames, msg = item
            if isinstance(msg, ProtocolError):
                await self._complain(frames, msg)
                continue
            if msg.reply_to:
                self.learn(msg)
            if msg.kind == MOVED and self._curve is not None and msg.src == self._curve.authority:
                self.moved(msg.body["node"], msg.body["endpoint"])
                await self.reply(msg, "ok", {})
                continue
            try:
                await handler(msg)
            except ProtocolError as exc:
                counters["bad_in"] += 1
                if msg.src in self.directory:  # else (no reply_to) there is nobody to tell: drop
                    await self.reply(msg, "error", error_body(exc, ref=msg.kind))
            except Exception as exc:  # a handler's bug: answer it, count it, keep serving
                counters["handler_errors"] += 1
                log.exception("%s: handler for %s from %s failed", self.name, msg.kind, msg.src)
                if msg.src in self.directory:
                    await self.reply(msg, "error", error_body(exc, ref=msg.kind))

    async def _complain(self, frames: list[bytes], exc: ProtocolError) -> None:
        """Tell the sender (if we know it by its routing id) what was wrong.

        Rate-limited per sender: two parties that both garble their frames
        must not ping-pong error replies forever."""
        if not frames:
            return
        try:
            sender = frames[0].split(b"#", 1)[0].decode()
        except UnicodeDecodeError:
            return
        now = trio.current_time()
        window, count = self._complaints.get(sender, (now, 0))
        if now - window >= 1.0:
            window, count = now, 0
        self._complaints[sender] = (window, count + 1)
        if count >= _COMPLAINTS_PER_S:
            return
        log.warning("%s: bad message from %s: %s", self.name, sender, exc)
        if sender in self.directory:
            self.send_nowait(self.make(sender, "error", error_body(exc)))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for peer in self._peers.values():
            if peer.batch is not None:
                try:
                    self._flush_nowait(peer)  # a last burst goes if its link takes it
                except (ProtocolError, zmq.ZMQError):
                    pass
            peer.sock.close(linger=0)
        self._peers.clear()
        self._inbox.close(linger=0)
        path = ipc_path(self.endpoint)
        if path is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "Party":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
