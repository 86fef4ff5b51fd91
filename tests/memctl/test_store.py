"""The file-backed physical memory and the metadata snapshot (DESIGN.md §3, §6 "kill -9")."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from nodes.memctl.errors import StoreError
from nodes.memctl.store import FRAME_SIZE, FrameStore, Snapshot

REPO = Path(__file__).resolve().parents[2]

# Writes through the store, never flushes, says so on stdout, then blocks on
# stdin until the parent kills it: only the page cache can keep the bytes.
CHILD = """
import sys
from nodes.memctl.store import FrameStore
store = FrameStore(sys.argv[1], 4)
store.write_frame(1, b"\\x11" * 4096)
store.write(3, 100, b"survives kill -9")
print("written", flush=True)
sys.stdin.read()
"""


def test_contents_survive_reopening_in_a_new_object(tmp_path):
    path = tmp_path / "mem.bin"
    with FrameStore(path, 4) as store:
        assert store.read_frame(2) == bytes(FRAME_SIZE)  # a new memory reads as zero
        store.write_frame(2, b"\xab" * FRAME_SIZE)
        store.write(0, 4090, b"edge!!")
    assert path.stat().st_size == 4 * FRAME_SIZE
    with FrameStore(path) as again:  # frame count taken from the file
        assert again.nframes == 4
        assert again.read_frame(2) == b"\xab" * FRAME_SIZE
        assert again.read(0, 4090, 6) == b"edge!!"
        again.zero_frame(2)
        assert again.read_frame(2) == bytes(FRAME_SIZE)


@pytest.mark.parametrize("punch", [True, False], ids=["hole-punch", "overwrite"])
def test_zero_frames_zeroes_exactly_the_runs_given_and_survives_reopening(tmp_path, punch):
    path = tmp_path / "mem.bin"
    with FrameStore(path, 300) as store:
        store._can_punch = punch  # both ways of zeroing: punched out of the file, or overwritten
        for f in range(300):
            store.write_frame(f, bytes([f % 251 + 1]) * FRAME_SIZE)
        gone = [9, *range(3, 7), *range(20, 290)]  # runs of 1, 4 and 270 frames (over 1 MiB), unsorted
        store.zero_frames(gone)
        with pytest.raises(StoreError, match="frame 300 out of range"):
            store.zero_frames([1, 300])
    with FrameStore(path) as again:
        for f in range(300):
            want = bytes(FRAME_SIZE) if f in gone else bytes([f % 251 + 1]) * FRAME_SIZE
            assert again.read_frame(f) == want, f"frame {f}"


def test_writes_survive_kill_9_of_the_writer(tmp_path):
    path = tmp_path / "mem.bin"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout.readline() == b"written\n"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        child.stdin.close()
        child.stdout.close()
    with FrameStore(path, 4) as store:
        assert store.read_frame(1) == b"\x11" * FRAME_SIZE
        assert store.read(3, 100, 16) == b"survives kill -9"


@pytest.mark.parametrize("call", [
    lambda s: s.read_frame(4),
    lambda s: s.read_frame(-1),
    lambda s: s.write_frame(7, bytes(FRAME_SIZE)),
    lambda s: s.zero_frame(10**9),
    lambda s: s.read(0, 4000, 97),
    lambda s: s.write(1, -1, b"x"),
    lambda s: s.write(1, 4095, b"xy"),
    lambda s: s.write_frame(0, b"short"),
    lambda s: s.check_frame("0"),
])
def test_out_of_range_access_is_refused_and_writes_nothing(tmp_path, call):
    with FrameStore(tmp_path / "mem.bin", 4) as store:
        with pytest.raises(StoreError) as err:
            call(store)
        assert "frame" in str(err.value)
        assert all(store.read_frame(f) == bytes(FRAME_SIZE) for f in range(4))


def test_bad_frame_number_error_names_the_valid_range(tmp_path):
    with FrameStore(tmp_path / "mem.bin", 4) as store:
        with pytest.raises(IndexError, match=r"frame 4 out of range: this memory has frames 0\.\.3"):
            store.read_frame(4)


def test_reopening_with_another_frame_count_is_refused_not_truncated(tmp_path):
    path = tmp_path / "mem.bin"
    FrameStore(path, 4).close()
    with pytest.raises(StoreError, match="holds 4 frames .* topology says 8"):
        FrameStore(path, 8)
    assert path.stat().st_size == 4 * FRAME_SIZE


def test_a_memory_needs_a_size(tmp_path):
    with pytest.raises(StoreError, match="no frame count"):
        FrameStore(tmp_path / "absent.bin")
    with pytest.raises(StoreError, match="must be positive"):
        FrameStore(tmp_path / "zero.bin", 0)


def test_snapshot_is_replaced_whole_and_leaves_no_temporary(tmp_path):
    snap = Snapshot(tmp_path / "meta.json")
    assert snap.load() is None
    snap.save({"owners": [[0, 4, "os1"]]})
    snap.save({"owners": [[0, 2, "os1"], [2, 2, "free"]]})
    assert Snapshot(tmp_path / "meta.json").load() == {"owners": [[0, 2, "os1"], [2, 2, "free"]]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json"]
