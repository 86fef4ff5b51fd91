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
from typing import Any, AsyncIterator

import trio

from orchestrator.routes import RouteAuthority, RouteChangeError
from orchestrator.supervisor import NodeProc, Supervisor
from orchestrator.topology import ORCHESTRATOR, Topology
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

    def __init__(self, topology: Topology, run_dir: Path):
        self.topology = topology
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        topology.check_run_dir(self.run_dir)
        self.directory = topology.directory(self.run_dir)
        self.party = Party(ORCHESTRATOR, self.directory[ORCHESTRATOR], self.directory)
        self.routes = RouteAuthority(self.party, RouteTable(1, topology.routes), self.live_nodes)
        self.supervisor = Supervisor(self.run_dir, self._node_config, self._restarted)
        self.state = "starting"
        self.started = time.monotonic()
        self.done = trio.Event()
        self._nursery: trio.Nursery | None = None

    # -- life cycle -------------------------------------------------------------

    def _node_config(self, spec) -> dict[str, Any]:
        return {
            "name": spec.name, "kind": spec.kind, "endpoint": self.directory[spec.name],
            "directory": self.directory, "routes": self.routes.table.to_wire(),
            "orchestrator": ORCHESTRATOR, "options": spec.options,
            "heartbeat": self.topology.heartbeat, "run_dir": str(self.run_dir),
        }

    async def _restarted(self, np: NodeProc) -> None:
        """A restarted node starts its flows from fseq 1: tell their receivers."""
        flows = {f: 1 for f in self.routes.table.routes if flow_sender(f) == np.spec.name}
        if flows:
            async with self.routes.lock:
                self.routes.table = self.routes.table.changed({})
                try:
                    await self.routes.install(self.routes.table, flows)
                except (RemoteError, RequestTimeout) as exc:
                    log.warning("re-install after restart of %s: %s", np.spec.name, exc)

    def live_nodes(self) -> list[str]:
        return [n for n, np in self.supervisor.nodes.items() if np.state == "running"]

    async def start(self, nursery: trio.Nursery) -> None:
        """Serve the control inbox in ``nursery`` and launch every node.

        Raises:
            RuntimeError: a node did not come up (its log tail is in the message).
        """
        self._nursery = nursery
        await nursery.start(self.party.serve, self._dispatch)
        specs = list(self.topology.nodes.values())
        await self.supervisor.start_all(nursery, specs, self.directory, self.topology.ready_timeout)
        self.state = "running"

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
        if msg.kind == "ready":
            self.supervisor.mark_ready(msg.src, msg.body["pid"])
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

    async def _control(self, msg: Message) -> None:
        try:
            data = await getattr(self, msg.kind)(**msg.body)
        except (ProtocolError, RouteChangeError, RemoteError, RequestTimeout, KeyError) as exc:
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
                             "endpoint": self.directory[ORCHESTRATOR]},
            "nodes": [np.view() for np in self.supervisor.nodes.values()],
            "routes": self.routes.table.to_wire(),
        }

    async def refresh_stats(self) -> None:
        """Ask every running node for fresh counters (heartbeats may be a second old)."""
        async def one(np: NodeProc) -> None:
            try:
                reply = await self.party.request(np.spec.name, "stats", timeout=1.0)
                np.last_stats = reply.body["stats"]
            except (RemoteError, RequestTimeout):
                pass

        async with trio.open_nursery() as n:
            for np in self.supervisor.nodes.values():
                if np.state == "running":
                    n.start_soon(one, np)

    async def ctl_route_show(self) -> dict[str, Any]:
        return self.routes.table.to_wire()

    async def ctl_route_set(self, changes: dict[str, str]) -> dict[str, Any]:
        report = await self.routes.change(changes)
        return {"epoch": report.epoch, "pause_ms": report.pause_ms, "total_ms": report.total_ms,
                "flows": {f: list(v) for f, v in report.flows.items()}, "last": report.last}

    async def ctl_down(self, timeout: float = 5.0) -> dict[str, Any]:
        return {"stopping": [np.spec.name for np in self.supervisor.nodes.values()]}

    async def ctl_request(self, node: str, kind: str, body: dict, timeout: float = 5.0) -> dict[str, Any]:
        """Relay one request to a node and return its reply (for tools and tests)."""
        reply = await self.party.request(node, kind, body, timeout=timeout)
        return {"kind": reply.kind, "body": reply.body}

    async def request(self, node: str, kind: str, body: dict | None = None, timeout: float = 5.0) -> Message:
        return await self.party.request(node, kind, body or {}, timeout=timeout)


@asynccontextmanager
async def running(topology: Topology, run_dir: Path) -> AsyncIterator[Orchestrator]:
    """A started cluster that is stopped (every process, by pid) on exit, even on error."""
    orch = Orchestrator(topology, run_dir)
    async with trio.open_nursery() as nursery:
        try:
            await orch.start(nursery)
            yield orch
        finally:
            await orch.shutdown()
