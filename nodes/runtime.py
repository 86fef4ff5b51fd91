"""The node runtime: what every process of the machine is built on (DESIGN.md §2).

A node binds its inbox, connects to peers lazily by name, dispatches messages
by kind to ``on_<kind>`` methods, answers ``ping``/``stats``/``shutdown``,
sends heartbeats to the orchestrator, keeps per-flow sequence numbers, and
implements the route-change protocol generically:

- ``route_pause``  — as the *sender* of a flow: stop emitting, buffer what the
  node emits meanwhile ("interrupts disabled"), report the last ``fseq`` sent;
- ``route_drain``  — as the *old receiver*: answer once everything up to that
  ``fseq`` has been consumed;
- ``route_install`` — everyone: the new table (epoch + 1); a new receiver
  learns which ``fseq`` comes next on the flows now routed to it;
- ``route_resume`` — as the sender: flush the buffer to the new receiver
  ("interrupts re-enabled"), in order, then emit directly again;
- ``route_switch`` — as the sender: the four steps run by the sender itself
  (the orchestrator's usual way): pause, ask the old receiver to drain
  (the request travels on the flow's own link, behind its last message),
  then switch and flush, the flush led by ``route_next`` (the next ``fseq``,
  for the new receiver). The senders' pause is then one round trip to the
  old receiver, not three to the orchestrator and back.

So no message of a flow is lost, duplicated or reordered across a change; a
receiver that still sees a gap or a duplicate counts it (``stats``).

Flows are also *reliable* (docs/reliability.md): a receiver consumes a flow's
messages strictly in ``fseq`` order (a duplicate is dropped, one after a gap
is held until the gap is filled) and acknowledges what it consumed,
cumulatively and batched (``flow_ack``, at most one per sender every
``ACK_DELAY``, naming what is missing after a gap); a sender keeps what is
not acknowledged yet (at most ``window`` messages a flow, then its emitter
waits) and sends again what the receiver names missing, what the answer to
a probe shows lost (a probe goes when nothing was acknowledged for ``RTO``,
doubling up to ``RTO_MAX``), and everything, led by a ``route_next`` saying
where the flow stands, when the receiver shows a new incarnation (it
restarted). Every message carries its sender's incarnation (``inc``), so a
receiver tells a restarted sender's new numbering from a late copy. A
request on a flow goes again every ``RTO`` until answered; the receiver
keeps its last reply per flow and sends it again for a copy.

Every receiver also records the *history* of what it accepted on each flow,
as runs of consecutive ``fseq`` (``stats`` → ``flows_in[flow]["runs"]``; a
node process writes its last history to ``<run_dir>/<name>.flows.json`` when
it stops), so an audit can prove from the records of all receivers together
that every message a sender numbered was delivered exactly once
(``orchestrator/flowaudit.py``), even across route changes whose new
receiver could not know which ``fseq`` to expect.

A node kind subclasses :class:`Node`, adds ``on_<kind>`` handlers (one
method for several kinds: :func:`handles`) and
``async def work(nursery)`` for its own tasks, and its ``__main__`` calls
:func:`main`. Handlers run inline in arrival order (so flows stay ordered) and
must not wait for replies; a handler that needs to make requests is marked
with :func:`spawned` and runs as its own task in the node's nursery.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Collection, Mapping

import msgpack
import trio

from nodes.options import Option, validate
from protocol import authz, logs, sched
from protocol.auth import keyring_from_config
from protocol.constants import ORCHESTRATOR
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.faults import Injector
from protocol.messages import Message, decode, encode, error_body
from protocol.routes import RouteTable, flow_sender
from protocol.transport import REQUEST_FAILURES, Party, gather

log = logging.getLogger("hwemu.node")


@dataclass
class NodeConfig:
    """What the launcher hands a node (as a JSON file, ``--config``)."""

    name: str
    kind: str
    endpoint: str
    directory: dict[str, str]
    routes: dict[str, Any] = field(default_factory=lambda: {"epoch": 0, "routes": {}})
    orchestrator: str | None = ORCHESTRATOR
    options: dict[str, Any] = field(default_factory=dict)
    heartbeat: float = 1.0
    run_dir: str = "."
    auth: dict[str, Any] | None = None  # keys (protocol/auth.py node_auth) and node kinds; None: no MAC

    @classmethod
    def load(cls, path: str) -> "NodeConfig":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return cls(**data)


def spawned(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """Mark a handler to run as its own task (it may await replies)."""
    fn.spawned = True  # type: ignore[attr-defined]
    return fn


def handles(*kinds: str) -> Callable[[Callable[..., Awaitable[None]]], Callable[..., Awaitable[None]]]:
    """Make a method the handler of each message kind in ``kinds``, as an
    ``on_<kind>`` method is of its kind: one body for the kinds a node treats
    alike (a device's read, write and flush commands) instead of a one-line
    ``on_<kind>`` forwarder each."""
    def mark(fn: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        fn.handles = kinds  # type: ignore[attr-defined]
        return fn
    return mark


ACK_DELAY = 0.02  # s a receiver gathers acknowledgements before it sends them (one message per sender)
RTO = 0.2  # s without an acknowledgement before a sender sends its unacknowledged messages again
RTO_MAX = 1.0  # the retransmission timeout doubles up to this while nothing is acknowledged
RESYNC_MIN = 0.02  # s between two retransmissions of a flow prompted by gaps (a reordering reports many)
RETRANSMIT_MAX = 1024  # messages one retransmission sends at most (the rest on the next one)
ACK_EVERY = 256  # messages consumed on a flow that are acknowledged without waiting for ACK_DELAY
HOLD = 1024  # messages past a gap a receiver holds per flow (further ones are dropped: they come again)
HOLES_MAX = 256  # missing fseq an acknowledgement names per flow
DRAIN_RETRY = 1.0  # s before a route change's drain is asked again (its request or its answer may be lost)


class _OutFlow:
    __slots__ = ("fseq", "paused", "paused_at", "buffer", "flushing", "resumed",
                 "acked", "unacked", "rto", "progress", "resynced", "room", "resent")

    def __init__(self) -> None:
        self.fseq = 0  # last fseq assigned
        self.paused = False
        self.paused_at = 0.0  # perf_counter when the pause began
        self.flushing = False
        self.buffer: deque[Message] = deque()
        self.resumed = trio.Event()
        self.acked = 0  # every fseq up to this one was consumed by a receiver
        # sent, not acknowledged yet, in fseq order: (fseq, receiver, encoded frame). Frames, not
        # Messages: thousands of live Messages (each with its body dict) cost the garbage collector
        # more than the rest of a send; bytes are not even looked at
        self.unacked: deque[tuple[int, str, bytes]] = deque()
        self.rto = RTO
        self.progress = 0.0  # trio time of the last acknowledgement (or first send after none was due)
        self.resynced = 0.0  # trio time of the last retransmission
        self.room: trio.Event | None = None  # set when acknowledgements free the window; only while one waits
        self.resent: dict[int, float] = {}  # fseq -> trio time it was last sent again (until acknowledged)

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.paused_at = time.perf_counter()


TRACE_RING = 65536  # events a node's trace ring keeps by default
TRACE_RING_MAX = 1 << 22
TRACE_PAGE_BYTES = 1 << 20  # a trace_dump page: a quarter of MAX_FRAME, however big its events

HISTORY_RUNS = 256  # runs of consecutive fseq a receiver records per flow (more means gaps: the audit fails anyway)


class _InFlow:
    __slots__ = ("expected", "consumed", "gaps", "dups", "waiter", "runs", "runs_dropped", "src_inc",
                 "reply", "held", "probed", "ack_upto")

    def __init__(self) -> None:
        self.expected: int | None = None  # next fseq; None until known (then 1 unless the sender says)
        self.src_inc: int | None = None  # the incarnation of the sender whose numbering is followed
        self.reply: tuple[int, Message] | None = None  # (fseq, reply) of the last request answered
        self.held: dict[int, Message] = {}  # arrived after a gap, consumed once the gap is filled
        self.probed = 0  # the sender asked where the flow stands, having sent up to this fseq (0: it did not)
        self.ack_upto = 0  # what the last acknowledgement said was consumed
        self.consumed = 0
        self.gaps = 0
        self.dups = 0
        self.waiter: trio.Event | None = None  # set when `consumed` moves; only while a drain waits
        self.runs: list[list[int]] = []  # accepted fseq as [first, last] runs, in arrival order
        self.runs_dropped = 0

    def next_is(self, n: int) -> None:
        """Its sender says ``fseq`` ``n`` comes next on this flow."""
        if n == 1:
            self.forget_runs()
        self.expected = n
        self.consumed = n - 1
        self.held.clear()

    def holes(self) -> tuple[list[int], int]:
        """What is missing below the highest fseq held (at most ``HOLES_MAX``), and that fseq."""
        top = max(self.held)
        missing = []
        for n in range(self.expected, top):
            if n not in self.held:
                missing.append(n)
                if len(missing) >= HOLES_MAX:
                    break
        return missing, top

    def forget_runs(self) -> None:
        """Its sender (re)starts numbering the flow: what was recorded was a previous life's."""
        self.runs = []
        self.runs_dropped = 0

    def record(self, fseq: int) -> None:
        runs = self.runs
        if runs and runs[-1][1] + 1 == fseq:
            runs[-1][1] = fseq
        elif len(runs) < HISTORY_RUNS:
            runs.append([fseq, fseq])
        else:
            self.runs_dropped += 1

    async def wait_consumed(self, upto: int) -> None:
        while self.consumed < upto:
            if self.waiter is None:
                self.waiter = trio.Event()
            await self.waiter.wait()


class Node:
    """Base class of every node kind."""

    kind = "base"
    pause_buffer = 4096  # messages a paused flow buffers before its emitter waits
    window = 8192  # messages a flow keeps for retransmission before its emitter waits for acknowledgements
    short_slice = True  # takes the time slice of HWEMU_SLICE_US (protocol/sched.py); False: always the kernel's
    OPTIONS: Mapping[str, Option] = {}  # the kind's options (nodes/options.py), checked before its __init__ reads them

    @classmethod
    def settle_options(cls, name: str, options: dict[str, Any]) -> dict[str, Any]:
        """The options once each passed its own check: a kind whose options depend
        on each other overrides this (raising :class:`~nodes.errors.OptionError`)."""
        return options

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.options = self.settle_options(cfg.name, validate(self.kind, cfg.name, self.OPTIONS, cfg.options))
        self.party = Party(cfg.name, cfg.endpoint, cfg.directory,
                           auth=keyring_from_config(cfg.name, cfg.auth) if cfg.auth else None)
        # trace ring and fault history, both off until asked for; the
        # transport's: it records every message in and out
        self.recorder = self.party.recorder
        self._trace_dump: list[list[Any]] | None = None  # the events of the trace stopped last, for trace_dump
        self.routes = RouteTable.from_wire(cfg.routes)
        self.party.epoch = self.routes.epoch
        # during a route change, the table on its other side (the new one before this node's
        # own switch, the old one after): until the change ends, what either routes is
        # accepted (authz, and a kind's own checks through routed_to)
        self.transition: RouteTable | None = None
        # who may ask what (protocol/authz.py), judged before any handler runs; None without keys
        self._authz = authz.context_from_config(cfg.name, self.routes, cfg.auth, cfg.orchestrator)
        self.forbidden_by: dict[str, int] = {}  # rule -> requests it refused
        self.out_flows: dict[str, _OutFlow] = {}
        self.in_flows: dict[str, _InFlow] = {}
        self.state = "starting"
        self.started = time.monotonic()
        self.nursery: trio.Nursery | None = None
        self._handlers: dict[str, Callable[[Message], Awaitable[None]]] = {}
        for attr in dir(type(self)):
            if attr.startswith("on_"):
                self._handlers[attr[3:]] = getattr(self, attr)
            elif callable(fn := getattr(type(self), attr, None)) and hasattr(fn, "handles"):
                for kind in fn.handles:
                    self._handlers[kind] = getattr(self, attr)
        self._spawns: dict[str, bool] = {}  # kind -> its handler runs as its own task (looked up once)
        # reliable flows: acknowledgements due (flow -> sender), the flows with
        # unacknowledged messages, the incarnation each receiver last showed
        self._acks_due: dict[str, str] = {}
        self._ack_kick = trio.Event()
        self._ack_urgent = False
        self._ack_now = trio.Event()
        self._unacked: set[str] = set()
        self._retx_kick = trio.Event()
        self._peer_inc: dict[str, int] = {}
        self._drain_waits: dict[tuple, tuple[tuple[int, int], trio.CancelScope]] = {}  # (src, upto) -> (order, wait)
        self._drains_superseded: set[trio.CancelScope] = set()
        # flow -> (receiver, its new incarnation, what its previous life had acknowledged), noted
        # when an acknowledgement shows the receiver restarted (its driver may re-issue from there)
        self.receiver_restarts: dict[str, tuple[str, int, int]] = {}
        # requests on flows awaiting their reply: seq -> [request, trio time last sent, timeout]
        self._open_requests: dict[int, list] = {}
        self._dispatching = False  # the inbox task runs a handler: it must never wait for acknowledgements
        self._releasing = False  # the inbox task consumes held messages of a flow whose gap was filled
        self.party.on_flow_reply = self._keep_reply
        self.fault_injector = None  # a protocol.faults.Injector while a transport fault is set
        self.kind_faults: dict[str, Any] = {}  # id -> a fault of the kind's own types (its fault_<type>)
        self.flow_counters = {"retransmits": 0, "resyncs": 0, "acks_out": 0, "acks_in": 0, "window_full": 0}

    # -- life cycle -------------------------------------------------------------

    async def run(self) -> None:
        """The node's whole life: one nursery with the inbox, heartbeat and work tasks."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                rec = self.recorder
                if rec.on:  # a history's lives: what follows is this incarnation's
                    rec("node", "start", kind=self.kind, pid=os.getpid(), inc=self.party.incarnation)
                await nursery.start(self.party.serve, self._dispatch)
                nursery.start_soon(self._signals)
                nursery.start_soon(self._acknowledger)
                nursery.start_soon(self._retransmitter)
                await self.setup()
                self.state = "running"
                log.info("%s (%s) running, pid %d, inbox %s", self.name, self.kind, os.getpid(), self.cfg.endpoint)
                if self.cfg.orchestrator and self.cfg.orchestrator in self.party.directory:
                    self.party.send_nowait(self.party.make(
                        self.cfg.orchestrator, "ready",
                        {"kind": self.kind, "pid": os.getpid(), "endpoint": self.cfg.endpoint,
                         "incarnation": self.party.incarnation}))
                    nursery.start_soon(self._heartbeats)
                await self.work(nursery)
        finally:
            self.state = "stopped"
            log.info("%s stopping", self.name)
            if self.recorder.on:  # a life that ends without this line was killed
                self.recorder("node", "stop", inc=self.party.incarnation)
            await self.teardown()
            self.party.close()
            self.write_history()
            self.recorder.close_history()
            self.leave_trace()

    history_path: str | None = None  # set by main(): where a node process leaves its flow history

    def leave_trace(self) -> None:
        """A node that stops while a trace runs (or before it was read out)
        leaves its ring in ``<run_dir>/trace/<name>.<pid>.msgpack``: the
        orchestrator's ``trace save`` merges it with the rings of the nodes
        still running (a VMM unloaded before the save is on the trace too).
        A SIGKILLed node leaves nothing."""
        events = self.recorder.snapshot() if self.recorder.tracing else self._trace_dump
        if not events or self.history_path is None:
            return
        folder = os.path.join(self.cfg.run_dir, "trace")
        path = os.path.join(folder, f"{self.name}.{os.getpid()}.msgpack")
        try:
            os.makedirs(folder, exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                f.write(msgpack.packb({"node": self.name, "kind": self.kind, "pid": os.getpid(),
                                       "incarnation": self.party.incarnation, "dropped": self.recorder.dropped,
                                       "events": [list(e) for e in events]}, default=repr))
            os.replace(path + ".tmp", path)
        except OSError as exc:  # a full disk must not turn a clean stop into a crash
            log.warning("%s: cannot leave its trace in %s: %s", self.name, path, exc)

    def flow_history(self) -> dict[str, Any]:
        """What this node sent (last fseq per flow) and accepted (runs per flow), for an audit."""
        return {"flows_out": {f: o.fseq for f, o in self.out_flows.items()},
                "flows_in": {f: {"runs": i.runs, "runs_dropped": i.runs_dropped, "gaps": i.gaps, "dups": i.dups}
                             for f, i in self.in_flows.items()}}

    def write_history(self) -> None:
        if self.history_path is None:
            return
        tmp = f"{self.history_path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(self.flow_history(), f)
            os.replace(tmp, self.history_path)
        except OSError as exc:  # a full disk must not turn a clean stop into a crash
            log.warning("%s: cannot write flow history %s: %s", self.name, self.history_path, exc)

    async def setup(self) -> None:
        """Kind-specific start-up before the node reports ready (override)."""

    async def work(self, nursery: trio.Nursery) -> None:
        """Start the kind's own tasks in ``nursery`` (override)."""

    async def teardown(self) -> None:
        """Kind-specific clean-up; runs even on cancellation (override; keep it quick)."""

    def stop(self) -> None:
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
            async for _ in sigs:
                self.stop()
                return

    async def _heartbeats(self) -> None:
        orch = self.cfg.orchestrator
        while True:
            await trio.sleep(self.cfg.heartbeat)
            self.party.send_nowait(self.party.make(orch, "heartbeat", {
                "kind": self.kind, "pid": os.getpid(), "state": self.state,
                "uptime": time.monotonic() - self.started, "stats": self.stats()}))

    def stats(self) -> dict[str, Any]:
        """Counters for ``status`` (override and extend with ``super().stats()``)."""
        s: dict[str, Any] = dict(self.party.counters)
        s["forbidden"] = sum(self.forbidden_by.values())
        s["forbidden_by"] = dict(self.forbidden_by)
        s["auth_failures"] = dict(self.party.auth_failures)
        s["state"] = self.state
        s["epoch"] = self.routes.epoch
        s["tracing"] = self.recorder.tracing  # its trace ring is on (hwemu trace start)
        s["flows_out"] = {f: o.fseq for f, o in self.out_flows.items()}
        s["flows_in"] = {f: {"consumed": i.consumed, "gaps": i.gaps, "dups": i.dups, "runs": i.runs,
                             "runs_dropped": i.runs_dropped} for f, i in self.in_flows.items()}
        s["flows_acked"] = {f: o.acked for f, o in self.out_flows.items()}
        s["flows_unacked"] = {f: len(o.unacked) for f, o in self.out_flows.items() if o.unacked}
        s.update(self.flow_counters)
        if self.fault_injector is not None and self.fault_injector.faults:
            s["faults"] = self.fault_injector.describe()
        return s

    # -- dispatch ---------------------------------------------------------------

    def handler(self, kind: str) -> Callable[[Message], Awaitable[None]] | None:
        """The handler of message kind ``kind`` (``None``: this node does not handle it)."""
        return self._handlers.get(kind)

    async def _dispatch(self, msg: Message) -> None:
        if self._authz is not None:
            rule = authz.CHECKED.get(msg.kind)
            if rule is not None and not rule.allows(msg, self._authz):
                self._refuse(msg)
        handler = self._handlers.get(msg.kind)
        flow = msg.flow
        if flow is not None:
            inflow = self.in_flows.get(flow)
            if inflow is None or inflow.expected != msg.fseq or inflow.src_inc != msg.inc:
                if not self._accept(msg):  # else in sequence from the sender followed: the common case
                    return
                inflow = self.in_flows[flow]
            else:
                inflow.expected = msg.fseq + 1
                inflow.record(msg.fseq)
            if self.recorder.on:
                self._record_deliver(msg)
        if handler is None:
            if msg.kind in ("ok", "error", "pong", "stats_reply"):
                return  # an unsolicited reply: nothing to do, never answer it
            raise ProtocolError("unhandled_kind", f"node {self.name} ({self.kind}) does not handle {msg.kind!r}",
                                "kind")
        spawns = self._spawns.get(msg.kind)
        if spawns is None:
            spawns = self._spawns[msg.kind] = bool(getattr(handler, "spawned", False))
        if spawns:
            self.nursery.start_soon(self._guarded, handler, msg)
        else:
            self._dispatching = True
            try:
                await handler(msg)
            finally:
                self._dispatching = False
        if flow is not None:
            inflow.consumed = msg.fseq
            if inflow.waiter is not None:
                inflow.waiter.set()
                inflow.waiter = None
            if flow not in self._acks_due:
                self._ack_soon(flow, msg.src)
            elif msg.fseq - inflow.ack_upto >= ACK_EVERY and not self._ack_urgent:
                self._ack_urgent = True  # a fast flow: acknowledged now, so its sender keeps little
                self._ack_now.set()
                self._ack_kick.set()
            if inflow.held and not self._releasing:  # the gap before what is held may be filled now
                self._releasing = True  # (a loop here, not a recursion as deep as what is held)
                try:
                    while (nxt := inflow.held.pop(inflow.expected, None)) is not None:
                        await self._dispatch(nxt)
                finally:
                    self._releasing = False

    def _record_deliver(self, msg: Message) -> None:
        rec = self.recorder
        rec("flow", "deliver", flow=msg.flow, fseq=msg.fseq, src=msg.src, inc=msg.inc)
        if msg.flow.startswith("irq:"):
            rec("irq", "deliver", flow=msg.flow)

    def _refuse(self, msg: Message) -> None:
        """Count a request its sender may not make and refuse it (before its flow's
        accounting: a refused message is no part of the flow).

        Raises:
            ProtocolError: ``forbidden``, naming the rule (the serve loop answers it).
        """
        rule = authz.rule_for(msg.kind)
        n = self.forbidden_by[rule.name] = self.forbidden_by.get(rule.name, 0) + 1
        detail = authz.refusal(msg, self._authz)
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th ... of a rule: a flood logs little
            log.warning("%s: %s (flow %s, %d so far by this rule)", self.name, detail, msg.flow, n)
        if self.recorder.on:
            self.recorder("authz", "forbidden", kind=msg.kind, src=msg.src, rule=rule.name)
        raise ProtocolError("forbidden", detail, "src")

    async def _guarded(self, handler: Callable[[Message], Awaitable[None]], msg: Message) -> None:
        try:
            await handler(msg)
        except Exception as exc:  # a bug in one request must not take the node down
            if not isinstance(exc, ProtocolError):
                log.exception("%s: handler for %s failed", self.name, msg.kind)
            if msg.src in self.party.directory:  # else (no reply_to) there is nobody to tell
                await self.party.reply(msg, "error", error_body(exc, ref=msg.kind))

    def _accept(self, msg: Message) -> bool:
        """Per-flow sequence check, off the common path: the sender's
        incarnation first (a new one numbers the flow from 1 again; an older
        one's messages are late copies), then the order: only the expected
        ``fseq`` is consumed. A duplicate is dropped (and acknowledged again:
        the sender did not hear the first acknowledgement); a message after a
        gap is held (up to ``HOLD`` past it) and the acknowledgement names
        what is missing, which the sender sends again."""
        flow = msg.flow
        if msg.src != flow_sender(flow):  # only a flow's own sender may number it (a stray or a forgery)
            raise ProtocolError("foreign_flow", f"{msg.src} is not the sender of flow {flow}", "flow")
        inflow = self.in_flows.get(flow)
        if inflow is None:
            inflow = self.in_flows[flow] = _InFlow()
        inc = msg.inc
        if inc != inflow.src_inc and inc is not None:
            if inflow.src_inc is None:
                inflow.src_inc = inc  # the first sender heard on this flow (it may have said where it stands)
            elif inc > inflow.src_inc:  # the sender restarted: its numbering starts again
                inflow.src_inc = inc
                inflow.next_is(1)
            else:
                inflow.dups += 1
                return False  # a late copy from a previous life of the sender
        expected = inflow.expected
        if expected is None:
            expected = inflow.expected = 1
        if msg.fseq != expected:
            rec = self.recorder
            if msg.fseq < expected:
                inflow.dups += 1
                if rec.on:
                    rec("flow", "dup", flow=flow, fseq=msg.fseq)
                if inflow.reply is not None and inflow.reply[0] == msg.fseq:
                    self.party.send_nowait(inflow.reply[1])  # its requester missed the reply: again
            elif msg.fseq in inflow.held:
                inflow.dups += 1
                if rec.on:
                    rec("flow", "dup", flow=flow, fseq=msg.fseq)
            else:
                inflow.gaps += 1
                if msg.fseq < expected + HOLD:
                    inflow.held[msg.fseq] = msg  # consumed once what is missing before it comes
                if rec.on:
                    rec("flow", "gap", flow=flow, fseq=msg.fseq, expected=expected)
            self._ack_soon(flow, msg.src)
            return False
        inflow.expected = msg.fseq + 1
        inflow.record(msg.fseq)
        return True

    # -- reliable flows: acknowledgements and retransmission ----------------------

    def _keep_reply(self, request: Message, reply: Message) -> None:
        """Keep the reply to a request on a flow, for a retransmitted copy of it.
        Only a request of the flow's own sender counts: the error a forged one
        gets (``foreign_flow``) must not replace the reply its sender may still ask for."""
        inflow = self.in_flows.get(request.flow)
        if inflow is not None and request.src == flow_sender(request.flow):
            inflow.reply = (request.fseq, reply)

    def _ack_soon(self, flow: str, src: str) -> None:
        """Have ``flow`` acknowledged to ``src`` within ``ACK_DELAY``."""
        self._acks_due[flow] = src
        self._ack_kick.set()

    async def _acknowledger(self) -> None:
        """Send the acknowledgements due, one ``flow_ack`` per sender, every
        ``ACK_DELAY`` at most while there are any (a gap: at once)."""
        party = self.party
        while True:
            await self._ack_kick.wait()
            self._ack_kick = trio.Event()
            # (a gap waits too: what a reordering held back comes meanwhile, and is not sent again)
            if not self._ack_urgent and not any(self.in_flows[f].probed for f in self._acks_due):
                with trio.move_on_after(ACK_DELAY):  # a fast flow's ACK_EVERY cuts the wait short
                    await self._ack_now.wait()
                self._ack_now = trio.Event()
            self._ack_urgent = False
            due, self._acks_due = self._acks_due, {}
            per_src: dict[str, dict[str, Any]] = {}
            for flow, src in due.items():
                inflow = self.in_flows[flow]
                body = per_src.setdefault(src, {"acks": {}, "inc": party.incarnation})
                body["acks"][flow] = inflow.ack_upto = inflow.consumed
                if inflow.src_inc is not None:  # whose numbering it counts (a sender's new life ignores it)
                    body.setdefault("of", {})[flow] = inflow.src_inc
                if inflow.held:
                    missing, top = inflow.holes()
                    body.setdefault("gap", []).append(flow)
                    body.setdefault("holes", {})[flow] = missing
                    body.setdefault("top", {})[flow] = top
                if inflow.probed:
                    body.setdefault("probe", {})[flow] = inflow.probed
                    inflow.probed = 0
            for src, body in per_src.items():
                if src not in party.directory:
                    continue
                try:
                    if party.send_nowait(party.make(src, "flow_ack", body)):
                        self.flow_counters["acks_out"] += 1
                except ProtocolError:
                    pass

    async def on_flow_ack(self, msg: Message) -> None:
        """A receiver acknowledges flows (cumulatively). Not answered."""
        self.flow_counters["acks_in"] += 1
        src = msg.src
        inc = msg.body["inc"]
        known = self._peer_inc.get(src)
        restarted = known is not None and inc > known
        if known is None or inc > known:
            self._peer_inc[src] = inc
        elif inc < known:
            return  # from a previous life of the receiver
        holes = msg.body.get("holes", {})
        tops = msg.body.get("top", {})
        probed = msg.body.get("probe", {})
        of = msg.body.get("of", {})
        mine = self.party.incarnation
        now = trio.current_time()
        for flow, upto in msg.body["acks"].items():
            out = self.out_flows.get(flow)
            if out is None or src != (out.unacked[0][1] if out.unacked else self.routes.get(flow)):
                continue  # not this flow's receiver (a stray, a late one, or a forgery): it cannot say
            if of.get(flow, mine) < mine:
                # counted in this sender's previous life's numbering: built before this life's first
                # message reached the receiver. Taken for this life's, it acknowledged what was never
                # delivered, or (past this life's last fseq) reset the receiver to #1, which then
                # delivered this life's first messages again (demo seed 1022 of --faults kill: a
                # restarted timer's ticks #1-#5 twice). This life's messages bring the receiver over
                continue
            if upto > out.fseq:  # it follows another numbering (this sender's previous life's)
                self._resync(out, flow, now, reset=True)
                continue
            self._acked(out, flow, upto, src)
            if restarted:  # the receiver lost its state: tell it where the flow stands, send it all again
                self.receiver_restarts[flow] = (src, inc, out.acked)
                self._resync(out, flow, now)
                continue
            missing = list(holes.get(flow, ()))
            if flow in probed and out.unacked:
                # the answer to a probe, which came behind everything sent before it (up to the
                # fseq it names): what the receiver neither consumed nor holds of that is lost
                missing.extend(range(max(upto, tops.get(flow, 0)) + 1, probed[flow] + 1))
            if missing and out.unacked:
                if missing[0] < out.unacked[0][0]:
                    # it misses what another receiver consumed: it does not know where the flow stands
                    if now - out.resynced >= RESYNC_MIN:
                        self._resync(out, flow, now)
                else:
                    self._resend(out, flow, missing, now)

    def _acked(self, out: _OutFlow, flow: str, upto: int, peer: str) -> None:
        """Every message of ``flow`` up to ``upto`` was consumed: forget it."""
        if upto <= out.acked:
            return
        out.acked = upto
        unacked = out.unacked
        while unacked and unacked[0][0] <= upto:
            unacked.popleft()
        if out.resent:
            out.resent = {n: t for n, t in out.resent.items() if n > upto}
        out.rto = RTO
        out.progress = trio.current_time()
        if not unacked:
            self._unacked.discard(flow)
        if out.room is not None:
            out.room.set()
            out.room = None
        if self.recorder.on:
            # a tail given up because its receiver died (abandon) was consumed by nobody: not an acknowledgement
            self.recorder("flow", "abandoned" if peer == "abandoned" else "acked", flow=flow, upto=upto, peer=peer)

    def _resync(self, out: _OutFlow, flow: str, now: float, reset: bool = False, upto: int | None = None) -> None:
        """Send ``flow``'s unacknowledged messages again, each to the receiver
        it went to, led by a ``route_next`` naming the first of them (a
        receiver that lost its state, or never heard where the flow stands,
        learns it; one that knows ignores it, unless ``reset``: it follows a
        numbering this sender never reached); up to fseq ``upto`` if given.
        Never waits: what a full link does not take goes at the next timeout."""
        out.resynced = now
        out.progress = now
        if not out.unacked:
            return
        self.flow_counters["resyncs"] += 1
        party = self.party
        rec = self.recorder
        led: set[str] = set()
        for i, (fseq, dst, frame) in enumerate(out.unacked):
            if i >= RETRANSMIT_MAX or (upto is not None and fseq > upto):
                break
            try:
                if dst not in led:
                    led.add(dst)
                    lead = {"next": {flow: fseq}, "inc": party.incarnation}
                    if reset:
                        lead["reset"] = True
                    if not party.send_nowait(party.make(dst, "route_next", lead)):
                        break
                if not party.send_nowait(decode(frame), frame):
                    break
            except ProtocolError:
                break
            self.flow_counters["retransmits"] += 1
            if rec.on:
                rec("flow", "retransmit", flow=flow, fseq=fseq, dst=dst, inc=party.incarnation)

    def _resend(self, out: _OutFlow, flow: str, missing: list[int], now: float) -> None:
        """Send again the messages of ``flow`` its receiver reports missing
        (each at most once per ``RESYNC_MIN``: reports overlap)."""
        unacked = out.unacked
        base = unacked[0][0]
        party = self.party
        rec = self.recorder
        resent = out.resent
        sent = 0
        for n in missing:
            i = n - base
            if not 0 <= i < len(unacked) or now - resent.get(n, -1.0) < RESYNC_MIN:
                continue
            fseq, dst, frame = unacked[i]
            if fseq != n or sent >= RETRANSMIT_MAX:
                break
            try:
                if not party.send_nowait(decode(frame), frame):
                    break
            except ProtocolError:
                break
            resent[n] = now
            sent += 1
            if rec.on:
                rec("flow", "retransmit", flow=flow, fseq=n, dst=dst, inc=party.incarnation)
        self.flow_counters["retransmits"] += sent
        out.progress = now

    def _probe(self, out: _OutFlow, flow: str, now: float) -> None:
        """Ask the receivers of ``flow``'s unacknowledged messages where the
        flow stands: a ``route_next`` with ``probe``, on the link behind those
        messages, which the receiver answers at once (so its answer covers
        all of them: what it did not consume is lost and goes again). Data is
        not sent again blindly: a receiver that is merely slow (descheduled,
        behind a burst) would get it twice."""
        out.progress = now
        mark = out.unacked[-1][0]  # the last one sent (out.fseq may be buffered by a pause)
        party = self.party
        for dst in {d for _, d, _ in out.unacked}:
            try:
                party.send_nowait(party.make(dst, "route_next", {"next": {flow: out.acked + 1},
                                                                  "inc": party.incarnation, "probe": mark}))
            except ProtocolError:
                pass

    async def _retransmitter(self) -> None:
        """The sender's timer: a flow whose oldest unacknowledged message waited
        ``rto`` is probed (:meth:`_probe`), and its ``rto`` doubles (up to ``RTO_MAX``)."""
        while True:
            if not self._unacked and not self._open_requests:
                await self._retx_kick.wait()
                self._retx_kick = trio.Event()
            await trio.sleep(RTO / 4)
            now = trio.current_time()
            for req in list(self._open_requests.values()):
                if now - req[1] >= req[2]:
                    req[1], req[2] = now, min(req[2] * 2, RTO_MAX)
                    try:
                        if self.party.send_nowait(req[0]):
                            self.flow_counters["retransmits"] += 1
                    except ProtocolError:
                        pass
            for flow in list(self._unacked):
                out = self.out_flows[flow]
                if not out.unacked:
                    self._unacked.discard(flow)
                elif now - out.progress >= out.rto:  # paused too: a drain may wait for a lost message
                    out.rto = min(out.rto * 2, RTO_MAX)
                    self._probe(out, flow, now)

    def _sent(self, out: _OutFlow, flow: str, msg: Message) -> bytes:
        """Keep ``msg`` (about to be sent on ``flow``) until it is acknowledged; its frame."""
        if not out.unacked:
            out.progress = trio.current_time()
            if flow not in self._unacked:
                self._unacked.add(flow)
                self._retx_kick.set()
        frame = encode(msg)
        out.unacked.append((msg.fseq, msg.dst, frame))
        if self.recorder.on:
            self.recorder("flow", "sent", flow=flow, fseq=msg.fseq, dst=msg.dst, inc=msg.inc)
        return frame

    async def _room(self, out: _OutFlow) -> None:
        """Wait while ``out``'s window is full (never in the inbox task, which
        reads the acknowledgements that free it)."""
        while len(out.unacked) >= self.window and not self._dispatching:
            self.flow_counters["window_full"] += 1
            if out.room is None:
                out.room = trio.Event()
            await out.room.wait()

    # -- emitting on flows --------------------------------------------------------

    def abandon(self, flow: str, to: Collection[str] | None = None) -> int:
        """Give up what ``flow`` sent and has not had acknowledged: its receiver
        died and what it held is void (docs/recovery.md: a CPU's trap for an OS
        that died must not reach that OS's next life). Nothing of it is sent
        again. ``to``: only what went to these receivers (up to the last message
        sent to one of them: a flow moved away from a dead VMM keeps what it
        sent to its new receiver since). Returns how many messages were given up."""
        out = self.out_flows.get(flow)
        if out is None:
            return 0
        upto = out.fseq if to is None else max((n for n, dst, _ in out.unacked if dst in to), default=0)
        given_up = sum(1 for n, _, _ in out.unacked if n <= upto)
        self._acked(out, flow, upto, "abandoned")
        return given_up

    def abandon_to(self, node: str) -> int:
        """:meth:`abandon` every flow whose unacknowledged messages went to
        ``node``, which died with its state (docs/recovery.md: a CPU's machine
        check). What that life consumed died with it; sent again, it would act
        on its next life: a ``cpu_resume`` of a context the machine check
        declared lost would run it again on the new CPU. What is sent from now
        on reaches the next life. Returns how many messages were given up."""
        flows = [f for f, out in self.out_flows.items() if any(dst == node for _, dst, _ in out.unacked)]
        return sum(self.abandon(f) for f in flows)

    async def on_flow_abandon(self, msg: Message) -> None:
        """The orchestrator: ``node`` died with its state, and every flow it received has
        moved away from it (the VMM, at an emergency devirtualization: docs/recovery.md).
        What was sent to it and not acknowledged is given up (:meth:`abandon` ``to``
        it), neither replayed to its next life, which refuses it, nor moved to the
        flow's new receiver, which the dead one may have acted for already. Reply
        ``ok`` {data: {flow: messages given up}}."""
        node = msg.body["node"]
        given_up = {f: n for f in list(self.out_flows) if (n := self.abandon(f, (node,)))}
        await self.party.reply(msg, "ok", {"data": given_up})

    async def emit(self, flow: str, kind: str, body: dict[str, Any], *, more: bool = False) -> int:
        """Send ``kind`` on a logical flow to whoever the route table names.

        ``more``: more messages follow at once (a stream's burst): they go out
        together as one batch, under one MAC (:meth:`protocol.transport.Party.send_msg`).

        While the flow is paused for a route change the message is buffered
        and goes out, in order, at resume; once ``pause_buffer`` messages are
        buffered the emitter waits for the resume (back-pressure, as a device
        whose queue is full stalls). Returns the message's ``fseq``.
        """
        out = self.out_flows.get(flow)
        if out is None:
            out = self.out_flows[flow] = _OutFlow()
        while (out.paused or out.flushing) and len(out.buffer) >= self.pause_buffer:
            await out.resumed.wait()  # a device whose queue is full stalls, like hardware
        if len(out.unacked) >= self.window:
            await self._room(out)  # its receiver is behind, or gone: stall, as a full device queue does
        dst = self.routes.lookup(flow)
        out.fseq += 1
        msg = self.party.make(dst, kind, body, flow=flow, fseq=out.fseq)
        if self.recorder.on and flow.startswith("irq:"):
            self.recorder("irq", "raise", flow=flow, fseq=out.fseq)
        if out.paused or out.flushing:
            out.buffer.append(msg)
            # a producer that never blocks must let the change that paused it
            # run (its drain, its resume): a paused flow yields on every message
            await trio.lowlevel.checkpoint()
        else:
            await self.party.send_msg(msg, self._sent(out, flow, msg), more=more)
        return msg.fseq

    async def emit_request(self, flow: str, kind: str, body: dict[str, Any], *, timeout: float = 5.0) -> Message:
        """A request on a flow (e.g. a privileged operation on ``priv:os1``).

        While the flow is paused the request waits for the resume (it cannot
        be buffered: its caller waits for the reply) and then goes to the
        new receiver, after what was buffered."""
        out = self.out_flows.setdefault(flow, _OutFlow())
        while out.paused or out.flushing:
            await out.resumed.wait()
        if len(out.unacked) >= self.window:
            await self._room(out)
        dst = self.routes.lookup(flow)
        out.fseq += 1
        msg = self.party.make(dst, kind, body, flow=flow, fseq=out.fseq)
        frame = self._sent(out, flow, msg)  # sent again, same seq, if lost: its reply still finds this request
        # until its reply comes, the request goes again every RTO (doubling): a receiver that
        # consumed it already answers a copy with the reply it kept (the reply may be what was lost)
        self._open_requests[msg.seq] = [msg, trio.current_time(), RTO]
        self._retx_kick.set()
        try:
            reply = await self.party.request_msg(msg, timeout=timeout, frame=frame)
        except RemoteError:
            self._acked(out, flow, msg.fseq, dst)  # consumed (and refused): answered all the same
            raise
        finally:
            del self._open_requests[msg.seq]
        self._acked(out, flow, msg.fseq, dst)  # answered in order: consumed with all before it
        return reply

    # -- fault injection (CONTRACTS: fault_set / fault_clear) ----------------------------

    async def on_fault_set(self, msg: Message) -> None:
        """Set a fault: ``type`` picks the method ``fault_<type>(spec)`` (the
        base has ``flow`` and ``partition``; node kinds add theirs)."""
        spec = msg.body
        method = getattr(self, f"fault_{spec['type']}", None) if spec["type"].isidentifier() else None
        if method is None:
            raise ProtocolError("unknown_fault", f"{self.name} ({self.kind}) has no fault of type {spec['type']!r}",
                                "body.type")
        method(dict(spec))
        if self.recorder.on:
            self.recorder("fault", "set", **{k: v for k, v in spec.items() if isinstance(v, (str, int, float, list))})
        await self.party.reply(msg, "ok", {"data": {"id": spec["id"]}})

    async def on_fault_clear(self, msg: Message) -> None:
        fault_id = msg.body["id"]
        n = self.clear_fault(fault_id)
        if self.recorder.on:
            self.recorder("fault", "clear", id=fault_id, cleared=n)
        await self.party.reply(msg, "ok", {"data": {"cleared": n}})

    def _injector(self) -> Injector:
        if self.fault_injector is None:
            self.fault_injector = Injector(self.party.send_frame_nowait, self.nursery)
        return self.fault_injector

    def fault_flow(self, spec: dict[str, Any]) -> None:
        """Drop, duplicate, delay, reorder or corrupt what this node sends on flows (protocol/faults.py)."""
        self._injector().add(spec)
        self.party.faults = self.fault_injector

    def fault_partition(self, spec: dict[str, Any]) -> None:
        """Drop everything this node sends to ``peers``."""
        self._injector().add(spec)
        self.party.faults = self.fault_injector

    def clear_fault(self, fault_id: str | None) -> int:
        """Clear a fault by id (None: all): the transport's and the kind's own
        (``kind_faults``); how many were cleared."""
        ids = list(self.kind_faults) if fault_id is None else [fault_id] if fault_id in self.kind_faults else []
        for fid in ids:
            del self.kind_faults[fid]
        inj = self.fault_injector
        if inj is None:
            return len(ids)
        n = len(ids) + inj.clear(fault_id)
        if not inj.faults:
            self.party.faults = None  # back to the plain send path; held-back frames still go out
        return n

    # -- built-in handlers ----------------------------------------------------------

    async def on_ping(self, msg: Message) -> None:
        # its CLOCK_MONOTONIC: a trace merged on another host aligns this node's stamps by it
        await self.party.reply(msg, "pong", {"name": self.name, "kind": self.kind, "now_ns": time.monotonic_ns()})

    async def on_stats(self, msg: Message) -> None:
        await self.party.reply(msg, "stats_reply", {"stats": self.stats()})

    async def on_shutdown(self, msg: Message) -> None:
        await self.party.reply(msg, "ok")
        self.state = "stopping"
        self.stop()

    # -- tracing (protocol/recorder.py; merged by orchestrator/tracing.py) -------------

    async def on_trace_start(self, msg: Message) -> None:
        size = msg.body.get("size", TRACE_RING)
        if not 1 <= size <= TRACE_RING_MAX:
            raise ProtocolError("bad_field", f"trace ring size must be 1..{TRACE_RING_MAX}, got {size}", "body.size")
        self.recorder.start_trace(size)
        self._trace_dump = None
        await self.party.reply(msg, "ok", {"data": {"size": size}})

    async def on_trace_stop(self, msg: Message) -> None:
        dropped = self.recorder.dropped
        self._trace_dump = [list(e) for e in self.recorder.stop_trace()]
        await self.party.reply(msg, "ok", {"data": {"events": len(self._trace_dump), "dropped": dropped}})

    async def on_trace_dump(self, msg: Message) -> None:
        """One page of the events: of the trace stopped last, else (still on)
        of the ring as it is at the first page (``offset`` 0). A page stays
        well under MAX_FRAME; ``next`` is the offset of the following one,
        None after the last."""
        offset = msg.body.get("offset", 0)
        if offset == 0 and self.recorder.tracing:
            self._trace_dump = [list(e) for e in self.recorder.snapshot()]
        events = self._trace_dump or []
        if not 0 <= offset <= len(events):
            raise ProtocolError("bad_field", f"offset {offset} is past the {len(events)} events", "body.offset")
        page, size, end = [], 0, offset
        while end < len(events) and size < TRACE_PAGE_BYTES:
            size += len(msgpack.packb(events[end], default=repr))
            page.append(events[end])
            end += 1
        await self.party.reply(msg, "ok", {"data": {
            "node": self.name, "kind": self.kind, "pid": os.getpid(), "incarnation": self.party.incarnation,
            "events": page, "total": len(events), "next": end if end < len(events) else None,
            "dropped": self.recorder.dropped,
            # the two clocks read together: a trace of several hosts is aligned on them (docs/observability.md)
            "clock": {"monotonic_ns": time.monotonic_ns(), "wall_ns": time.time_ns()}}})

    def _pause(self, flows: list[str]) -> dict[str, int]:
        """Pause ``flows`` (what the node emits on them is buffered from now on);
        the last ``fseq`` each sent."""
        last = {}
        for flow in flows:
            out = self.out_flows.setdefault(flow, _OutFlow())
            out.pause()
            last[flow] = out.fseq
        if self.recorder.on:
            self.recorder("route", "pause", flows=list(flows), epoch=self.routes.epoch, paused_ms=0.0)
        return last

    async def on_route_pause(self, msg: Message) -> None:
        await self.party.reply(msg, "ok", {"data": self._pause(msg.body["flows"])})

    async def on_route_switch(self, msg: Message) -> None:
        """The sender's side of a route change, run by the sender itself.

        The flows pause at once (what the node emits from now on is
        buffered) and their last ``fseq`` is noted; then the receiver each
        went to (in this node's table: where its messages really went) is
        asked to confirm it consumed up to it, unless it keeps the flow or
        the authority left it out of ``old`` (not running). The request
        travels behind the flow's last message, on the same link. Then the
        node installs the new table and flushes its buffer to the new
        receivers, each told first which ``fseq`` comes next
        (:meth:`_flush`). If a drain fails, the flows resume on the routes in
        force and the error says why. Each sender of a change of several
        switches on its own: no flow waits for another's drain (the plane
        orders messages within a flow, never across flows); if one fails,
        the authority switches the others back (orchestrator/routes.py)."""
        body = msg.body
        table = RouteTable(body["epoch"], body["routes"])  # a malformed one is refused before pausing
        timeout = body.get("timeout", 5.0)
        last = self._pause(body["flows"])
        live = body.get("old", {})
        drains: dict[str, dict[str, int]] = {}  # old receiver -> {flow: last fseq it must consume}
        for flow, upto in last.items():
            before = self.routes.get(flow)
            if flow in live and before is not None and before != table.get(flow) and upto > 0:
                drains.setdefault(before, {})[flow] = upto
        # the drain requests leave now, from this handler, so no task has to be
        # scheduled first; the task below waits for the answers. (Nothing can be
        # sent on the paused flows, so the request is behind their last message
        # however late it goes: one whose link is full is sent by that task, as
        # soon as there is room.)
        waits: dict[str, Callable[[], Awaitable[Message]]] = {}
        failed = None
        deadline = trio.current_time() + timeout + 1
        for receiver, upto in drains.items():
            drain = {"upto": upto, "timeout": timeout}
            try:
                first = self.party.start_request(receiver, "route_drain", drain, timeout=DRAIN_RETRY)
            except ProtocolError as exc:
                if exc.reason != "busy":  # an unknown peer: the change fails, the flows resume
                    failed = exc
                    break
                first = None
            waits[receiver] = functools.partial(self._drained, receiver, drain, first, deadline)
        self.nursery.start_soon(self._guarded, functools.partial(
            self._switch, table=table, last=last, waits=waits, failed=failed, drains=drains), msg)

    async def _drained(self, receiver: str, drain: dict[str, Any],
                       first: Callable[[], Awaitable[Message]] | None, deadline: float) -> Message:
        """The old receiver's answer to a drain: the request sent first (``first``; None if its
        queue was full), asked again every :data:`DRAIN_RETRY` s until ``deadline``. A drain is a
        question (has it consumed up to there?), safe to ask twice; a partition or a dropped frame
        that loses the request or its answer costs a retry, not the route change."""
        wait = first
        while True:
            if wait is None:
                left = deadline - trio.current_time()
                if left <= 0:
                    raise RequestTimeout(receiver, "route_drain", drain["timeout"] + 1)
                wait = functools.partial(self.party.request, receiver, "route_drain",
                                         {**drain, "timeout": max(0.1, left - 1)}, timeout=min(DRAIN_RETRY, left))
            try:
                return await wait()
            except RequestTimeout:
                wait = None

    async def _switch(self, msg: Message, *, table: RouteTable, last: dict[str, int],
                      waits: dict[str, Callable[[], Awaitable[Message]]], failed: Exception | None,
                      drains: dict[str, dict[str, int]]) -> None:
        clock = time.perf_counter
        marks = [min(self.out_flows[f].paused_at for f in last) if last else clock(), clock()]
        try:
            if waits:
                await gather(waits)  # every answer is awaited, even after a failure: none is left pending
            if failed is not None:
                raise failed
        except REQUEST_FAILURES as exc:
            await self._flush(list(last))  # resume on the routes in force
            await self.party.reply(msg, "error", {"reason": "route_switch_failed", "detail": str(exc)})
            return
        marks.append(clock())
        for receiver, flows in drains.items():  # each drained receiver consumed its flows up to there
            for flow, upto in flows.items():
                self._acked(self.out_flows[flow], flow, upto, receiver)
        if table.epoch > self.routes.epoch:
            before = self.routes
            self._install(table.epoch, table.routes, {})
            if self.transition is not None:  # within a change: the old table's flows may still
                self._set_transition(before)  # bring their last messages; accepted until it ends
        if self.recorder.on:
            self.recorder("route", "switch", flows=list(last), epoch=self.routes.epoch,
                          paused_ms=round((clock() - marks[0]) * 1e3, 3))
        flushed, paused_ms = await self._flush(list(last))
        marks.append(clock())
        # where the pause went: waiting to run, draining, flushing
        spent = dict(zip(("start", "drain", "flush"),
                         (round((b - a) * 1e3, 3) for a, b in zip(marks, marks[1:]))))
        await self.party.reply(msg, "ok", {"data": {"last": last, "flushed": flushed, "paused_ms": paused_ms,
                                                    "spent_ms": spent}})

    async def on_route_drain(self, msg: Message) -> None:
        upto = msg.body["upto"]
        if self.recorder.on:
            self.recorder("route", "drain", flows=list(upto), epoch=self.routes.epoch, paused_ms=0.0)
        if all(self.in_flows.setdefault(f, _InFlow()).consumed >= n for f, n in upto.items()):
            # the usual case when the request came in-band, behind the flow's last message
            await self.party.reply(msg, "ok", {"data": {f: self.in_flows[f].consumed for f in upto}})
        else:
            self.nursery.start_soon(self._guarded, self._drain, msg)

    async def _drain(self, msg: Message) -> None:
        timeout = msg.body.get("timeout", 5.0)
        # the sender asks again every DRAIN_RETRY s (Node._drained) and waits only for the newest
        # answer: the wait for the same question before it gives way
        # (tasks start in no set order: the sender's life and the request's seq say which came first)
        key = (msg.src, tuple(sorted(msg.body["upto"].items())))
        order = (msg.inc or 0, msg.seq)
        other = self._drain_waits.get(key)
        if other is not None:
            if other[0] > order:
                return  # a newer one waits already
            self._drains_superseded.add(other[1])
            other[1].cancel()
        with trio.move_on_after(timeout) as scope:
            self._drain_waits[key] = (order, scope)
            try:
                for flow, upto in msg.body["upto"].items():
                    await self.in_flows.setdefault(flow, _InFlow()).wait_consumed(upto)
            finally:
                if self._drain_waits.get(key, (None, None))[1] is scope:
                    del self._drain_waits[key]
            await self.party.reply(msg, "ok", {"data": {f: self.in_flows[f].consumed for f in msg.body["upto"]}})
            return
        if scope in self._drains_superseded:  # given way to the same question asked again
            self._drains_superseded.discard(scope)
            return
        have = {f: self.in_flows[f].consumed for f in msg.body["upto"]}
        await self.party.reply(msg, "error", {"reason": "drain_timeout",
                                              "detail": f"{self.name} consumed {have}, expected {msg.body['upto']}"})

    def _install(self, epoch: int, routes: dict[str, str], nxt: dict[str, int],
                 restarted: dict[str, int] | None = None) -> None:
        """Install a route table; ``nxt``: flow -> the fseq that comes next on it
        here. ``restarted`` (sender -> the incarnation that died) says ``nxt`` is
        about its next life: a flow already heard from a later life is left
        alone (the install came after that life's first messages, which the
        receiver followed from fseq 1 itself; set back to 1, it would consume
        their retransmissions again)."""
        table = RouteTable(epoch, routes)
        if table.epoch < self.routes.epoch:
            raise ProtocolError("stale_epoch", f"epoch {table.epoch} is older than {self.routes.epoch}", "body.epoch")
        if self.recorder.on:
            self.recorder("route", "install", epoch=epoch, next=nxt,
                          moved={f: r for f, r in routes.items() if self.routes.get(f) != r})
        self.routes = table
        self.party.epoch = table.epoch
        if self._authz is not None:
            self._authz.routes = table
        if self.transition is not None and table.epoch > self.transition.epoch:
            self._set_transition(None)  # a later table (the change rolled back, or a newer one)
        for flow, n in nxt.items():
            dead = restarted.get(flow_sender(flow)) if restarted else None
            heard = self.in_flows.get(flow)
            if dead is not None and heard is not None and heard.src_inc is not None and heard.src_inc > dead:
                continue
            if table.get(flow) == self.name:
                self.in_flows.setdefault(flow, _InFlow()).next_is(n)
            elif n == 1 and flow in self.in_flows:
                self.in_flows[flow].forget_runs()

    def _set_transition(self, table: RouteTable | None) -> None:
        self.transition = table
        if self._authz is not None:
            self._authz.transition = table

    def routed_to(self, flow: str) -> set[str | None]:
        """Who ``flow`` goes to, by the table in force and, during a route change, the other."""
        if self.transition is None:
            return {self.routes.get(flow)}
        return {self.routes.get(flow), self.transition.get(flow)}

    async def on_route_install(self, msg: Message) -> None:
        if msg.body.get("receive_only"):
            # a route change begins: other senders may switch to its table before this node
            # does (if it sends in the change) or before it hears the table at the end; it
            # accepts what either allows, and routes its own flows by its table meanwhile
            table = RouteTable(msg.body["epoch"], msg.body["routes"])
            if table.epoch > self.routes.epoch:
                self._set_transition(table)
            await self.party.reply(msg, "ok", {"data": {"epoch": self.routes.epoch}})
            return
        self._install(msg.body["epoch"], msg.body["routes"], msg.body.get("next", {}), msg.body.get("restarted"))
        self._set_transition(None)  # the change ended: its table is the one in force
        await self.party.reply(msg, "ok", {"data": {"epoch": self.routes.epoch}})

    async def _flush(self, flows: list[str]) -> tuple[int, float]:
        """Un-pause ``flows`` and send what they buffered, in order, to their
        receivers in the table now in force. Returns the number of messages
        flushed and the longest time one of the flows was paused (ms).

        A flow that was paused first tells its receiver which ``fseq`` comes
        next (``route_next``, on the link its messages take, so it arrives
        before them): a new receiver learns where the flow stands, the old
        one (a rolled-back change) hears what it already knows."""
        flushed = 0
        paused_ms = 0.0
        party = self.party
        for flow in flows:
            out = self.out_flows.setdefault(flow, _OutFlow())
            was_paused, out.paused = out.paused, False
            out.flushing = True
            try:
                # a buffer with no route to flush it to is an error (lookup raises)
                dst = self.routes.lookup(flow) if out.buffer else self.routes.get(flow)
                epoch = self.routes.epoch
                if dst is not None and was_paused:
                    nxt = out.buffer[0].fseq if out.buffer else out.fseq + 1
                    await party.send_msg(party.make(dst, "route_next", {"next": {flow: nxt},
                                                                        "inc": party.incarnation}))
                while out.buffer:
                    buffered = out.buffer.popleft()
                    # re-address to the receiver of the new epoch
                    buffered.dst = dst
                    buffered.epoch = epoch
                    frame = self._sent(out, flow, buffered)
                    # in one go (what is emitted meanwhile is buffered behind), in
                    # batches: one frame and one MAC for many; it waits only when
                    # the link's queue is full
                    await party.send_msg(buffered, frame, more=bool(out.buffer))
                    flushed += 1
            finally:
                out.flushing = False
                out.resumed.set()
                out.resumed = trio.Event()
            if was_paused:
                paused_ms = max(paused_ms, (time.perf_counter() - out.paused_at) * 1e3)
        if self.recorder.on:
            self.recorder("route", "resume", flows=list(flows), epoch=self.routes.epoch,
                          paused_ms=round(paused_ms, 3), flushed=flushed)
        return flushed, paused_ms

    async def on_route_next(self, msg: Message) -> None:
        """A sender says which ``fseq`` comes next on flows it now sends here
        (ahead of the messages themselves). Not answered: it is part of the flow."""
        if self.recorder.on:
            self.recorder("route", "next", next=msg.body["next"], src=msg.src)
        inc = msg.body.get("inc", msg.inc)
        for flow, n in msg.body["next"].items():
            if msg.src != flow_sender(flow):
                raise ProtocolError("foreign_flow", f"{msg.src} is not the sender of flow {flow}", "body.next")
            inflow = self.in_flows.setdefault(flow, _InFlow())
            if inc is None or inflow.src_inc is None or inc > inflow.src_inc or msg.body.get("reset"):
                inflow.src_inc = inc  # a sender heard for the first time, or restarted: where it stands
                inflow.next_is(n)
            elif inc == inflow.src_inc and (inflow.expected is None or n > inflow.expected):
                inflow.next_is(n)  # the flow comes back here from another receiver: it moved on
            # else a retransmission's lead (this receiver knows better where the flow stands), or stale
            if msg.body.get("probe"):
                inflow.probed = msg.body["probe"]
                self._ack_soon(flow, msg.src)

    @spawned
    async def on_route_resume(self, msg: Message) -> None:
        if "epoch" in msg.body and "routes" in msg.body and msg.body["epoch"] > self.routes.epoch:
            self._install(msg.body["epoch"], msg.body["routes"], {})
        flushed, paused_ms = await self._flush(msg.body["flows"])
        await self.party.reply(msg, "ok", {"data": {"flushed": flushed, "paused_ms": paused_ms}})


def main(node_cls: type[Node], argv: list[str] | None = None) -> None:
    """Entry point of ``python -m nodes.<kind> --config FILE``."""
    parser = argparse.ArgumentParser(prog=f"python -m nodes.{node_cls.kind}")
    parser.add_argument("--config", required=True, help="node configuration JSON written by the launcher")
    args = parser.parse_args(argv)
    logs.configure(node_cls.kind)
    try:
        cfg = NodeConfig.load(args.config)
    except (OSError, ValueError, TypeError) as exc:
        print(f"{node_cls.kind}: cannot read config {args.config}: {exc}", file=sys.stderr)
        sys.exit(2)
    sched.short_slice(f"{node_cls.kind} {cfg.name}", node_cls.short_slice)
    try:
        node = node_cls(cfg)
    except (ProtocolError, ValueError) as exc:  # its endpoint, a bad option: one line for `hwemu up`
        print(f"{node_cls.kind} {cfg.name}: {getattr(exc, 'detail', exc)}", file=sys.stderr)
        sys.exit(2)
    node.history_path = os.path.join(cfg.run_dir, f"{cfg.name}.flows.json")
    hdir = history_dir(cfg)
    if hdir is not None:
        try:
            os.makedirs(hdir, exist_ok=True)
            node.recorder.open_history(os.path.join(hdir, f"{cfg.name}.jsonl"), line_buffered=True)
        except OSError as exc:
            print(f"{node_cls.kind}: cannot open history in {hdir}: {exc}", file=sys.stderr)
            sys.exit(2)
    trio.run(node.run)


def history_dir(cfg: NodeConfig) -> str | None:
    """Where this node appends its fault history (``<dir>/<name>.jsonl``), or None: not recorded.

    ``HWEMU_HISTORY_DIR`` (how ``hwemu chaos`` records a whole cluster), else
    the node option ``history`` (true: ``<run_dir>/history``; a string: that
    directory).
    """
    env = os.environ.get("HWEMU_HISTORY_DIR")
    if env:
        return env
    opt = cfg.options.get("history")
    if opt is True:
        return os.path.join(cfg.run_dir, "history")
    if isinstance(opt, str) and opt:
        return opt
    return None
