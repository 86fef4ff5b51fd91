"""The orchestrator's fault manager: nemeses started and stopped at runtime
(issue 14 part 2; the CLI is ``hwemu fault``, :mod:`orchestrator.cli.fault`).

A fault is a *spec* (a dict), given an id (``f1``, ``f2``, ... in the order
they were added) and a seed, and applied in one of two ways:

- **by the orchestrator itself**, on the pids its supervisor launched:
  ``kill`` (SIGKILL; the supervisor restarts the node per its ``restart``
  policy; the fault is over at once) and ``pause`` (SIGSTOP, then SIGCONT
  when its duration ends or it is cleared; the node's heartbeats stop, so
  ``hwemu status`` shows it ``unresponsive``);
- **by the nodes**, through the control message ``fault_set`` {id, type, seed,
  ...params} (reply ``ok``, or ``error`` with reason ``unknown_fault`` /
  ``bad_fault``) and ``fault_clear`` {id} (CONTRACTS.md). The node-side types:
  ``flow`` and ``partition`` (the base :class:`nodes.runtime.Node`, injected in
  the *sender's* transport), ``disk`` (disk nodes) and ``clock`` (timer nodes).

The control requests (the API ``hwemu fault`` and ``hwemu chaos`` use; replies
``ok`` {data} or ``error`` {reason, detail}):

``ctl_fault_add`` {"spec": SPEC} → {"id": str, "fault": FAULT}
    SPEC is one of (``for_s``: optional duration in seconds, after which the
    manager clears the fault itself; ``seed``: optional int ≥ 0, drawn and
    recorded if absent, so a listed fault can be replayed exactly)::

        {"type": "kill",  "node": N}
        {"type": "pause", "node": N, "for_s"?}
        {"type": "partition", "nodes": [A, ...], "from": [C, ...], "oneway"?: bool, "for_s"?}
            # two-way: what A.. send to C.. and what C.. send to A.. is dropped;
            # oneway: only what A.. send to C..
        {"type": "flow", "flows": [F, ...], "drop"?, "dup"?, "reorder"?, "corrupt"?: P,
         "delay_ms"?: MS, "jitter_ms"?: MS, "seed"?, "for_s"?}
            # set on each flow's sender (its transport drops, duplicates, ... what it sends)
        {"type": "disk",  "node": N, "eio"?, "torn_write"?, "fsync_fail"?: P, "latency_ms"?, "seed"?, "for_s"?}
        {"type": "clock", "node": N, "skew_ms": MS, "for_s"?}

    P is a probability in [0, 1]. A bad spec (unknown type or node, a flow
    not in the route table, a node of the wrong kind, a probability out of
    range, nothing to inject) is refused with reason ``bad_fault`` and one
    sentence; a node that refuses it (reason ``unknown_fault`` from a node
    kind that does not implement that type) makes the whole fault fail: the
    nodes that took it are cleared again, and the request fails with reason
    ``fault_refused`` (or ``bad_fault`` if the node found a param bad).

``ctl_fault_list`` {} → {"faults": [FAULT, ...]}
    The active faults, oldest first. FAULT = {"id", "type", "seed", "spec",
    "targets" (the nodes told), "started" (unix time, s), "ends" (unix time or
    null), "state": "active"}. A ``kill`` is done at once and is listed only
    in the journal.

``ctl_fault_clear`` {"id": str | null} → {"cleared": [id, ...]}
    One fault, or every active one (null). An unknown id: reason ``bad_fault``.

Every add and clear is appended to ``<run_dir>/faults.jsonl`` (one JSON object
per line: ``{"event": "add"|"clear"|"kill", "time": unix s, ...FAULT}``), so a
run's fault schedule can be read back. A node restarted while a fault of its
own is active gets it again once it reports ``ready`` (the fault is on the
node, not on one process of it). An orchestrator restarted on the run
directory (after ``kill -9``) continues the nodes its predecessor paused and
clears the faults it left on the nodes it re-attaches to (journaled ``clear``
with a ``why``): a fault outlives neither its manager nor its duration.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import random
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from orchestrator.control import control
from orchestrator.errors import FaultError
from orchestrator.supervisor import launched
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.routes import flow_sender

if TYPE_CHECKING:
    from orchestrator.cluster import Orchestrator

log = logging.getLogger("hwemu.faults")

TYPES = ("kill", "pause", "partition", "flow", "disk", "clock")
NODE_TYPES = {"disk": "disk", "clock": "timer"}  # node-message faults bound to one node kind
PROBABILITIES = {"flow": ("drop", "dup", "reorder", "corrupt"), "disk": ("eio", "torn_write", "fsync_fail")}
REQUEST_TIMEOUT = 5.0  # s for a node to answer fault_set / fault_clear


def _number(spec: dict, key: str, *, low: float | None = None, high: float | None = None,
            default: float | None = None) -> float | None:
    value = spec.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise FaultError(f"{key} must be a finite number, got {value!r}", f"spec.{key}")
    if (low is not None and value < low) or (high is not None and value > high):
        rng = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise FaultError(f"{key} must be {rng}, got {value!r}", f"spec.{key}")
    return float(value)


def _names(spec: dict, key: str) -> list[str]:
    value = spec.get(key)
    if isinstance(value, str):
        value = [v for v in value.split(",") if v]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise FaultError(f"{key} must be a non-empty list of names, got {value!r}", f"spec.{key}")
    return list(dict.fromkeys(value))


class FaultManager:
    """Adds, lists, times and clears the faults of one cluster.

    Args:
        orch: the orchestrator whose nodes (supervisor), routes and party it uses.
    """

    def __init__(self, orch: "Orchestrator"):
        self.orch = orch
        self.active: dict[str, dict[str, Any]] = {}
        self._ids = itertools.count(1)
        self._timers: dict[str, trio.CancelScope] = {}
        self._lock = trio.Lock()  # one add/clear at a time: a clear never races its own add
        self.journal_path = Path(orch.run_dir) / "faults.jsonl"
        if self.journal_path.exists():  # ids go on from a previous orchestrator of this run dir
            self._ids = itertools.count(self._last_id() + 1)

    # -- the control requests (registered on the orchestrator by register()) ------

    async def ctl_fault_add(self, spec: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(spec, dict):
            raise FaultError(f"spec must be a table, got {spec!r}", "spec")
        async with self._lock:
            fault = self._validate(spec)
            fault["id"] = f"f{next(self._ids)}"
            if fault["type"] == "kill":
                await self._kill(fault)
                self._journal("kill", fault)
                return {"id": fault["id"], "fault": fault}
            if fault["type"] == "pause":
                self._signal(fault["targets"][0], signal.SIGSTOP, fault)
            else:
                await self._set_on_nodes(fault)
            self.active[fault["id"]] = fault
            self._journal("add", fault)
            if fault["ends"] is not None:
                self._timers[fault["id"]] = scope = trio.CancelScope()
                self.orch.start_soon(self._expire, fault["id"], fault["spec"]["for_s"], scope)
        return {"id": fault["id"], "fault": fault}

    async def ctl_fault_list(self) -> dict[str, Any]:
        return {"faults": self.listing()}

    async def ctl_fault_clear(self, id: str | None = None) -> dict[str, Any]:  # the wire name
        async with self._lock:
            if id is not None and id not in self.active:
                known = ", ".join(self.active) or "none"
                raise FaultError(f"no active fault {id!r} (active: {known})", "id")
            ids = [id] if id is not None else list(self.active)
            for fid in ids:
                await self._clear(fid)
        return {"cleared": ids}

    def listing(self) -> list[dict[str, Any]]:
        """The active faults, oldest first (for ``ctl_fault_list`` and ``ctl_status``)."""
        return [dict(f) for f in self.active.values()]

    # -- hooks the orchestrator calls -----------------------------------------------

    async def node_ready(self, name: str) -> None:
        """A (re)started node reported ready: give it back the active node-side faults it had."""
        for fault in list(self.active.values()):
            if fault["type"] == "pause" or name not in fault["targets"]:
                continue
            try:
                await self._request(name, "fault_set", self._node_body(fault, name))
            except (RemoteError, RequestTimeout) as exc:
                log.warning("fault %s not re-applied to restarted %s: %s", fault["id"], name, exc)

    def continue_paused(self) -> None:
        """At start: SIGCONT what a predecessor of this run dir paused and never continued (it was
        killed meanwhile), before the nodes are asked anything (a stopped node cannot answer)."""
        ours = launched(self.orch.run_dir)
        for fault in self._leftovers():
            if fault["type"] == "pause" and fault.get("pid") in ours:
                try:
                    os.kill(fault["pid"], signal.SIGCONT)
                except ProcessLookupError:
                    pass

    async def clear_leftovers(self) -> None:
        """At start, once the nodes run: the faults a predecessor left active are cleared (on the
        nodes it re-attached to; restarted ones never had them) and journaled so."""
        for fault in self._leftovers():
            for node in fault["targets"]:
                if fault["type"] != "pause" and node in self.orch.adopted:
                    try:
                        await self._request(node, "fault_clear", {"id": fault["id"]})
                    except (RemoteError, RequestTimeout) as exc:
                        log.warning("fault_clear %s on %s after a restart: %s", fault["id"], node, exc)
            fault["state"] = "cleared"
            self._journal("clear", {**fault, "why": "the orchestrator was restarted"})

    def _leftovers(self) -> list[dict[str, Any]]:
        """The faults the journal shows added and never cleared."""
        left: dict[str, dict[str, Any]] = {}
        try:
            lines = self.journal_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        for line in lines:
            try:
                rec = json.loads(line)
                event, fid = rec["event"], rec["id"]
            except (ValueError, KeyError, TypeError):
                continue
            if event == "add":
                left[fid] = {k: v for k, v in rec.items() if k not in ("event", "time")}
            elif event == "clear":
                left.pop(fid, None)
        return [r for r in left.values() if r["id"] not in self.active]

    def release(self) -> None:
        """SIGCONT every paused node (before the cluster stops: a stopped process cannot shut down)."""
        for fault in self.active.values():
            if fault["type"] == "pause":
                self._signal(fault["targets"][0], signal.SIGCONT, fault, quiet=True)

    # -- validation --------------------------------------------------------------------

    def _node(self, spec: dict, key: str = "node", kind: str | None = None) -> str:
        name = spec.get(key)
        nodes = self.orch.supervisor.nodes
        if not isinstance(name, str) or name not in nodes:
            raise FaultError(f"unknown node {name!r} (nodes: {', '.join(nodes)})", f"spec.{key}")
        if kind is not None and nodes[name].spec.kind != kind:
            raise FaultError(f"node {name} is a {nodes[name].spec.kind}, a {spec['type']} fault needs a {kind} node",
                             f"spec.{key}")
        return name

    def _running_pid(self, name: str) -> int:
        np = self.orch.supervisor.nodes[name]
        if np.proc is None or np.proc.returncode is not None or np.pid is None:
            raise FaultError(f"node {name} is not running ({np.state})", "spec.node")
        return np.pid

    def _validate(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Check ``spec``; return the fault record (without its id)."""
        ftype = spec.get("type")
        if ftype not in TYPES:
            raise FaultError(f"unknown fault type {ftype!r} (types: {', '.join(TYPES)})", "spec.type")
        clean: dict[str, Any] = {"type": ftype}
        for_s = _number(spec, "for_s", low=0.0)
        if for_s is not None:
            if ftype == "kill":
                raise FaultError("a kill has no duration (the supervisor restarts the node per its policy)",
                                 "spec.for_s")
            if for_s <= 0:
                raise FaultError(f"for_s must be > 0 seconds, got {for_s:g}", "spec.for_s")
            clean["for_s"] = for_s
        seed = spec.get("seed")
        if seed is None:
            seed = random.SystemRandom().randrange(2 ** 32)
        elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise FaultError(f"seed must be an integer >= 0, got {seed!r}", "spec.seed")
        if ftype in ("kill", "pause"):
            name = clean["node"] = self._node(spec)
            self._running_pid(name)
            if ftype == "pause" and any(f["type"] == "pause" and f["targets"] == [name] for f in self.active.values()):
                raise FaultError(f"node {name} is paused already", "spec.node")
            targets = [name]
        elif ftype in NODE_TYPES:
            name = self._node(spec, kind=NODE_TYPES[ftype])
            clean["node"], targets = name, [name]
            if ftype == "disk":
                for key in PROBABILITIES["disk"]:
                    clean[key] = _number(spec, key, low=0.0, high=1.0, default=0.0)
                latency = _number(spec, "latency_ms", low=0.0, high=10_000.0, default=0.0)
                if latency:  # (only when asked for: a spec says what the fault does)
                    clean["latency_ms"] = latency
                if not any(clean.get(k) for k in (*PROBABILITIES["disk"], "latency_ms")):
                    raise FaultError("nothing to inject: give eio, torn_write, fsync_fail or latency_ms > 0", "spec")
            else:
                if "skew_ms" not in spec:
                    raise FaultError("a clock fault needs skew_ms", "spec.skew_ms")
                clean["skew_ms"] = _number(spec, "skew_ms")
        elif ftype == "partition":
            side_a = _names(spec, "nodes")
            side_b = _names(spec, "from")
            for name in side_a + side_b:
                self._node({"node": name, "type": ftype})
            both = set(side_a) & set(side_b)
            if both:
                raise FaultError(f"{', '.join(sorted(both))} on both sides of the partition", "spec.from")
            clean.update(nodes=side_a, **{"from": side_b}, oneway=bool(spec.get("oneway", False)))
            targets = side_a + ([] if clean["oneway"] else side_b)
        else:  # flow
            flows = _names(spec, "flows")
            routes = self.orch.routes.table.routes
            for f in flows:
                if f not in routes:
                    raise FaultError(f"unknown flow {f!r} (not in the route table; see `hwemu route show`)",
                                     "spec.flows")
            clean["flows"] = flows
            for key in PROBABILITIES["flow"]:
                clean[key] = _number(spec, key, low=0.0, high=1.0, default=0.0)
            clean["delay_ms"] = _number(spec, "delay_ms", low=0.0, default=0.0)
            clean["jitter_ms"] = _number(spec, "jitter_ms", low=0.0, default=0.0)
            if clean["jitter_ms"] and not clean["delay_ms"]:
                raise FaultError("jitter_ms needs delay_ms", "spec.jitter_ms")
            if not any(clean[k] for k in (*PROBABILITIES["flow"], "delay_ms")):
                raise FaultError("nothing to inject: give drop, dup, reorder, corrupt or delay_ms > 0", "spec")
            targets = list(dict.fromkeys(flow_sender(f) for f in flows))
            for name in targets:
                if name not in self.orch.supervisor.nodes:
                    raise FaultError(f"the sender {name!r} of a flow is not a node of this cluster", "spec.flows")
        now = time.time()
        return {"id": None, "type": ftype, "seed": seed, "spec": clean, "targets": targets,
                "started": round(now, 3), "ends": round(now + for_s, 3) if for_s else None, "state": "active"}

    # -- applying and clearing -------------------------------------------------------

    def _node_body(self, fault: dict[str, Any], node: str) -> dict[str, Any]:
        """The ``fault_set`` body for one node: the spec's params, as that node applies them."""
        spec = fault["spec"]
        # each node its own stream: one seed still fixes them all
        seed = random.Random(f"{fault['seed']}:{node}").randrange(2 ** 32)
        body = {"id": fault["id"], "type": fault["type"], "seed": seed}
        if fault["type"] == "partition":
            body["peers"] = spec["from"] if node in spec["nodes"] else spec["nodes"]
        elif fault["type"] == "flow":
            body["flows"] = [f for f in spec["flows"] if flow_sender(f) == node]
            body.update({k: spec[k] for k in (*PROBABILITIES["flow"], "delay_ms", "jitter_ms")})
        else:
            body.update({k: v for k, v in spec.items() if k not in ("type", "node", "for_s")})
        return body

    async def _request(self, node: str, kind: str, body: dict[str, Any]) -> None:
        await self.orch.party.request(node, kind, body, timeout=REQUEST_TIMEOUT)

    async def _set_on_nodes(self, fault: dict[str, Any]) -> None:
        done: list[str] = []
        try:
            for node in fault["targets"]:
                await self._request(node, "fault_set", self._node_body(fault, node))
                done.append(node)
        except (RemoteError, RequestTimeout) as exc:
            for node in done:  # all or nothing: a half-set partition is not what was asked
                try:
                    await self._request(node, "fault_clear", {"id": fault["id"]})
                except (RemoteError, RequestTimeout):
                    pass
            if isinstance(exc, RemoteError):  # its params (bad_fault: the user's) or its kind (the cluster's)
                raise ProtocolError(exc.reason if exc.reason == "bad_fault" else "fault_refused",
                                    f"{exc.node} refused the {fault['type']} fault: {exc.detail}") from None
            raise ProtocolError("fault_refused", f"{exc.node} did not answer fault_set: is it running? "
                                                 "(`hwemu status`)") from None

    def _signal(self, name: str, sig: int, fault: dict[str, Any], quiet: bool = False) -> None:
        np = self.orch.supervisor.nodes[name]
        pid = fault.setdefault("pid", np.pid)
        if np.pid != pid or np.proc is None or np.proc.returncode is not None:
            return  # not the process the fault was for any more: never signal a pid we did not launch
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            if not quiet:
                raise FaultError(f"node {name} (pid {pid}) is gone") from None

    async def _kill(self, fault: dict[str, Any]) -> None:
        name = fault["targets"][0]
        np = self.orch.supervisor.nodes[name]
        fault["pid"] = np.pid
        fault["restart"] = np.spec.restart
        self._signal(name, signal.SIGKILL, fault)
        fault["state"] = "done"

    async def _clear(self, fid: str) -> None:
        fault = self.active.pop(fid)
        scope = self._timers.pop(fid, None)
        if scope is not None:
            scope.cancel()
        if fault["type"] == "pause":
            self._signal(fault["targets"][0], signal.SIGCONT, fault, quiet=True)
        else:
            for node in fault["targets"]:
                try:
                    await self._request(node, "fault_clear", {"id": fid})
                except (RemoteError, RequestTimeout) as exc:  # a dead node has forgotten it anyway
                    log.warning("fault_clear %s on %s: %s", fid, node, exc)
        fault["state"] = "cleared"
        self._journal("clear", fault)

    async def _expire(self, fid: str, seconds: float, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(seconds)
            async with self._lock:
                if fid in self.active:
                    self._timers.pop(fid, None)
                    await self._clear(fid)

    # -- the journal ---------------------------------------------------------------------

    def _journal(self, event: str, fault: dict[str, Any]) -> None:
        line = json.dumps({**fault, "event": event, "time": round(time.time(), 3)}, sort_keys=True)
        with open(self.journal_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def _last_id(self) -> int:
        last = 0
        for line in self.journal_path.read_text(errors="replace").splitlines():
            try:
                last = max(last, int(json.loads(line)["id"][1:]))
            except (ValueError, KeyError, TypeError, IndexError):
                continue
        return last


def register(orch: "Orchestrator") -> FaultManager:
    """Give ``orch`` a fault manager (``orch.faults``), which serves the ``ctl_fault_*`` requests below."""
    return FaultManager(orch)


# The control requests (orchestrator/control.py; their schemas are in protocol/messages.py)
@control("ctl_fault_add")
async def ctl_fault_add(orch: "Orchestrator", spec: dict[str, Any]) -> dict[str, Any]:
    return await orch.faults.ctl_fault_add(spec)


@control("ctl_fault_list")
async def ctl_fault_list(orch: "Orchestrator") -> dict[str, Any]:
    return await orch.faults.ctl_fault_list()


@control("ctl_fault_clear")
async def ctl_fault_clear(orch: "Orchestrator", id: str | None = None) -> dict[str, Any]:  # the wire name
    return await orch.faults.ctl_fault_clear(id)
