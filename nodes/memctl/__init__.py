"""The memory controller node (DESIGN.md §3): physical memory, ownership, address maps, coherence.

``store`` is the file-backed memory and metadata snapshot, ``directory`` the
policy (:class:`MemoryController`); both are pure logic plus file I/O, driven
by the message wrapper ``node.py``. Nothing here imports another node kind.
"""

from .directory import (
    DOWNGRADE,
    FIRMWARE,
    FREE,
    INVALIDATE,
    MODIFIED,
    SHARED,
    VMM,
    Grant,
    MemoryController,
    Recall,
    is_os,
)
from .errors import (
    DirectoryError,
    FrameLost,
    InvariantError,
    MemctlError,
    MemFault,
    OwnershipError,
    Recovering,
    StoreError,
)
from .store import FRAME_SIZE, FrameStore, Snapshot

__all__ = [
    "DOWNGRADE", "FIRMWARE", "FRAME_SIZE", "FREE", "INVALIDATE", "MODIFIED", "SHARED", "VMM",
    "DirectoryError", "FrameLost", "FrameStore", "Grant", "InvariantError", "MemFault", "MemctlError",
    "MemoryController", "OwnershipError", "Recall", "Recovering", "Snapshot", "StoreError", "is_os",
]
