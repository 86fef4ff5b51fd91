"""Node processes and their supervision (STYLE.md: one explicit state per
launcher, ``starting → running → stopping → stopped``, or ``crashed``).

Each node runs as ``python -m <module> --config <run dir>/conf/<node>.json``
in its own session (so a terminal's Ctrl-C reaches the orchestrator only,
which then stops the nodes in order), logging to ``<run dir>/logs/<node>.log``.
A supervising task per node waits for its exit and restarts it per policy.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import trio

from orchestrator.errors import StartError
from orchestrator.topology import NodeSpec
from protocol.auth import write_private

log = logging.getLogger("hwemu.supervisor")

STATES = ("starting", "running", "stopping", "stopped", "crashed")


LAUNCHED = "launched.jsonl"  # in the run dir: every process started for the cluster, one JSON line each


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot, /proc/PID/stat field 22), None if it is gone.
    With the pid it names one process for good: a reused pid has another start time."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def record_launch(run_dir: Path, name: str, pid: int) -> None:
    """Note a process we started (``hwemu down`` ends exactly these, by pid)."""
    line = json.dumps({"name": name, "pid": pid, "start": start_time(pid)})
    with open(Path(run_dir) / LAUNCHED, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def launched(run_dir: Path) -> dict[int, str]:
    """The processes started for the cluster of ``run_dir`` that still run: pid -> name.
    A pid the kernel gave to another process since (another start time) is not ours."""
    try:
        text = (Path(run_dir) / LAUNCHED).read_text(errors="replace")
    except OSError:
        return {}
    out: dict[int, str] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            pid, name, start = int(rec["pid"]), str(rec["name"]), rec["start"]
        except (ValueError, KeyError, TypeError):
            continue
        if start is not None and start_time(pid) == start:
            out[pid] = name
    return out


@dataclass
class NodeProc:
    """The orchestrator's view of one node process."""

    spec: NodeSpec
    endpoint: str
    state: str = "stopped"
    pid: int | None = None
    started_at: float | None = None
    restarts: int = 0
    exit_code: int | None = None
    last_stats: dict[str, Any] = field(default_factory=dict)
    last_heartbeat: float | None = None
    proc: Any = None
    ready: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)

    def view(self, stale_after: float | None = None) -> dict[str, Any]:
        """What ``hwemu status`` shows of it.

        Args:
            stale_after: seconds without a heartbeat (or a stats reply) after
                which a running node is shown ``unresponsive`` (SIGSTOPped,
                hung): its process lives, but nothing says it works.
        """
        alive = self.proc is not None and self.proc.returncode is None
        state, silent = self.state, None
        last = self.last_heartbeat or self.started_at
        if stale_after is not None and alive and state == "running" and last is not None:
            silent = time.monotonic() - last
            if silent > stale_after:
                state = "unresponsive"
        return {
            "name": self.spec.name,
            "kind": self.spec.kind,
            "pid": self.pid,
            "endpoint": self.endpoint,
            "state": state,
            "alive": alive,
            "silent_s": round(silent, 3) if silent is not None else None,
            "uptime": round(time.monotonic() - self.started_at, 3) if alive and self.started_at else 0.0,
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "msgs_in": self.last_stats.get("msgs_in", 0),
            "msgs_out": self.last_stats.get("msgs_out", 0),
            "stats": self.last_stats,
        }


class Supervisor:
    """Starts, watches, restarts and stops the node processes of a cluster."""

    def __init__(self, run_dir: Path, config_for: Callable[[NodeSpec], dict[str, Any]],
                 on_restart: Callable[[NodeProc], Any] | None = None,
                 on_back: Callable[[NodeProc], Any] | None = None,
                 launcher: Callable[[str], list[str]] = lambda name: []):
        self.run_dir = run_dir
        # node -> the command prefix that runs it on its host (orchestrator/topology_hosts.py), read at each
        # start: a node restarted after a move starts on its new host
        self.launcher = launcher
        self.config_for = config_for
        self.on_restart = on_restart
        self.on_back = on_back  # awaited once a restarted node is ready again (its drivers reset it)
        self.nodes: dict[str, NodeProc] = {}
        self.stopping = False
        self.engine: Callable[[NodeSpec], Any] | None = None
        """Another engine's start of a node (``orchestrator/swarm.py``): awaited, returns a process
        handle (``pid`` on this host, ``ns_pid``, ``returncode``, ``wait()``); None: a local process."""
        self._launching: dict[str, int | None] = {}
        """node -> the pid of a ``ready`` that came while the engine was still starting it (a
        container's process may report before ``docker inspect`` has told us who it is)."""
        (run_dir / "conf").mkdir(mode=0o700, parents=True, exist_ok=True)
        (run_dir / "logs").mkdir(parents=True, exist_ok=True)

    async def _spawn(self, np: NodeProc) -> None:
        conf = self.run_dir / "conf" / f"{np.spec.name}.json"
        write_private(conf, json.dumps(self.config_for(np.spec)).encode())  # 0600: it holds the node's keys
        if self.engine is not None:
            self._launching[np.spec.name] = None
            try:
                np.proc = await self.engine(np.spec)
            finally:
                early = self._launching.pop(np.spec.name, None)
        else:
            logf = open(self.run_dir / "logs" / f"{np.spec.name}.log", "ab")
            try:
                np.proc = await trio.lowlevel.open_process(
                    [*self.launcher(np.spec.name), sys.executable, "-m", np.spec.module, "--config", str(conf)],
                    stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            finally:
                logf.close()
        np.pid = np.proc.pid
        record_launch(self.run_dir, np.spec.name, np.pid)
        log.info("started %s (%s), pid %d", np.spec.name, np.spec.kind, np.pid)
        np.state = "starting"
        np.started_at = time.monotonic()
        np.exit_code = None
        np.ready = trio.Event()
        np.exited = trio.Event()
        if self.engine is not None and early is not None:
            self.mark_ready(np.spec.name, early)

    async def start_all(self, nursery: trio.Nursery, specs: list[NodeSpec], endpoints: dict[str, str],
                        timeout: float) -> None:
        """Start every node and wait until each has reported ``ready``.

        Raises:
            RuntimeError: a node exited or did not report ready in time (its log's tail is in the message).
        """
        started = []
        for spec in specs:
            np = self.nodes[spec.name] = NodeProc(spec, endpoints[spec.name])
            if not spec.autostart:
                continue  # deferred: start_one() launches it when a choreography needs it
            await self._spawn(np)
            nursery.start_soon(self._watch, np)
            started.append(np)
        with trio.move_on_after(timeout) as scope:
            for np in started:
                async with trio.open_nursery() as wait:
                    async def ready(np=np, wait=wait):
                        await np.ready.wait()
                        wait.cancel_scope.cancel()
                    async def died(np=np, wait=wait):
                        await np.exited.wait()
                        wait.cancel_scope.cancel()
                    wait.start_soon(ready)
                    wait.start_soon(died)
                if not np.ready.is_set():
                    raise StartError(f"node {np.spec.name} ({np.spec.kind}) exited during start-up with code "
                                     f"{np.exit_code}: {self.cause(np.spec.name)}", self.log_tail(np.spec.name))
        if scope.cancelled_caught:
            late = [np.spec.name for np in started if not np.ready.is_set()]
            raise StartError(f"nodes not ready after {timeout:g} s: {', '.join(late)}",
                             "\n".join(self.log_tail(n) for n in late))

    async def start_one(self, nursery: trio.Nursery, name: str, timeout: float) -> bool:
        """Launch a node that is not running (a deferred one) and wait for its ``ready``.

        Returns:
            False if it was running already, True if it was started.

        Raises:
            RuntimeError: it exited or was not ready in time (with its log's tail).
        """
        np = self.nodes[name]
        if np.proc is not None and np.proc.returncode is None:
            return False
        await self._spawn(np)
        nursery.start_soon(self._watch, np)
        with trio.move_on_after(timeout):
            async with trio.open_nursery() as wait:
                async def ready():
                    await np.ready.wait()
                    wait.cancel_scope.cancel()

                async def died():
                    await np.exited.wait()
                    wait.cancel_scope.cancel()
                wait.start_soon(ready)
                wait.start_soon(died)
        if not np.ready.is_set():
            if np.proc.returncode is None:
                await self.stop_one(name, None, 1.0)
            raise StartError(f"node {name} ({np.spec.kind}) did not become ready (exit code {np.exit_code}): "
                             f"{self.cause(name)}", self.log_tail(name))
        return True

    async def stop_one(self, name: str, graceful: Callable[[NodeProc], Any] | None, timeout: float = 5.0) -> bool:
        """Stop one node (graceful, then SIGTERM, then SIGKILL, by pid); not restarted.

        Returns:
            False if it was not running.
        """
        np = self.nodes[name]
        if np.proc is None or np.proc.returncode is not None:
            return False
        np.state = "stopping"
        if graceful is not None:
            with trio.move_on_after(timeout):
                await graceful(np)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if np.proc.returncode is not None:
                break
            try:
                os.kill(np.pid, sig)
            except ProcessLookupError:
                pass
            with trio.move_on_after(timeout / 2 if sig == signal.SIGTERM else timeout):
                await np.proc.wait()
        await np.exited.wait()
        np.state = "stopped"
        return True

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.run_dir / "logs" / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(f"  {name}| {line}" for line in text.splitlines()[-lines:])

    def cause(self, name: str) -> str:
        """The last line a node logged: its one-line error, or the last line of a traceback."""
        lines = [ln.strip() for ln in self.log_tail(name, 40).splitlines()]
        lines = [ln.partition("| ")[2] for ln in lines if ln.partition("| ")[2].strip(" +-|")]
        return lines[-1] if lines else "nothing in its log"

    def mark_ready(self, name: str, pid: int) -> None:
        np = self.nodes.get(name)
        if name in self._launching:  # taken up once the engine has started it
            self._launching[name] = pid
            return
        # a node in a container reports its pid there (ns_pid), we know its pid on this host
        if np is not None and pid in (np.pid, getattr(np.proc, "ns_pid", None)):
            np.state = "running"
            np.ready.set()

    def adopt(self, np: NodeProc, nursery: trio.Nursery) -> None:
        """Supervise a node process this supervisor did not start (one an earlier,
        crashed orchestrator started): watched and restarted per policy like the others."""
        self.nodes[np.spec.name] = np
        nursery.start_soon(self._watch, np)

    async def _watch(self, np: NodeProc) -> None:
        """Wait for the node to exit; restart it per policy."""
        while True:
            code = await np.proc.wait()
            np.exit_code = code
            np.exited.set()
            if self.stopping or np.state == "stopping":
                np.state = "stopped"
                return
            np.state = "crashed"
            log.warning("node %s exited with code %s", np.spec.name, code)
            policy = np.spec.restart
            wanted = policy == "always" or (policy == "on-failure" and code != 0)
            if not wanted or np.restarts >= np.spec.max_restarts:
                return
            await trio.sleep(min(0.1 * 2 ** np.restarts, 2.0))
            if self.stopping:
                return
            np.restarts += 1
            if self.on_restart is not None:
                # before it runs: its receivers must expect its flows to start over from fseq 1
                # before its first message arrives, or they would drop that as a duplicate
                await self.on_restart(np)
            await self._spawn(np)
            with trio.move_on_after(15):
                await np.ready.wait()
            if np.ready.is_set() and self.on_back is not None:
                await self.on_back(np)

    async def stop_all(self, graceful: Callable[[NodeProc], Any] | None, timeout: float = 5.0) -> None:
        """Ask every node to shut down, then SIGTERM, then SIGKILL; by pid, only ours."""
        self.stopping = True
        live = [np for np in self.nodes.values() if np.proc is not None and np.proc.returncode is None]
        for np in live:
            np.state = "stopping"
        if graceful is not None:
            async with trio.open_nursery() as n:
                for np in live:
                    n.start_soon(graceful, np)
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
            live = [np for np in live if np.proc.returncode is None]
            if not live:
                break
            with trio.move_on_after(wait if sig == signal.SIGKILL else timeout / 2):
                for np in live:
                    if np.proc.returncode is None:
                        try:
                            os.kill(np.pid, sig)
                        except ProcessLookupError:
                            pass
                for np in live:
                    await np.proc.wait()
        for np in self.nodes.values():
            if np.proc is not None and np.proc.returncode is not None:
                np.state = "stopped"
