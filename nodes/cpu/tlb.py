"""Software-managed TLB with address-space ids (MIPS style, DESIGN.md §3).

The core never walks a page table: a virtual page with no entry for the
current address space is a TLB miss, reported as a page-fault trap, and the
trap handler (the OS, or the VMM when the CPU is virtualized) installs an
entry with the privileged operation `tlb_write`. Entries are keyed by
(asid, vpn) so that switching address spaces needs no flush.

Replacement is FIFO: when the TLB is full, the oldest installed entry goes.
FIFO needs no bookkeeping on the hit path, which the translated code must
keep free of anything but a dict lookup.
"""

from __future__ import annotations

PERMS = frozenset("rwx")


class TLB:
    """A fully associative TLB of (asid, vpn) → (ppn, perms) entries."""

    def __init__(self, capacity: int = 1024):
        """Create an empty TLB.

        Args:
            capacity: maximum number of entries; must be positive.
        """
        if capacity <= 0:
            raise ValueError(f"TLB capacity must be positive, got {capacity}")
        self.capacity = capacity
        # dicts keep insertion order, which is exactly the FIFO order.
        self._entries: dict[tuple[int, int], tuple[int, str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, asid: int, vpn: int) -> tuple[int, str] | None:
        """Return (ppn, perms) for (asid, vpn), or None on a miss."""
        return self._entries.get((asid, vpn))

    def write(self, asid: int, vpn: int, ppn: int, perms: str) -> list[tuple[int, int]]:
        """Install or replace an entry.

        Args:
            asid: address-space id.
            vpn: virtual page number (address >> 12).
            ppn: physical page number.
            perms: a subset of "rwx".

        Returns:
            The (asid, vpn) keys whose old translation is gone: the key itself
            if it was replaced, and the entry evicted to make room, if any.
        """
        if not set(perms) <= PERMS:
            raise ValueError(f"TLB perms must be a subset of 'rwx', got {perms!r}")
        key = (asid, vpn)
        removed = []
        if key in self._entries:
            # Re-inserting moves the entry to the young end of the FIFO.
            del self._entries[key]
            removed.append(key)
        elif len(self._entries) >= self.capacity:
            oldest = next(iter(self._entries))
            del self._entries[oldest]
            removed.append(oldest)
        self._entries[key] = (ppn, "".join(p for p in "rwx" if p in perms))
        return removed

    def flush(self, asid: int | None = None, vpn: int | None = None) -> list[tuple[int, int]]:
        """Remove entries matching the given asid and/or vpn (None: any).

        Returns:
            The removed (asid, vpn) keys.
        """
        removed = [
            key
            for key in self._entries
            if (asid is None or key[0] == asid) and (vpn is None or key[1] == vpn)
        ]
        for key in removed:
            del self._entries[key]
        return removed

    def entries(self, asid: int | None = None):
        """Iterate over ((asid, vpn), (ppn, perms)) pairs, optionally of one asid."""
        for key, value in self._entries.items():
            if asid is None or key[0] == asid:
                yield key, value
