"""The memory controller's policy: ownership, address maps and the directory.

DESIGN.md §3 "Memory controller", §5 ¶39 (borrow memory), §6 (isolation,
frame conservation). One :class:`MemoryController` holds:

* **Ownership.** Every frame has exactly one owner at every instant:
  ``"free"``, ``"firmware"``, ``"vmm"`` or an OS instance (``"os1"``). A frame
  whose owner changes is zeroed before the new owner can reach it.
* **Address spaces.** One per OS instance (and one for the VMM if it wants
  one), mapping guest page numbers to frames. A space is either *identity*
  (direct addressability: guest page ``g`` is frame ``g`` itself, reachable
  iff the space owns frame ``g``) or *mapped* (an explicit table the VMM sets
  when memory is virtualized). The rule that keeps isolation: a space's
  entries may only point at frames that the space's owner owns, so an OS can
  never reach another party's frame, whatever the VMM maps.
* **The directory.** Initiators (``cpu0``, ``os1``, ``disk0``, ...) cache
  frames as *shared* (clean, many readers) or *modified* (one writer). Before
  granting a conflicting access, changing a frame's owner or unmapping it,
  the controller *recalls* the other copies through an injected coroutine
  ``await recall(holder, frame, mode)`` and writes back what comes back.

The message wrapper (``node.py``) turns requests into calls of the public
coroutines here; each request may run in its own task: per-frame
claims (``_claim``) serialize what touches a frame, a controller-wide lock
serializes ownership and map changes. :meth:`MemoryController.release` is
synchronous on purpose, so a write-back is applied atomically in the order it
arrives, even while a recall of the same frame is in flight.
"""

from __future__ import annotations

import os
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import trio

from protocol.constants import VMM

from .errors import DirectoryError, FrameLost, InvariantError, MemFault, OwnershipError, Recovering
from .store import FRAME_SIZE, FrameStore, Snapshot, frame_runs

FREE = "free"
FIRMWARE = "firmware"
SYSTEM_OWNERS = frozenset({FREE, VMM, FIRMWARE})

SHARED = "S"
MODIFIED = "M"

INVALIDATE = "invalidate"
DOWNGRADE = "downgrade"
SNAPSHOT = "snapshot"  # the holder's bytes, its copy left as it is (an uncached read of a page it writes)

SNAPSHOT_VERSION = 2  # 2: pins as (first, count) runs; 1: pins as a list of frames
READABLE_VERSIONS = (1, 2)

Recall = Callable[[str, int, str], Awaitable["bytes | None"]]
"""``await recall(holder, frame, mode) -> bytes | None``.

``mode`` is ``"invalidate"`` (the holder drops its copy) or ``"downgrade"``
(a modified copy becomes shared). The holder returns the frame's 4096 bytes
if its copy was modified, else ``None``. It must not call back into the
controller for the same frame while answering (the frame is locked).
"""


def is_os(owner: str) -> bool:
    """Tell whether ``owner`` names an OS instance (anything but free/firmware/vmm)."""
    return owner not in SYSTEM_OWNERS


@dataclass(frozen=True)
class Grant:
    """The answer to :meth:`MemoryController.acquire`.

    Attributes:
        frame: the machine frame the guest page reached; the key of every later
            ``release`` and ``recall`` of this copy.
        data: the frame's bytes, or ``None`` when the initiator already holds
            it modified (its own copy is the newest; keep it).
        writable: whether the copy is held modified (may be written locally).
    """

    frame: int
    data: bytes | None
    writable: bool


@dataclass
class Space:
    """One address space: identity over the owner's frames, or an explicit map."""

    identity: bool = True
    map: dict[int, int] = field(default_factory=dict)


class DistinctFrames(list):
    """A frame list known to hold distinct non-negative integers in increasing
    order (expanded from validated runs, sorted, protocol/frames.py): the
    controller then checks only its range, not each frame, and does not sort
    it again (a loan is thousands of frames)."""


class MemoryController:
    """Ownership, address maps and the directory protocol over a :class:`FrameStore`.

    Args:
        store: the physical memory.
        recall: the coroutine that recalls a cached copy from a holder (see :data:`Recall`).
        snapshot: where metadata is persisted; ``None`` keeps it in memory only.
            If it holds a snapshot, the controller resumes from it; if initiators
            were caching before the restart, it starts in recovery (see
            :attr:`recovering`).

    Raises:
        OwnershipError: the snapshot is for a memory of another size or version.
    """

    def __init__(self, store: FrameStore, recall: Recall, snapshot: Snapshot | None = None):
        self.store = store
        self._recall_cb = recall
        self._snapshot = snapshot
        self._owner: list[str] = [FREE] * store.nframes
        self._spaces: dict[str, Space] = {}
        self._pinned: dict[str, set[int]] = {}
        self._holders: dict[int, dict[str, str]] = {}  # frame -> {initiator: S|M}; no empty dicts
        self._busy: dict[int, trio.Event] = {}  # frame -> set when its holder lets go
        # frames whose newest bytes died with a holder (drop_initiator): a read of one is refused
        # (FrameLost) until the frame is written whole or changes owner (zeroed)
        self.poisoned: set[int] = set()
        self._meta_lock = trio.Lock()
        self.known_initiators: set[str] = set()
        self.recorder = None  # the node's (protocol/recorder.py): frame owner changes, when tracing
        self.recovering = False
        """True after a restart while initiators may still hold copies from
        before it: the directory is soft state and was lost. The wrapper must
        have every initiator in :attr:`known_initiators` write back (``release``
        with data) and drop all its copies, then call :meth:`finish_recovery`.
        Until then every request but ``release`` and the views raises
        :class:`Recovering`."""
        self._counts: Counter[str] = Counter()
        doc = snapshot.load() if snapshot is not None else None
        if doc is not None:
            self._restore(doc)

    @classmethod
    def open(cls, directory: str | os.PathLike[str], nframes: int | None, recall: Recall) -> MemoryController:
        """Open (or create) a controller whose files live in ``directory``.

        ``memory.bin`` holds the frames, ``memctl.json`` the metadata snapshot.

        Args:
            directory: an existing folder.
            nframes: the memory size in frames; ``None`` to reopen at the file's size.
            recall: see :data:`Recall`.
        """
        d = Path(directory)
        return cls(FrameStore(d / "memory.bin", nframes), recall, Snapshot(d / "memctl.json"))

    def close(self) -> None:
        """Close the store (the snapshot is always up to date)."""
        self.store.close()

    # -- ownership ------------------------------------------------------------

    def owner_of(self, frame: int) -> str:
        """Return the owner of ``frame``."""
        return self._owner[self._check_frames([frame])[0]]

    def frames_of(self, owner: str) -> list[int]:
        """Return the frames ``owner`` owns, in increasing order."""
        return [f for f, o in enumerate(self._owner) if o == owner]

    def owners(self) -> dict[str, list[int]]:
        """Return every owner's frames."""
        out: dict[str, list[int]] = {}
        for f, o in enumerate(self._owner):
            out.setdefault(o, []).append(f)
        return out

    def pinned(self, owner: str) -> list[int]:
        """Return the frames ``owner`` has pinned, in increasing order."""
        return sorted(self._pinned.get(owner, ()))

    async def assign(self, frames: Iterable[int], new_owner: str) -> None:
        """Give ``frames`` to ``new_owner``, whoever owns them now (the firmware's power).

        Each frame whose owner changes is recalled from every cache, removed
        from the old owner's map and pins, and zeroed, before the new owner
        can reach it.

        Raises:
            StoreError: a frame number is out of range.
            OwnershipError: ``new_owner`` is not a name.
        """
        frames = self._check_frames(frames)
        _check_name(new_owner)
        async with self._meta_changes(lambda: frames):
            await self._change_owner(frames, new_owner)

    async def transfer(self, frames: Iterable[int], from_owner: str, to_owner: str) -> None:
        """Move ``frames`` from ``from_owner`` to ``to_owner``, zeroed (DESIGN §5 ¶39).

        An OS instance gives away only frames it pinned first (its kernel
        module took them off its free list, so it no longer uses them).

        Raises:
            OwnershipError: a frame is not ``from_owner``'s, or not pinned by it.
        """
        frames = self._check_frames(frames)
        _check_name(to_owner)
        async with self._meta_changes(lambda: frames):
            if self._owners_of(frames) - {from_owner}:
                wrong = [f for f in frames if self._owner[f] != from_owner]
                found = sorted({self._owner[f] for f in wrong})
                raise OwnershipError(f"frames {wrong} are not owned by {from_owner!r} (owned by {found})")
            pins = self._pinned.get(from_owner, set())
            if is_os(from_owner) and not pins.issuperset(frames):
                loose = [f for f in frames if f not in pins]
                raise OwnershipError(f"{from_owner!r} must pin frames {loose} before giving them away")
            await self._change_owner(frames, to_owner)

    async def create_space(self, name: str, frames: Iterable[int]) -> None:
        """Give ``name`` a partition of free ``frames`` and an identity address space.

        Raises:
            OwnershipError: the space exists, or a frame is not free.
        """
        frames = self._check_frames(frames)
        _check_name(name)
        async with self._meta_changes(lambda: frames):
            if name in self._spaces:
                raise OwnershipError(f"address space {name!r} exists already")
            taken = [f for f in frames if self._owner[f] != FREE]
            if taken:
                raise OwnershipError(f"a partition is carved from free frames; frames {taken} are not free")
            self._spaces[name] = Space()
            await self._change_owner(frames, name)

    async def destroy_space(self, name: str) -> None:
        """Drop ``name``'s address space and free every frame it owns (zeroed)."""
        async with self._meta_changes(lambda: self.frames_of(name)):
            self._space(name)
            await self._change_owner(self.frames_of(name), FREE)
            del self._spaces[name]
            self._pinned.pop(name, None)

    def pin(self, owner: str, n: int) -> list[int]:
        """Pin ``n`` unpinned frames of ``owner``, the highest-numbered first, and return them.

        The highest first because an OS keeps its kernel low. An OS that knows
        which of its frames are free calls :meth:`pin_frames` instead.

        Raises:
            OwnershipError: ``owner`` has fewer than ``n`` unpinned frames.
        """
        self._check_serving()
        have = self._pinned.get(owner, set())
        loose = [f for f in reversed(self.frames_of(owner)) if f not in have]
        if n < 0 or n > len(loose):
            raise OwnershipError(f"{owner!r} cannot pin {n} frames: it has {len(loose)} unpinned")
        chosen = sorted(loose[:n])
        self.pin_frames(owner, chosen)
        return chosen

    def pin_frames(self, owner: str, frames: Iterable[int]) -> None:
        """Pin ``frames`` of ``owner`` (idempotent).

        Raises:
            OwnershipError: a frame is not ``owner``'s.
        """
        self._check_serving()
        frames = self._check_frames(frames)
        if self._owners_of(frames) - {owner}:
            wrong = [f for f in frames if self._owner[f] != owner]
            raise OwnershipError(f"{owner!r} cannot pin frames {wrong}: it does not own them")
        self._pinned.setdefault(owner, set()).update(frames)
        self._save()

    def unpin(self, owner: str, frames: Iterable[int]) -> None:
        """Unpin ``frames`` of ``owner``; frames it had not pinned are ignored."""
        self._check_serving()
        frames = self._check_frames(frames)
        self._pinned.get(owner, set()).difference_update(frames)
        self._save()

    # -- address maps ---------------------------------------------------------

    def translate(self, space: str, gpn: int) -> int:
        """Return the frame guest page ``gpn`` of ``space`` reaches.

        Raises:
            MemFault: no such space, the page is outside the map, or the frame
                is not owned by the space.
        """
        sp = self._spaces.get(space)
        if sp is None:
            raise self._fault(space, gpn, "no such address space")
        if not isinstance(gpn, int) or gpn < 0:
            raise self._fault(space, gpn, "guest page number must be a non-negative integer")
        if sp.identity:
            if gpn >= len(self._owner) or self._owner[gpn] != space:
                owner = self._owner[gpn] if gpn < len(self._owner) else "nobody: beyond memory"
                raise self._fault(space, gpn, f"outside the partition (identity map; frame owned by {owner})")
            return gpn
        frame = sp.map.get(gpn)
        if frame is None:
            raise self._fault(space, gpn, "not mapped")
        if self._owner[frame] != space:  # unreachable while invariants hold; isolation first
            raise self._fault(space, gpn, f"maps frame {frame}, owned by {self._owner[frame]}")
        return frame

    def get_map(self, space: str) -> dict[int, int] | None:
        """Return ``space``'s explicit map, or ``None`` while it is identity."""
        sp = self._space(space)
        return None if sp.identity else dict(sp.map)

    async def set_map(self, space: str, mapping: Mapping[int, int]) -> None:
        """Replace ``space``'s map by an explicit one (memory virtualized by the VMM).

        Frames whose guest pages change are recalled from every cache first.

        Raises:
            OwnershipError: no such space, or an entry points at a frame the space does not own.
        """
        table = dict(mapping)
        await self._replace_map(space, lambda old: (False, table))

    async def set_identity(self, space: str) -> None:
        """Give ``space`` direct addressability again: guest page g is frame g, if owned."""
        await self._replace_map(space, lambda old: (True, {}))

    async def map_page(self, space: str, gpn: int, frame: int) -> None:
        """Map guest page ``gpn`` of ``space`` to ``frame`` (an identity map becomes explicit)."""
        await self._replace_map(space, lambda old: (False, {**old, gpn: frame}))

    async def unmap_page(self, space: str, gpn: int) -> bool:
        """Unmap guest page ``gpn`` of ``space``; return whether it was mapped.

        An identity map becomes explicit. Cached copies of the frame are recalled first.
        """
        was: list[bool] = []

        def edit(old: dict[int, int]) -> tuple[bool, dict[int, int]]:
            was.append(gpn in old)
            return False, {g: f for g, f in old.items() if g != gpn}

        await self._replace_map(space, edit)
        return was[-1]

    # -- the directory protocol ------------------------------------------------

    async def acquire(self, initiator: str, space: str, gpn: int, write: bool) -> Grant:
        """Grant ``initiator`` a cached copy of guest page ``gpn`` of ``space``.

        A write recalls (invalidates) every other copy; a read downgrades the
        modified copy, if another initiator holds one. Returned bytes are
        written back before the grant.

        Raises:
            MemFault: the page is outside the space's map.
        """
        self._check_serving()
        if initiator not in self.known_initiators:
            # Persisted so that a restarted controller knows whose caches to flush.
            self.known_initiators.add(initiator)
            self._save()
        async with self._translated(space, gpn) as frame:
            self._counts["acquires"] += 1
            holders = self._holders.get(frame, {})
            if holders.get(initiator) == MODIFIED:
                return Grant(frame, None, True)
            if write:
                others = [h for h in holders if h != initiator]
                await self._recall(frame, INVALIDATE, others)
            else:
                writer = [h for h, m in holders.items() if m == MODIFIED and h != initiator]
                await self._recall(frame, DOWNGRADE, writer)
            self._holders.setdefault(frame, {})[initiator] = MODIFIED if write else SHARED
            return Grant(frame, self.store.read_frame(frame), write)

    def release(self, initiator: str, frame: int, data: bytes | None = None) -> None:
        """Drop ``initiator``'s copy of ``frame``, writing back ``data`` if it was modified.

        A release from an initiator that no longer holds the frame is ignored
        (counted as ``stale_releases``): a recall overtook it and carried the
        data, and the frame may have changed owner since. During recovery
        every write-back is accepted (the directory was lost).

        Raises:
            DirectoryError: data for a copy held shared, or not a whole frame.
        """
        frame = self._check_frames([frame])[0]
        if data is not None and len(data) != FRAME_SIZE:
            raise DirectoryError(f"write-back of frame {frame} by {initiator!r}: {len(data)} bytes, not {FRAME_SIZE}")
        if self.recovering:
            if data is not None and self._owner[frame] != FREE:
                self._write_back(frame, data)
            return
        holders = self._holders.get(frame, {})
        mode = holders.get(initiator)
        if mode is None:
            self._counts["stale_releases"] += 1
            return
        if data is not None:
            if mode != MODIFIED:
                raise DirectoryError(f"{initiator!r} wrote back frame {frame}, which it holds shared (clean)")
            self._write_back(frame, data)
        self._drop_holder(frame, initiator)

    async def read(self, initiator: str, space: str, gaddr: int, n: int) -> bytes:
        """Read ``n`` bytes at guest address ``gaddr`` of ``space``, uncached (OS copies, DMA).

        A modified cached copy's bytes are fetched first (a snapshot: the holder
        keeps its copy, writable), so the bytes are the newest. Every page is translated before any is read.

        Raises:
            MemFault: a page of the range is outside the space's map.
        """
        if not isinstance(n, int) or isinstance(n, bool):
            self._pages(space, gaddr, n)  # a bad range is a fault (not a write of whatever ``n`` is)
        return (await self.access(initiator, space, [(gaddr, n)]))[0]

    async def write(self, initiator: str, space: str, gaddr: int, data: bytes) -> None:
        """Write ``data`` at guest address ``gaddr`` of ``space``, uncached (OS copies, DMA).

        Every cached copy of each page (the initiator's own included) is
        invalidated first; a modified one is written back, then overlaid.
        Every page is translated before any is written, so a fault writes nothing.

        Raises:
            MemFault: a page of the range is outside the space's map.
            DirectoryError: ``data`` is not bytes.
        """
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DirectoryError(f"uncached write by {initiator!r}: data must be bytes, got {type(data).__name__}")
        await self.access(initiator, space, [(gaddr, data)])

    async def access(self, initiator: str, space: str, ops: list[tuple[int, Any]]) -> list[bytes | None]:
        """Several uncached reads and writes of ``space`` as one (an OS copying
        a syscall's buffers): ``(gaddr, n)`` reads ``n`` bytes, ``(gaddr,
        data)`` writes ``data``; applied in order, so a read sees the writes
        before it. What each read returned (None for a write).

        Every page of every op is translated before anything is touched (a
        fault reads and writes nothing) and every frame is claimed at once;
        the recalls the ops need (every copy of a frame written; a snapshot
        of a modified copy of a frame only read) go out together, so they cost one round
        trip to the holders however many pages the ops cover.

        Raises:
            MemFault: a page of an op is outside the space's map.
            DirectoryError: an op is neither (int, int) nor (int, bytes).
        """
        plan: list[tuple[bytes | None, list[tuple[int, int, int]]]] = []
        for op in ops:
            if not isinstance(op, (tuple, list)) or len(op) != 2:
                raise DirectoryError(f"uncached access by {initiator!r}: an op is (address, length | bytes), "
                                     f"got {op!r:.80}")
            gaddr, what = op
            if isinstance(what, int) and not isinstance(what, bool):
                plan.append((None, self._pages(space, gaddr, what)))
            elif isinstance(what, (bytes, bytearray, memoryview)):
                data = bytes(what)
                plan.append((data, self._pages(space, gaddr, len(data))))
            else:
                raise DirectoryError(f"uncached write by {initiator!r}: data must be bytes, got {type(what).__name__}")
        gpns = sorted({gpn for _data, pages in plan for gpn, _o, _n in pages})
        while True:
            frames = {gpn: self.translate(space, gpn) for gpn in gpns}
            async with self._claim(sorted(set(frames.values()))):
                if any(self.translate(space, g) != f for g, f in frames.items()):
                    continue  # the map moved while queued: translate again
                written = {frames[g] for data, pages in plan if data is not None for g, _o, _n in pages}
                recalls = []
                for f in sorted(set(frames.values())):
                    holders = self._holders.get(f, {})
                    if f in written:
                        recalls.append((f, INVALIDATE, list(holders)))
                    else:
                        writer = [h for h, m in holders.items() if m == MODIFIED]
                        if writer:  # a read needs the newest bytes, not the writer's copy
                            recalls.append((f, SNAPSHOT, writer))
                await self._recall_all(recalls)
                self._check_poison(plan, frames)
                out: list[bytes | None] = []
                for data, pages in plan:
                    if data is None:
                        out.append(b"".join(self.store.read(frames[g], off, n) for g, off, n in pages))
                        self._counts["uncached_reads"] += 1
                        continue
                    done = 0
                    for g, off, n in pages:
                        self.store.write(frames[g], off, data[done:done + n])
                        done += n
                    out.append(None)
                    self._counts["uncached_writes"] += 1
                return out

    def _check_poison(self, plan: list[tuple[bytes | None, list[tuple[int, int, int]]]],
                      frames: dict[int, int]) -> None:
        """Refuse a read of a poisoned frame (FrameLost) unless a write of the same
        access covered it whole before; a whole-frame write cures it."""
        if not self.poisoned:
            return
        cured: set[int] = set()
        for data, pages in plan:
            for g, off, n in pages:
                f = frames[g]
                if f not in self.poisoned or f in cured:
                    continue
                if data is None:
                    raise FrameLost(sorted({frames[g] for _d, ps in plan for g, _o, _n in ps} & self.poisoned))
                if off == 0 and n == FRAME_SIZE:
                    cured.add(f)
        self.poisoned -= cured

    async def _recall_all(self, recalls: list[tuple[int, str, list[str]]]) -> None:
        """:meth:`_recall` of each (frame, mode, holders) at once (the caller holds
        every frame's claim); the first error, once every recall ended."""
        if len(recalls) == 1:
            await self._recall(*recalls[0])
            return
        errors: list[Exception] = []

        async def one(frame: int, mode: str, holders: list[str]) -> None:
            try:
                await self._recall(frame, mode, holders)
            except Exception as exc:  # re-raised below, after the others ended
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            for recall in recalls:
                nursery.start_soon(one, *recall)
        if errors:
            raise errors[0]

    def drop_initiator(self, initiator: str) -> list[int]:
        """Forget every copy ``initiator`` holds (it crashed, or stopped answering recalls).

        Returns:
            The frames it held modified: their newest bytes are lost, memory keeps
            the last written-back ones. The wrapper should report them.
        """
        lost = []
        for frame in [f for f, h in self._holders.items() if initiator in h]:
            if self._holders[frame][initiator] == MODIFIED:
                lost.append(frame)
            self._drop_holder(frame, initiator)
        self.poisoned.update(lost)
        return sorted(lost)

    def guest_pages(self, frames: Iterable[int]) -> dict[str, list[int]]:
        """Where ``frames`` appear as guest pages: {space: [gpn, ...]} (identity
        spaces reach their owner's frames as themselves, mapped ones through their map)."""
        wanted = set(frames)
        out: dict[str, list[int]] = {}
        for name, sp in self._spaces.items():
            if sp.identity:
                gpns = [f for f in wanted if f < len(self._owner) and self._owner[f] == name]
            else:
                gpns = [g for g, f in sp.map.items() if f in wanted]
            if gpns:
                out[name] = sorted(gpns)
        return out

    def finish_recovery(self) -> None:
        """End recovery: every initiator has written back and dropped its copies."""
        self.recovering = False
        self._holders.clear()

    # -- views -------------------------------------------------------------------

    def holders(self, frame: int) -> dict[str, str]:
        """Return who caches ``frame`` and how (``"S"`` shared, ``"M"`` modified)."""
        return dict(self._holders.get(self._check_frames([frame])[0], {}))

    def stats(self) -> dict[str, Any]:
        """Return counters for ``hwemu memory status`` (JSON-serialisable)."""
        cached: Counter[str] = Counter()
        modified: Counter[str] = Counter()
        for holders in self._holders.values():
            for who, mode in holders.items():
                cached[who] += 1
                modified[who] += mode == MODIFIED
        counts = {k: self._counts[k] for k in (
            "acquires", "recalls", "writebacks", "snapshots", "faults", "zeroed",
            "uncached_reads", "uncached_writes", "stale_releases", "recall_anomalies")}
        return {
            "nframes": self.store.nframes,
            "frames": self._frame_counts(),
            "pinned": {o: len(p) for o, p in self._pinned.items() if p},
            "spaces": {s: "identity" if sp.identity else f"{len(sp.map)} pages mapped"
                       for s, sp in self._spaces.items()},
            "cached": dict(cached),
            "modified": {k: v for k, v in modified.items() if v},
            "recovering": self.recovering,
            "poisoned": len(self.poisoned),
            **counts,
        }

    def _frame_counts(self) -> dict[str, int]:
        """Frames per owner, counted run by run (every heartbeat asks: a Counter
        over every frame held the controller's loop for milliseconds)."""
        counts: Counter[str] = Counter()
        for owner, same in groupby(self._owner):
            counts[owner] += len(list(same))
        return dict(counts)

    def check_invariants(self) -> None:
        """Check DESIGN.md §6's memory guarantees on the controller's own state.

        Every frame has exactly one owner (a name); one writer or many readers
        per frame; free frames are cached by nobody; every explicit map entry
        points at a frame its space owns; every pinned frame is its pinner's.

        Raises:
            InvariantError: naming the first broken invariant found.
        """
        if len(self._owner) != self.store.nframes or not all(isinstance(o, str) and o for o in self._owner):
            raise InvariantError("a frame has no owner")
        for frame, holders in self._holders.items():
            writers = [h for h, m in holders.items() if m == MODIFIED]
            if not holders or (writers and len(holders) > 1) or set(holders.values()) - {SHARED, MODIFIED}:
                raise InvariantError(f"frame {frame}: not one writer or many readers: {holders}")
            if self._owner[frame] == FREE:
                raise InvariantError(f"free frame {frame} is cached by {sorted(holders)}")
        for name, sp in self._spaces.items():
            for gpn, frame in sp.map.items():
                if not 0 <= frame < len(self._owner) or self._owner[frame] != name:
                    raise InvariantError(f"space {name!r} maps page {gpn:#x} to frame {frame} it does not own")
        for owner, frames in self._pinned.items():
            stray = [f for f in frames if self._owner[f] != owner]
            if stray:
                raise InvariantError(f"{owner!r} pins frames {stray} it does not own")

    # -- internals ---------------------------------------------------------------

    def _fault(self, space: str, gpn: int, detail: str) -> MemFault:
        self._counts["faults"] += 1
        return MemFault(space, gpn, detail)

    def _check_serving(self) -> None:
        if self.recovering:
            raise Recovering(
                "memory controller restarted: waiting for initiators "
                f"{sorted(self.known_initiators)} to write back and drop their caches")

    def _check_frames(self, frames: Iterable[int]) -> list[int]:
        """Return the distinct frames, in order, each checked to be in range."""
        if type(frames) is DistinctFrames:
            if frames and max(frames) < self.store.nframes:
                return frames
            out = list(frames)
            for f in out:
                self.store.check_frame(f)
            return out
        out = list(dict.fromkeys(frames))
        if out and set(map(type, out)) == {int} and 0 <= min(out) and max(out) < self.store.nframes:
            return out  # the common case, checked in bulk
        for f in out:
            self.store.check_frame(f)
        return out

    def _owners_of(self, frames: list[int]) -> set[str]:
        """The set of owners of ``frames`` (checked frame numbers), in one C-level pass."""
        if not frames:
            return set()
        got = itemgetter(*frames)(self._owner)
        return {got} if len(frames) == 1 else set(got)

    def _space(self, name: str) -> Space:
        sp = self._spaces.get(name)
        if sp is None:
            raise OwnershipError(f"no address space {name!r} (known: {sorted(self._spaces)})")
        return sp

    def _explicit_map(self, space: str) -> dict[int, int]:
        """Return ``space``'s map as an explicit table (identity spelled out)."""
        sp = self._space(space)
        return {f: f for f in self.frames_of(space)} if sp.identity else dict(sp.map)

    @asynccontextmanager
    async def _claim(self, frames: list[int]) -> AsyncIterator[None]:
        """Hold ``frames`` (distinct, increasing) exclusively, waiting for any
        task that holds one of them.

        A claim is one dict entry per frame and one event per claim, so a bulk
        change of 16384 frames costs that many dict operations; a trio.Lock per
        frame cost O(n²) (trio keeps a list of the locks each task holds).
        Frames are claimed in increasing order and single-frame users hold one
        at a time, so claims cannot deadlock.
        """
        done = trio.Event()
        busy = self._busy
        claimed = 0
        try:
            await trio.lowlevel.checkpoint()
            if busy.keys().isdisjoint(frames):  # nobody holds any: claim them all at once
                busy.update(dict.fromkeys(frames, done))
                claimed = len(frames)
            for f in frames[claimed:]:
                while (other := busy.get(f)) is not None:
                    await other.wait()
                busy[f] = done
                claimed += 1
            yield
        finally:
            deque(map(busy.pop, frames[:claimed]), maxlen=0)
            done.set()

    @asynccontextmanager
    async def _meta_changes(self, frames: Callable[[], Iterable[int]]) -> AsyncIterator[list[int]]:
        """Serialize a change of ownership or maps touching ``frames()``, then snapshot it.

        Yields the frames locked, in increasing order.

        The controller-wide lock first, then the frame locks in increasing
        order: acquires hold one frame lock at a time, so this cannot deadlock.
        ``frames`` is called under the controller-wide lock, since owners and
        maps change only under it: what it returns stays exact.
        The snapshot is saved even if the change stops half-way, so the file
        always tells the truth about what was done.
        """
        self._check_serving()
        async with self._meta_lock:
            fr = frames()
            locked = fr if type(fr) is DistinctFrames else sorted(set(fr))
            async with self._claim(locked):
                try:
                    yield locked
                finally:
                    self._save()

    @asynccontextmanager
    async def _translated(self, space: str, gpn: int) -> AsyncIterator[int]:
        """Translate ``gpn`` and hold the frame's lock, retrying if the map moved while queued."""
        while True:
            frame = self.translate(space, gpn)
            async with self._claim([frame]):
                if self.translate(space, gpn) == frame:
                    yield frame
                    return

    def _pages(self, space: str, gaddr: int, n: int) -> list[tuple[int, int, int]]:
        """Split ``[gaddr, gaddr+n)`` into (gpn, offset, length), translating each page once."""
        self._check_serving()
        if not isinstance(gaddr, int) or not isinstance(n, int) or gaddr < 0 or n < 0:
            raise self._fault(space, -1, f"bad range: address {gaddr!r}, length {n!r}")
        out = []
        addr, end = gaddr, gaddr + n
        while addr < end:
            gpn, offset = divmod(addr, FRAME_SIZE)
            length = min(FRAME_SIZE - offset, end - addr)
            self.translate(space, gpn)  # fault before touching anything
            out.append((gpn, offset, length))
            addr += length
        return out

    async def _recall(self, frame: int, mode: str, holders: list[str]) -> None:
        """Recall ``frame`` from ``holders`` (caller holds the frame lock); write back what returns."""
        for holder in holders:
            was = self._holders.get(frame, {}).get(holder)
            if was is None:
                continue  # released while we recalled another holder
            self._counts["recalls"] += 1
            data = await self._recall_cb(holder, frame, mode)
            now = self._holders.get(frame, {}).get(holder)
            if now is None:
                continue  # its release overtook the recall and already wrote back
            if mode == SNAPSHOT:  # memory takes the bytes; the holder keeps its copy, writable
                if data is not None and now == MODIFIED and len(data) == FRAME_SIZE:
                    self.store.write_frame(frame, data)
                    self._counts["snapshots"] += 1
                continue
            if data is not None and now == MODIFIED:
                if len(data) != FRAME_SIZE:
                    raise DirectoryError(f"recall of frame {frame} from {holder!r}: {len(data)} bytes back")
                self._write_back(frame, data)
            elif (data is None) != (now == SHARED):
                # A writer with nothing to give back, or bytes from a clean copy:
                # memory stays as it is (a clean copy equals it anyway).
                self._counts["recall_anomalies"] += 1
            if mode == INVALIDATE:
                self._drop_holder(frame, holder)
            else:
                self._holders[frame][holder] = SHARED

    def _write_back(self, frame: int, data: bytes) -> None:
        self.store.write_frame(frame, data)
        self._counts["writebacks"] += 1

    def _drop_holder(self, frame: int, holder: str) -> None:
        holders = self._holders[frame]
        del holders[holder]
        if not holders:
            del self._holders[frame]

    async def _change_owner(self, frames: list[int], new_owner: str) -> None:
        """Recall, unmap, unpin and zero each frame that changes owner (caller holds the locks).

        In bulk: the recalls first (nobody caches most frames: those cost
        nothing), then, with no await in between, each old owner's map and
        pins lose the frames at once, the frames are zeroed run by run and
        change owner, so a loan of many frames costs a few operations per
        run, not several per frame.
        """
        owner = self._owner
        olds = self._owners_of(frames)
        if olds == {new_owner}:
            return
        if len(olds) == 1:
            moving = frames if type(frames) is DistinctFrames else sorted(frames)
            by_old = {olds.pop(): set(moving)}
        else:
            moving = sorted(f for f in frames if owner[f] != new_owner)
            by_old = {}
            for f in moving:
                by_old.setdefault(owner[f], set()).add(f)
        for f in sorted(self._holders.keys() & set(moving)):
            await self._recall(f, INVALIDATE, list(self._holders[f]))
        for old, gone in by_old.items():
            sp = self._spaces.get(old)
            if sp is not None and not sp.identity and sp.map:
                sp.map = {g: fr for g, fr in sp.map.items() if fr not in gone}
            pins = self._pinned.get(old)
            if pins:
                pins.difference_update(gone)
        # Zero before the owner changes: the new owner never sees the old one's bytes.
        runs = frame_runs(moving)
        self.store.zero_runs(runs)
        self.poisoned.difference_update(moving)  # zeroed: no older bytes to pass for the newest
        self._counts["zeroed"] += len(moving)
        for first, count in runs:
            owner[first:first + count] = [new_owner] * count
        rec = self.recorder
        if rec is not None and rec.on:
            for old, gone in by_old.items():
                rec("frame", "owner", frames=sorted(gone), old=old, new=new_owner)

    async def _replace_map(
        self, space: str, edit: Callable[[dict[int, int]], tuple[bool, dict[int, int]]]
    ) -> None:
        """Install ``edit(current explicit map) -> (identity, map)`` as ``space``'s map.

        ``edit`` runs under the controller-wide lock, so concurrent page edits
        compose. Every frame whose guest pages change is recalled from every
        cache before the new map takes effect.
        """
        new: dict[str, Any] = {}

        def touched() -> set[int]:
            sp = self._space(space)
            identity, mapping = edit(self._explicit_map(space))
            bad = [g for g in mapping if not isinstance(g, int) or g < 0]
            if bad:
                raise OwnershipError(f"map of {space!r}: guest pages {bad} are not non-negative integers")
            foreign = sorted({f for f in self._check_frames(mapping.values()) if self._owner[f] != space})
            if foreign:
                raise OwnershipError(f"map of {space!r} may only point at frames it owns; frames {foreign} are not")
            old, now = _pages_by_frame(self._explicit_map(space)), _pages_by_frame(
                {f: f for f in self.frames_of(space)} if identity else mapping)
            new.update(sp=sp, identity=identity, mapping=mapping)
            return {f for f in old.keys() | now.keys() if old.get(f) != now.get(f)}

        async with self._meta_changes(touched) as frames:
            for f in frames:
                await self._recall(f, INVALIDATE, list(self._holders.get(f, {})))
            new["sp"].identity, new["sp"].map = new["identity"], new["mapping"]

    def _save(self) -> None:
        if self._snapshot is None:
            return
        runs: list[list[Any]] = []
        first = 0
        for o, same in groupby(self._owner):
            n = len(list(same))
            runs.append([first, n, o])
            first += n
        self._snapshot.save({
            "version": SNAPSHOT_VERSION,
            "nframes": self.store.nframes,
            "owners": runs,
            "spaces": {name: {"identity": sp.identity, "map": sorted(sp.map.items())}
                       for name, sp in self._spaces.items()},
            "pinned": {o: frame_runs(sorted(p)) for o, p in self._pinned.items() if p},
            "initiators": sorted(self.known_initiators),
        })

    def _restore(self, doc: dict[str, Any]) -> None:
        if doc.get("version") not in READABLE_VERSIONS or doc.get("nframes") != self.store.nframes:
            raise OwnershipError(
                f"snapshot {self._snapshot.path if self._snapshot else ''} is version {doc.get('version')} "
                f"for {doc.get('nframes')} frames; this memory has {self.store.nframes} frames "
                f"(version {SNAPSHOT_VERSION})")
        for start, count, owner in doc["owners"]:
            self._owner[start:start + count] = [owner] * count
        self._spaces = {name: Space(s["identity"], {g: f for g, f in s["map"]})
                        for name, s in doc["spaces"].items()}
        self._pinned = {o: _pin_set(p, doc["version"]) for o, p in doc["pinned"].items()}
        self.known_initiators = set(doc["initiators"])
        self.recovering = bool(self.known_initiators)


def _pin_set(saved: list, version: int) -> set[int]:
    """The pinned frames of a snapshot: runs (version 2) or a list of frames (version 1)."""
    if version == 1:
        return set(saved)
    return {f for first, count in saved for f in range(first, first + count)}


def _check_name(owner: object) -> None:
    if not isinstance(owner, str) or not owner:
        raise OwnershipError(f"an owner is a non-empty name, got {owner!r}")


def _pages_by_frame(table: dict[int, int]) -> dict[int, set[int]]:
    """Invert a guest-page -> frame table."""
    out: dict[int, set[int]] = {}
    for g, f in table.items():
        out.setdefault(f, set()).add(g)
    return out
