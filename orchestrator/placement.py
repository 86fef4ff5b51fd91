"""The orchestrator's side of placement across hosts (docs/hosts.md): each node's
view of the directory, its CURVE keys in its config, and moving a node to
another host (``hwemu move``, ``ctl_node_move``).

On one host (no ``[hosts]`` in the topology) every function here gives what
the cluster had before: the orchestrator's directory, no CURVE.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import trio

from orchestrator.control import control, optional
from orchestrator.supervisor import launched
from orchestrator.topology import ORCHESTRATOR
from orchestrator.topology_hosts import ipc_endpoint
from protocol import curve
from protocol.auth import write_private
from protocol.errors import RemoteError, RequestTimeout

if TYPE_CHECKING:  # the orchestrator imports this module
    from orchestrator.cluster import Orchestrator

log = logging.getLogger("hwemu.placement")

MOVES = "placement.json"  # in the run directory: node -> host, while nodes moved by `hwemu move` run


def restore(orch: "Orchestrator") -> None:
    """Put back the moves of a predecessor whose nodes still run (an orchestrator
    restarted after a crash re-attaches to them where they are). A cluster
    that starts afresh takes the topology's placement (and the file goes)."""
    path = orch.run_dir / MOVES
    if not orch.placement.placed or not path.exists():
        return
    alive = {name for name in launched(orch.run_dir).values() if name != ORCHESTRATOR}
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = None
    if not alive or not isinstance(saved, dict):
        path.unlink(missing_ok=True)
        return
    for node, host in saved.items():
        if node in orch.topology.nodes and host in orch.placement.hosts:
            try:
                orch.placement.move(node, host)
            except ValueError as exc:  # the topology changed since: its placement holds
                log.warning("not restoring the move of %s: %s", node, exc)
    orch.directory.update(orch.placement.view(ORCHESTRATOR, ipc_endpoint(orch.run_dir)))


def view(orch: "Orchestrator", name: str) -> dict[str, str]:
    """The directory as party ``name`` sees it now."""
    if not orch.placement.placed:
        return orch.directory
    return orch.placement.view(name, ipc_endpoint(orch.run_dir))


def curve_identity(orch: "Orchestrator", name: str) -> curve.CurveIdentity | None:
    """``name``'s CURVE keys with the tcp endpoint it serves where it runs now (made by
    ``hwemu keys init``, else here at the first start); None if no party has a tcp
    endpoint. A topology without hosts may give a node a tcp ``endpoint``: it is
    served with CURVE too (every tcp endpoint is).

    Raises:
        PermissionError, ValueError: a key file open to others, or malformed.
    """
    if not orch.placement.placed and not any(ep.startswith("tcp://") for ep in orch.directory.values()):
        return None  # all ipc: the private run directory and the MACs (docs/security.md)
    names = orch.placement.order
    if not curve.have_keys(orch.run_dir, names):
        curve.init_keys(orch.run_dir, names)  # only the missing ones: keys made beforehand are kept
    return curve.load_identity(orch.run_dir, name, bind=orch.placement.tcp(name), authority=ORCHESTRATOR)


def curve_config(orch: "Orchestrator", name: str) -> dict[str, Any]:
    """What node ``name``'s ``auth`` carries of CURVE: ``{"curve": ...}``, or nothing (all ipc)."""
    ident = curve_identity(orch, name)
    return {"curve": ident.to_config()} if ident is not None else {}


def status(orch: "Orchestrator") -> dict[str, Any]:
    """The orchestrator's own refusals on tcp, and where each party runs, for ``hwemu status``."""
    if not orch.placement.placed:
        return {}
    c = orch.party.counters
    return {"wrong_key": c.get("wrong_key", 0), "curve_refused": c.get("curve_refused", 0),
            "hosts": dict(orch.placement.where)}


@control("ctl_node_move", node="str", host="str", timeout=optional("float"))
async def move(orch: "Orchestrator", node: str, host: str, timeout: float = 30.0) -> dict[str, Any]:
    """Move ``node`` to ``host``: every running party is told where it is now, then
    it is killed where it runs and restarted (per its restart policy, with the
    recovery of a crash) on the new host, whose tcp endpoint it serves.

    Raises:
        ValueError: no hosts in the topology, an unknown host, a port clash there,
            or a node whose restart policy would not bring it back.
        KeyError: no such node.
        RuntimeError: it did not come back within ``timeout`` seconds.
    """
    placement = orch.placement
    if not placement.placed:
        raise ValueError(f"topology {orch.topology.source} names no hosts: there is nowhere to move {node} to")
    if node not in orch.topology.nodes:
        raise KeyError(f"no node {node!r} in topology {orch.topology.source}")
    np = orch.supervisor.nodes[node]
    if np.state != "running" or np.proc is None:
        raise ValueError(f"{node} is {np.state}, not running: it moves only while it runs")
    if np.spec.restart == "never" or np.restarts >= np.spec.max_restarts:
        raise ValueError(f"{node} would not be restarted (restart = {np.spec.restart!r}, "
                         f"{np.restarts} of {np.spec.max_restarts} restarts used)")
    old = placement.where[node]
    if old == host:
        return {"node": node, "from": old, "to": host, "endpoint": view(orch, ORCHESTRATOR)[node], "moved": False}
    placement.move(node, host)  # ValueError: unknown host, or a clash there
    write_private(orch.run_dir / MOVES, json.dumps({n: h for n, h in placement.where.items()
                                                    if n != ORCHESTRATOR}).encode())
    ipc = ipc_endpoint(orch.run_dir)
    endpoint = placement.view(ORCHESTRATOR, ipc)[node]
    orch.directory[node] = np.endpoint = endpoint
    orch.party.moved(node, endpoint)

    async def tell(peer: str) -> None:
        try:
            await orch.party.request(peer, curve.MOVED, {"node": node, "endpoint": placement.view(peer, ipc)[node]},
                                     timeout=5.0)
        except (RemoteError, RequestTimeout) as exc:  # it learns it at its own restart (its config)
            log.warning("%s was not told that %s moved: %s", peer, node, exc)

    async with trio.open_nursery() as n:
        for peer in orch.live_nodes():
            if peer != node:
                n.start_soon(tell, peer)
    restarts, pid = np.restarts, np.pid
    log.warning("moving %s from host %s to %s: killing pid %d, the supervisor restarts it there", node, old, host, pid)
    np.proc.kill()
    with trio.move_on_after(timeout):
        while not (np.restarts > restarts and np.state == "running" and np.pid != pid):
            await trio.sleep(0.05)
    if np.state != "running" or np.pid == pid:
        raise RuntimeError(f"{node} did not come back on host {host} within {timeout:g} s (state {np.state})")
    return {"node": node, "from": old, "to": host, "endpoint": endpoint, "pid": np.pid, "moved": True}
