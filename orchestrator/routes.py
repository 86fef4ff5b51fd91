"""The route authority (DESIGN.md §2): owns the cluster's route table and
changes it without losing, duplicating or reordering a message.

A change of some flows is the quiesce / drain / switch / resume sequence:

1. *pause*   — each sender of a changed flow stops emitting on it and reports
   the last ``fseq`` it sent ("interrupts disabled");
2. *drain*   — each old receiver confirms it consumed up to that ``fseq``
   (meanwhile each new receiver is told which ``fseq`` comes next);
3. *switch*  — the new table (epoch + 1) reaches the senders with
4. *resume*  — they flush what they buffered to the new receivers
   ("interrupts re-enabled"); then every other node gets the new table.

Steps 3 and 4 share a message, and the installs that nobody waits for happen
after the resume, so a change costs the senders three round trips of pause.
If a step fails before the switch, the senders are resumed on the old table:
the change is rolled back and reported, nothing is lost.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable, Mapping

import trio

from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.routes import RouteTable, flow_sender
from protocol.transport import Party


log = logging.getLogger("hwemu.routes")


class RouteChangeError(Exception):
    """A route change failed and was rolled back; the old table is in force."""


@dataclass
class ChangeReport:
    epoch: int
    flows: dict[str, tuple[str | None, str]]  # flow -> (old receiver, new receiver)
    pause_ms: float                          # senders paused → resumed
    total_ms: float
    last: dict[str, int]                     # flow -> last fseq before the switch


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

    async def _each(self, calls: Mapping[str, Callable[[], Awaitable]]) -> dict:
        results: dict = {}

        async def one(key, fn):
            results[key] = await fn()

        async with trio.open_nursery() as n:
            for key, fn in calls.items():
                n.start_soon(one, key, fn)
        return results

    async def install(self, table: RouteTable, nxt: Mapping[str, int] | None = None,
                      nodes: Iterable[str] | None = None) -> None:
        """Install ``table`` on every live node (or on ``nodes``)."""
        body = {"epoch": table.epoch, "routes": dict(table.routes), "next": dict(nxt or {})}
        targets = list(nodes if nodes is not None else self.live_nodes())
        await self._each({n: (lambda n=n: self.party.request(n, "route_install", body, timeout=self.timeout))
                          for n in targets})

    async def change(self, changes: Mapping[str, str]) -> ChangeReport:
        """Re-route ``changes`` (flow → new receiver) with the four-step protocol.

        Raises:
            ProtocolError: a malformed flow or an unknown node.
            RouteChangeError: a step failed; the change was rolled back.
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
            paused: list[str] = []
            last: dict[str, int] = {}
            receivers = {n for n in changes.values()}
            installed: set[str] = set()
            try:
                # 1. pause
                t_pause = time.perf_counter()
                replies = await self._each({s: (lambda s=s, flows=flows: self.party.request(
                    s, "route_pause", {"flows": flows}, timeout=self.timeout)) for s, flows in by_sender.items()})
                paused = list(replies)
                for reply in replies.values():
                    last.update(reply.body["data"])
                nxt = {flow: last.get(flow, 0) + 1 for flow in changes}
                # 2. drain the old receivers and, at the same time, tell the
                #    new receivers which fseq comes next (nothing reaches them
                #    before the resume, so this cannot race)
                drains: dict[str, dict[str, int]] = defaultdict(dict)
                for flow, upto in last.items():
                    receiver = old.get(flow)
                    if receiver is not None and receiver != changes[flow] and receiver in live and upto > 0:
                        drains[receiver][flow] = upto
                calls = {("drain", r): (lambda r=r, u=u: self.party.request(
                    r, "route_drain", {"upto": u, "timeout": self.timeout}, timeout=self.timeout + 1))
                    for r, u in drains.items()}
                # every new receiver learns its next fseq now, a paused sender too (uart0
                # receiving io:os1.uart while it pauses irq:uart0: the resume carries no
                # `next`); the paused senders get the table now as well, so that a node
                # waking on route_install (the uart's rx pump) sees its new route
                installed = receivers | set(paused)
                calls.update({("install", n): (lambda n=n: self._install_one(n, new, nxt)) for n in installed})
                await self._each(calls)
            except (RemoteError, RequestTimeout) as exc:
                rollback = RouteTable(new.epoch + 1, old.routes)
                self.table = rollback
                with trio.move_on_after(self.timeout):
                    await self.install(rollback, nodes=installed)
                await self._resume(paused, by_sender)
                raise RouteChangeError(f"route change {dict(changes)} rolled back: {exc}") from None
            # 3. switch + 4. resume: the senders get the new table with the
            #    resume and flush their buffers to the new receivers
            self.table = new
            await self._resume(paused, by_sender, new)
            t_resumed = time.perf_counter()
            # everyone else learns the new epoch outside the pause
            others = [n for n in live if n not in installed and n not in paused]
            try:
                await self.install(new, nxt, nodes=others)
            except (RemoteError, RequestTimeout) as exc:  # re-sent to a node when it restarts
                log.warning("install of epoch %d incomplete: %s", new.epoch, exc)
            t_end = time.perf_counter()
            report = ChangeReport(new.epoch, {f: (old.get(f), n) for f, n in changes.items()},
                                  (t_resumed - t_pause) * 1e3, (t_end - t0) * 1e3, last)
            self.history.append(report)
            del self.history[:-1000]
            return report

    async def _install_one(self, node: str, table: RouteTable, nxt: Mapping[str, int]):
        return await self.party.request(node, "route_install", {
            "epoch": table.epoch, "routes": dict(table.routes), "next": dict(nxt)}, timeout=self.timeout)

    async def _resume(self, senders: list[str], by_sender: Mapping[str, list[str]] | None = None,
                      table: RouteTable | None = None) -> None:
        if not senders:
            return
        body = {} if table is None else {"epoch": table.epoch, "routes": dict(table.routes)}
        await self._each({s: (lambda s=s: self.party.request(
            s, "route_resume", {"flows": (by_sender or {}).get(s) or [], **body}, timeout=self.timeout))
            for s in senders})
