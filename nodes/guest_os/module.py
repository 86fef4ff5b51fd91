"""The OS's frame allocator and its kernel module (DESIGN.md §4, FIG. 4).

:class:`FrameAllocator` is the free list the OS boots with (its partition,
from the memory map the firmware hands it). :class:`KernelModule` is what
the VMM loader and memory lending use: allocate-and-pin frames, add frames
received from elsewhere, give frames back. The node exposes it as the
messages ``mod_alloc_pin`` {n}, ``mod_add`` {frames}, ``mod_give_back``
{frames} (all answered ``ok`` {data: {frames, free}}).
"""

from __future__ import annotations

from collections import deque
from typing import Iterable


class OutOfMemory(Exception):
    """No free frame is left (or not enough for an all-or-nothing request)."""


class FrameError(Exception):
    """A frame list that cannot be taken as asked (not ours, in use, duplicate)."""


class FrameAllocator:
    """Frames the OS owns: free (a FIFO list), in use, or pinned."""

    def __init__(self, first: int = 0, count: int = 0):
        if first < 0 or count < 0:
            raise ValueError(f"bad memory map [{first}, +{count}]")
        self.owned: set[int] = set(range(first, first + count))
        self._free: deque[int] = deque(range(first, first + count))
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
        self._free = deque(f for f in self._free if f not in wanted)
        self._free_set -= wanted
        return frames


class KernelModule:
    """Allocate-and-pin, add and give back frames (plain methods; the node
    wraps them as messages)."""

    def __init__(self, frames: FrameAllocator):
        self.frames = frames

    def alloc_pin(self, n: int) -> list[int]:
        """``n`` free frames, pinned (never handed to a process); all or nothing."""
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise FrameError(f"expected a number of frames >= 0, got {n!r}")
        if n > self.frames.free_count:
            raise OutOfMemory(f"out of memory: {n} frames asked, {self.frames.free_count} free")
        got = [self.frames.alloc() for _ in range(n)]
        self.frames.pinned.update(got)
        return got

    def add_frames(self, frames: Iterable[int]) -> list[int]:
        """Frames received from elsewhere (lent, or the VMM's): onto the free list."""
        frames = list(frames)
        if any(not isinstance(f, int) or isinstance(f, bool) or f < 0 for f in frames):
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
        if len(set(frames)) != len(frames):
            raise FrameError(f"frames listed twice: {frames!r}")
        bad = [f for f in frames if f not in fa.pinned and not fa.is_free(f)]
        if bad:
            raise FrameError(f"frames {bad} are neither pinned nor free in this OS (in use or not ours)")
        free_ones = [f for f in frames if fa.is_free(f)]
        fa.take(free_ones)
        fa.pinned.difference_update(frames)
        fa.owned.difference_update(frames)
        return frames
