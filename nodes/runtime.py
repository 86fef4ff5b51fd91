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

Every receiver also records the *history* of what it accepted on each flow,
as runs of consecutive ``fseq`` (``stats`` → ``flows_in[flow]["runs"]``; a
node process writes its last history to ``<run_dir>/<name>.flows.json`` when
it stops), so an audit can prove from the records of all receivers together
that every message a sender numbered was delivered exactly once
(``orchestrator/flowaudit.py``), even across route changes whose new
receiver could not know which ``fseq`` to expect.

A node kind subclasses :class:`Node`, adds ``on_<kind>`` handlers and
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
from typing import Any, Awaitable, Callable

import trio

from nodes.recorder import Recorder
from protocol import authz, sched
from protocol.auth import keyring_from_config
from protocol.errors import ProtocolError
from protocol.messages import Message, error_body
from protocol.routes import RouteTable
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
    orchestrator: str | None = "orch"
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


class _OutFlow:
    __slots__ = ("fseq", "paused", "paused_at", "buffer", "flushing", "resumed")

    def __init__(self) -> None:
        self.fseq = 0  # last fseq assigned
        self.paused = False
        self.paused_at = 0.0  # perf_counter when the pause began
        self.flushing = False
        self.buffer: deque[Message] = deque()
        self.resumed = trio.Event()

    def pause(self) -> None:
        if not self.paused:
            self.paused = True
            self.paused_at = time.perf_counter()


HISTORY_RUNS = 256  # runs of consecutive fseq a receiver records per flow (more means gaps: the audit fails anyway)


class _InFlow:
    __slots__ = ("expected", "consumed", "gaps", "dups", "waiter", "runs", "runs_dropped")

    def __init__(self) -> None:
        self.expected: int | None = None  # next fseq; None until known
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
    short_slice = True  # takes the time slice of HWEMU_SLICE_US (protocol/sched.py); False: always the kernel's

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.options = cfg.options
        self.party = Party(cfg.name, cfg.endpoint, cfg.directory,
                           auth=keyring_from_config(cfg.name, cfg.auth) if cfg.auth else None)
        self.recorder = Recorder(cfg.name)  # trace ring and fault history, both off until asked for
        self.routes = RouteTable.from_wire(cfg.routes)
        self.party.epoch = self.routes.epoch
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
        self._spawns: dict[str, bool] = {}  # kind -> its handler runs as its own task (looked up once)

    # -- life cycle -------------------------------------------------------------

    async def run(self) -> None:
        """The node's whole life: one nursery with the inbox, heartbeat and work tasks."""
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await nursery.start(self.party.serve, self._dispatch)
                nursery.start_soon(self._signals)
                await self.setup()
                self.state = "running"
                if self.cfg.orchestrator and self.cfg.orchestrator in self.party.directory:
                    self.party.send_nowait(self.party.make(
                        self.cfg.orchestrator, "ready",
                        {"kind": self.kind, "pid": os.getpid(), "endpoint": self.cfg.endpoint}))
                    nursery.start_soon(self._heartbeats)
                await self.work(nursery)
        finally:
            self.state = "stopped"
            await self.teardown()
            self.party.close()
            self.write_history()
            self.recorder.close_history()

    history_path: str | None = None  # set by main(): where a node process leaves its flow history

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
        s["flows_out"] = {f: o.fseq for f, o in self.out_flows.items()}
        s["flows_in"] = {f: {"consumed": i.consumed, "gaps": i.gaps, "dups": i.dups, "runs": i.runs,
                             "runs_dropped": i.runs_dropped} for f, i in self.in_flows.items()}
        return s

    # -- dispatch ---------------------------------------------------------------

    async def _dispatch(self, msg: Message) -> None:
        if self._authz is not None:
            rule = authz.CHECKED.get(msg.kind)
            if rule is not None and not rule.allows(msg, self._authz):
                self._refuse(msg)
        handler = self._handlers.get(msg.kind)
        flow = msg.flow
        if flow is not None:
            inflow = self.in_flows.get(flow)
            if inflow is None or inflow.expected != msg.fseq:  # else in sequence: the common case
                if not self._accept(msg):
                    return
                inflow = self.in_flows[flow]
            else:
                inflow.expected = msg.fseq + 1
                inflow.record(msg.fseq)
        if handler is None:
            if msg.kind in ("ok", "error", "pong", "stats_reply"):
                return  # an unsolicited reply: nothing to do, never answer it
            raise ProtocolError("unhandled_kind", f"node {self.name} ({self.kind}) does not handle {msg.kind!r}", "kind")
        spawns = self._spawns.get(msg.kind)
        if spawns is None:
            spawns = self._spawns[msg.kind] = bool(getattr(handler, "spawned", False))
        if spawns:
            self.nursery.start_soon(self._guarded, handler, msg)
        else:
            await handler(msg)
        if flow is not None:
            inflow.consumed = msg.fseq
            if inflow.waiter is not None:
                inflow.waiter.set()
                inflow.waiter = None

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
        """Per-flow sequence check: drop duplicates, count gaps."""
        inflow = self.in_flows.get(msg.flow)
        if inflow is None:
            inflow = self.in_flows[msg.flow] = _InFlow()
        expected = inflow.expected
        if expected is not None and msg.fseq != expected:
            if msg.fseq < expected:
                inflow.dups += 1
                log.warning("%s: duplicate %s #%d (expected %d)", self.name, msg.flow, msg.fseq, expected)
                return False
            inflow.gaps += 1
            log.error("%s: gap on %s: got #%d, expected %d", self.name, msg.flow, msg.fseq, expected)
        inflow.expected = msg.fseq + 1
        inflow.record(msg.fseq)
        return True

    # -- emitting on flows --------------------------------------------------------

    async def emit(self, flow: str, kind: str, body: dict[str, Any]) -> int:
        """Send ``kind`` on a logical flow to whoever the route table names.

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
        dst = self.routes.lookup(flow)
        out.fseq += 1
        msg = self.party.make(dst, kind, body, flow=flow, fseq=out.fseq)
        if out.paused or out.flushing:
            out.buffer.append(msg)
            # a producer that never blocks must let the change that paused it
            # run (its drain, its resume): a paused flow yields on every message
            await trio.lowlevel.checkpoint()
        else:
            await self.party.send_msg(msg)
        return out.fseq

    async def emit_request(self, flow: str, kind: str, body: dict[str, Any], *, timeout: float = 5.0) -> Message:
        """A request on a flow (e.g. a privileged operation on ``priv:os1``).

        While the flow is paused the request waits for the resume (it cannot
        be buffered: its caller waits for the reply) and then goes to the
        new receiver, after what was buffered."""
        out = self.out_flows.setdefault(flow, _OutFlow())
        while out.paused or out.flushing:
            await out.resumed.wait()
        dst = self.routes.lookup(flow)
        out.fseq += 1
        return await self.party.request(dst, kind, body, timeout=timeout, flow=flow, fseq=out.fseq)

    # -- built-in handlers ----------------------------------------------------------

    async def on_ping(self, msg: Message) -> None:
        await self.party.reply(msg, "pong", {"name": self.name, "kind": self.kind})

    async def on_stats(self, msg: Message) -> None:
        await self.party.reply(msg, "stats_reply", {"stats": self.stats()})

    async def on_shutdown(self, msg: Message) -> None:
        await self.party.reply(msg, "ok")
        self.state = "stopping"
        self.stop()

    def _pause(self, flows: list[str]) -> dict[str, int]:
        """Pause ``flows`` (what the node emits on them is buffered from now on);
        the last ``fseq`` each sent."""
        last = {}
        for flow in flows:
            out = self.out_flows.setdefault(flow, _OutFlow())
            out.pause()
            last[flow] = out.fseq
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
        drains: dict[str, dict[str, int]] = {}
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
        for receiver, upto in drains.items():
            drain = {"upto": upto, "timeout": timeout}
            try:
                waits[receiver] = self.party.start_request(receiver, "route_drain", drain, timeout=timeout + 1)
            except ProtocolError as exc:
                if exc.reason != "busy":  # an unknown peer: the change fails, the flows resume
                    failed = exc
                    break
                waits[receiver] = functools.partial(self.party.request, receiver, "route_drain", drain,
                                                    timeout=timeout + 1)
        self.nursery.start_soon(self._guarded, functools.partial(
            self._switch, table=table, last=last, waits=waits, failed=failed), msg)

    async def _switch(self, msg: Message, *, table: RouteTable, last: dict[str, int],
                      waits: dict[str, Callable[[], Awaitable[Message]]], failed: Exception | None) -> None:
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
        if table.epoch > self.routes.epoch:
            self._install(table.epoch, table.routes, {})
        flushed, paused_ms = await self._flush(list(last))
        marks.append(clock())
        # where the pause went: waiting to run, draining, flushing
        spent = dict(zip(("start", "drain", "flush"),
                         (round((b - a) * 1e3, 3) for a, b in zip(marks, marks[1:]))))
        await self.party.reply(msg, "ok", {"data": {"last": last, "flushed": flushed, "paused_ms": paused_ms,
                                                    "spent_ms": spent}})

    async def on_route_drain(self, msg: Message) -> None:
        upto = msg.body["upto"]
        if all(self.in_flows.setdefault(f, _InFlow()).consumed >= n for f, n in upto.items()):
            # the usual case when the request came in-band, behind the flow's last message
            await self.party.reply(msg, "ok", {"data": {f: self.in_flows[f].consumed for f in upto}})
        else:
            self.nursery.start_soon(self._guarded, self._drain, msg)

    async def _drain(self, msg: Message) -> None:
        timeout = msg.body.get("timeout", 5.0)
        with trio.move_on_after(timeout):
            for flow, upto in msg.body["upto"].items():
                await self.in_flows.setdefault(flow, _InFlow()).wait_consumed(upto)
            await self.party.reply(msg, "ok", {"data": {f: self.in_flows[f].consumed for f in msg.body["upto"]}})
            return
        have = {f: self.in_flows[f].consumed for f in msg.body["upto"]}
        await self.party.reply(msg, "error", {"reason": "drain_timeout",
                                              "detail": f"{self.name} consumed {have}, expected {msg.body['upto']}"})

    def _install(self, epoch: int, routes: dict[str, str], nxt: dict[str, int]) -> None:
        table = RouteTable(epoch, routes)
        if table.epoch < self.routes.epoch:
            raise ProtocolError("stale_epoch", f"epoch {table.epoch} is older than {self.routes.epoch}", "body.epoch")
        self.routes = table
        self.party.epoch = table.epoch
        if self._authz is not None:
            self._authz.routes = table
        for flow, n in nxt.items():
            if table.get(flow) == self.name:
                self.in_flows.setdefault(flow, _InFlow()).next_is(n)
            elif n == 1 and flow in self.in_flows:
                self.in_flows[flow].forget_runs()

    async def on_route_install(self, msg: Message) -> None:
        self._install(msg.body["epoch"], msg.body["routes"], msg.body.get("next", {}))
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
                    await party.send_msg(party.make(dst, "route_next", {"next": {flow: nxt}}))
                while out.buffer:
                    buffered = out.buffer.popleft()
                    # re-address to the receiver of the new epoch
                    buffered.dst = dst
                    buffered.epoch = epoch
                    # in one go while the link takes them (nothing can emit in
                    # between); wait only when its queue is full
                    if not party.send_nowait(buffered):
                        await party.send_msg(buffered)
                    flushed += 1
            finally:
                out.flushing = False
                out.resumed.set()
                out.resumed = trio.Event()
            if was_paused:
                paused_ms = max(paused_ms, (time.perf_counter() - out.paused_at) * 1e3)
        return flushed, paused_ms

    async def on_route_next(self, msg: Message) -> None:
        """A sender says which ``fseq`` comes next on flows it now sends here
        (ahead of the messages themselves). Not answered: it is part of the flow."""
        for flow, n in msg.body["next"].items():
            self.in_flows.setdefault(flow, _InFlow()).next_is(n)

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
    logging.basicConfig(level=os.environ.get("HWEMU_LOG", "WARNING"),
                        format=f"%(asctime)s {node_cls.kind} %(levelname)s %(message)s", stream=sys.stderr)
    try:
        cfg = NodeConfig.load(args.config)
    except (OSError, ValueError, TypeError) as exc:
        print(f"{node_cls.kind}: cannot read config {args.config}: {exc}", file=sys.stderr)
        sys.exit(2)
    sched.short_slice(f"{node_cls.kind} {cfg.name}", node_cls.short_slice)
    node = node_cls(cfg)
    node.history_path = os.path.join(cfg.run_dir, f"{cfg.name}.flows.json")
    trio.run(node.run)
