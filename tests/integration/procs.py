"""Process bookkeeping shared by the integration tests that drive the
``hwemu`` console script: is a pid alive, which pids a run directory's state
file records, and a run directory whose processes are all stopped at the end."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path
from typing import Awaitable, Callable, Iterator, TypeVar

import trio

from protocol.errors import RemoteError, RequestTimeout

T = TypeVar("T")


def alive(pid: int) -> bool:
    """A zombie (exited, not yet reaped by a parent that is not ours) counts as dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def recorded_pids(run_dir: Path) -> set[int]:
    """The daemon's and nodes' pids from the run directory's state file, if any."""
    try:
        state = json.loads((run_dir / "cluster.json").read_text())
    except (OSError, ValueError):
        return set()
    return {state["pid"], *state.get("nodes", {}).values()} - {None}


def kill_left(pids: set[int]) -> None:
    """SIGKILL for each of ``pids`` still alive (what ``hwemu down`` did not stop)."""
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@contextlib.contextmanager
def cluster_dir(rd: Path, down: Callable[[Path], object]) -> Iterator[tuple[Path, set[int]]]:
    """Yield ``(rd, pids)``, a run directory and the pids a test adds as it starts
    processes; at the end, even on failure, ``down(rd)`` (the test's ``hwemu down``)
    and SIGKILL for anything of ours left: those pids and the ones ``rd`` records."""
    pids: set[int] = set()
    try:
        yield rd, pids
    finally:
        pids |= recorded_pids(rd)
        down(rd)
        kill_left(pids)


async def sigkill_until_restarted(orch, node: str, ready: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
    """SIGKILL ``node`` of a running ``cluster`` fixture's orchestrator, then wait until
    its supervisor has started a new process for it and ``ready()`` returns something
    true (asked again while the new process does not answer yet); that value."""
    proc = orch.supervisor.nodes[node]
    old_pid, restarts = proc.pid, proc.restarts
    os.kill(old_pid, signal.SIGKILL)
    with trio.fail_after(timeout):
        while True:
            try:
                if proc.pid != old_pid and proc.restarts == restarts + 1:
                    value = await ready()
                    if value:
                        return value
            except (RemoteError, RequestTimeout):
                pass
            await trio.sleep(0.05)


def identity(pong: dict) -> dict:
    """A ``pong`` body without its clock reading: what stays the same while
    the same node keeps running (``now_ns`` changes with every ping)."""
    return {key: value for key, value in pong.items() if key != "now_ns"}
