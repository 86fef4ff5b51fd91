"""What a restarted orchestrator needs to re-attach to a cluster that kept
running without it (DESIGN.md §2: "the cluster keeps running while the
orchestrator restarts").

The nodes run in sessions of their own, so a ``kill -9`` of the orchestrator
leaves them running, peer to peer, on the routes last installed. To take
them back, a new orchestrator needs three things the dead one held in
memory, kept here in ``<run dir>/orchestrator-state.json`` (rewritten after
every route change, every choreography step and commit):

- the route table and its epoch (the nodes refuse an older epoch);
- the virtualization state (:class:`VirtState`: who controls what, loans);
- the boot memory maps of instances booted on borrowed frames (¶49).

:func:`survivors` says which recorded node processes are still alive and
ours; :class:`AdoptedProcess` lets the supervisor watch a process it did not
start (a pidfd: it is not our child, so no exit code). The journal then
rolls back the choreography the crash cut short, on the live nodes.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import trio

from orchestrator.choreographies.state import VirtState

STATE_FILE = "orchestrator-state.json"


def save(run_dir: Path, epoch: int, routes: dict[str, str], virt: VirtState,
         boot_maps: dict[str, list[int]]) -> None:
    """Write the state atomically (a reader sees the old file or the new, whole)."""
    data = {"epoch": epoch, "routes": dict(routes), "virt": asdict(virt), "boot_maps": boot_maps}
    path = Path(run_dir) / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


def load(run_dir: Path) -> dict[str, Any] | None:
    """The saved state with ``virt`` as a :class:`VirtState`, or None (none, or unreadable)."""
    try:
        data = json.loads((Path(run_dir) / STATE_FILE).read_text())
        data["virt"] = VirtState(**data["virt"])
        if not isinstance(data["epoch"], int) or not isinstance(data["routes"], dict):
            return None
        return data
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _alive_and_ours(pid: int, run_dir: Path, name: str) -> bool:
    """Alive (not a zombie) and started for this node of this run directory (pids get reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    if stat.rpartition(")")[2].split()[0] == "Z":
        return False
    return f"{run_dir}/conf/{name}.json".encode() in cmdline


def survivors(run_dir: Path, recorded: dict[str, int | None]) -> dict[str, int]:
    """The recorded node pids (``cluster.json``'s ``nodes``) still alive and ours."""
    return {name: pid for name, pid in recorded.items()
            if isinstance(pid, int) and _alive_and_ours(pid, Path(run_dir), name)}


class AdoptedProcess:
    """A node process started by a previous orchestrator, watched through a pidfd.

    It has what the supervisor uses of a ``trio.Process``: ``pid``,
    ``returncode`` (None while it runs; -1 once gone: not our child, its
    exit status is its new parent's) and ``wait()``.
    """

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None
        self._fd = os.pidfd_open(pid)

    async def wait(self) -> int:
        if self.returncode is None:
            await trio.lowlevel.wait_readable(self._fd)
            self.returncode = -1
            os.close(self._fd)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
