"""The OS's frame allocator and its kernel module (DESIGN.md §4, FIG. 4).

:class:`FrameAllocator` is the free list the OS boots with (its partition,
from the memory map the firmware hands it). :class:`KernelModule` is what
the VMM loader and memory lending use: allocate-and-pin frames, add frames
received from elsewhere, give frames back. The node exposes it as the
messages ``mod_alloc_pin`` {n, min}, ``mod_add`` {runs}, ``mod_give_back``
{runs} (all answered ``ok`` {data: {runs, free}}; frames as [first, count]
runs, protocol/frames.py; nodes/guest_os/node.py).

Lending floor (¶39, "OS A may refuse below a floor it declares"): the OS
keeps ``lend_floor`` frames free whatever it is asked; ``alloc_pin`` grants
between ``min`` and ``n`` frames from what lies above the floor (a partial
grant the caller reports), and refuses with :class:`BelowFloor` when fewer
than ``min`` are there.
"""

from __future__ import annotations

from collections import deque
from itertools import filterfalse, islice
from typing import Iterable


class OutOfMemory(Exception):
    """No free frame is left (or not enough for an all-or-nothing request)."""


class BelowFloor(OutOfMemory):
    """Granting ``min`` frames would take the OS below the floor it keeps free."""


class FrameError(Exception):
    """A frame list that cannot be taken as asked (not ours, in use, duplicate)."""


class FrameAllocator:
    """Frames the OS owns: free (a FIFO list), in use, or pinned."""

    def __init__(self, first: int = 0, count: int = 0, frames: Iterable[int] | None = None):
        """The boot memory map: the range ``[first, first + count)``, or the
        explicit ``frames`` (not contiguous: frames lent to an instance booted
        on borrowed memory, ¶49)."""
        if first < 0 or count < 0:
            raise ValueError(f"bad memory map [{first}, +{count}]")
        boot = list(range(first, first + count)) if frames is None else list(frames)
        self.owned: set[int] = set(boot)
        self._free: deque[int] = deque(boot)
        self._free_set: set[int] = set(self._free)
        self.pinned: set[int] = set()

    @property
    def free_count(self) -> int:
        return len(self._free)

    def is_free(self, gpn: int) -> bool:
        return gpn in self._free_set

    def alloc(self) -> int:
        if not self._free:
            raise OutOfMemory("out of memory: no free frame")
        gpn = self._free.popleft()
        self._free_set.discard(gpn)
        return gpn

    def free(self, gpn: int) -> None:
        if gpn not in self.owned or gpn in self._free_set:
            raise FrameError(f"frame {gpn} is not an allocated frame of this OS")
        self.pinned.discard(gpn)
        self._free.append(gpn)
        self._free_set.add(gpn)

    def take(self, frames: Iterable[int]) -> list[int]:
        """Remove specific free frames from the free list (all or nothing)."""
        frames = list(frames)
        if not frames:
            return frames  # nothing to take: keep the free list as it is (no rebuild)
        bad = [f for f in frames if f not in self._free_set]
        if bad or len(set(frames)) != len(frames):
            raise FrameError(f"frames {bad or frames} are not free frames of this OS")
        wanted = set(frames)
        self._free = deque(filterfalse(wanted.__contains__, self._free))  # C-level: a loan is thousands
        self._free_set -= wanted
        return frames

    def alloc_many(self, n: int) -> list[int]:
        """The first ``n`` free frames (FIFO, as :meth:`alloc` one by one would), in bulk."""
        if n > len(self._free):
            raise OutOfMemory(f"out of memory: {n} frames asked, {len(self._free)} free")
        got = list(islice(self._free, n))
        self._free = deque(islice(self._free, n, None))
        self._free_set.difference_update(got)
        return got


class KernelModule:
    """Allocate-and-pin, add and give back frames (plain methods; the node
    wraps them as messages)."""

    def __init__(self, frames: FrameAllocator, lend_floor: int = 0):
        if not isinstance(lend_floor, int) or isinstance(lend_floor, bool) or lend_floor < 0:
            raise ValueError(f"option 'lend_floor': expected a number of frames >= 0, got {lend_floor!r}")
        self.frames = frames
        self.lend_floor = lend_floor

    def alloc_pin(self, n: int, min_n: int | None = None) -> list[int]:
        """Up to ``n`` free frames, at least ``min_n`` (default ``n``: all or
        nothing), pinned (never handed to a process), never taking the free
        list below the lending floor.

        Raises:
            BelowFloor: fewer than ``min_n`` frames lie above the floor.
            OutOfMemory: fewer than ``min_n`` frames are free at all (no floor).
        """
        for key, v in (("n", n), ("min", min_n)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
                raise FrameError(f"expected a number of frames >= 0 for {key}, got {v!r}")
        want = n if min_n is None else min(min_n, n)
        free = self.frames.free_count
        above = max(0, free - self.lend_floor)
        if want > above:
            if self.lend_floor:
                raise BelowFloor(f"it keeps {self.lend_floor} frames free (its lending floor) and has {free} "
                                 f"free: {above} to lend, at least {want} of {n} asked")
            raise OutOfMemory(f"out of memory: {n} frames asked, {free} free")
        got = self.frames.alloc_many(min(n, above))
        self.frames.pinned.update(got)
        return got

    def stats(self) -> dict[str, int]:
        return {"lend_floor": self.lend_floor, "lendable": max(0, self.frames.free_count - self.lend_floor)}

    def add_frames(self, frames: Iterable[int]) -> list[int]:
        """Frames received from elsewhere (lent, or the VMM's): onto the free list."""
        frames = list(frames)
        if frames and (set(map(type, frames)) != {int} or min(frames) < 0):  # in bulk, at C speed
            raise FrameError(f"frame numbers must be integers >= 0: {frames!r}")
        dup = sorted(self.frames.owned.intersection(frames)) or (
            frames if len(set(frames)) != len(frames) else [])
        if dup:
            raise FrameError(f"frames {dup} are already owned by this OS (or listed twice)")
        fa = self.frames
        # in bulk (set and deque operations): a loan is thousands of frames
        fa.owned.update(frames)
        fa._free.extend(frames)
        fa._free_set.update(frames)
        return frames

    def give_back(self, frames: Iterable[int]) -> list[int]:
        """Frames leave the OS: each must be pinned or free (never one in use)."""
        frames = list(frames)
        fa = self.frames
        asked = set(frames)
        if len(asked) != len(frames):
            raise FrameError(f"frames listed twice: {frames!r}")
        # set operations, not a test per frame: a loan is thousands of frames
        if not asked <= (fa.pinned | asked.intersection(fa._free_set)):
            bad = sorted(asked - fa.pinned - fa._free_set)
            raise FrameError(f"frames {bad} are neither pinned nor free in this OS (in use or not ours)")
        fa.take(list(filter(fa._free_set.__contains__, frames)))
        fa.pinned.difference_update(frames)
        fa.owned.difference_update(frames)
        return frames
