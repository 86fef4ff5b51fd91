"""The choreography framework: steps, runs, the journal, rollback and
recovery. Each choreography is one module of this package (one per patent
figure or paragraph) that builds its steps on this and registers its
control request (:mod:`orchestrator.control`).

A :class:`Choreography` is an ordered list of :class:`Step` (name, ``do``,
``undo``). :meth:`Choreography.run` journals every step (``begin``, ``done``
with what it produced), sums the **pause** the steps report (the time the
senders of re-routed flows were held: "interrupts disabled" → "re-enabled")
and holds it to a budget (default 300 ms), and on any failure — a refused
request, a node that does not answer, a route change rolled back, a budget
exceeded — undoes the completed steps in reverse and raises
:class:`ChoreographyFailed` naming the step and the cause. The journal then
says ``rolled_back``.

Steps read and write one dict, the choreography's *context*: its parameters
plus what each ``do`` returned. That dict is exactly what the journal keeps,
so that an orchestrator restarted after a crash can run the ``undo`` s of an
incomplete choreography (:func:`recover`) with nothing else in hand.

Recovery policy: every figure is **rolled back** on recovery, never resumed.
An orchestrator restarted after a ``kill -9`` re-attaches to the nodes that
kept running (orchestrator/state.py), so the undos reach the very nodes the
half-done choreography changed; if it cannot, the cluster boots afresh.
A half-done interposition resumed by a fresh orchestrator would have to
re-learn the VMM's state; rolling back leaves the machine as it was before
the request, which the user can repeat. The memory controller keeps its
ownership state across restarts, so the undos that matter (frames given
back to their owner) have their effect; undos addressed to nodes restarted
with the cluster are tolerated when they fail, and journaled as such.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

import protocol.hw  # registers mod_*, os_driver_mode
import protocol.vmm  # noqa: F401  (registers vmm_*, mem_* administration)
from orchestrator import recovery
from orchestrator.errors import ChoreographyError, ChoreographyFailed, OrchestratorError
from orchestrator.journal import WHOLE, Incomplete, Journal
from orchestrator.routes import request_while
from protocol.constants import DEFAULT_CPU, DEFAULT_MEMCTL, DEFAULT_TIMER
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.routes import flow_sender

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.cluster import Orchestrator

log = logging.getLogger("hwemu.choreography")
RESTARTED_DEVICES = ("uart", "timer", "disk", "nic")  # node kinds a route change waits for while restarted

PAUSE_BUDGET_MS = 300.0
OVER_BUDGET = "pause budget exceeded"  # the error of a choreography rolled back for its pause (hwemu chaos asks again)

Ctx = dict[str, Any]
StepFn = Callable[["Run", Ctx], Awaitable["dict[str, Any] | None"]]


# what a step may fail with and still be a refusal, not a bug (a KeyError or RuntimeError is a bug)
FAILURES = (OrchestratorError, RemoteError, RequestTimeout, ProtocolError)


@dataclass
class Step:
    """One message exchange of a figure.

    Attributes:
        name: the step's name in the journal and the report.
        do: ``await do(run, ctx)`` performs it; returns what later steps (and
            its undo) need, merged into ``ctx``; a ``pause_ms`` key counts
            against the pause budget.
        undo: ``await undo(run, ctx)`` reverts it (``None``: nothing to revert).
        patent: the patent step it implements ("302 disable interrupts").
    """

    name: str
    do: StepFn
    undo: StepFn | None = None
    patent: str = ""


@dataclass
class Run:
    """What a step may use: the orchestrator and the choreography's identity."""

    orch: "Orchestrator"
    id: str
    figure: str

    async def call(self, node: str, kind: str, body: dict[str, Any] | None = None,
                   timeout: float = 10.0) -> Any:
        """One request; returns the reply's ``data`` (an ``error`` reply raises RemoteError).

        A memory controller being restarted, or still recovering after its
        restart, is waited for (up to ``timeout``): it answers every request
        once it is done; one killed while the request waited is asked again
        once its next life runs
        (that life restores the frames from its file, and never saw the
        request: a chaos run's kill of memctl in the middle of ¶39 timed the
        step out and rolled the borrow back). Any other node that dies while
        asked fails the step at once (ChoreographyError): its state died with
        it, and its recovery waits for this choreography to roll back.
        """
        procs = self.orch.supervisor.nodes
        if node in procs and procs[node].spec.kind == "memctl":  # one being restarted: waited for
            await recovery.restarts_done(self.orch, [node], timeout)
        if node not in self.orch.live_nodes():
            state = procs[node].state if node in procs else "unknown"
            raise ChoreographyError(f"{node} is not running ({state}): cannot send it {kind}")
        with trio.move_on_after(timeout):
            while True:
                life = procs[node].pid
                try:
                    reply = await request_while(self.orch.party, node, kind, body or {}, timeout,
                                                lambda: procs[node].pid == life and node in self.orch.live_nodes())
                except RemoteError as exc:
                    if exc.reason != "recovering":
                        raise
                    await trio.sleep(0.05)
                    continue
                if reply is not None:
                    return reply.body.get("data")
                if procs[node].spec.kind != "memctl":
                    raise ChoreographyError(f"{node} died while it was asked {kind}")
                while node not in self.orch.live_nodes() or procs[node].pid == life:  # its next life is not up
                    await trio.sleep(0.05)
        raise RequestTimeout(node, kind, timeout)

    async def reroute(self, changes: dict[str, str]) -> dict[str, Any]:
        """A lossless route change; returns the previous receivers and the pause."""
        changes = {f: n for f, n in changes.items() if self.orch.routes.table.get(f) != n}
        if not changes:
            return {"pause_ms": 0.0, "spent_ms": {}, "previous": {}}
        # a device being restarted (killed meanwhile) is waited for, as its driver waits for it: the change
        # names only running nodes (FIG. 5 and FIG. 6 failed on a UART or a disk that was coming back)
        kinds = {n: s.kind for n, s in self.orch.topology.nodes.items()}
        await recovery.restarts_done(self.orch, {n for f, r in changes.items() for n in (r, flow_sender(f))
                                                 if kinds.get(n) in RESTARTED_DEVICES})
        report = await self.orch.routes.change(changes)
        return {"pause_ms": round(report.pause_ms, 3), "epoch": report.epoch, "spent_ms": report.spent,
                "previous": {f: old for f, (old, _new) in report.flows.items()}}

    @staticmethod
    def window(out: dict[str, Any]) -> dict[str, Any]:
        """The disabled window of a :meth:`reroute`, as a step reports it: its
        pause and where each sender's pause went."""
        return {"pause_ms": out["pause_ms"], "spent_ms": out["spent_ms"]}

    @property
    def state(self):
        return self.orch.virt

    def os_option(self, os_name: str, key: str, default: Any) -> Any:
        """An option of OS node ``os_name`` in the topology (its cpu, memctl, uart, timer)."""
        spec = self.orch.topology.nodes.get(os_name)
        if spec is None or spec.kind != "os":
            oses = sorted(n for n, s in self.orch.topology.nodes.items() if s.kind == "os")
            raise ChoreographyError(f"{os_name!r} is not an OS instance of this cluster (OS nodes: {', '.join(oses)})")
        return spec.options.get(key, default)

    def memctl(self, os_name: str) -> str:
        return self.os_option(os_name, "memctl", DEFAULT_MEMCTL)

    def cpu_and_timer(self, os_name: str) -> tuple[str, str]:
        """The CPU and the timer node ``os_name`` runs with (its options, else the defaults)."""
        return self.os_option(os_name, "cpu", DEFAULT_CPU), self.os_option(os_name, "timer", DEFAULT_TIMER)

    async def restore_routes(self, previous: dict[str, str | None]) -> None:
        back = {f: n for f, n in previous.items() if n is not None}
        if back:
            await self.orch.routes.change(back)


@dataclass
class Choreography:
    """An ordered list of steps implementing one figure."""

    figure: str
    title: str
    steps: list[Step]
    params: dict[str, Any] = field(default_factory=dict)
    budget_ms: float = PAUSE_BUDGET_MS
    on_commit: Callable[[Ctx], None] | None = None

    async def run(self, orch: "Orchestrator", budget_ms: float | None = None) -> dict[str, Any]:
        """Run every step, journaled; roll back on failure.

        Args:
            orch: the orchestrator of the running cluster.
            budget_ms: the pause budget for this run (``None``: :attr:`budget_ms`).

        Returns:
            The report: ``{id, figure, title, outcome: "committed", steps:
            [{name, patent, ms, pause_ms, data}], pause_ms, budget_ms}``.

        Raises:
            ChoreographyFailed: a step failed; the completed ones were undone
                (the report is on the exception, outcome ``rolled_back``).
        """
        if budget_ms is not None:
            self.budget_ms = budget_ms
        journal: Journal = orch.journal
        cid = journal.new_id(self.figure)
        run = Run(orch, cid, self.figure)
        ctx: Ctx = dict(self.params)
        report: dict[str, Any] = {"id": cid, "figure": self.figure, "title": self.title, "params": self.params,
                                  "steps": [], "pause_ms": 0.0, "budget_ms": self.budget_ms}
        journal.record(cid, self.figure, WHOLE, "begin", self.params)
        done: list[Step] = []
        rec = getattr(orch, "recorder", None)  # the orchestrator's: each step a slice of the trace
        began_ns = time.monotonic_ns()
        for step in self.steps:
            journal.record(cid, self.figure, step.name, "begin")
            t0_ns = time.monotonic_ns()
            t0 = time.perf_counter()
            try:
                out = await step.do(run, ctx) or {}
            except Exception as exc:  # whatever broke, the machine goes back as it was
                cause = _describe(exc)
                return await self._fail(run, ctx, done, report, f"step {step.name!r} failed: {cause}")
            ms = (time.perf_counter() - t0) * 1e3
            ctx.update(out)
            done.append(step)
            journal.record(cid, self.figure, step.name, "done", out)
            _save(orch)
            hook = getattr(orch, "step_hook", None)
            if hook is not None:  # tests and fault injection look at the machine between steps
                await hook(self.figure, step.name)
            pause = float(out.get("pause_ms", 0.0) or 0.0)
            if rec is not None and rec.on:
                rec("chor", "step", id=cid, figure=self.figure, title=self.title, step=step.name,
                    patent=step.patent, start_ns=t0_ns, ms=round(ms, 3), pause_ms=round(pause, 3))
            report["pause_ms"] = round(report["pause_ms"] + pause, 3)
            report["steps"].append({"name": step.name, "patent": step.patent, "ms": round(ms, 3),
                                    "pause_ms": round(pause, 3),
                                    "data": {k: v for k, v in out.items() if k != "pause_ms"}})
            if report["pause_ms"] > self.budget_ms:
                return await self._fail(run, ctx, done, report,
                                        f"{OVER_BUDGET} after step {step.name!r}: "
                                        f"{report['pause_ms']:.1f} ms > {self.budget_ms:g} ms")
        if self.on_commit is not None:
            self.on_commit({**ctx, "choreography": cid})
        journal.record(cid, self.figure, WHOLE, "committed")
        _save(orch)
        report["outcome"] = "committed"
        log.info("%s (%s) committed: pause %.2f ms", self.title, cid, report["pause_ms"])
        if rec is not None and rec.on:
            rec("chor", "end", id=cid, figure=self.figure, title=self.title, start_ns=began_ns,
                outcome="committed", pause_ms=report["pause_ms"])
        return report

    async def _fail(self, run: Run, ctx: Ctx, done: list[Step], report: dict[str, Any], why: str) -> dict:
        undone, problems = await undo_steps(run, ctx, done)
        run.orch.journal.record(run.id, self.figure, WHOLE, "rolled_back", {"error": why, "undo_failures": problems})
        report.update(outcome="rolled_back", error=why, undone=undone, undo_failures=problems)
        rec = getattr(run.orch, "recorder", None)
        if rec is not None and rec.on:
            rec("chor", "end", id=run.id, figure=self.figure, title=self.title, start_ns=None,
                outcome="rolled_back", pause_ms=report["pause_ms"], error=why)
        msg = f"{self.title} failed and was rolled back: {why}"
        log.warning("%s (%s): %s", self.title, run.id, msg)
        if problems:
            msg += f" (could not undo: {'; '.join(problems)})"
        raise ChoreographyFailed(msg, report)


async def undo_steps(run: Run, ctx: Ctx, done: list[Step]) -> tuple[list[str], list[str]]:
    """Undo ``done`` in reverse, journaling each; a failing undo is reported, the rest still run."""
    undone: list[str] = []
    problems: list[str] = []
    for step in reversed(done):
        if step.undo is not None:
            try:
                with trio.CancelScope(shield=True):
                    await step.undo(run, ctx)
            except Exception as exc:  # report it, undo the rest
                problems.append(f"{step.name}: {_describe(exc)}")
                log.warning("%s: undo of %s failed: %s", run.id, step.name, exc)
                continue
        run.orch.journal.record(run.id, run.figure, step.name, "undo")
        _save(run.orch)
        undone.append(step.name)
    return undone, problems


def _save(orch: "Orchestrator") -> None:
    """The routes and the virtualization state, for an orchestrator restarted after a crash."""
    save = getattr(orch, "save_state", None)
    if save is not None:
        save()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RemoteError):
        return str(exc)
    if isinstance(exc, RequestTimeout):
        return f"no answer in time ({exc})"
    if not isinstance(exc, FAILURES):  # a bug, not a refusal: say what it was
        log.error("choreography step raised %r", exc, exc_info=exc)
        return f"{type(exc).__name__}: {exc}"
    return str(exc) or type(exc).__name__


# -- recovery ---------------------------------------------------------------------

Builder = Callable[[dict[str, Any]], Choreography]
BUILDERS: dict[str, Builder] = {}


def figure(name: str) -> Callable[[Builder], Builder]:
    """Register the builder of a figure's choreography (for recovery by figure name)."""
    def deco(fn: Builder) -> Builder:
        BUILDERS[name] = fn
        return fn
    return deco


async def recover(orch: "Orchestrator") -> list[dict[str, Any]]:
    """Roll back every incomplete choreography of the journal (see the module docstring).

    The builders are registered by importing the package (every figure module)."""
    out = []
    for inc in orch.journal.incomplete():
        out.append(await _recover_one(orch, inc))
    return out


async def _recover_one(orch: "Orchestrator", inc: Incomplete) -> dict[str, Any]:
    build = BUILDERS.get(inc.figure)
    run = Run(orch, inc.id, inc.figure)
    if build is None:
        orch.journal.record(inc.id, inc.figure, WHOLE, "rolled_back",
                            {"error": f"unknown figure {inc.figure!r}: nothing undone"})
        return {"id": inc.id, "figure": inc.figure, "undone": [], "undo_failures": ["unknown figure"]}
    chor = build(inc.params)
    by_name = {s.name: s for s in chor.steps}
    ctx: Ctx = dict(inc.params)
    done = []
    for name, data in inc.done:
        ctx.update(data)
        if name in by_name:
            done.append(by_name[name])
    undone, problems = await undo_steps(run, ctx, done)
    orch.journal.record(inc.id, inc.figure, WHOLE, "rolled_back",
                        {"error": "orchestrator restarted mid-way: recovered by rollback", "undo_failures": problems})
    return {"id": inc.id, "figure": inc.figure, "undone": undone, "undo_failures": problems}


def committed_before(exc: Exception, done: list[dict[str, Any]]) -> None:
    """Re-raise ``exc`` saying which choreographies of the request were committed before it."""
    if not done:
        raise exc
    before = ", ".join(r["title"] for r in done)
    msg = f"{exc} (committed before it, and kept: {before})"
    if isinstance(exc, ChoreographyFailed):
        raise ChoreographyFailed(msg, exc.report) from None
    raise ChoreographyError(msg) from None
