"""Physical memory of the emulated machine, backed by a file (DESIGN.md §3).

The memory controller owns the machine's page frames. They live in one file,
``nframes * FRAME_SIZE`` bytes, mapped ``MAP_SHARED``: every store lands in
the kernel's page cache the moment it is made, so a ``kill -9`` of the
controller loses nothing it wrote (only a crash of the host needs
:meth:`FrameStore.flush`). Beside it, a small JSON :class:`Snapshot` keeps the
controller's metadata (frame owners, address maps, pins), replaced atomically
so that a restarted controller recovers ownership as well as contents.

This module is pure file I/O; ``directory.py`` holds the policy.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from protocol.constants import PAGE_SIZE as FRAME_SIZE
from protocol.frames import to_runs

from .errors import StoreError

_ZERO_FRAME = bytes(FRAME_SIZE)  # shared, immutable: no allocation per zeroed frame
_ZERO_RUN = bytes(256 * FRAME_SIZE)  # the fallback of zero_frames writes 1 MiB at a time


def frame_runs(ordered: list[int]) -> list[list[int]]:
    """[first, count] of each run of consecutive frames in an increasing list
    of distinct frames (the wire's runs, protocol/frames.py)."""
    return to_runs(ordered, increasing=True)


class FrameStore:
    """``nframes`` frames of :data:`FRAME_SIZE` bytes in a memory-mapped file.

    The file is created (zero-filled) and sized if absent, and reopened with
    its contents intact if present. Use as a context manager or call
    :meth:`close`.

    Args:
        path: the backing file.
        nframes: the number of frames; ``None`` to take it from an existing
            file's size.

    Raises:
        StoreError: ``nframes`` is not positive, the file's size is not
            ``nframes`` frames, or ``nframes`` is ``None`` and there is no file.
    """

    def __init__(self, path: str | os.PathLike[str], nframes: int | None = None):
        self.path = Path(path)
        exists = self.path.exists()
        if nframes is None:
            if not exists:
                raise StoreError(f"{self.path}: no memory file, and no frame count to create one")
            size = self.path.stat().st_size
            if size == 0 or size % FRAME_SIZE:
                raise StoreError(f"{self.path}: size {size} is not a whole number of {FRAME_SIZE}-byte frames")
            nframes = size // FRAME_SIZE
        if nframes <= 0:
            raise StoreError(f"{self.path}: frame count must be positive, got {nframes}")
        size = nframes * FRAME_SIZE
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            found = os.fstat(fd).st_size
            if not exists or found == 0:
                os.ftruncate(fd, size)  # sparse: zero frames cost no disk
            elif found != size:
                # Refuse rather than truncate: a wrong topology must not eat memory.
                raise StoreError(
                    f"{self.path}: holds {found // FRAME_SIZE} frames ({found} bytes), "
                    f"topology says {nframes}"
                )
            self._mm = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)  # the mapping keeps the file open
        self.nframes = nframes
        self._can_punch = hasattr(mmap, "MADV_REMOVE") and mmap.PAGESIZE <= FRAME_SIZE \
            and FRAME_SIZE % mmap.PAGESIZE == 0

    # -- bounds -------------------------------------------------------------

    def _span(self, frame: int, offset: int, n: int) -> int:
        """Return the file position of ``[offset, offset+n)`` in ``frame``, checked."""
        if not isinstance(frame, int) or not 0 <= frame < self.nframes:
            raise StoreError(f"frame {frame!r} out of range: this memory has frames 0..{self.nframes - 1}")
        if not 0 <= offset <= FRAME_SIZE or not 0 <= n <= FRAME_SIZE - offset:
            raise StoreError(
                f"bytes [{offset}, {offset + n}) of frame {frame} out of range: a frame is {FRAME_SIZE} bytes"
            )
        return frame * FRAME_SIZE + offset

    def check_frame(self, frame: int) -> int:
        """Return ``frame`` if it is a frame number of this memory, else raise :class:`StoreError`."""
        self._span(frame, 0, 0)
        return frame

    # -- access -------------------------------------------------------------

    def read(self, frame: int, offset: int, n: int) -> bytes:
        """Return ``n`` bytes of ``frame`` from ``offset``; the range must stay in the frame."""
        pos = self._span(frame, offset, n)
        return self._mm[pos:pos + n]

    def write(self, frame: int, offset: int, data: bytes) -> None:
        """Write ``data`` into ``frame`` at ``offset``; the range must stay in the frame."""
        pos = self._span(frame, offset, len(data))
        self._mm[pos:pos + len(data)] = data

    def read_frame(self, frame: int) -> bytes:
        """Return the whole frame."""
        return self.read(frame, 0, FRAME_SIZE)

    def write_frame(self, frame: int, data: bytes) -> None:
        """Replace the whole frame; ``data`` must be exactly :data:`FRAME_SIZE` bytes."""
        if len(data) != FRAME_SIZE:
            raise StoreError(f"frame {frame}: a whole-frame write takes {FRAME_SIZE} bytes, got {len(data)}")
        self.write(frame, 0, data)

    def zero_frame(self, frame: int) -> None:
        """Fill the frame with zeros."""
        pos = self._span(frame, 0, FRAME_SIZE)
        self._mm[pos:pos + FRAME_SIZE] = _ZERO_FRAME

    def zero_frames(self, frames: Iterable[int]) -> None:
        """Fill ``frames`` with zeros (see :meth:`zero_runs`).

        Raises:
            StoreError: a frame number is out of range (nothing is zeroed).
        """
        self.zero_runs(frame_runs(sorted(set(frames))))

    def zero_runs(self, runs: list[tuple[int, int]]) -> None:
        """Fill each run (first frame, count) with zeros, one operation per run.

        A run is punched out of the file (``madvise(MADV_REMOVE)`` on the
        shared mapping: the file system frees the blocks, the range reads as
        zeros and costs no write); where that is not supported, it is
        overwritten from one shared zero buffer.

        Raises:
            StoreError: a frame number is out of range (nothing is zeroed).
        """
        for first, count in runs:
            self._span(first, 0, FRAME_SIZE)
            self._span(first + count - 1, 0, FRAME_SIZE)
        for first, count in runs:
            pos, n = first * FRAME_SIZE, count * FRAME_SIZE
            if self._can_punch:
                try:
                    self._mm.madvise(mmap.MADV_REMOVE, pos, n)
                    continue
                except OSError:
                    self._can_punch = False  # e.g. a file system without hole punching
            for at in range(pos, pos + n, len(_ZERO_RUN)):
                k = min(len(_ZERO_RUN), pos + n - at)
                self._mm[at:at + k] = _ZERO_RUN[:k] if k < len(_ZERO_RUN) else _ZERO_RUN

    def flush(self) -> None:
        """``msync`` the mapping: survive a crash of the host, not only of the process."""
        self._mm.flush()

    def close(self) -> None:
        """Flush and unmap. Idempotent."""
        if not self._mm.closed:
            self._mm.flush()
            self._mm.close()

    def __enter__(self) -> FrameStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Snapshot:
    """The controller's metadata, one JSON document replaced atomically.

    :meth:`save` writes a temporary file beside the target, ``fsync``s it,
    renames it over the target and ``fsync``s the directory, so a reader
    (or a restarted controller) sees either the old snapshot or the new one,
    never a torn one.

    Args:
        path: the snapshot file.
    """

    def __init__(self, path: str | os.PathLike[str]):
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        """Return the last saved document, or ``None`` if none was ever saved."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        return json.loads(text)

    def save(self, doc: dict[str, Any]) -> None:
        """Durably replace the snapshot with ``doc`` (JSON-serialisable)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        dfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)  # make the rename itself durable
        finally:
            os.close(dfd)
