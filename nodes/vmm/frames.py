"""The VMM's part in lending memory (¶39, ¶49): it takes frames from one OS
instance and hands them to another.

The memory controller moves each batch (``mem_transfer``, zeroed on every
change of owner) and refuses a frame its source does not own; the VMM is the
party that asks, and counts what it holds between the two moves
(``frames_held``: a figure for ``status``, rebuilt from nothing after a
restart — ownership itself lives in the memory controller).
"""

from __future__ import annotations

from typing import Any

import protocol.vmm  # noqa: F401  (registers vmm_frames)
from nodes.runtime import spawned
from protocol.errors import ProtocolError
from protocol.frames import check_runs, count
from protocol.messages import Message


class FrameBroker:
    """Mixed into a VMM node (``self.name``, ``self.party``, ``self.memctl_name``)."""

    def _init_frames(self) -> None:
        self.frame_counts = {"frames_taken": 0, "frames_handed": 0}

    def frames_status(self) -> dict[str, Any]:
        held = self.frame_counts["frames_taken"] - self.frame_counts["frames_handed"]
        return {"frames_held": max(held, 0), **self.frame_counts}

    @spawned
    async def on_vmm_frames(self, msg: Message) -> None:
        """Take ``runs`` from ``from_owner`` (``to_owner`` is this VMM) or hand
        them to ``to_owner`` (``from_owner`` is this VMM)."""
        b = msg.body
        runs = b["runs"]
        n = count(check_runs(runs))  # malformed runs: a ProtocolError naming body.runs
        taking, handing = b["to_owner"] == self.name, b["from_owner"] == self.name
        if taking == handing:
            raise ProtocolError("bad_field", f"exactly one of from_owner/to_owner must be {self.name!r}, got "
                                             f"{b['from_owner']!r} -> {b['to_owner']!r}", "body.to_owner")
        memctl = b.get("memctl") or self.memctl_name
        await self.party.request(memctl, "mem_transfer", {"runs": runs, "from_owner": b["from_owner"],
                                                          "to_owner": b["to_owner"]}, timeout=60.0)
        self.frame_counts["frames_taken" if taking else "frames_handed"] += n
        await self.party.reply(msg, "ok", {"data": {"frames": n, "held": self.frames_status()["frames_held"]}})
