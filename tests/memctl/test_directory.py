"""Ownership, address maps and the directory protocol of the memory controller.

DESIGN.md §3 (directory protocol, address maps), §5 ¶39 (borrow memory),
§6 (isolation, frame conservation). The initiators' caches are simulated by
:class:`Caches`, whose ``recall`` is the controller's recall callback.
"""

from __future__ import annotations

import itertools

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from nodes.memctl import (
    FRAME_SIZE,
    DirectoryError,
    FrameLost,
    MemFault,
    MemoryController,
    OwnershipError,
    Recovering,
)
from nodes.memctl.store import FrameStore

ZERO = bytes(FRAME_SIZE)


class Caches:
    """Every simulated initiator's local page cache: ``lines[initiator][frame] = [mode, bytearray, via]``.

    ``via`` is the set of (space, guest page) the copy was acquired through:
    a CPU's translations, which a map change must recall with the copy.
    ``recall`` behaves as a well-behaved initiator does; it checkpoints first,
    as a real message round trip would, so other requests interleave.
    """

    def __init__(self) -> None:
        self.lines: dict[str, dict[int, list]] = {}
        self.recalls: list[tuple[str, int, str]] = []

    async def recall(self, holder: str, frame: int, mode: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        self.recalls.append((holder, frame, mode))
        line = self.lines[holder][frame]  # KeyError: recalled a copy the holder lacks
        data = bytes(line[1]) if line[0] == "M" else None
        if mode == "invalidate":
            del self.lines[holder][frame]
        elif mode == "downgrade":
            line[0] = "S"
        else:
            assert mode == "snapshot", mode  # the bytes; the copy stays as it is
        return data

    def install(self, initiator: str, grant, via: tuple[str, int] | None = None) -> bytearray:
        """Take a grant (acquired through ``via``) into the initiator's cache; return the cached bytes."""
        mine = self.lines.setdefault(initiator, {})
        if grant.data is None:
            assert mine[grant.frame][0] == "M"
        else:
            old = mine.get(grant.frame, [None, None, set()])[2]
            mine[grant.frame] = ["M" if grant.writable else "S", bytearray(grant.data), old]
        if via is not None:
            mine[grant.frame][2].add(via)
        return mine[grant.frame][1]

    def held(self) -> dict[int, dict[str, str]]:
        """Return the holders per frame, as the directory should record them."""
        out: dict[int, dict[str, str]] = {}
        for who, lines in self.lines.items():
            for frame, (mode, _, _) in lines.items():
                out.setdefault(frame, {})[who] = mode
        return out


async def controller(tmp_path, nframes: int = 8) -> tuple[MemoryController, Caches]:
    """A controller over ``tmp_path`` with os1 = frames 0-2, os2 = 3-5, vmm = 6, frame 7 free."""
    caches = Caches()
    mc = MemoryController.open(tmp_path, nframes, caches.recall)
    await mc.create_space("os1", [0, 1, 2])
    await mc.create_space("os2", [3, 4, 5])
    await mc.create_space("vmm", [6])
    return mc, caches


# -- ownership, isolation -------------------------------------------------------


async def test_partitions_are_identity_mapped_and_isolated(tmp_path):
    mc, _ = await controller(tmp_path)
    assert mc.owners() == {"os1": [0, 1, 2], "os2": [3, 4, 5], "vmm": [6], "free": [7]}
    assert mc.translate("os1", 2) == 2
    assert mc.translate("os2", 3) == 3
    with pytest.raises(MemFault) as err:
        await mc.read("os1", "os1", 3 * FRAME_SIZE, 1)
    assert (err.value.space, err.value.gpn) == ("os1", 3)
    assert "outside the partition" in err.value.detail and "owned by os2" in err.value.detail
    with pytest.raises(MemFault, match="no such address space"):
        mc.translate("os9", 0)
    with pytest.raises(MemFault, match="beyond memory"):
        await mc.acquire("cpu0", "os1", 8, write=False)
    assert mc.stats()["faults"] == 3


@pytest.mark.parametrize(("gpn", "detail"), [(-1, "non-negative"), ("3", "non-negative"), (None, "non-negative")])
async def test_a_wild_guest_page_is_a_clear_fault(tmp_path, gpn, detail):
    mc, _ = await controller(tmp_path)
    with pytest.raises(MemFault, match=detail) as err:
        await mc.acquire("cpu0", "os1", gpn, write=True)
    assert "space 'os1'" in str(err.value)
    with pytest.raises(MemFault, match="bad range"):
        await mc.read("cpu0", "os1", -5, 10)
    with pytest.raises(MemFault, match="bad range"):
        await mc.read("cpu0", "os1", 0, "10")
    with pytest.raises(DirectoryError, match="must be bytes"):
        await mc.write("cpu0", "os1", 0, 5)


async def test_a_faulting_uncached_write_writes_no_page_of_the_range(tmp_path):
    mc, _ = await controller(tmp_path)
    with pytest.raises(MemFault):  # page 2 is os1's, page 3 is not
        await mc.write("os1", "os1", 3 * FRAME_SIZE - 2, b"abcd")
    assert mc.store.read(2, FRAME_SIZE - 2, 2) == b"\0\0"


async def test_reassigned_frame_is_recalled_and_zeroed_before_the_new_owner_sees_it(tmp_path):
    mc, caches = await controller(tmp_path)
    line = caches.install("cpu0", await mc.acquire("cpu0", "os1", 1, write=True))
    line[:5] = b"old!!"
    await mc.assign([1], "os2")
    assert ("cpu0", 1, "invalidate") in caches.recalls
    assert 1 not in caches.lines["cpu0"]
    assert mc.owner_of(1) == "os2"
    assert await mc.read("os2", "os2", FRAME_SIZE, FRAME_SIZE) == ZERO
    with pytest.raises(MemFault):
        mc.translate("os1", 1)
    mc.check_invariants()


async def test_borrowing_moves_pinned_frames_zeroed_from_one_os_to_another(tmp_path):
    """DESIGN.md §5 ¶39: A's module pins N frames → the VMM takes them → B gets them."""
    mc, _ = await controller(tmp_path)
    await mc.write("os1", "os1", 0, b"\x55" * (3 * FRAME_SIZE))
    with pytest.raises(OwnershipError, match="must pin frames"):
        await mc.transfer([2], "os1", "vmm")
    lent = mc.pin("os1", 2)
    assert lent == [1, 2] and mc.pinned("os1") == [1, 2]
    await mc.transfer(lent, "os1", "vmm")
    assert mc.pinned("os1") == [] and mc.frames_of("vmm") == [1, 2, 6]
    await mc.transfer(lent, "vmm", "os2")
    assert await mc.read("os2", "os2", FRAME_SIZE, 2 * FRAME_SIZE) == bytes(2 * FRAME_SIZE)
    assert await mc.read("os1", "os1", 0, 4) == b"\x55" * 4  # the rest of A is untouched
    with pytest.raises(OwnershipError, match=r"not owned by 'os1'"):
        await mc.transfer([1], "os1", "os2")
    assert mc.stats()["frames"] == {"os1": 1, "os2": 5, "vmm": 1, "free": 1}
    mc.check_invariants()


async def test_frames_from_runs_skip_the_per_frame_checks_but_not_the_range_nor_the_owner(tmp_path):
    from nodes.memctl.directory import DistinctFrames
    from nodes.memctl.errors import StoreError

    mc, _ = await controller(tmp_path)
    mc.pin_frames("os1", DistinctFrames([1, 2]))
    await mc.transfer(DistinctFrames([1, 2]), "os1", "vmm")
    assert mc.frames_of("vmm") == [1, 2, 6] and mc.pinned("os1") == []
    with pytest.raises(StoreError, match=r"frame 8 out of range: this memory has frames 0..7"):
        await mc.transfer(DistinctFrames([7, 8]), "free", "vmm")
    with pytest.raises(OwnershipError, match=r"frames \[3\] are not owned by 'vmm'"):
        await mc.transfer(DistinctFrames([3, 6]), "vmm", "os2")
    assert mc.stats()["frames"] == {"os1": 1, "os2": 3, "vmm": 3, "free": 1}
    mc.check_invariants()


async def test_a_bulk_loan_recalls_its_cached_frames_zeroes_them_and_makes_a_waiting_access_fault(tmp_path):
    """900 frames change owner in one transfer (per-run zeroing, bulk owner and
    pin changes) while cpu0 holds one of them modified and cpu1 asks for
    another: cpu1 waits for the transfer, then gets the fault the new owner
    means; the snapshot (pins as runs) restores exactly."""
    import trio.testing

    caches = Caches()
    recalling = trio.Event()

    async def recall(holder: str, frame: int, mode: str) -> bytes | None:
        if frame == 500:  # the transfer holds its frames now: let cpu1 come and block on one
            recalling.set()
            await trio.testing.wait_all_tasks_blocked()
        return await caches.recall(holder, frame, mode)

    mc = MemoryController.open(tmp_path, 1100, recall)
    await mc.create_space("os1", range(0, 1024))
    await mc.write("os1", "os1", 0, b"\x77" * (1024 * FRAME_SIZE))
    line = caches.install("cpu0", await mc.acquire("cpu0", "os1", 500, write=True))
    line[:6] = b"secret"
    lent = list(range(100, 600)) + list(range(624, 1024))  # two runs
    mc.pin_frames("os1", [*lent, 5])
    outcome: list[object] = []

    async def late_reader() -> None:
        await recalling.wait()
        try:
            outcome.append(await mc.acquire("cpu1", "os1", 700, write=False))
        except MemFault as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(mc.transfer, lent, "os1", "vmm")
        nursery.start_soon(late_reader)
    assert len(outcome) == 1 and isinstance(outcome[0], MemFault), outcome
    assert ("cpu0", 500, "invalidate") in caches.recalls and 500 not in caches.lines["cpu0"]
    assert mc.frames_of("vmm") == sorted(lent) and mc.pinned("os1") == [5]
    assert mc.stats()["zeroed"] == 1024 + len(lent)  # the partition's creation, then the loan
    assert await mc.read("orch", "os1", 99 * FRAME_SIZE, FRAME_SIZE) == b"\x77" * FRAME_SIZE
    await mc.create_space("vmm", [])
    assert await mc.read("vmm", "vmm", 500 * FRAME_SIZE, FRAME_SIZE) == ZERO
    mc.check_invariants()
    before = (mc.owners(), mc.pinned("os1"))
    again = MemoryController.open(tmp_path, None, recall)
    assert (again.owners(), again.pinned("os1")) == before


async def test_a_version_1_snapshot_with_pins_as_a_frame_list_is_still_read(tmp_path):
    import json

    mc, _ = await controller(tmp_path)
    mc.pin_frames("os1", [0, 2])
    doc = json.loads((tmp_path / "memctl.json").read_text())
    assert doc["version"] == 2 and doc["pinned"] == {"os1": [[0, 1], [2, 1]]}
    doc.update(version=1, pinned={"os1": [0, 2]})
    (tmp_path / "memctl.json").write_text(json.dumps(doc))
    again = MemoryController.open(tmp_path, None, Caches().recall)
    assert again.pinned("os1") == [0, 2] and again.owners() == mc.owners()


async def test_pins_and_partitions_are_refused_when_they_would_break_ownership(tmp_path):
    mc, _ = await controller(tmp_path)
    with pytest.raises(OwnershipError, match="fewer|has 3 unpinned"):
        mc.pin("os1", 4)
    with pytest.raises(OwnershipError, match="does not own"):
        mc.pin_frames("os1", [3])
    with pytest.raises(OwnershipError, match="not free"):
        await mc.create_space("os3", [5, 7])
    with pytest.raises(OwnershipError, match="exists already"):
        await mc.create_space("os1", [7])
    await mc.destroy_space("os2")
    assert mc.frames_of("free") == [3, 4, 5, 7]
    mc.check_invariants()


# -- address maps ------------------------------------------------------------------


async def test_an_explicit_map_may_only_point_at_frames_the_space_owns(tmp_path):
    mc, caches = await controller(tmp_path)
    await mc.write("os1", "os1", 2 * FRAME_SIZE, b"two")
    caches.install("cpu0", await mc.acquire("cpu0", "os1", 2, write=False))
    await mc.set_map("os1", {0x100: 2, 0x101: 0})
    assert ("cpu0", 2, "invalidate") in caches.recalls  # its guest page moved
    assert await mc.read("cpu0", "os1", 0x100 * FRAME_SIZE, 3) == b"two"
    with pytest.raises(MemFault, match="not mapped"):
        mc.translate("os1", 2)
    with pytest.raises(OwnershipError, match=r"frames \[3\] are not"):
        await mc.map_page("os1", 0x102, 3)
    with pytest.raises(OwnershipError, match=r"frames \[6\] are not"):
        await mc.set_map("os1", {0: 6})
    assert mc.get_map("os1") == {0x100: 2, 0x101: 0}
    assert await mc.unmap_page("os1", 0x101) is True
    assert await mc.unmap_page("os1", 0x101) is False
    await mc.set_identity("os1")
    assert mc.get_map("os1") is None and mc.translate("os1", 2) == 2
    mc.check_invariants()


async def test_a_frame_leaving_a_space_leaves_its_map(tmp_path):
    mc, _ = await controller(tmp_path)
    await mc.set_map("os1", {10: 0, 11: 1})
    mc.pin_frames("os1", [1])
    await mc.transfer([1], "os1", "vmm")
    assert mc.get_map("os1") == {10: 0}
    await mc.map_page("vmm", 0, 1)  # the VMM's own space maps what the VMM owns
    assert mc.translate("vmm", 0) == 1
    mc.check_invariants()


# -- the directory protocol -----------------------------------------------------------


async def test_a_write_invalidates_readers_and_recalls_the_writer_first(tmp_path):
    mc, caches = await controller(tmp_path)
    a = caches.install("cpu0", await mc.acquire("cpu0", "os1", 0, write=True))
    a[:3] = b"abc"
    b = caches.install("cpu1", await mc.acquire("cpu1", "os1", 0, write=False))
    assert bytes(b[:3]) == b"abc"  # the writer was downgraded and wrote back first
    assert mc.holders(0) == {"cpu0": "S", "cpu1": "S"}
    c = caches.install("disk0", await mc.acquire("disk0", "os1", 0, write=True))
    assert bytes(c[:3]) == b"abc"
    assert mc.holders(0) == {"disk0": "M"}
    assert caches.recalls == [("cpu0", 0, "downgrade"), ("cpu0", 0, "invalidate"), ("cpu1", 0, "invalidate")]
    again = await mc.acquire("disk0", "os1", 0, write=False)
    assert again.data is None and again.writable  # it holds the newest copy already
    assert mc.stats()["cached"] == {"disk0": 1} and mc.stats()["modified"] == {"disk0": 1}


async def test_uncached_access_sees_and_overrides_cached_copies(tmp_path):
    mc, caches = await controller(tmp_path)
    line = caches.install("cpu0", await mc.acquire("cpu0", "os1", 1, write=True))
    line[10:13] = b"xyz"
    assert await mc.read("disk0", "os1", FRAME_SIZE + 10, 3) == b"xyz"
    assert mc.holders(1) == {"cpu0": "M"}  # a snapshot: the writer keeps writing without asking again
    assert caches.recalls == [("cpu0", 1, "snapshot")]
    line[10:11] = b"w"
    assert await mc.read("disk0", "os1", FRAME_SIZE + 10, 3) == b"wyz"
    await mc.write("disk0", "os1", FRAME_SIZE + 11, b"Q")
    assert mc.holders(1) == {}
    grant = await mc.acquire("cpu0", "os1", 1, write=False)
    assert grant.data[10:13] == b"wQz"  # its last write came back with the invalidation


async def test_a_batch_applies_its_ops_in_order_and_recalls_every_page_at_once(tmp_path):
    mc, caches = await controller(tmp_path)
    for gpn in (0, 1):  # the CPU wrote both pages of a buffer that straddles them
        caches.install("cpu0", await mc.acquire("cpu0", "os1", gpn, write=True))[:2] = b"c%d" % gpn
    inside, most = 0, 0
    recall = caches.recall

    async def counting(holder, frame, mode):
        nonlocal inside, most
        inside += 1
        most = max(most, inside)
        try:
            await trio.sleep(0)  # a round trip: the other recall starts meanwhile if it was sent at once
            return await recall(holder, frame, mode)
        finally:
            inside -= 1

    mc._recall_cb = counting
    got = await mc.access("os1", "os1", [(FRAME_SIZE - 2, b"WXYZ"), (0, 2), (FRAME_SIZE - 3, 5), (FRAME_SIZE, 2)])
    assert got == [None, b"c0", b"\0WXYZ", b"YZ"]  # each read sees the writes before it, and the CPU's bytes
    assert most == 2 and sorted(caches.recalls) == [("cpu0", 0, "invalidate"), ("cpu0", 1, "invalidate")]
    assert mc.holders(0) == mc.holders(1) == {}


async def test_a_batch_with_a_faulting_op_touches_nothing(tmp_path):
    mc, caches = await controller(tmp_path)
    caches.install("cpu0", await mc.acquire("cpu0", "os1", 0, write=True))
    with pytest.raises(MemFault):  # page 3 is os2's
        await mc.access("os1", "os1", [(0, b"written?"), (3 * FRAME_SIZE, 4)])
    assert mc.store.read(0, 0, 8) == bytes(8) and mc.holders(0) == {"cpu0": "M"} and caches.recalls == []
    with pytest.raises(DirectoryError, match="an op is"):
        await mc.access("os1", "os1", [(0, 1, 2)])
    with pytest.raises(DirectoryError, match="must be bytes"):
        await mc.access("os1", "os1", [(0, "text")])


async def test_a_release_overtaken_by_a_recall_writes_nothing(tmp_path):
    mc, caches = await controller(tmp_path)
    caches.install("cpu0", await mc.acquire("cpu0", "os1", 0, write=True))
    await mc.assign([0], "os2")  # recalled, zeroed, handed over
    mc.release("cpu0", 0, b"\xff" * FRAME_SIZE)  # the late write-back must not leak into os2
    assert mc.store.read_frame(0) == ZERO
    assert mc.stats()["stale_releases"] == 1


async def test_bad_write_backs_are_refused(tmp_path):
    mc, caches = await controller(tmp_path)
    caches.install("cpu0", await mc.acquire("cpu0", "os1", 0, write=False))
    with pytest.raises(DirectoryError, match="holds shared"):
        mc.release("cpu0", 0, ZERO)
    with pytest.raises(DirectoryError, match="3 bytes"):
        mc.release("cpu0", 0, b"abc")
    mc.release("cpu0", 0)
    assert mc.holders(0) == {}


async def test_concurrent_writers_are_serialized_and_lose_no_update(tmp_path):
    mc, caches = await controller(tmp_path)
    initiators, rounds = ["cpu0", "cpu1", "os1", "disk0"], 25

    async def increment(who: str) -> None:
        for _ in range(rounds):
            line = caches.install(who, await mc.acquire(who, "os1", 2, write=True))
            # No checkpoint between the grant and the store: the copy is ours.
            line[:4] = (int.from_bytes(line[:4], "little") + 1).to_bytes(4, "little")
            mc.check_invariants()

    async with trio.open_nursery() as nursery:
        for who in initiators:
            nursery.start_soon(increment, who)
    total = await mc.read("os1", "os1", 2 * FRAME_SIZE, 4)
    assert int.from_bytes(total, "little") == len(initiators) * rounds
    assert mc.stats()["recalls"] > 0


async def test_a_dead_initiator_is_forgotten_and_its_unwritten_frames_reported(tmp_path):
    mc, caches = await controller(tmp_path)
    caches.install("cpu0", await mc.acquire("cpu0", "os1", 0, write=True))
    caches.install("cpu0", await mc.acquire("cpu0", "os1", 1, write=False))
    caches.install("cpu1", await mc.acquire("cpu1", "os1", 1, write=False))
    assert mc.drop_initiator("cpu0") == [0]
    assert mc.holders(0) == {} and mc.holders(1) == {"cpu1": "S"}
    mc.check_invariants()


async def test_a_read_of_bytes_that_died_with_their_cpu_is_refused_not_served_stale(tmp_path):
    """A CPU that holds a page modified dies while an OS reads the page (a system call's buffer): the
    recall goes unanswered and the holder is dropped (as nodes/memctl/node.py does on a timeout).
    Memory holds older bytes; serving them printed a line twice and could write an old record to a
    disk. The read is refused (FrameLost) until the frame is written whole or changes owner."""
    dead: set[str] = set()
    mc: MemoryController

    async def recall(holder: str, frame: int, mode: str) -> bytes | None:
        await trio.lowlevel.checkpoint()
        assert holder in dead
        mc.drop_initiator(holder)  # it cannot answer: its copies, newest bytes too, are gone
        return None

    mc = MemoryController.open(tmp_path, 8, recall)
    await mc.create_space("os1", [0, 1, 2])
    await mc.write("os1", "os1", 0, b"line 3".ljust(FRAME_SIZE, b"."))
    grant = await mc.acquire("cpu0", "os1", 0, write=True)  # the CPU formats "line 4" in its cache ...
    assert grant.writable
    dead.add("cpu0")  # ... and dies before writing it back
    with pytest.raises(FrameLost) as lost:
        await mc.read("os1", "os1", 0, 16)
    assert lost.value.frames == [0] and lost.value.reason == "frame_lost"
    with pytest.raises(FrameLost):  # and again: the loss is not forgotten after one refusal
        await mc.access("os1", "os1", [(8, 4), (FRAME_SIZE, 4)])
    assert await mc.read("os1", "os1", FRAME_SIZE, 4) == bytes(4)  # its other frames read as they are
    # a partial write leaves older bytes beside it; a whole-frame write (an OS zeroing a page) cures it
    await mc.write("os1", "os1", 0, b"new")
    with pytest.raises(FrameLost):
        await mc.read("os1", "os1", 0, 3)
    await mc.access("os1", "os1", [(0, bytes(FRAME_SIZE)), (0, 4)])
    assert await mc.read("os1", "os1", 0, 4) == bytes(4)
    # a frame that changes owner is zeroed: cured too
    await mc.acquire("cpu1", "os1", 2, write=True)
    dead.add("cpu1")
    with pytest.raises(FrameLost):
        await mc.read("os1", "os1", 2 * FRAME_SIZE, 1)
    mc.pin_frames("os1", [2])
    await mc.transfer([2], "os1", "free")
    assert mc.stats()["poisoned"] == 0
    mc.check_invariants()


# -- restart -----------------------------------------------------------------------


async def test_metadata_survives_a_restart_and_caches_are_recovered(tmp_path):
    mc, caches = await controller(tmp_path)
    await mc.set_map("os2", {0x40: 4, 0x41: 5})
    mc.pin_frames("os1", [2])
    line = caches.install("cpu0", await mc.acquire("cpu0", "os1", 1, write=True))
    line[:4] = b"dirt"
    before = (mc.owners(), mc.get_map("os1"), mc.get_map("os2"), mc.pinned("os1"))
    # No close: the process dies here, its cpu0 copy still modified.

    again = MemoryController.open(tmp_path, None, caches.recall)
    assert (again.owners(), again.get_map("os1"), again.get_map("os2"), again.pinned("os1")) == before
    assert again.recovering and again.known_initiators == {"cpu0"}
    with pytest.raises(Recovering, match="cpu0"):
        await again.acquire("cpu1", "os1", 1, write=False)
    again.release("cpu0", 1, bytes(line))  # the wrapper has every initiator flush
    again.finish_recovery()
    assert await again.read("cpu1", "os1", FRAME_SIZE, 4) == b"dirt"
    again.check_invariants()


async def test_a_snapshot_for_another_memory_size_is_refused(tmp_path):
    mc, caches = await controller(tmp_path)
    mc.close()
    (tmp_path / "memory.bin").unlink()
    with pytest.raises(OwnershipError, match="for 8 frames; this memory has 16"):
        MemoryController.open(tmp_path, 16, caches.recall)


# -- the randomized directory machine ---------------------------------------------------

N = 8
INITIATORS = ("cpu0", "cpu1", "os1", "disk0")
SPACES = ("os1", "os2", "vmm")
OWNERS = (*SPACES, "free", "firmware")
who_ = st.sampled_from(INITIATORS)
space_ = st.sampled_from(SPACES)
gpn_ = st.integers(0, N + 1)  # a little beyond memory, to fault there too
frame_ = st.integers(0, N - 1)


class DirectoryMachine(RuleBasedStateMachine):
    """Random acquires, releases, uncached copies, ownership and map changes, against a model.

    The model is the owners, the maps (``None`` = identity) and the newest
    bytes of every frame (``expected``); the invariants check that every copy
    anyone holds, and memory itself when nobody holds a copy modified, equals
    the newest bytes: every write is what any later reader sees.
    """

    def __init__(self, path):
        super().__init__()
        path.mkdir()
        self.caches = Caches()
        self.mc = MemoryController(FrameStore(path / "mem.bin", N), self.caches.recall)
        trio.run(self._boot)
        self.owner = ["os1"] * 3 + ["os2"] * 3 + ["vmm", "free"]
        self.maps: dict[str, dict[int, int] | None] = dict.fromkeys(SPACES)
        self.pinned: dict[str, set[int]] = {s: set() for s in SPACES}
        self.expected = [ZERO] * N

    async def _boot(self):
        for name, frames in (("os1", [0, 1, 2]), ("os2", [3, 4, 5]), ("vmm", [6])):
            await self.mc.create_space(name, frames)

    def teardown(self):
        self.mc.close()

    # the model

    def reach(self, space, gpn):
        table = self.maps[space]
        if table is None:
            return gpn if gpn < N and self.owner[gpn] == space else None
        return table.get(gpn)

    def explicit(self, space):
        table = self.maps[space]
        return {f: f for f in range(N) if self.owner[f] == space} if table is None else dict(table)

    def span(self, space, gaddr, n):
        """Return [(frame, offset, length)] of the range, or None if a page faults."""
        out, addr, end = [], gaddr, gaddr + n
        while addr < end:
            gpn, offset = divmod(addr, FRAME_SIZE)
            length = min(FRAME_SIZE - offset, end - addr)
            frame = self.reach(space, gpn)
            if frame is None:
                return None
            out.append((frame, offset, length))
            addr += length
        return out

    def move(self, frames, new_owner):
        for f in frames:
            old = self.owner[f]
            if old == new_owner:
                continue
            assert all(f not in lines for lines in self.caches.lines.values()), "a moved frame stays cached"
            assert self.mc.store.read_frame(f) == ZERO, "a moved frame is not zeroed"
            self.owner[f], self.expected[f] = new_owner, ZERO
            if self.maps.get(old) is not None:
                self.maps[old] = {g: x for g, x in self.maps[old].items() if x != f}
            self.pinned.get(old, set()).discard(f)

    # the directory protocol

    async def touch(self, who, space, gpn, write, pos, value):
        """Acquire a page as ``who`` and, for a write, change one byte of its copy.

        No checkpoint between the grant and the model update: the copy is ours
        until the controller recalls it, which needs a checkpoint.
        """
        frame = self.reach(space, gpn)
        if frame is None:
            with pytest.raises(MemFault):
                await self.mc.acquire(who, space, gpn, write)
            return
        grant = await self.mc.acquire(who, space, gpn, write)
        assert grant.frame == frame
        assert grant.data is None or grant.data == self.expected[frame]
        line = self.caches.install(who, grant, via=(space, gpn))
        if write:
            line[pos] = value
            self.expected[frame] = bytes(line)

    touch_ = st.tuples(who_, space_, gpn_, st.booleans(), st.integers(0, FRAME_SIZE - 1), st.integers(0, 255))

    @rule(args=touch_)
    def acquire(self, args):
        trio.run(self.touch, *args)

    @rule(pages=st.lists(st.tuples(space_, gpn_), min_size=1, max_size=2), data=st.data())
    def acquire_concurrently(self, pages, data):
        # Few pages for many requests, so that requests queue on a frame's lock.
        batch = data.draw(st.lists(st.tuples(who_, st.sampled_from(pages), st.booleans(),
                                             st.integers(0, FRAME_SIZE - 1), st.integers(0, 255)),
                                   min_size=2, max_size=6))

        async def main():
            async with trio.open_nursery() as nursery:
                for who, (space, gpn), write, pos, value in batch:
                    nursery.start_soon(self.touch, who, space, gpn, write, pos, value)

        trio.run(main)

    @precondition(lambda self: any(self.caches.lines.values()))
    @rule(data=st.data())
    def release(self, data):
        who = data.draw(st.sampled_from(sorted(w for w, lines in self.caches.lines.items() if lines)))
        frame = data.draw(st.sampled_from(sorted(self.caches.lines[who])))
        mode, line, _ = self.caches.lines[who].pop(frame)
        self.mc.release(who, frame, bytes(line) if mode == "M" else None)

    @rule(who=who_, space=space_, gaddr=st.integers(0, (N + 2) * FRAME_SIZE), n=st.integers(0, 2 * FRAME_SIZE))
    def uncached_read(self, who, space, gaddr, n):
        pieces = self.span(space, gaddr, n)
        if pieces is None:
            with pytest.raises(MemFault):
                trio.run(self.mc.read, who, space, gaddr, n)
            return
        got = trio.run(self.mc.read, who, space, gaddr, n)
        assert got == b"".join(self.expected[f][o:o + k] for f, o, k in pieces)

    @rule(who=who_, space=space_, gaddr=st.integers(0, (N + 2) * FRAME_SIZE), n=st.integers(0, 2 * FRAME_SIZE),
          seed=st.integers(0, 255))
    def uncached_write(self, who, space, gaddr, n, seed):
        payload = bytes((seed + i) % 256 for i in range(n))
        pieces = self.span(space, gaddr, n)
        if pieces is None:
            with pytest.raises(MemFault):
                trio.run(self.mc.write, who, space, gaddr, payload)
            return
        trio.run(self.mc.write, who, space, gaddr, payload)
        done = 0
        for f, o, k in pieces:
            self.expected[f] = self.expected[f][:o] + payload[done:done + k] + self.expected[f][o + k:]
            done += k

    # ownership

    @rule(frames=st.sets(frame_, min_size=1, max_size=3), new_owner=st.sampled_from(OWNERS))
    def assign(self, frames, new_owner):
        trio.run(self.mc.assign, sorted(frames), new_owner)
        self.move(frames, new_owner)

    @rule(lender=st.sampled_from(("os1", "os2")), n=st.integers(1, 2))
    def borrow(self, lender, n):
        borrower = "os2" if lender == "os1" else "os1"
        loose = [f for f in range(N) if self.owner[f] == lender and f not in self.pinned[lender]]
        if len(loose) < n:
            with pytest.raises(OwnershipError):
                self.mc.pin(lender, n)
            return
        lent = self.mc.pin(lender, n)
        assert set(lent) <= set(loose) and len(lent) == n
        self.pinned[lender].update(lent)
        trio.run(self.mc.transfer, lent, lender, "vmm")
        self.move(lent, "vmm")
        trio.run(self.mc.transfer, lent, "vmm", borrower)
        self.move(lent, borrower)

    @rule(frame=frame_, to=space_)
    def transfer_unpinned_is_refused(self, frame, to):
        owner = self.owner[frame]
        if owner in ("os1", "os2") and frame not in self.pinned[owner]:
            with pytest.raises(OwnershipError, match="must pin"):
                trio.run(self.mc.transfer, [frame], owner, to)

    # address maps

    @rule(space=space_, data=st.data())
    def set_map(self, space, data):
        owned = [f for f in range(N) if self.owner[f] == space]
        gpns = data.draw(st.lists(gpn_, unique=True, max_size=4)) if owned else []
        table = {g: data.draw(st.sampled_from(owned)) for g in gpns}
        trio.run(self.mc.set_map, space, table)
        self.maps[space] = table

    @rule(space=space_, gpn=gpn_, frame=frame_)
    def map_page(self, space, gpn, frame):
        if self.owner[frame] != space:
            with pytest.raises(OwnershipError, match="may only point at frames it owns"):
                trio.run(self.mc.map_page, space, gpn, frame)
            return
        trio.run(self.mc.map_page, space, gpn, frame)
        self.maps[space] = {**self.explicit(space), gpn: frame}

    @rule(space=space_, gpn=gpn_)
    def unmap_page(self, space, gpn):
        table = self.explicit(space)
        assert trio.run(self.mc.unmap_page, space, gpn) == (table.pop(gpn, None) is not None)
        self.maps[space] = table

    @rule(space=space_)
    def set_identity(self, space):
        trio.run(self.mc.set_identity, space)
        self.maps[space] = None

    # the guarantees

    @invariant()
    def every_copy_and_memory_hold_the_newest_bytes(self):
        self.mc.check_invariants()
        assert self.caches.held() == {f: self.mc.holders(f) for f in range(N) if self.mc.holders(f)}
        for f in range(N):
            holders = self.mc.holders(f)
            assert list(holders.values()) in ([], ["M"]) or set(holders.values()) == {"S"}
            for who in holders:
                assert bytes(self.caches.lines[who][f][1]) == self.expected[f], (who, f)
            if "M" not in holders.values():
                assert self.mc.store.read_frame(f) == self.expected[f], f

    @invariant()
    def every_cached_translation_is_still_true(self):
        for lines in self.caches.lines.values():
            for frame, (_, _, via) in lines.items():
                assert all(self.reach(space, gpn) == frame for space, gpn in via), (frame, via)

    @invariant()
    def owners_and_maps_match_the_model(self):
        assert [self.mc.owner_of(f) for f in range(N)] == self.owner
        assert {s: self.mc.get_map(s) for s in SPACES} == self.maps
        assert {s: set(self.mc.pinned(s)) for s in SPACES} == self.pinned


def test_directory_machine_keeps_coherence_ownership_and_isolation(tmp_path):
    runs = itertools.count()
    run_state_machine_as_test(
        lambda: DirectoryMachine(tmp_path / str(next(runs))),
        settings=settings(max_examples=150, stateful_step_count=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow]),
    )
