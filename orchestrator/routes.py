"""The route authority (DESIGN.md §2): owns the cluster's route table and
changes it without losing, duplicating or reordering a message.

A change of some flows is the quiesce / drain / switch / resume sequence:

1. *pause*   — each sender of a changed flow stops emitting on it and notes
   the last ``fseq`` it sent ("interrupts disabled");
2. *drain*   — each old receiver confirms it consumed up to that ``fseq``
   (meanwhile each new receiver is told which ``fseq`` comes next);
3. *switch*  — the new table (epoch + 1) reaches the senders, and
4. *resume*  — they flush what they buffered to the new receivers
   ("interrupts re-enabled"); then every other node gets the new table.

The authority sends each sender one ``route_switch`` and the sender runs the
steps itself (``nodes/runtime.py``): its drain request travels behind the
flow's last message on the same link, so the pause lasts one round trip from
the sender to the old receiver instead of three from the authority. The
senders of a change of several switch each on its own, concurrently: the
plane orders messages within a flow, never across flows (they come from
different processes), so no flow waits for another's drain. A new receiver
gets the table before anything pauses, and the next ``fseq`` from its
sender ahead of the flushed messages. ``pause_ms`` is the longest pause a
sender measured on its own clock.

If a step fails (a pause refused, a drain or install refused or
unanswered), the change is rolled back: the old routes are installed again
at a newer epoch, a sender that failed resumes on them, and a sender that
had switched is switched back by the same protocol (its new receiver
drained first), so nothing is lost or reordered; it is reported in one line.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import trio

from orchestrator.errors import RouteChangeError
from protocol.errors import ProtocolError, RequestTimeout
from protocol.messages import Message
from protocol.routes import RouteTable, flow_sender
from protocol.transport import REQUEST_FAILURES, Party, gather

GONE_POLL = 0.05  # s between looks at whether a node asked during a change still runs

log = logging.getLogger("hwemu.routes")


@dataclass
class ChangeReport:
    epoch: int
    flows: dict[str, tuple[str | None, str]]  # flow -> (old receiver, new receiver)
    pause_ms: float                          # the longest a sender was paused (its own clock)
    total_ms: float
    last: dict[str, int]                     # flow -> last fseq before the switch
    spent: dict[str, dict[str, float]] = field(default_factory=dict)  # sender -> where its pause went (ms)


class RouteAuthority:
    """The authoritative route table and the protocol that changes it.

    Args:
        party: the orchestrator's transport.
        table: the initial table.
        live_nodes: returns the names of nodes currently running (they get installs).
    """

    def __init__(self, party: Party, table: RouteTable, live_nodes: Callable[[], Iterable[str]],
                 timeout: float = 5.0):
        self.party = party
        self.table = table
        self.live_nodes = live_nodes
        self.timeout = timeout
        self.lock = trio.Lock()  # one change at a time
        self.history: list[ChangeReport] = []

    async def install(self, table: RouteTable, nxt: Mapping[str, int] | None = None,
                      nodes: Iterable[str] | None = None, restarted: Mapping[str, int] | None = None) -> None:
        """Install ``table`` on every live node (or on ``nodes``); ``restarted``:
        sender -> the incarnation of its life that died (``nxt`` is about its next one)."""
        targets = list(nodes if nodes is not None else self.live_nodes())
        await gather({n: (lambda n=n: self._install_one(n, table, nxt or {}, restarted)) for n in targets})

    async def change(self, changes: Mapping[str, str]) -> ChangeReport:
        """Re-route ``changes`` (flow → new receiver) with the four-step protocol.

        Raises:
            ProtocolError: a malformed flow or an unknown node.
            RouteChangeError: a step failed. Before the switch (a pause refused,
                a drain timed out, an install failed) the change is rolled back:
                the old routes are in force again (epoch + 2) and every sender
                asked to pause is resumed. After the switch (a sender did not
                confirm its resume) the new table stays (``committed``).
        """
        live = set(self.live_nodes())
        for flow, node in changes.items():
            flow_sender(flow)  # validates
            if node not in live:
                raise ProtocolError("unknown_node", f"cannot route {flow} to {node!r}: not a running node", "node")
        async with self.lock:
            t0 = time.perf_counter()
            old = self.table
            new = old.changed(changes)
            by_sender: dict[str, list[str]] = defaultdict(list)
            for flow in changes:
                sender = flow_sender(flow)
                if sender in live:
                    by_sender[sender].append(flow)
            # a flow whose sender is not running has nobody to number it: its new
            # receiver expects #1, from the sender's next life (told by the authority)
            orphans: dict[str, dict[str, int]] = defaultdict(dict)
            for flow, node in changes.items():
                if flow_sender(flow) not in live and old.get(flow) != node:
                    orphans[node][flow] = 1
            # the new receivers get the table first, before any sender pauses: one
            # that refuses it is found while nothing is paused yet. Not a node that
            # also sends a changed flow: it must not route by the new table before
            # its own pause (it gets the table with its switch)
            receivers = {n for f, n in changes.items() if old.get(f) != n and n not in by_sender} | set(orphans)
            wire = {"epoch": new.epoch, "routes": dict(new.routes), "timeout": self.timeout}
            # a sender of the change that also receives a changed flow, before or after it (the
            # CPU sends traps and receives the OS's privileged operations; a NIC sends interrupts
            # and receives the OS's commands): from the change's first round to its end it accepts
            # what the old or the new table allows (receive_only: its transition table; at its own
            # switch the old table takes that place, nodes/runtime.py), so the last messages of a
            # flow it loses, sent before that flow's sender paused, are taken after its switch,
            # and a flow it gains may be flushed to it before it has switched itself. Its answer
            # is a must: without it the change does not start
            dual = {r for f, n in changes.items() if old.get(f) != n
                    for r in (old.get(f), n) if r in by_sender}  # gains or loses a flow
            # every other node judges some requests by routes too (the memory controller: which
            # device works for which OS; a NIC: whom the VMM acts for), and a sender that switched
            # first may reach them through the new routes: until the change ends, each accepts
            # what the old or the new table allows. A node that does not answer (paused, dying)
            # does not hold the change up: it learns the table at the end, as before
            judges = live - receivers - dual
            last: dict[str, int] = {}
            calls = {n: (lambda n=n: self._install_one(n, new, orphans.get(n, {}))) for n in receivers}
            calls.update({n: (lambda n=n: self._expect_one(n, new.epoch, wire["routes"])) for n in dual})
            calls.update({n: (lambda n=n: self._expect_one(n, new.epoch, wire["routes"], must=False))
                          for n in judges})
            try:
                await gather(calls)
            except REQUEST_FAILURES as exc:  # nothing paused yet
                await self._roll_back(old, new, by_sender, live, {})
                raise RouteChangeError(f"route change {_show(changes)} rolled back: {exc}") from None
            replies, failures = await self._switch(by_sender, old, live, wire)
            if failures:
                incomplete = await self._roll_back(old, new, by_sender, live, replies)
                raise RouteChangeError(f"route change {_show(changes)} rolled back: {failures[0]}{incomplete}")
            for reply in replies.values():
                last.update(reply.body["data"]["last"])
            self.table = new  # 3. switch + 4. resume: done by the senders
            pause_ms = max((r.body["data"]["paused_ms"] for r in replies.values()), default=0.0)
            spent = {sender: r.body["data"].get("spent_ms", {}) for sender, r in replies.items()}
            # everyone else learns the new epoch outside the pause (a sender too: a
            # node may wake on route_install, as the uart's rx pump does)
            restarted = {f: 1 for f in changes if last.get(f, 0) == 0}  # numbering starts over: old records go
            try:
                await gather({n: (lambda n=n: self._install_one(
                    n, new, {f: 1 for f in restarted if new.get(f) != n}))
                    for n in set(self.live_nodes()) - receivers})  # one that died meanwhile: at its restart
            except REQUEST_FAILURES as exc:  # re-sent to a node when it restarts
                log.warning("install of epoch %d incomplete: %s", new.epoch, exc)
            t_end = time.perf_counter()
            log.info("route change %s: epoch %d, senders paused %.2f ms", _show(changes), new.epoch, pause_ms)
            report = ChangeReport(new.epoch, {f: (old.get(f), n) for f, n in changes.items()},
                                  pause_ms, (t_end - t0) * 1e3, last, spent)
            self.history.append(report)
            del self.history[:-1000]
            if self.party.recorder.on:
                self.party.recorder("route", "change", flows=sorted(changes), epoch=new.epoch,
                                    moves={f: list(v) for f, v in report.flows.items()},
                                    pause_ms=round(pause_ms, 3), total_ms=round(report.total_ms, 3))
            return report

    async def _switch(self, by_sender: Mapping[str, list[str]], old: RouteTable, live: set[str],
                      wire: dict) -> tuple[dict, list[Exception]]:
        """One ``route_switch`` to each sender (to the table in ``wire``), concurrently: the replies of
        those that switched, by sender, and the failures of the others (each
        of which resumed on the routes in force, or did not answer)."""
        replies: dict = {}
        failures: list[Exception] = []

        async def one(sender: str, flows: list[str]) -> None:
            try:
                replies[sender] = await self._switch_one(sender, flows, old, live, wire)
            except REQUEST_FAILURES as exc:
                failures.append(exc)

        async with trio.open_nursery() as n:
            for sender, flows in by_sender.items():
                n.start_soon(one, sender, flows)
        for exc in failures[1:]:
            log.info("also failed: %s", exc)
        return replies, failures

    async def _roll_back(self, old: RouteTable, new: RouteTable, by_sender: Mapping[str, list[str]],
                         live: set[str], switched: Mapping[str, object]) -> str:
        """Put the old routes back, at an epoch above ``new`` (which some
        nodes may hold). A sender in ``switched`` is switched back by the
        protocol (its new receivers drained first); every other sender asked
        to pause is resumed on the old routes, even one whose answer was lost
        (a resume of a flow that is not paused does nothing). Best effort,
        each request bounded by the timeout; returns what failed, as a suffix
        of the error line ("" if nothing did)."""
        rollback = RouteTable(new.epoch + 1, old.routes)
        self.table = rollback
        back = {"epoch": rollback.epoch, "routes": dict(rollback.routes), "timeout": self.timeout}
        calls = {("install", n): (lambda n=n: self._install_one(n, rollback, {}))
                 for n in self.live_nodes() if n not in by_sender}  # the senders get the table with their resume
        for s, flows in by_sender.items():
            if s in switched:
                calls[("switch back", s)] = lambda s=s, flows=flows: self._switch_one(s, flows, new, live, back)
            else:
                calls[("resume", s)] = lambda s=s, flows=flows: self._ask(
                    s, "route_resume", {"flows": flows, "epoch": back["epoch"], "routes": back["routes"]},
                    timeout=self.timeout)
        try:
            await gather(calls)
        except REQUEST_FAILURES as exc:
            log.warning("rollback to epoch %d incomplete: %s", rollback.epoch, exc)
            return f"; the rollback is incomplete: {exc}"
        return ""

    async def _switch_one(self, sender: str, flows: list[str], current: RouteTable, live: set[str], wire: dict):
        """``route_switch`` of ``flows`` to ``sender``, away from the receivers
        of ``current`` (the running ones are drained) to ``wire``'s table."""
        return await self._ask(sender, "route_switch", {
            "flows": flows, "old": {f: current.get(f) for f in flows if current.get(f) in live}, **wire},
            timeout=self.timeout + 3)  # the sender's drain (timeout + 1) and its flush

    async def _expect_one(self, node: str, epoch: int, routes: Mapping[str, str], must: bool = True):
        """``node`` accepts what ``routes`` (epoch ``epoch``) allows beside its table in force,
        until the change ends (``route_install`` with ``receive_only``). ``must``: a failure
        fails the change (else it is logged)."""
        try:
            return await self._ask(node, "route_install", {
                "epoch": epoch, "routes": dict(routes), "receive_only": True}, timeout=self.timeout)
        except REQUEST_FAILURES as exc:
            if must:
                raise
            log.warning("%s did not take the routes of epoch %d ahead of the change: %s", node, epoch, exc)
            return None

    async def _install_one(self, node: str, table: RouteTable, nxt: Mapping[str, int],
                           restarted: Mapping[str, int] | None = None):
        body = {"epoch": table.epoch, "routes": dict(table.routes), "next": dict(nxt)}
        if restarted:
            body["restarted"] = dict(restarted)
        return await self._ask(node, "route_install", body, timeout=self.timeout)

    async def _ask(self, node: str, kind: str, body: dict, timeout: float):
        """``party.request``, given up as soon as ``node``, running when it was
        asked, stops (killed during a change, say): its answer will not come,
        and its next life gets the table in force when it starts. (Waited out,
        each such request held the change, and the restart behind it, for its
        whole timeout: a CPU killed during FIG. 3 came back 10 s late.)"""
        if node not in self.live_nodes():  # starting: it answers when it is up
            return await self.party.request(node, kind, body, timeout=timeout)
        reply = await request_while(self.party, node, kind, body, timeout, lambda: node in self.live_nodes())
        if reply is None:
            raise NodeGone(node, kind)
        return reply


async def request_while(party: Party, node: str, kind: str, body: dict, timeout: float,
                        holds: Callable[[], bool]) -> Message | None:
    """``party.request(node, kind, body)``, given up (None) as soon as ``holds()``
    turns false (looked at every :data:`GONE_POLL` s): ``node`` stopped, or was
    restarted, and the life that was asked will not answer.

    Raises:
        RemoteError, RequestTimeout, ProtocolError: as ``party.request``.
    """
    outcome: list = []
    async with trio.open_nursery() as nursery:
        async def ask() -> None:
            try:
                outcome.append(await party.request(node, kind, body, timeout=timeout))
            except REQUEST_FAILURES as exc:  # raised below, not as an exception group
                outcome.append(exc)
            nursery.cancel_scope.cancel()

        nursery.start_soon(ask)
        while holds():
            await trio.sleep(GONE_POLL)
        nursery.cancel_scope.cancel()
    if not outcome:
        return None
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


class NodeGone(RequestTimeout):
    """A node stopped running before it answered a request of a route change."""

    def __init__(self, node: str, kind: str):
        Exception.__init__(self, f"{node} stopped running before it answered {kind!r}")
        self.node, self.kind = node, kind


def _show(changes: Mapping[str, str]) -> str:
    return ", ".join(f"{flow} -> {node}" for flow, node in changes.items())
