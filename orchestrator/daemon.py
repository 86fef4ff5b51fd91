"""The orchestrator as a long-running process (``hwemu up``).

``python -m orchestrator.daemon --topology FILE --run-dir DIR`` holds an
exclusive lock on ``DIR/cluster.lock`` for its whole life (so a second
``hwemu up`` on the same run directory is refused), keeps ``DIR/cluster.json``
current (its pid, the control endpoint, the node pids) and runs the cluster
until ``hwemu down`` (a ``ctl_down`` request) or SIGTERM/SIGINT.

Started on the run directory of a predecessor killed with ``kill -9`` (its
``cluster.json`` is left behind, its lock released), it re-attaches to the
nodes that kept running and rolls back the choreography the kill cut short
(:meth:`Orchestrator.start`).

For tests of exactly that, ``HWEMU_HOLD_AFTER_STEP=<figure>.<step>`` with
``HWEMU_HOLD_FILE=<path>`` makes the choreography stop once that step is
done and journaled: the daemon creates the file, then waits until it is
removed. A test kills the daemon in that window, deterministically.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path

import trio

from orchestrator import swarm
from orchestrator.cluster import Orchestrator
from orchestrator.errors import StartError
from orchestrator.topology import ORCHESTRATOR, TopologyError, load
from protocol import logs, sched
from protocol.auth import make_private_dir, write_private

LOCK = "cluster.lock"
STATE = "cluster.json"


def read_state(run_dir: Path) -> dict | None:
    """The running cluster's state file, or None if there is none."""
    try:
        return json.loads((Path(run_dir) / STATE).read_text())
    except (OSError, ValueError):
        return None


def is_locked(run_dir: Path) -> bool:
    """True while a daemon holds the run directory's lock."""
    path = Path(run_dir) / LOCK
    if not path.exists():
        return False
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


def _write_state(run_dir: Path, orch: Orchestrator, state: str) -> None:
    data = {
        "pid": os.getpid(), "state": state, "topology": orch.topology.source,
        "cluster": orch.topology.name, "endpoint": orch.directory[ORCHESTRATOR],
        "started": time.time(),
        "nodes": {n: np.pid for n, np in orch.supervisor.nodes.items()},
    }
    tmp = run_dir / (STATE + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, run_dir / STATE)


async def _keep_state(run_dir: Path, orch: Orchestrator) -> None:
    """Rewrite the state file when a node is restarted (new pid), so that
    `hwemu down` can still find every process, even with the daemon gone."""
    seen = {n: np.pid for n, np in orch.supervisor.nodes.items()}
    while orch.state == "running":
        await trio.sleep(0.2)
        now = {n: np.pid for n, np in orch.supervisor.nodes.items()}
        if now != seen and orch.state == "running":
            _write_state(run_dir, orch, "running")
            seen = now


def _hold_hook(orch: Orchestrator) -> None:
    """The test-only stop after one step (see the module docstring)."""
    at, path = os.environ.get("HWEMU_HOLD_AFTER_STEP"), os.environ.get("HWEMU_HOLD_FILE")
    if not at or not path:
        return
    hold = Path(path)

    async def hook(figure: str, step: str) -> None:
        if f"{figure}.{step}" != at:
            return
        hold.write_text(f"{figure}.{step}\n")
        while hold.exists():  # released by removing the file (or the daemon is killed meanwhile)
            await trio.sleep(0.01)

    orch.step_hook = hook


async def serve(topology_path: str, run_dir: Path, engine: str = "local", image: str = swarm.DEFAULT_IMAGE) -> int:
    """Run a cluster until told to stop. Returns the process exit code.

    Args:
        engine: ``local`` (node processes of ours) or ``swarm`` (one Docker Swarm service per
            node, deployed here and supervised as local processes: orchestrator/swarm.py).
        image: the nodes' image, for ``swarm``.
    """
    try:
        make_private_dir(run_dir)
    except OSError as exc:
        print(f"hwemu: {exc}", file=sys.stderr)
        return 2
    lock = open(run_dir / LOCK, "a")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        state = read_state(run_dir) or {}
        print(f"hwemu: a cluster is already running in {run_dir} (pid {state.get('pid', '?')}, "
              f"topology {state.get('topology', '?')}): run `hwemu down` first", file=sys.stderr)
        return 3
    try:
        topology = load(topology_path)
        previous = read_state(run_dir) or {}  # a predecessor killed with kill -9 left it
        orch = Orchestrator(topology, run_dir)
        _hold_hook(orch)
        deployed = None
        if engine == "swarm":
            deployed = swarm.SwarmEngine(topology, run_dir, image)
            orch.supervisor.engine = deployed.launch
            await trio.to_thread.run_sync(deployed.deploy, orch.supervisor.config_for, write_private)
        async with _unwrapped(), trio.open_nursery() as nursery:
            async def on_signal():
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for _ in sigs:
                        await orch.shutdown()
                        return

            nursery.start_soon(on_signal)
            try:
                await orch.start(nursery, previous.get("nodes") or {})
                _write_state(run_dir, orch, "running")
                nursery.start_soon(_keep_state, run_dir, orch)
                print(f"hwemu: cluster {topology.name} running", flush=True)
                await orch.done.wait()
            finally:
                with trio.CancelScope(shield=True):
                    await orch.shutdown()
                    if deployed is not None:  # no service, container or secret left behind
                        await trio.to_thread.run_sync(deployed.remove)
                nursery.cancel_scope.cancel()
        return 0
    except TopologyError as exc:
        print(f"hwemu: {exc}", file=sys.stderr)
        return 2
    except StartError as exc:
        print(str(exc), file=sys.stderr)  # the log's tail, for the orchestrator log
        # the line `hwemu up` shows: one line naming the cause
        print(f"hwemu: cluster failed to start: {getattr(exc, 'summary', str(exc).splitlines()[0])}",
              file=sys.stderr)
        return 1
    except OSError as exc:  # the run directory or a file in it
        print(f"hwemu: cluster failed to start: {exc.filename or run_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    finally:
        try:
            (run_dir / STATE).unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@contextlib.asynccontextmanager
async def _unwrapped():
    """A nursery's group of one error is that error: the daemon's handlers (and its
    one-line message) see the StartError of a failed start, not an ExceptionGroup."""
    try:
        yield
    except BaseExceptionGroup as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, (StartError, TopologyError, OSError)):
            raise exc from None
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m orchestrator.daemon")
    parser.add_argument("--topology", required=True)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--engine", choices=("local", "swarm"), default="local")
    parser.add_argument("--image", default=swarm.DEFAULT_IMAGE)
    args = parser.parse_args(argv)
    logs.configure(ORCHESTRATOR)
    sched.short_slice("orchestrator")  # the route authority is a link of every route change's chain
    sys.exit(trio.run(serve, args.topology, Path(args.run_dir).resolve(), args.engine, args.image))


if __name__ == "__main__":
    main()
