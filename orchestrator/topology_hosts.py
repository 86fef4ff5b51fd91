"""Placement of a cluster's nodes on hosts (docs/hosts.md).

A topology may name hosts and put each node on one::

    [hosts.a]
    address = "10.77.0.1"      # the host's IP address (what the other hosts reach it at)
    port_base = 7100           # optional: node ports are port_base + the node's index
    exec = ["ip", "netns", "exec", "hwa"]   # optional: the command prefix that runs a process there

    [orchestrator]
    host = "a"                 # where the orchestrator runs (default: the first host)

    [nodes.cpu0]
    host = "b"                 # default: the orchestrator's host
    port = 7300                # optional: this node's tcp port (default: port_base + index)

Two parties on one host talk over ``ipc://`` (the run directory's sockets,
as without hosts); two on different hosts over ``tcp://ADDRESS:PORT``,
authenticated and encrypted with CURVE (protocol/curve.py). Which endpoint a
party uses for a peer therefore depends on where it stands itself:
:meth:`Placement.view` gives each party its own directory. Every party of a
placed topology binds both its ``ipc://`` socket and its ``tcp://`` endpoint.

Ports are deterministic: the orchestrator has index 0, the nodes 1, 2, ...
in the topology's order, so a node keeps its port when it moves to another
host with the same ``port_base`` (:meth:`Placement.move`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_PORT_BASE = 7100
HOST_KEYS = ("address", "port_base", "exec")


@dataclass(frozen=True)
class HostSpec:
    """One ``[hosts.NAME]`` table."""

    name: str
    address: str
    port_base: int = DEFAULT_PORT_BASE
    exec: tuple[str, ...] = ()
    """The command prefix that runs a process on this host (``ip netns exec NS``, ``ssh HOST``); empty: here."""


def _port(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def parse_hosts(raw: dict, fail: Callable[[str, str], Exception]) -> dict[str, HostSpec]:
    """Validate the ``[hosts]`` table.

    Args:
        raw: the table (host name -> its table).
        fail: makes the error to raise from (key, problem).

    Raises:
        TopologyError: (through ``fail``) a bad key, address, port base or prefix.
    """
    hosts: dict[str, HostSpec] = {}
    for name, table in raw.items():
        key = f"hosts.{name}"
        if not isinstance(table, dict):
            raise fail(key, f"expected a table, got {type(table).__name__}")
        extra = set(table) - set(HOST_KEYS)
        if extra:
            raise fail(f"{key}.{sorted(extra)[0]}", f"unknown key (expected {', '.join(HOST_KEYS)})")
        address = table.get("address")
        if not isinstance(address, str):
            raise fail(f"{key}.address", f"missing or not a string: the host's IP address, got {address!r}")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            raise fail(f"{key}.address", f"{address!r} is not an IP address (e.g. \"10.77.0.1\")") from None
        if ip.version != 4 or ip.is_unspecified or ip.is_multicast:
            raise fail(f"{key}.address", f"{address!r}: expected a unicast IPv4 address")
        base = table.get("port_base", DEFAULT_PORT_BASE)
        if not _port(base):
            raise fail(f"{key}.port_base", f"expected a port number 1-65535, got {base!r}")
        prefix = table.get("exec", [])
        if not isinstance(prefix, list) or not all(isinstance(p, str) and p for p in prefix):
            raise fail(f"{key}.exec", f"expected a list of non-empty strings (a command prefix), got {prefix!r}")
        hosts[name] = HostSpec(name, address, base, tuple(prefix))
    return hosts


def check_host(value: Any, hosts: dict[str, HostSpec], key: str, fail: Callable[[str, str], Exception]) -> str:
    """``value`` if it names a host of ``hosts``, else the error."""
    if not isinstance(value, str) or value not in hosts:
        known = ", ".join(hosts) if hosts else "none: add a [hosts.NAME] table with its address"
        raise fail(key, f"unknown host {value!r} (hosts: {known})")
    return value


@dataclass
class Placement:
    """Where each party runs now, and the endpoints that follow from it.

    Args:
        hosts: the topology's hosts (empty: everything on one host, ipc only).
        order: the orchestrator's name, then every node, in the topology's order (their port index).
        where: party -> host (every party when ``hosts`` is not empty).
        ports: party -> an explicit port (the topology's ``port``).
    """

    hosts: dict[str, HostSpec]
    order: list[str]
    where: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def placed(self) -> bool:
        """True if the topology names hosts (tcp + CURVE between them)."""
        return bool(self.hosts)

    def host(self, party: str) -> HostSpec | None:
        return self.hosts[self.where[party]] if self.placed else None

    def port(self, party: str, host: str | None = None) -> int:
        """``party``'s tcp port on ``host`` (default: where it is)."""
        if party in self.ports:
            return self.ports[party]
        return self.hosts[host or self.where[party]].port_base + self.order.index(party)

    def tcp(self, party: str) -> str | None:
        """The ``tcp://`` endpoint ``party`` binds (and others on other hosts reach it at), None if unplaced."""
        if not self.placed:
            return None
        return f"tcp://{self.host(party).address}:{self.port(party)}"

    def clashes(self) -> list[str]:
        """One line per two parties that would bind one address and port."""
        seen: dict[tuple[str, int], str] = {}
        out = []
        for party in self.order:
            at = (self.host(party).address, self.port(party))
            if at in seen:
                out.append(f"{party} and {seen[at]} both use {at[0]}:{at[1]}")
            seen.setdefault(at, party)
        return out

    def view(self, viewer: str, ipc: Callable[[str], str]) -> dict[str, str]:
        """The directory as ``viewer`` sees it: a peer on its own host at its ``ipc://``
        socket (``ipc(name)``), one on another host at its ``tcp://`` endpoint."""
        if not self.placed:
            return {p: ipc(p) for p in self.order}
        here = self.where[viewer] if viewer in self.where else None
        return {p: ipc(p) if self.where[p] == here else self.tcp(p) for p in self.order}

    def move(self, party: str, host: str) -> None:
        """Put ``party`` on ``host``.

        Raises:
            ValueError: unknown host, or its port there is another party's.
        """
        if host not in self.hosts:
            raise ValueError(f"unknown host {host!r} (hosts: {', '.join(self.hosts) or 'none'})")
        old = self.where[party]
        self.where[party] = host
        clash = self.clashes()
        if clash:
            self.where[party] = old
            raise ValueError(f"cannot move {party} to {host}: {clash[0]}")

    def launcher(self, party: str) -> list[str]:
        """The command prefix that starts a process of ``party`` where it is placed."""
        spec = self.host(party)
        return list(spec.exec) if spec is not None else []


def ipc_endpoint(run_dir: Path) -> Callable[[str], str]:
    """name -> its ``ipc://`` socket in ``run_dir`` (the default endpoint of every party)."""
    return lambda name: f"ipc://{run_dir}/{name}.sock"
