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
If a step fails before the switch (a pause refused, a drain or install
refused or unanswered), the old routes are installed again at a newer epoch
and every sender asked to pause is resumed on them: the change is rolled
back and reported in one line, nothing is lost.
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


# what a step of a route change can fail with: the peer refused, did not
# answer, or could not be addressed
STEP_FAILURES = (RemoteError, RequestTimeout, ProtocolError)


class RouteChangeError(Exception):
    """A route change failed.

    Attributes:
        committed: False (the usual case): rolled back before the switch, the
            old routes are in force. True: the new table was in force when a
            sender failed to confirm its resume.
    """

    def __init__(self, message: str, committed: bool = False):
        super().__init__(message)
        self.committed = committed


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
        """Run ``calls`` concurrently and return their results by key.

        Each call catches its own failure, so every call runs to its end (a
        pause that did arrive must be known, to be resumed) and the caller
        gets a plain exception, never trio's ``ExceptionGroup``.

        Raises:
            RemoteError, RequestTimeout, ProtocolError: the first call that failed
                (the others' failures are logged).
        """
        results: dict = {}
        failures: list[Exception] = []
        if len(calls) == 1:  # the usual single sender: no nursery to open and close
            (key, fn), = calls.items()
            results[key] = await fn()
            return results

        async def one(key, fn):
            try:
                results[key] = await fn()
            except STEP_FAILURES as exc:
                failures.append(exc)

        async with trio.open_nursery() as n:
            for key, fn in calls.items():
                n.start_soon(one, key, fn)
        if failures:
            for exc in failures[1:]:
                log.warning("also failed: %s", exc)
            raise failures[0]
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
            last: dict[str, int] = {}
            receivers = {n for n in changes.values()}
            installing: set[str] = set()
            try:
                # 1. pause
                t_pause = time.perf_counter()
                replies = await self._each({s: (lambda s=s, flows=flows: self.party.request(
                    s, "route_pause", {"flows": flows}, timeout=self.timeout)) for s, flows in by_sender.items()})
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
                # `next`). A sender that receives none of the changed flows gets the
                # table with its resume and the install after it (a node waking on
                # route_install, the uart's rx pump, then sees its new route): one
                # request fewer inside the pause
                installing = set(receivers)
                calls.update({("install", n): (lambda n=n: self._install_one(n, new, nxt)) for n in installing})
                await self._each(calls)
            except STEP_FAILURES as exc:
                await self._roll_back(old, new, by_sender, installing)
                raise RouteChangeError(f"route change {_show(changes)} rolled back: {exc}") from None
            # 3. switch + 4. resume: the senders get the new table with the
            #    resume and flush their buffers to the new receivers
            self.table = new
            try:
                await self._resume(by_sender, new)
            except STEP_FAILURES as exc:
                raise RouteChangeError(f"route change {_show(changes)} committed at epoch {new.epoch}, "
                                       f"but a sender did not resume: {exc}", committed=True) from None
            t_resumed = time.perf_counter()
            # everyone else learns the new epoch outside the pause
            others = [n for n in live if n not in installing]
            try:
                await self.install(new, nxt, nodes=others)
            except STEP_FAILURES as exc:  # re-sent to a node when it restarts
                log.warning("install of epoch %d incomplete: %s", new.epoch, exc)
            t_end = time.perf_counter()
            report = ChangeReport(new.epoch, {f: (old.get(f), n) for f, n in changes.items()},
                                  (t_resumed - t_pause) * 1e3, (t_end - t0) * 1e3, last)
            self.history.append(report)
            del self.history[:-1000]
            return report

    async def _roll_back(self, old: RouteTable, new: RouteTable, by_sender: Mapping[str, list[str]],
                         installed: set[str]) -> None:
        """Put the old routes back (at an epoch above ``new``, which some nodes
        may hold) and resume every sender asked to pause, even one whose answer
        was lost: a resume of a flow that is not paused does nothing. Best
        effort, each request bounded by the timeout; what fails is logged."""
        rollback = RouteTable(new.epoch + 1, old.routes)
        self.table = rollback
        body = {"epoch": rollback.epoch, "routes": dict(rollback.routes), "next": {}}
        calls = {("install", n): (lambda n=n: self.party.request(n, "route_install", body, timeout=self.timeout))
                 for n in installed if n not in by_sender}  # the senders get the table with their resume
        calls.update(self._resume_calls(by_sender, rollback))
        try:
            await self._each(calls)
        except STEP_FAILURES as exc:
            log.warning("rollback to epoch %d incomplete: %s", rollback.epoch, exc)

    async def _install_one(self, node: str, table: RouteTable, nxt: Mapping[str, int]):
        return await self.party.request(node, "route_install", {
            "epoch": table.epoch, "routes": dict(table.routes), "next": dict(nxt)}, timeout=self.timeout)

    def _resume_calls(self, by_sender: Mapping[str, list[str]], table: RouteTable) -> dict:
        body = {"epoch": table.epoch, "routes": dict(table.routes)}
        return {("resume", s): (lambda s=s, flows=flows: self.party.request(
            s, "route_resume", {"flows": flows, **body}, timeout=self.timeout)) for s, flows in by_sender.items()}

    async def _resume(self, by_sender: Mapping[str, list[str]], table: RouteTable) -> None:
        if by_sender:
            await self._each(self._resume_calls(by_sender, table))


def _show(changes: Mapping[str, str]) -> str:
    return ", ".join(f"{flow} -> {node}" for flow, node in changes.items())
