"""The OS kernel module's lending floor (¶39) and boot memory map (¶49), in-process."""

from __future__ import annotations

import pytest

from nodes.guest_os.module import BelowFloor, FrameAllocator, KernelModule, OutOfMemory


def test_alloc_pin_grants_up_to_the_floor_then_refuses_below_it() -> None:
    mod = KernelModule(FrameAllocator(100, 10), lend_floor=6)
    assert mod.alloc_pin(3, 1) == [100, 101, 102]
    assert mod.alloc_pin(3, 1) == [103]  # partial: only one above the floor
    with pytest.raises(BelowFloor, match=r"keeps 6 frames free \(its lending floor\) and has 6 free: 0 to lend"):
        mod.alloc_pin(2, 1)
    assert (mod.frames.free_count, sorted(mod.frames.pinned)) == (6, [100, 101, 102, 103])
    assert mod.stats() == {"lend_floor": 6, "lendable": 0}


def test_alloc_pin_without_min_is_all_or_nothing() -> None:
    mod = KernelModule(FrameAllocator(0, 4))
    with pytest.raises(OutOfMemory, match="out of memory: 5 frames asked, 4 free"):
        mod.alloc_pin(5)
    assert mod.alloc_pin(4) == [0, 1, 2, 3]


def test_a_boot_map_of_scattered_frames_is_the_free_list() -> None:
    fa = FrameAllocator(frames=[900, 17, 512])
    assert (fa.owned, [fa.alloc() for _ in range(3)]) == ({17, 512, 900}, [900, 17, 512])


def test_a_negative_floor_is_refused() -> None:
    with pytest.raises(ValueError, match="option 'lend_floor'"):
        KernelModule(FrameAllocator(0, 1), lend_floor=-1)
