"""What a node records of its own life, for traces and for fault histories.

One recorder per node (``Node.recorder``), two sinks, each off by default:

- a **trace ring** (``start_trace``/``stop_trace``): the last ``size`` events
  in memory, bounded, read out by ``hwemu trace`` and merged into one
  Perfetto/Chrome trace of the cluster;
- a **history file** (``open_history``): every event appended as one JSON
  line, the record that ``hwemu check`` re-reads offline (Jepsen's way).

An event is ``(t_ns, cat, name, fields)``: ``t_ns`` is ``CLOCK_MONOTONIC``
(shared by all nodes of one host), ``cat`` a category (``msg``, ``flow``,
``route``, ``trap``, ``irq``, ``frame``, ``disk``, ``client``, ...), ``name``
what happened (``send``, ``deliver``, ``ack``, ...), ``fields`` plain JSON
values. A call site costs one attribute test when both sinks are off::

    if rec.on:
        rec("flow", "deliver", flow=flow, fseq=fseq)
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from typing import Any

log = logging.getLogger("hwemu.recorder")

_now_ns = time.monotonic_ns


class Recorder:
    """The event sinks of one node (see the module docstring)."""

    __slots__ = ("node", "on", "ring", "dropped", "_history", "history_path")

    def __init__(self, node: str):
        self.node = node
        self.on = False  # any sink open: call sites test this first
        self.ring: deque | None = None
        self.dropped = 0  # events the ring pushed out since the trace started
        self._history = None
        self.history_path: str | None = None

    def _update(self) -> None:
        self.on = self.ring is not None or self._history is not None

    # -- trace ring ---------------------------------------------------------------

    def start_trace(self, size: int = 65536) -> None:
        """Record the last ``size`` events in memory (a new trace: the ring starts empty)."""
        if size < 1:
            raise ValueError(f"trace ring size must be at least 1, got {size}")
        self.ring = deque(maxlen=size)
        self.dropped = 0
        self._update()

    def stop_trace(self) -> list[tuple[int, str, str, dict[str, Any]]]:
        """Stop tracing; the events recorded, oldest first."""
        events = list(self.ring or ())
        self.ring = None
        self._update()
        return events

    def snapshot(self) -> list[tuple[int, str, str, dict[str, Any]]]:
        """The events in the ring now, oldest first; tracing goes on."""
        return list(self.ring or ())

    @property
    def tracing(self) -> bool:
        return self.ring is not None

    # -- history file -------------------------------------------------------------

    def open_history(self, path: str, line_buffered: bool = False) -> None:
        """Append every event to ``path`` as one JSON line (kept across restarts of the node).

        ``line_buffered``: each line goes to the kernel as it is recorded, so a
        ``kill -9`` loses none (what a fault history needs: a checker must see
        every delivery the node acknowledged); else in blocks of 64 KiB.
        """
        self.close_history()
        self._history = open(path, "a", encoding="utf-8", buffering=1 if line_buffered else 1 << 16)
        self.history_path = path
        self._update()

    def flush(self) -> None:
        if self._history is not None:
            try:
                self._history.flush()
            except OSError as exc:
                log.warning("%s: cannot write history %s: %s", self.node, self.history_path, exc)

    def close_history(self) -> None:
        if self._history is not None:
            self.flush()
            self._history.close()
            self._history = None
            self._update()

    # -- recording ----------------------------------------------------------------

    def __call__(self, cat: str, name: str, **fields: Any) -> None:
        self.at(_now_ns(), cat, name, **fields)

    def at(self, t: int, cat: str, name: str, **fields: Any) -> None:
        """Record an event that happened at ``t`` (``time.monotonic_ns``), not now."""
        if self.ring is not None:
            if len(self.ring) == self.ring.maxlen:
                self.dropped += 1
            self.ring.append((t, cat, name, fields))
        if self._history is not None:
            try:
                self._history.write(json.dumps({"t": t, "node": self.node, "cat": cat, "ev": name, **fields},
                                               separators=(",", ":"), default=repr) + "\n")
            except (OSError, ValueError) as exc:  # a full disk must not take the node down
                log.warning("%s: history write failed: %s", self.node, exc)
