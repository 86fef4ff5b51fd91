"""The choreography journal (DESIGN.md §5): an append-only record of every
step of every choreography, so that a crash of the orchestrator in the middle
of one can be recovered.

One JSON object per line in ``<run_dir>/journal.jsonl``, each written and
``fsync``'d before the journaled action is taken further:

    {"id": "c-...", "figure": "fig4", "step": "alloc_pin", "phase": "done",
     "data": {...}, "t": 1732476000.123}

``phase`` is ``begin`` (a choreography starts; ``step`` is ``"*"`` and
``data`` its parameters, or a step starts), ``done`` (a step completed;
``data`` is what it produced), ``undo`` (a completed step was undone),
``committed`` or ``rolled_back`` (the choreography ended). A choreography
without a final record is *incomplete*: :meth:`Journal.incomplete` returns
what is needed to roll it back (its parameters and the data of every step
that was done and not undone, in order).

A torn last line (the crash hit the write) is ignored: it was never fsync'd
as a whole, so the action it announced was never taken.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PHASES = ("begin", "done", "undo", "committed", "rolled_back")
FINAL = ("committed", "rolled_back")
WHOLE = "*"  # the step name of a choreography's own begin / end records


@dataclass
class Incomplete:
    """A choreography the journal shows started and never ended."""

    id: str
    figure: str
    params: dict[str, Any]
    done: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(step, data) of each step done and not undone, in the order done."""


class Journal:
    """Append-only, fsync'd JSON lines.

    Args:
        path: the journal file (created with its folder if missing).
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def new_id(figure: str) -> str:
        return f"{figure}-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"

    def record(self, id: str, figure: str, step: str, phase: str, data: dict[str, Any] | None = None) -> None:
        """Append one record and fsync it before returning."""
        if phase not in PHASES:
            raise ValueError(f"journal phase must be one of {PHASES}, got {phase!r}")
        line = json.dumps({"id": id, "figure": figure, "step": step, "phase": phase,
                           "data": data or {}, "t": round(time.time(), 6)}, sort_keys=True, default=str)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def records(self) -> list[dict[str, Any]]:
        """Every whole record, in order (a torn or foreign line is skipped)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        out = []
        for line in text.splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and {"id", "figure", "step", "phase"} <= rec.keys():
                out.append(rec)
        return out

    def history(self, id: str) -> list[dict[str, Any]]:
        """The records of one choreography."""
        return [r for r in self.records() if r["id"] == id]

    def outcome(self, id: str) -> str | None:
        """``committed``, ``rolled_back`` or ``None`` (incomplete or unknown)."""
        final = [r["phase"] for r in self.history(id) if r["step"] == WHOLE and r["phase"] in FINAL]
        return final[-1] if final else None

    def incomplete(self) -> list[Incomplete]:
        """Choreographies begun and never committed nor rolled back, oldest first."""
        found: dict[str, Incomplete] = {}
        for rec in self.records():
            cid, step, phase = rec["id"], rec["step"], rec["phase"]
            if step == WHOLE:
                if phase == "begin":
                    found[cid] = Incomplete(cid, rec["figure"], dict(rec.get("data") or {}))
                elif phase in FINAL:
                    found.pop(cid, None)
                continue
            inc = found.get(cid)
            if inc is None:
                continue
            if phase == "done":
                inc.done.append((step, dict(rec.get("data") or {})))
            elif phase == "undo":
                for i in range(len(inc.done) - 1, -1, -1):
                    if inc.done[i][0] == step:
                        del inc.done[i]
                        break
        return list(found.values())
