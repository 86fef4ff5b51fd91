"""Errors of the memory controller core (DESIGN.md §3 "Memory controller").

The message wrapper (``nodes/memctl/node.py``) turns each of these into an
``error`` reply whose reason is the class's ``reason`` attribute, so that a
bad request from one initiator never crashes the controller (DESIGN.md §6,
"bad input gets a clear error and leaves every other party running").
"""

from __future__ import annotations


class MemctlError(Exception):
    """Base class of every error the memory controller core raises.

    Attributes:
        reason: a short machine-readable code for the ``error`` reply.
    """

    reason = "memctl_error"


class StoreError(MemctlError, IndexError):
    """A frame number, offset or buffer that does not fit the physical memory.

    Also an ``IndexError``, since that is what it is to a Python reader.
    """

    reason = "bad_address"


class MemFault(MemctlError):
    """An access the address map of a space does not allow (DESIGN.md §6, isolation).

    Attributes:
        space: the address space (OS instance or ``"vmm"``) the access went through.
        gpn: the guest page number that was accessed.
        detail: why it was refused, in words a person can act on.
    """

    reason = "mem_fault"

    def __init__(self, space: str, gpn: int, detail: str):
        self.space = space
        self.gpn = gpn
        self.detail = detail
        # A wild request may carry any type here; the message must still format.
        where = f"{gpn:#x}" if isinstance(gpn, int) else repr(gpn)
        super().__init__(f"memory fault in space {space!r} at guest page {where}: {detail}")


class OwnershipError(MemctlError):
    """A change of ownership, pin or map that would break frame conservation or isolation."""

    reason = "bad_ownership"


class DirectoryError(MemctlError):
    """A directory-protocol message that does not match the directory's state.

    For example, write-back data released for a page held clean.
    """

    reason = "bad_coherence"


class Recovering(MemctlError):
    """The controller restarted and is waiting for the initiators to drop their caches."""

    reason = "recovering"


class InvariantError(MemctlError, AssertionError):
    """An invariant of DESIGN.md §6 does not hold; always a bug in the controller."""

    reason = "invariant"


class FrameLost(MemctlError):
    """A read of a frame whose newest bytes died with the initiator that held them
    modified (a CPU that died, or stopped answering recalls): memory holds older
    bytes, which must not pass for the newest (a machine check, DESIGN.md §6).

    Attributes:
        frames: the frames of the access that are lost.
    """

    reason = "frame_lost"

    def __init__(self, frames: list[int]):
        self.frames = frames
        super().__init__(f"the newest bytes of frame(s) {frames[:8]} died with the CPU that held them modified; "
                         "memory holds older ones")
