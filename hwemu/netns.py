"""Test hosts made of Linux network namespaces (docs/hosts.md: multi-host without Docker).

    with NetHosts(["a", "b", "c"]) as net:
        net.address("b")        # "10.77.0.2"
        net.exec("b")           # ["ip", "netns", "exec", "hw1234b"]: the topology's [hosts.b] exec

Each host is a namespace with its loopback and one end of a veth pair,
addressed 10.77.0.N/24; the other ends are ports of a bridge in a namespace
of its own, so the hosts reach each other and nothing else (no route to the
machine's own network, which sees none of their traffic). The ``ipc://``
sockets of the run directory stay reachable from every namespace (they are
files), as a run directory shared by the hosts would be.

Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and iproute2's ``ip``. On exit,
even after an error, every process still running in the namespaces is
killed (SIGKILL, by pid: only this object's namespaces) and the namespaces
are deleted, with their veth pairs and the bridge.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

SUBNET = "10.77.0"


class NetnsError(RuntimeError):
    """The namespaces could not be made (not root, no ``ip``): one line saying so."""


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip()}")


class NetHosts:
    """Hosts named ``names`` in namespaces ``hw<pid><name>``, addressed ``10.77.0.1``, ``.2``, ..."""

    def __init__(self, names: list[str]):
        if os.geteuid() != 0:
            raise NetnsError("network namespaces need root (CAP_SYS_ADMIN and CAP_NET_ADMIN): run as root, as CI does")
        if shutil.which("ip") is None:
            raise NetnsError("iproute2's `ip` is not installed (scripts/setup.sh installs it)")
        self.tag = f"hw{os.getpid() % 100000}"
        self.names = list(names)
        self.switch = f"{self.tag}sw"
        self._made: list[str] = []

    def ns(self, name: str) -> str:
        return f"{self.tag}{name}"

    def address(self, name: str) -> str:
        return f"{SUBNET}.{self.names.index(name) + 1}"

    def exec(self, name: str) -> list[str]:
        """The command prefix that runs a process on host ``name``."""
        return ["ip", "netns", "exec", self.ns(name)]

    def __enter__(self) -> "NetHosts":
        try:
            self._ns(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
            for i, name in enumerate(self.names):
                ns = self._ns(self.ns(name))
                inside, port = f"v{i}", f"{self.tag}p{i}"[-15:]
                _ip("-n", ns, "link", "add", inside, "type", "veth", "peer", "name", port, "netns", self.switch)
                _ip("-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def _ns(self, ns: str) -> str:
        _ip("netns", "add", ns)
        self._made.append(ns)
        return ns

    def pids(self) -> list[int]:
        """Every process running in one of the namespaces now."""
        out: list[int] = []
        for ns in self._made:
            done = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
            out += [int(p) for p in done.stdout.split()]
        return out

    def close(self) -> None:
        """Kill what still runs in the namespaces, then delete them (idempotent)."""
        for _ in range(50):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        while self._made:
            ns = self._made.pop()
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)

    def __exit__(self, *exc: object) -> None:
        self.close()
