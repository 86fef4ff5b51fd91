"""The OS kernel module's lending floor (¶39), boot memory map (¶49) and bulk frame paths, in-process."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodes.guest_os.module import BelowFloor, FrameAllocator, FrameError, KernelModule, OutOfMemory


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


@given(st.lists(st.integers(0, 5000), unique=True, min_size=1, max_size=200), st.data())
def test_bulk_alloc_pin_give_back_and_add_keep_every_frame_in_exactly_one_state(boot, data):
    """The module's bulk paths (a loan is thousands of frames) agree with one-by-one allocation."""
    mod = KernelModule(FrameAllocator(frames=boot))
    n = data.draw(st.integers(0, len(boot)))
    got = mod.alloc_pin(n)
    assert got == boot[:n] and mod.frames.pinned == set(got) and mod.frames.free_count == len(boot) - n
    back = data.draw(st.lists(st.sampled_from(boot), unique=True))
    mod.give_back(back)  # pinned or free: all of them may leave
    left = [f for f in boot if f not in set(back)]
    assert mod.frames.owned == set(left) and mod.frames.pinned == set(got) - set(back)
    assert [mod.frames.alloc() for _ in range(mod.frames.free_count)] == [f for f in left if f not in set(got)]
    mod.add_frames(back)
    assert mod.frames.owned == set(boot) and mod.frames.free_count == len(back)
    with pytest.raises(FrameError, match="already owned"):
        mod.add_frames(back[:1] or boot[:1])
