"""The orchestrator of one running cluster: launcher, supervisor, route
authority and control endpoint in one trio program (DESIGN.md §5).

It is a party of the message plane named ``orch``. Nodes report ``ready`` and
send heartbeats to it; the CLI (or a test) sends it ``ctl_*`` requests. The
data plane never waits on it: once routes are installed, nodes talk peer to
peer.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import trio

from orchestrator import control as ctl
from orchestrator import faults, recovery, tracing
from orchestrator import placement as hosts
from orchestrator import state as saved_state
from orchestrator.choreographies import base as chor
from orchestrator.choreographies.fig2b_boot import boot_maps, firmware_boot, interposed_routes
from orchestrator.choreographies.fig8_remove_vmm import remove_vmm
from orchestrator.choreographies.state import VirtState
from orchestrator.errors import NoSuchNode, OrchestratorError
from orchestrator.journal import Journal
from orchestrator.routes import RouteAuthority
from orchestrator.supervisor import NodeProc, Supervisor
from orchestrator.topology import ORCHESTRATOR, Topology
from protocol import auth, authz
from protocol.constants import DEFAULT_MEMCTL
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.messages import Message, error_body
from protocol.routes import RouteTable, flow_sender
from protocol.transport import Party

log = logging.getLogger("hwemu.orchestrator")


class Orchestrator:
    """Launches a topology and runs it until :meth:`shutdown`.

    Use as ``async with running(topo, run_dir) as orch: ...`` (tests) or
    through ``python -m orchestrator.daemon`` (``hwemu up``).
    """

    def __init__(self, topology: Topology, run_dir: Path, *, sign: bool = True):
        """``sign=False`` runs the plane without MACs: only for ``bench/msgplane.py --mac``,
        which measures what they cost; nothing a user runs can ask for it."""
        self.topology = topology
        self.run_dir = Path(run_dir)
        # private (0700, ours): its sockets, configs and keys are the cluster's
        # capabilities; one open to other accounts is refused (PermissionError)
        auth.make_private_dir(self.run_dir)
        topology.check_run_dir(self.run_dir)
        # where every party runs (docs/hosts.md); the directory is the orchestrator's view of it
        self.placement = topology.placement()
        self.directory = topology.directory(self.run_dir)
        hosts.restore(self)  # the moves of a predecessor whose nodes still run
        self._master = auth.master_secret(self.run_dir) if sign else None
        keyring = None
        if self._master is not None:
            auth.write_client_file(self.run_dir, self._master, self.directory)
            keyring = auth.orchestrator_keyring(self._master, ORCHESTRATOR, self.directory)
            keyring.curve = hosts.curve_identity(self, ORCHESTRATOR)  # None on one host
        self.party = Party(ORCHESTRATOR, f"ipc://{self.run_dir}/{ORCHESTRATOR}.sock", self.directory, auth=keyring)
        self.recorder = self.party.recorder  # choreography steps and route changes, when tracing
        self.trace_events: list | None = None  # the orchestrator's events of the trace stopped last
        routes = topology.routes
        if topology.firmware.get("vmm_at_boot"):  # FIG. 2b: the machine comes up interposed
            routes = interposed_routes(topology)
        self.routes = RouteAuthority(self.party, RouteTable(1, routes), self.live_nodes)
        self.supervisor = Supervisor(self.run_dir, self._node_config, self._restarted, self._back,
                                     self.placement.launcher)
        self.spawn_epochs: dict[str, int] = {}  # node -> the route epoch its config carried when it was started
        self.incarnations: dict[str, int] = {}  # node -> the Party.incarnation its last ready named
        self.recovery_log: list[dict[str, Any]] = []  # what recovery did after each crash (docs/recovery.md)
        self.state = "starting"
        self.started = time.monotonic()
        self.done = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.journal = Journal(self.run_dir / "journal.jsonl")
        self.virt = VirtState()
        self.choreography_lock = trio.Lock()  # one choreography at a time
        self.recovered: list[dict[str, Any]] = []
        self.policy_reports: list[dict[str, Any]] = []
        self.step_hook = None  # async (figure, step) -> None, awaited after each choreography step
        self.boot_maps: dict[str, list[int]] = {}
        self.restart_maps: dict[str, list[int]] = {}
        """os -> the frames a crashed OS owned, which its next life boots on (not those it gave away)."""
        self.firmware_maps: dict[str, list[int]] = {}
        """os -> its boot memory map as the FIG. 2b firmware computed it (restored after a borrowed boot)."""
        self.firmware: dict[str, Any] = {}
        """What the FIG. 2b boot did (frames moved, map sizes, what the VMM discovered)."""
        self.forbidden_by: dict[str, int] = {}  # rule -> control requests it refused (protocol/authz.py)
        self.adopted: dict[str, int] = {}
        """nodes re-attached at start (a previous orchestrator started them): name -> pid."""
        self.faults = faults.register(self)  # the nemeses and their ctl_fault_* requests
        """os -> the frames of its boot memory map, for an instance booted on borrowed memory (¶49)."""

    # -- life cycle -------------------------------------------------------------

    def _node_config(self, spec) -> dict[str, Any]:
        options = spec.options
        if spec.name in self.boot_maps:  # the firmware's memory map: the frames it was given, not its partition
            options = {**options, "boot_frames": list(self.boot_maps[spec.name])}
        elif spec.name in self.restart_maps:  # after a crash: the frames it owns (orchestrator/recovery.py)
            options = {**options, "boot_frames": list(self.restart_maps[spec.name])}
        placed = self.placement.placed
        self.spawn_epochs[spec.name] = self.routes.table.epoch
        return {
            "name": spec.name, "kind": spec.kind,
            "endpoint": f"ipc://{self.run_dir}/{spec.name}.sock" if placed else self.directory[spec.name],
            "directory": hosts.view(self, spec.name), "routes": self.routes.table.to_wire(),
            "orchestrator": ORCHESTRATOR, "options": options,
            "heartbeat": self.topology.heartbeat, "run_dir": str(self.run_dir),
            "auth": self._master and {**auth.node_auth(self._master, spec.name, self.directory),
                                      "kinds": {n: s.kind for n, s in self.topology.nodes.items()},
                                      **hosts.curve_config(self, spec.name)},
        }

    async def _restarted(self, np: NodeProc) -> None:
        """A restarted node starts its flows from fseq 1: tell their receivers
        (and first, what a crash of its kind needs: orchestrator/recovery.py)."""
        if np.state == "crashed":  # the supervisor restarts it (not a start of a node that was stopped)
            await recovery.before_respawn(self, np)
        flows = {f: 1 for f in self.routes.table.routes if flow_sender(f) == np.spec.name}
        if flows:
            # the life that died: a receiver that hears the next life before this install
            # (it was paused, or slow) follows that life already and keeps its place
            dead = self.incarnations.get(np.spec.name)
            async with self.routes.lock:
                self.routes.table = self.routes.table.changed({})
                try:
                    await self.routes.install(self.routes.table, flows,
                                              restarted={np.spec.name: dead} if dead is not None else None)
                except (RemoteError, RequestTimeout) as exc:
                    log.warning("re-install after restart of %s: %s", np.spec.name, exc)
                self.save_state()

    async def _back(self, np: NodeProc) -> None:
        """A restarted node is ready. A route change made while it started (after its config
        was written, before it answered) was not sent to it: it gets the table in force now.
        Then its drivers reset it (orchestrator/recovery.py)."""
        name = np.spec.name
        if self.spawn_epochs.get(name, self.routes.table.epoch) != self.routes.table.epoch:
            async with self.routes.lock:
                try:
                    await self.routes.install(self.routes.table, nodes=[name])
                except (RemoteError, RequestTimeout, ProtocolError) as exc:
                    log.warning("routes of epoch %d not installed on %s after its restart: %s",
                                self.routes.table.epoch, name, exc)
        await recovery.back(self, np)

    def live_nodes(self) -> list[str]:
        return [n for n, np in self.supervisor.nodes.items() if np.state == "running"]

    async def start(self, nursery: trio.Nursery, recorded: dict[str, int | None] | None = None) -> None:
        """Serve the control inbox in ``nursery`` and launch every node.

        Args:
            recorded: the node pids a previous orchestrator of this run
                directory recorded (``cluster.json``). If every node it ran
                still runs and its saved state (:mod:`orchestrator.state`)
                matches their route epoch, they are re-attached, not
                restarted; otherwise the survivors are killed (by pid) and
                the cluster boots afresh.

        Raises:
            RuntimeError: a node did not come up (its log tail is in the message).
        """
        self._nursery = nursery
        await nursery.start(self.party.serve, self._dispatch)
        self.faults.continue_paused()  # a predecessor's SIGSTOPped nodes could not answer _adopt
        self.adopted = await self._adopt(nursery, recorded or {})
        specs = [s for s in self.topology.nodes.values() if s.name not in self.adopted]
        firmware = self.topology.firmware.get("vmm_at_boot") and not self.adopted
        if firmware:  # FIG. 2b: the hardware and the VMM first, then the OS instances on their maps
            await self.supervisor.start_all(nursery, [s for s in specs if s.kind != "os"], self.directory,
                                            self.topology.ready_timeout)
            self.firmware = await firmware_boot(self)
            specs = [s for s in specs if s.kind == "os"]
        await self.supervisor.start_all(nursery, specs, self.directory, self.topology.ready_timeout)
        self.save_state()  # at once: a state file of an earlier run must never describe these nodes
        # a choreography cut short by a crash of the previous orchestrator is rolled back
        self.recovered = await chor.recover(self)
        for rec in self.recovered:
            log.warning("rolled back incomplete choreography %s (%s): undid %s%s", rec["id"], rec["figure"],
                        rec["undone"], f", could not undo {rec['undo_failures']}" if rec["undo_failures"] else "")
        # re-attached nodes kept their memory: the firmware's map is for a machine booting afresh
        self.reset_memory = ({} if self.adopted else self.firmware["moved"] if firmware
                             else await self._firmware_memory_map())
        self.save_state()
        await self.faults.clear_leftovers()
        self.state = "running"

    def save_state(self) -> None:
        """Keep what a restarted orchestrator needs to re-attach (orchestrator/state.py)."""
        saved_state.save(self.run_dir, self.routes.table.epoch, self.routes.table.routes, self.virt, self.boot_maps)

    async def _adopt(self, nursery: trio.Nursery, recorded: dict[str, int | None]) -> dict[str, int]:
        """Re-attach to the nodes a killed predecessor left running; ``{}`` if it cannot."""
        alive = saved_state.survivors(self.run_dir, {n: p for n, p in recorded.items() if n in self.topology.nodes})
        if not alive:
            return {}
        saved = saved_state.load(self.run_dir)
        missing = [n for n, s in self.topology.nodes.items() if s.autostart and n not in alive]
        why = ("no saved state" if saved is None else
               f"{', '.join(missing)} did not survive" if missing else None)
        if why is None:
            procs = {n: saved_state.AdoptedProcess(pid) for n, pid in alive.items()}
            for name, proc in procs.items():
                np = NodeProc(self.topology.nodes[name], self.directory[name])
                np.proc, np.pid, np.state, np.started_at = proc, proc.pid, "running", time.monotonic()
                np.ready.set()
                self.supervisor.adopt(np, nursery)
            # replies to the dead orchestrator's requests may still arrive: never take one for ours
            self.party.number_from(time.time_ns() // 1000)
            epochs = await self._epochs(list(procs))
            if set(epochs.values()) == {saved["epoch"]}:
                self.routes.table = RouteTable(saved["epoch"], saved["routes"])
                self.virt, self.boot_maps = saved["virt"], dict(saved["boot_maps"])
                if self.topology.firmware.get("vmm_at_boot"):
                    self.firmware_maps = boot_maps(self.topology)
                log.warning("re-attached to %d running nodes at route epoch %d", len(procs), saved["epoch"])
                return alive
            why = f"route epochs {epochs} differ from the saved epoch {saved['epoch']}"
            for name in procs:
                del self.supervisor.nodes[name]
        log.warning("not re-attaching to the running nodes (%s): they are stopped and the cluster boots afresh", why)
        for pid in alive.values():
            proc = saved_state.AdoptedProcess(pid)
            proc.kill()
            with trio.move_on_after(5):
                await proc.wait()
        return {}

    async def _epochs(self, names: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}

        async def one(name: str) -> None:
            try:
                out[name] = (await self.party.request(name, "stats", timeout=5.0)).body["stats"].get("epoch")
            except (RemoteError, RequestTimeout) as exc:
                out[name] = f"no answer ({exc})"

        async with trio.open_nursery() as n:
            for name in names:
                n.start_soon(one, name)
        return out

    async def _firmware_memory_map(self) -> dict[str, Any]:
        """Give every OS its partition back, as the firmware's memory map says.

        The memory controller keeps its ownership across restarts, but the
        nodes start afresh: an OS boots with its whole partition, native. So
        frames a previous run left with the VMM or lent to another OS go home
        (zeroed), and every OS space is direct again. Returns what moved.
        """
        moved: dict[str, Any] = {}
        homes: dict[str, dict[int, str]] = {}
        for name, spec in self.topology.nodes.items():
            mem = spec.options.get("memory") if spec.kind == "os" else None
            if isinstance(mem, list) and len(mem) == 2 and all(isinstance(v, int) for v in mem):
                memctl = spec.options.get("memctl", DEFAULT_MEMCTL)
                homes.setdefault(memctl, {}).update({f: name for f in range(mem[0], mem[0] + mem[1])})
        run = chor.Run(self, "firmware", "firmware")
        for memctl, home in homes.items():
            if memctl not in self.live_nodes():
                continue
            try:
                owners = await run.call(memctl, "mem_owners")
                moves: dict[tuple[str, str], list[int]] = {}
                for owner, frames in owners.items():
                    if owner in ("invariants", "free", "firmware"):
                        continue
                    for f in frames:
                        if f in home and home[f] != owner:
                            moves.setdefault((owner, home[f]), []).append(f)
                for (owner, dest), frames in sorted(moves.items()):
                    if owner != "vmm":
                        await run.call(memctl, "mem_pin", {"frames": frames, "owner": owner})
                    await run.call(memctl, "mem_transfer", {"frames": frames, "from_owner": owner, "to_owner": dest})
                    moved[f"{owner}->{dest}"] = len(frames)
                for os_name in sorted(set(home.values())):
                    if os_name in owners:
                        await run.call(memctl, "mem_set_identity", {"space": os_name})
            except (RemoteError, RequestTimeout, chor.ChoreographyError) as exc:
                log.warning("memory map of %s not restored: %s", memctl, exc)
                moved[memctl] = f"not restored: {exc}"
        if moved:
            log.warning("frames returned to their partitions at start: %s", moved)
        return moved

    async def start_node(self, name: str) -> bool:
        """Launch a node that is not running (``autostart = false``); False if it was running."""
        if name not in self.supervisor.nodes:
            raise NoSuchNode(f"no node {name!r} in topology {self.topology.source}")
        np = self.supervisor.nodes[name]
        if np.pid is not None and np.state != "running":
            # it will start its flows from fseq 1 again: its receivers must expect that before
            # it sends anything (a timer_set at boot would otherwise count as a duplicate)
            await self._restarted(np)
        return await self.supervisor.start_one(self._nursery, name, self.topology.ready_timeout)

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the orchestrator's own nursery (it ends with the cluster).

        Raises:
            RuntimeError: the cluster is not running.
        """
        if self._nursery is None:
            raise RuntimeError("the orchestrator is not running")
        self._nursery.start_soon(fn, *args)

    async def stop_node(self, name: str, timeout: float = 5.0) -> bool:
        """Stop one node (it is not restarted); False if it was not running."""
        async def graceful(np: NodeProc) -> None:
            try:
                await self.party.request(np.spec.name, "shutdown", timeout=timeout / 2)
                await np.proc.wait()
            except (RemoteError, RequestTimeout, ProtocolError):
                pass
        return await self.supervisor.stop_one(name, graceful, timeout)

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop every node (shutdown message, SIGTERM, SIGKILL) and the orchestrator."""
        if self.state in ("stopping", "stopped"):
            await self.done.wait()
            return
        self.state = "stopping"

        async def graceful(np: NodeProc) -> None:
            try:
                await self.party.request(np.spec.name, "shutdown", timeout=timeout / 2)
                with trio.move_on_after(timeout / 2):
                    await np.proc.wait()
            except (RemoteError, RequestTimeout, ProtocolError):
                pass

        with trio.CancelScope(shield=True):
            self.faults.release()  # a SIGSTOPped node could not even take its SIGTERM
            await self.supervisor.stop_all(graceful, timeout)
            self.state = "stopped"
            if self._nursery is not None:
                self._nursery.cancel_scope.cancel()
            self.party.close()
            for np in self.supervisor.nodes.values():  # sockets of killed nodes
                if np.endpoint.startswith("ipc://"):
                    try:
                        os.unlink(np.endpoint[6:])
                    except FileNotFoundError:
                        pass
            self.done.set()

    # -- the orchestrator's inbox -------------------------------------------------

    async def _dispatch(self, msg: Message) -> None:
        if self._master is not None:  # who may ask what (protocol/authz.py): no node may steer the cluster
            ctx = authz.Context(ORCHESTRATOR, self.routes.table,
                                {n: s.kind for n, s in self.topology.nodes.items()}, ORCHESTRATOR)
            if not authz.allowed(msg, ctx):
                rule = authz.rule_for(msg.kind).name
                self.forbidden_by[rule] = self.forbidden_by.get(rule, 0) + 1
                raise ProtocolError("forbidden", authz.refusal(msg, ctx), "src")
        if msg.kind == "ready":
            self.supervisor.mark_ready(msg.src, msg.body["pid"])
            if isinstance(msg.body.get("incarnation"), int):
                self.incarnations[msg.src] = msg.body["incarnation"]
            if self.faults.active:
                self._nursery.start_soon(self.faults.node_ready, msg.src)
            if self.recorder.tracing:
                self._nursery.start_soon(tracing.node_ready, self, msg.src)
        elif msg.kind == "heartbeat":
            np = self.supervisor.nodes.get(msg.src)
            if np is not None and np.pid == msg.body["pid"]:
                np.last_stats = msg.body["stats"]
                np.last_heartbeat = time.monotonic()
        elif msg.kind.startswith("ctl_"):
            self._nursery.start_soon(self._control, msg)
        elif msg.kind in ("ok", "error", "pong"):
            pass
        else:
            raise ProtocolError("unhandled_kind", f"the orchestrator does not handle {msg.kind!r}", "kind")

    async def control(self, kind: str, /, **body: Any) -> Any:
        """Run control request ``kind`` with its registered handler
        (orchestrator/control.py) and return the reply's ``data``; the inbox
        and tests call it alike.

        Raises:
            ProtocolError: ``unknown_kind``: no handler registered for ``kind``.
        """
        request = ctl.lookup(kind)
        if request is None:
            raise ProtocolError("unknown_kind", f"no control request {kind!r} (known: {', '.join(ctl.kinds())})",
                                "kind")
        return await request.handler(self, **body)

    async def _control(self, msg: Message) -> None:
        try:
            data = await self.control(msg.kind, **msg.body)
        except (ProtocolError, OrchestratorError, RemoteError, RequestTimeout, ValueError, OSError) as exc:
            await self.party.reply(msg, "error", error_body(exc, ref=msg.kind))  # reason: exc.reason
            return
        except Exception as exc:  # a bug: answer in one line and keep the orchestrator (and cluster) up
            log.exception("%s failed", msg.kind)
            while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]  # trio's nursery wrapping says nothing to a person
            await self.party.reply(msg, "error", error_body(exc, ref=msg.kind))
            return
        await self.party.reply(msg, "ok", {"data": data})
        if msg.kind == "ctl_down":
            await self.shutdown()

    # -- control operations (also called directly by tests) ---------------------------

    async def ctl_status(self) -> dict[str, Any]:
        """Every node (kind, pid, endpoint, state, uptime, messages) and the routes."""
        await self.refresh_stats()
        return {
            "cluster": self.topology.name, "topology": self.topology.source,
            "orchestrator": {"pid": os.getpid(), "state": self.state,
                             "uptime": round(time.monotonic() - self.started, 3),
                             "endpoint": self.directory[ORCHESTRATOR],
                             "auth_failed": self.party.counters["auth_failed"],
                             **hosts.status(self),
                             "forbidden": sum(self.forbidden_by.values()), "forbidden_by": dict(self.forbidden_by)},
            "nodes": [np.view(stale_after=self.stale_after) for np in self.supervisor.nodes.values()],
            "routes": self.routes.table.to_wire(),
            "virt": self.virt.view(self.topology),
            "faults": self.faults.listing(),
        }

    @property
    def stale_after(self) -> float:
        """Seconds of silence after which a running node is ``unresponsive``: three missed heartbeats."""
        return max(3 * self.topology.heartbeat, 2.0)

    async def refresh_stats(self) -> None:
        """Ask every running node for fresh counters (heartbeats may be a second old)."""
        async def one(np: NodeProc) -> None:
            try:
                reply = await self.party.request(np.spec.name, "stats", timeout=1.0)
                np.last_stats = reply.body["stats"]
                if reply.body["stats"].get("pid", np.pid) == np.pid:
                    np.last_heartbeat = time.monotonic()  # it answered: as good as a heartbeat
            except (RemoteError, RequestTimeout):
                pass

        async with trio.open_nursery() as n:
            for np in self.supervisor.nodes.values():
                if np.state == "running":
                    n.start_soon(one, np)

    async def ctl_route_show(self) -> dict[str, Any]:
        return self.routes.table.to_wire()

    async def ctl_route_set(self, changes: dict[str, str], create: bool = False) -> dict[str, Any]:
        unknown = sorted(f for f in changes if flow_sender(f) and f not in self.routes.table.routes)
        if unknown and not create:  # a misspelt flow must not become a new route silently
            raise ProtocolError("unknown_flow", f"no route for flow {unknown[0]!r} in the table (epoch "
                                f"{self.routes.table.epoch}; see `hwemu route show`): add it with --create", "changes")
        report = await self.routes.change(changes)
        self.save_state()
        return {"epoch": report.epoch, "pause_ms": report.pause_ms, "total_ms": report.total_ms,
                "flows": {f: list(v) for f, v in report.flows.items()}, "last": report.last}

    async def ctl_trace_start(self, size: int = tracing.DEFAULT_RING) -> dict[str, Any]:
        """Every node's trace ring and the orchestrator's on (orchestrator/tracing.py)."""
        return await tracing.start(self, size)

    async def ctl_trace_stop(self) -> dict[str, Any]:
        return await tracing.stop(self)

    async def ctl_trace_save(self, path: str, also: list[str] | None = None) -> dict[str, Any]:
        """The merged trace of every ring, written to ``path`` (and to each of ``also``)."""
        return await tracing.save(self, path, also)

    async def ctl_down(self, timeout: float = 5.0) -> dict[str, Any]:
        return {"stopping": [np.spec.name for np in self.supervisor.nodes.values()]}

    async def ctl_request(self, node: str, kind: str, body: dict, timeout: float = 5.0) -> dict[str, Any]:
        """Relay one request to a node and return its reply (for tools and tests)."""
        reply = await self.party.request(node, kind, body, timeout=timeout)
        return {"kind": reply.kind, "body": reply.body}

    # -- choreographies (DESIGN.md §5; orchestrator/choreographies) ------------------

    def _os_names(self) -> list[str]:
        return [n for n, s in self.topology.nodes.items() if s.kind == "os"]

    def default_os(self, os_name: str | None) -> str:
        """The OS named, else the one the CPU traps to, else the first OS of the topology."""
        if os_name:
            return os_name
        on_cpu = self.routes.table.get("trap:cpu0")
        if on_cpu in self._os_names():
            return on_cpu
        attached = sorted(self.virt.attached)
        if attached:
            return attached[0]
        oses = self._os_names()
        if not oses:
            raise chor.ChoreographyError(f"topology {self.topology.source} has no OS instance")
        return oses[0]

    async def exclusive(self, fn, *args, **kw) -> Any:
        async with self.choreography_lock:
            before = len(self.virt.attached)
            result = await fn(self, *args, **kw)
        if before > 1:
            self.policy_reports = await self._apply_policy()
        return result

    async def _apply_policy(self) -> list[dict[str, Any]]:
        """Policy (off by default): devirtualize everything once one OS remains under the VMM
        (called when the number of managed OS instances drops to one). Returns the reports."""
        if not self.virt.auto_devirtualize or len(self.virt.attached) != 1:
            return []
        async with self.choreography_lock:
            try:
                return await remove_vmm(self, cpu=True)
            except (chor.ChoreographyError, chor.ChoreographyFailed) as exc:
                log.warning("automatic devirtualization did not happen: %s", exc)
                return [{"figure": "policy", "outcome": "refused", "error": str(exc)}]

    async def request(self, node: str, kind: str, body: dict | None = None, timeout: float = 5.0) -> Message:
        return await self.party.request(node, kind, body or {}, timeout=timeout)



# The cluster's own control requests (their schemas are in protocol/messages.py);
# the choreographies register theirs in their modules (orchestrator/choreographies).
ctl.register("ctl_status", Orchestrator.ctl_status)
ctl.register("ctl_route_show", Orchestrator.ctl_route_show)
ctl.register("ctl_route_set", Orchestrator.ctl_route_set)
ctl.register("ctl_down", Orchestrator.ctl_down)
ctl.register("ctl_request", Orchestrator.ctl_request)
ctl.register("ctl_trace_start", Orchestrator.ctl_trace_start)
ctl.register("ctl_trace_stop", Orchestrator.ctl_trace_stop)
ctl.register("ctl_trace_save", Orchestrator.ctl_trace_save)


@asynccontextmanager
async def running(topology: Topology, run_dir: Path, *, sign: bool = True) -> AsyncIterator[Orchestrator]:
    """A started cluster that is stopped (every process, by pid) on exit, even on error."""
    orch = Orchestrator(topology, run_dir, sign=sign)
    async with trio.open_nursery() as nursery:
        try:
            await orch.start(nursery)
            yield orch
        finally:
            await orch.shutdown()
