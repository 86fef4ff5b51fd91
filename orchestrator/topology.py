"""Topology files (``compose/*.toml``): which nodes a cluster has, where their
inboxes are, their options and the initial routes (DESIGN.md §1, §2).

    [cluster]
    name = "native"

    [nodes.cpu0]
    kind = "cpu"             # a node kind: nodes.<module> is started for it
    restart = "on-failure"   # never | on-failure | always
    autostart = true         # false: not launched at `up`; a choreography starts it (the vmm, os2)
    [nodes.cpu0.options]
    quantum = 20000

    [routes]
    "trap:cpu0" = "os1"

Endpoints default to ``ipc://<run dir>/<node>.sock``; a node may name its own
(``endpoint = "tcp://127.0.0.1:7001"``). Errors name the file and the key.

Across hosts (orchestrator/topology_hosts.py, docs/hosts.md): ``[hosts.NAME]``
with ``address`` (and ``port_base``, ``exec``), ``host = "NAME"`` (and
``port``) on a node and on ``[orchestrator]``.

FIG. 2b, the VMM at boot (orchestrator/choreographies/fig2b_boot.py):

    [firmware]
    vmm_at_boot = true       # the cluster comes up with the VMM loaded and interposed
    vmm_frames = [0, 64]     # its frames [first, count], hidden from every OS's memory map
    vmm_host = "os1"         # the OS its frames go to if it is unloaded (FIG. 8)
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import TopologyError
from orchestrator.topology_hosts import HostSpec, Placement, check_host, ipc_endpoint, parse_hosts
from protocol.constants import DEFAULT_MEMCTL, ORCHESTRATOR
from protocol.errors import ProtocolError
from protocol.routes import check_flow, check_node_name

# node kind -> the module started as `python -m <module>`
KINDS: dict[str, str] = {
    "cpu": "nodes.cpu",
    "memctl": "nodes.memctl",
    "uart": "nodes.uart",
    "timer": "nodes.timer",
    "disk": "nodes.disk",
    "nic": "nodes.nic",
    "os": "nodes.guest_os",
    "vmm": "nodes.vmm",
    "streamer": "nodes.streamer",
}
RESTART_POLICIES = ("never", "on-failure", "always")
_IPC_PATH_MAX = 100  # sun_path is 108 bytes on Linux


@dataclass
class NodeSpec:
    name: str
    kind: str
    module: str
    endpoint: str | None = None
    restart: str = "on-failure"
    max_restarts: int = 3
    options: dict[str, Any] = field(default_factory=dict)
    autostart: bool = True
    host: str | None = None
    """The host it runs on (``[hosts]``); None without hosts."""
    port: int | None = None
    """Its tcp port when placed; None: the host's ``port_base`` + its index."""


@dataclass
class Topology:
    name: str
    source: str
    nodes: dict[str, NodeSpec]
    routes: dict[str, str]
    ready_timeout: float = 15.0
    heartbeat: float = 1.0
    firmware: dict[str, Any] = field(default_factory=dict)
    """The ``[firmware]`` table (FIG. 2b), validated; empty: the VMM is not there at boot."""
    hosts: dict[str, HostSpec] = field(default_factory=dict)
    """The ``[hosts]`` tables; empty: one host, every endpoint ``ipc://``."""
    orchestrator_host: str | None = None

    def endpoint(self, node: str, run_dir: Path) -> str:
        spec = self.nodes[node]
        return spec.endpoint or f"ipc://{run_dir}/{node}.sock"

    def placement(self) -> Placement:
        """Where every party runs as the file says (a new object: the orchestrator moves nodes in its own)."""
        order = [ORCHESTRATOR, *self.nodes]
        if not self.hosts:
            return Placement({}, order)
        where = {ORCHESTRATOR: self.orchestrator_host, **{n: s.host for n, s in self.nodes.items()}}
        return Placement(dict(self.hosts), order, where, {n: s.port for n, s in self.nodes.items() if s.port})

    def directory(self, run_dir: Path, viewer: str = ORCHESTRATOR) -> dict[str, str]:
        """Every party's endpoint as ``viewer`` reaches it (over tcp if on another host)."""
        if self.hosts:
            return self.placement().view(viewer, ipc_endpoint(run_dir))
        d = {name: self.endpoint(name, run_dir) for name in self.nodes}
        d[ORCHESTRATOR] = f"ipc://{run_dir}/{ORCHESTRATOR}.sock"
        return d

    def check_run_dir(self, run_dir: Path) -> None:
        """ipc paths must fit in a Unix socket address."""
        for name, ep in self.directory(run_dir).items():
            if ep.startswith("ipc://") and len(ep) - 6 > _IPC_PATH_MAX:
                raise TopologyError(self.source, f"nodes.{name}.endpoint", f"ipc path {ep[6:]!r} is longer than "
                                    f"{_IPC_PATH_MAX} bytes; use a shorter run directory")


def _table(data: Any, source: str, key: str) -> dict:
    if not isinstance(data, dict):
        raise TopologyError(source, key, f"expected a table, got {type(data).__name__}")
    return data


def _module_exists(module: str) -> bool:
    # nodes run as `python -m module` from the current directory, which is on
    # their path; make it part of this check too
    added = os.getcwd() not in sys.path
    if added:
        sys.path.append(os.getcwd())
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False
    finally:
        if added:
            sys.path.remove(os.getcwd())


def parse(data: dict, source: str = "<topology>") -> Topology:
    """Validate a loaded TOML document into a :class:`Topology`.

    Raises:
        TopologyError: naming the key and what was expected.
    """
    _table(data, source, "(top level)")
    unknown = set(data) - {"cluster", "nodes", "routes", "orchestrator", "firmware", "hosts"}
    if unknown:
        raise TopologyError(source, sorted(unknown)[0],
                            "unknown section (expected cluster, nodes, routes, orchestrator, firmware, hosts)")

    def fail(key: str, problem: str) -> TopologyError:
        return TopologyError(source, key, problem)

    hosts = parse_hosts(_table(data.get("hosts", {}), source, "hosts"), fail)
    cluster = _table(data.get("cluster", {}), source, "cluster")
    name = cluster.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise TopologyError(source, "cluster.name", "expected a non-empty string")
    orch = _table(data.get("orchestrator", {}), source, "orchestrator")
    orch_host = None
    if "host" in orch or hosts:
        orch_host = check_host(orch.get("host", next(iter(hosts), None)), hosts, "orchestrator.host", fail)
    ready_timeout = orch.get("ready_timeout", 15.0)
    heartbeat = orch.get("heartbeat", 1.0)
    for key, val in (("ready_timeout", ready_timeout), ("heartbeat", heartbeat)):
        if not isinstance(val, (int, float)) or isinstance(val, bool) or val <= 0:
            raise TopologyError(source, f"orchestrator.{key}", f"expected a positive number of seconds, got {val!r}")
    default_restart = orch.get("restart", "on-failure")
    if default_restart not in RESTART_POLICIES:
        raise TopologyError(source, "orchestrator.restart",
                            f"expected one of {', '.join(RESTART_POLICIES)}, got {default_restart!r}")

    nodes_raw = _table(data.get("nodes"), source, "nodes") if "nodes" in data else None
    if not nodes_raw:
        raise TopologyError(source, "nodes", "a topology needs at least one node ([nodes.<name>] tables)")
    nodes: dict[str, NodeSpec] = {}
    endpoints: dict[str, str] = {}
    for node_name, raw in nodes_raw.items():
        key = f"nodes.{node_name}"
        try:
            check_node_name(node_name)
        except ProtocolError as exc:
            raise TopologyError(source, key, exc.detail) from None
        if node_name == ORCHESTRATOR:
            raise TopologyError(source, key, f"the name {ORCHESTRATOR!r} is reserved for the orchestrator")
        raw = _table(raw, source, key)
        extra = set(raw) - {"kind", "module", "endpoint", "restart", "max_restarts", "options", "autostart",
                            "host", "port"}
        if extra:
            raise TopologyError(source, f"{key}.{sorted(extra)[0]}", "unknown key (expected kind, module, endpoint, "
                                "restart, max_restarts, options, autostart, host, port)")
        host = port = None
        if "host" in raw or "port" in raw or hosts:
            host = check_host(raw.get("host", orch_host), hosts, f"{key}.host", fail)
            if "endpoint" in raw:
                raise TopologyError(source, f"{key}.endpoint", "a placed node's endpoints follow from its host "
                                    "(ipc:// on its host, tcp://ADDRESS:PORT from others): give port, not endpoint")
            port = raw.get("port")
            if port is not None and not (isinstance(port, int) and not isinstance(port, bool) and 1 <= port <= 65535):
                raise TopologyError(source, f"{key}.port", f"expected a port number 1-65535, got {port!r}")
        kind = raw.get("kind")
        if not isinstance(kind, str):
            raise TopologyError(source, f"{key}.kind",
                                f"missing or not a string; known kinds: {', '.join(sorted(KINDS))}")
        module = raw.get("module", KINDS.get(kind))
        if module is None:
            raise TopologyError(source, f"{key}.kind", f"unknown node kind {kind!r}; known kinds: "
                                f"{', '.join(sorted(KINDS))} (or give module = \"pkg.mod\")")
        if not isinstance(module, str) or not _module_exists(module):
            raise TopologyError(source, f"{key}.module" if "module" in raw else f"{key}.kind",
                                f"node kind {kind!r}: module {module!r} is not importable")
        endpoint = raw.get("endpoint")
        if endpoint is not None:
            if not isinstance(endpoint, str) or not endpoint.startswith(("ipc://", "tcp://")):
                raise TopologyError(source, f"{key}.endpoint",
                                    f"expected ipc://PATH or tcp://HOST:PORT, got {endpoint!r}")
            if endpoint in endpoints:
                raise TopologyError(source, f"{key}.endpoint", f"same endpoint as node {endpoints[endpoint]!r}")
            endpoints[endpoint] = node_name
        restart = raw.get("restart", default_restart)
        if restart not in RESTART_POLICIES:
            raise TopologyError(source, f"{key}.restart",
                                f"expected one of {', '.join(RESTART_POLICIES)}, got {restart!r}")
        max_restarts = raw.get("max_restarts", 3)
        if not isinstance(max_restarts, int) or isinstance(max_restarts, bool) or max_restarts < 0:
            raise TopologyError(source, f"{key}.max_restarts", f"expected a non-negative integer, got {max_restarts!r}")
        options = _table(raw.get("options", {}), source, f"{key}.options")
        autostart = raw.get("autostart", True)
        if not isinstance(autostart, bool):
            raise TopologyError(source, f"{key}.autostart", f"expected true or false, got {autostart!r}")
        nodes[node_name] = NodeSpec(node_name, kind, module, endpoint, restart, max_restarts, dict(options), autostart,
                                    host, port)

    routes_raw = _table(data.get("routes", {}), source, "routes")
    routes: dict[str, str] = {}
    for flow, target in routes_raw.items():
        key = f"routes.{flow!r}" if "." in flow else f"routes.{flow}"
        try:
            check_flow(flow)
        except ProtocolError as exc:
            raise TopologyError(source, key, exc.detail) from None
        if not isinstance(target, str) or target not in nodes:
            raise TopologyError(source, key, f"routes to {target!r}, which is not a node of this topology")
        routes[flow] = target
    firmware = _firmware(_table(data.get("firmware", {}), source, "firmware"), nodes, source)
    if not firmware:  # with the VMM at boot the firmware makes every space from the OSes' memory (FIG. 2b)
        _check_partitions(nodes, source)
    topo = Topology(name, source, nodes, routes, float(ready_timeout), float(heartbeat), firmware, hosts, orch_host)
    if hosts:
        clashes = topo.placement().clashes()
        if clashes:
            first = clashes[0].split(" and ", 1)[0]
            raise TopologyError(source, f"nodes.{first}.port" if first in nodes else "orchestrator",
                                f"port clash: {clashes[0]}")
    return topo


def _range(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value))


def _firmware(fw: dict, nodes: dict[str, NodeSpec], source: str) -> dict[str, Any]:
    """Validate ``[firmware]`` (FIG. 2b): the VMM node, its frames, its host, and OS memory
    ranges that are disjoint or nested (a range inside another is hidden from the outer OS)."""
    extra = set(fw) - {"vmm_at_boot", "vmm_frames", "vmm_host"}
    if extra:
        raise TopologyError(source, f"firmware.{sorted(extra)[0]}",
                            "unknown key (expected vmm_at_boot, vmm_frames, vmm_host)")
    if not fw:
        return {}
    at_boot = fw.get("vmm_at_boot", False)
    if not isinstance(at_boot, bool):
        raise TopologyError(source, "firmware.vmm_at_boot", f"expected true or false, got {at_boot!r}")
    if not at_boot:
        return {}
    vmm = nodes.get("vmm")
    if vmm is None or vmm.kind != "vmm" or not vmm.autostart:
        raise TopologyError(source, "firmware.vmm_at_boot", "needs a node named 'vmm' of kind vmm, started at "
                                                            "boot (not autostart = false)")
    frames = fw.get("vmm_frames")
    if not _range(frames) or frames[1] == 0:
        raise TopologyError(source, "firmware.vmm_frames", f"expected [first_frame, count > 0], got {frames!r}")
    oses = {n: s for n, s in nodes.items() if s.kind == "os"}
    host = fw.get("vmm_host", next(iter(oses), None))
    if host not in oses:
        raise TopologyError(source, "firmware.vmm_host", f"expected an OS node ({', '.join(oses)}), got {host!r}")
    ranges = {}
    for name, spec in oses.items():
        mem = spec.options.get("memory")
        if not _range(mem):
            raise TopologyError(source, f"nodes.{name}.options.memory", "the firmware builds the memory map from "
                                f"it: expected [first_frame, count], got {mem!r}")
        ranges[name] = (mem[0], mem[0] + mem[1])
    names = sorted(ranges)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            (a0, a1), (b0, b1) = ranges[a], ranges[b]
            overlap = a0 < b1 and b0 < a1
            nested = (a0 <= b0 and b1 <= a1) or (b0 <= a0 and a1 <= b1)
            if overlap and not nested:
                raise TopologyError(source, f"nodes.{b}.options.memory",
                                    f"overlaps the memory of {a} without one containing the other")
            if overlap and ranges[a] == ranges[b]:
                raise TopologyError(source, f"nodes.{b}.options.memory", f"is the same range as the memory of {a}")
    return {"vmm_at_boot": True, "vmm_frames": list(frames), "vmm_host": host}


def _check_partitions(nodes: dict[str, NodeSpec], source: str) -> None:
    """The firmware's memory map is given twice: memctl's ``partitions`` (what
    each OS owns) and each OS's ``memory`` (the free list it boots with).
    They must agree, or the OS would hand out frames it cannot reach.

    An OS without either (an instance booted later on borrowed memory, ¶49)
    is fine; an OS whose memory controller is not in the topology is not checked.
    """
    for os_name, spec in nodes.items():
        if spec.kind != "os":
            continue
        mc_name = spec.options.get("memctl", DEFAULT_MEMCTL)
        mc = nodes.get(mc_name) if isinstance(mc_name, str) else None
        if mc is None or mc.kind != "memctl":
            continue
        parts = mc.options.get("partitions") or {}
        if not isinstance(parts, dict):
            continue  # the memory controller refuses it at start, naming the option
        memory, part = spec.options.get("memory"), parts.get(os_name)
        as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
        where = f"nodes.{mc_name}.options.partitions.{os_name}"
        if memory is None and part is not None:
            raise TopologyError(source, f"nodes.{os_name}.options.memory",
                                f"missing, but {where} = {as_list(part)} gives {os_name} that partition "
                                f"(give the same [first_frame, count] to both)")
        if memory is not None and part is None:
            raise TopologyError(source, f"nodes.{os_name}.options.memory",
                                f"{as_list(memory)}, but memctl {mc_name!r} has no partition for {os_name} "
                                f"(add {where} = {as_list(memory)})")
        if memory is not None and as_list(memory) != as_list(part):
            raise TopologyError(source, f"nodes.{os_name}.options.memory",
                                f"{as_list(memory)} does not match {where} = {as_list(part)} "
                                f"(the OS would boot with frames its memory controller does not give it)")


def load(path: str | Path) -> Topology:
    """Read and validate a topology file.

    Raises:
        TopologyError: unreadable, not TOML, or invalid (names file and key).
    """
    source = str(path)
    try:
        text = Path(path).read_bytes()
    except OSError as exc:
        raise TopologyError(source, None, f"cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise TopologyError(source, None, "not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(source, None, f"not valid TOML: {exc}") from None
    return parse(data, source)
