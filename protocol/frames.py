"""Frame sets on the wire as runs (DESIGN.md §5: FIG. 4, ¶39, FIG. 8).

A loan moves thousands of page frames, and they are nearly always
consecutive (an OS's free list hands out its partition in order). The
messages that move frames — the kernel module's ``mod_alloc_pin`` reply,
``mod_add``, ``mod_give_back``; the memory controller's ``mem_pin``,
``mem_unpin``, ``mem_transfer`` — carry them as **runs**
``[[first, count], ...]``: a 256 MiB loan is one pair, not 65536 integers
that every hop validates, packs and journals one by one.

The order of the frames is kept: :func:`to_runs` cuts a list where it stops
counting up by one, :func:`from_runs` spells the runs out again, so
``from_runs(to_runs(x)) == x`` for every list of distinct frames.

Those messages still accept the old ``frames`` list (older callers, tests
that name single frames); :func:`body_frames` reads whichever a body has.
"""

from __future__ import annotations

from itertools import compress
from operator import ne
from typing import Any, Iterable

from protocol.errors import ProtocolError

Runs = list[list[int]]


def to_runs(frames: Iterable[int], increasing: bool = False) -> Runs:
    """``[[first, count], ...]`` of ``frames``, in their order: a run is a
    maximal stretch where each frame is its predecessor + 1.

    ``increasing``: the caller knows ``frames`` is strictly increasing (a
    sorted set), so a stretch whose ends are ``count - 1`` apart is a run
    without looking at the frames between.

    >>> to_runs([4, 5, 6, 9, 2, 3])
    [[4, 3], [9, 1], [2, 2]]
    """
    seq = frames if isinstance(frames, list) else list(frames)
    out: Runs = []
    i, n = 0, len(seq)
    while i < n:
        if len(out) == _FEW_RUNS:
            return _runs_by_scan(seq)  # many runs: one linear pass is cheaper
        # A loan is a few long runs (a FIFO free list hands out its partition
        # in order, wrapped around at most a few times): find where this run
        # ends by bisection on "frame i+m-1 is first+m-1", then check the
        # whole run at C speed; anything else falls back to the scan.
        first = seq[i]
        lo, hi = 1, n - i
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if seq[i + mid - 1] - first == mid - 1:
                lo = mid
            else:
                hi = mid - 1
        if not increasing and ((lo > 1 and seq[i:i + lo] != list(range(first, first + lo)))
                               or (i + lo < n and seq[i + lo] == first + lo)):
            return _runs_by_scan(seq)
        out.append([first, lo])
        i += lo
    return out


_FEW_RUNS = 32


def _runs_by_scan(seq: list[int]) -> Runs:
    """:func:`to_runs` in one pass, finding where a run breaks by C-level iteration."""
    if not seq:
        return []
    breaks = map(ne, seq[1:], map((1).__add__, seq[:-1]))
    starts = [0, *compress(range(1, len(seq)), breaks), len(seq)]
    return [[seq[a], b - a] for a, b in zip(starts, starts[1:])]


def check_runs(runs: Any, field: str = "body.runs") -> Runs:
    """Validate ``runs``: a list of ``[first, count]`` pairs of integers,
    ``first >= 0``, ``count >= 1``, no two runs sharing a frame.

    Returns:
        ``runs`` as a list of ``[first, count]`` lists.

    Raises:
        ProtocolError: ``bad_field`` naming ``field`` (and the run) and what was expected.
    """
    if not isinstance(runs, (list, tuple)):
        raise ProtocolError("bad_field", f"expected a list of [first, count] runs, got {type(runs).__name__}", field)
    out: Runs = []
    for i, run in enumerate(runs):
        if (not isinstance(run, (list, tuple)) or len(run) != 2
                or not all(type(v) is int for v in run)):
            raise ProtocolError("bad_field", f"expected a run [first, count] of two integers, got {run!r:.60}",
                                f"{field}[{i}]")
        first, count = run
        if first < 0 or count < 1:
            raise ProtocolError("bad_field", f"a run needs first >= 0 and count >= 1, got [{first}, {count}]",
                                f"{field}[{i}]")
        out.append([first, count])
    if len(out) > 1:
        ordered = sorted(range(len(out)), key=lambda i: out[i][0])
        for a, b in zip(ordered, ordered[1:]):
            if out[a][0] + out[a][1] > out[b][0]:
                raise ProtocolError("bad_field", f"runs {out[a]} and {out[b]} overlap (a frame listed twice)",
                                    f"{field}[{b}]")
    return out


def from_runs(runs: Any, field: str = "body.runs") -> list[int]:
    """The frames of ``runs`` (validated by :func:`check_runs`), in order."""
    out: list[int] = []
    for first, count in check_runs(runs, field):
        out.extend(range(first, first + count))
    return out


def count(runs: Runs) -> int:
    """The number of frames in (valid) ``runs``."""
    return sum(c for _f, c in runs)


def body_frames(body: dict[str, Any], prefix: str = "body") -> list[int]:
    """The frames a body names: its ``runs``, or else its ``frames`` list.

    Raises:
        ProtocolError: neither or both are present, or ``runs`` is not valid.
    """
    has_runs, has_list = "runs" in body, "frames" in body
    if has_runs == has_list:
        raise ProtocolError("bad_field" if has_runs else "missing_field",
                            "name the frames once: 'runs' [[first, count], ...] or 'frames' [...]",
                            f"{prefix}.runs")
    if has_runs:
        return from_runs(body["runs"], f"{prefix}.runs")
    return body["frames"]  # the schema checked its items; each receiver checks them as before
