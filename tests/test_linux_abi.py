"""protocol/linux_abi.py: the guest Linux ABI both the OS node and `hwemu cpu run` serve.

End to end, guest/samples/linuxabi.c and sysabi.c compare every device-less
syscall with qemu-riscv32 (tests/guest/test_differential.py) and the OS node
(tests/integration/test_native.py); these tests pin the pieces.
"""

from __future__ import annotations

import time

from protocol import linux_abi as abi
from protocol import riscv

PAGE = abi.PAGE_SIZE


def memory(pages: dict[int, bytes]):
    """A reader over a sparse user memory: None (-EFAULT) if any byte is on a missing page."""
    reads = []

    def read(addr: int, n: int) -> bytes | None:
        reads.append((addr, n))
        if any(vpn not in pages for vpn in range(addr >> 12, (addr + n - 1 >> 12) + 1)):
            return None
        return b"".join(pages[vpn] for vpn in sorted(pages))[addr - min(pages) * PAGE :][:n]

    return read, reads


def test_user_string_stops_at_the_page_of_its_nul_and_faults_past_a_hole():
    first = bytes(PAGE - 3) + b"ab"
    read, reads = memory({1: first + b"\0", 2: b"cd\0" + bytes(PAGE - 3)})
    # "ab" ends the first page: its NUL is on it, so the next page is never read
    assert abi.drive(abi.user_string(2 * PAGE - 3), read) == b"ab"
    assert reads == [(2 * PAGE - 3, 3)]
    # a string running into a missing page is -EFAULT, one ending before it is fine
    read, _ = memory({1: bytes(PAGE - 2) + b"xy"})
    assert abi.drive(abi.user_string(2 * PAGE - 2), read) is None
    read, _ = memory({1: bytes(PAGE - 2) + b"x\0"})
    assert abi.drive(abi.user_string(2 * PAGE - 2), read) == b"x"
    # no NUL within the limit is refused
    read, _ = memory({1: b"z" * PAGE, 2: b"z" * PAGE})
    assert abi.drive(abi.user_string(PAGE, limit=PAGE + 10), read) is None


def test_user_pieces_split_at_pages_and_refuse_a_missing_right():
    perms = {1: "r", 2: "rw"}.get
    assert abi.user_pieces(PAGE + 4090, 10, "r", perms) == [(1, 4090, 6), (2, 0, 4)]
    assert abi.user_pieces(PAGE + 4090, 10, "w", perms) is None
    assert abi.user_pieces(3 * PAGE - 1, 2, "r", perms) is None  # runs into unmapped page 3
    assert abi.user_pieces(0xFFFFFFFF, 2, "r", lambda vpn: "rw") is None  # past 4 GiB
    assert abi.user_pieces(5 * PAGE, 0, "r", perms) == []  # nothing to check


def test_argument_checks_in_linux_order():
    assert abi.check_write(1, 10) == (0, 10) and abi.check_write(2, 1 << 30) == (0, abi.RW_MAX)
    assert abi.check_write(0, 10)[0] == -abi.EBADF
    assert abi.check_read(0, 5) == (0, 5) and abi.check_read(1, 5)[0] == -abi.EBADF
    assert abi.check_close(2, is_open=False) == 0 and abi.check_close(99, is_open=False) == -abi.EBADF
    assert abi.check_close(99, is_open=True) == 0
    assert abi.check_socket(12345, abi.SOCK_DGRAM, 0) == -abi.EAFNOSUPPORT
    assert abi.check_socket(abi.AF_INET, 1, 0) == -abi.EPROTONOSUPPORT  # SOCK_STREAM
    assert abi.check_socket(abi.AF_INET, abi.SOCK_DGRAM | 0x80000, abi.IPPROTO_UDP) == 0  # SOCK_CLOEXEC
    start = 0x20000
    assert abi.brk(0, start, start + 100) == start + 100  # brk(0) reports
    assert abi.brk(start + 5000, start, start) == start + 5000
    assert abi.brk(abi.BRK_LIMIT + 1, start, start) == start  # refused: unchanged


def timespec(sec: int, nsec: int) -> bytes:
    return sec.to_bytes(8, "little", signed=True) + nsec.to_bytes(8, "little", signed=True)


def test_clocks_and_sleeps():
    raw = abi.clock_gettime(abi.CLOCK_REALTIME)
    assert isinstance(raw, bytes) and len(raw) == abi.TIMESPEC64_SIZE
    sec, nsec = int.from_bytes(raw[:8], "little", signed=True), int.from_bytes(raw[8:], "little")
    assert abs(sec - time.time()) < 60 and 0 <= nsec < abi.NS
    assert abi.clock_gettime(abi.MAX_CLOCK + 1) == -abi.EINVAL
    assert abi.nanosleep_delay(abi.CLOCK_MONOTONIC, 0, timespec(1, 5)) == abi.NS + 5
    assert abi.nanosleep_delay(abi.CLOCK_MONOTONIC, abi.TIMER_ABSTIME, timespec(1, 0)) == 0  # in the past
    assert abi.nanosleep_delay(abi.CLOCK_MONOTONIC, 0, timespec(0, abi.NS)) == -abi.EINVAL
    assert abi.nanosleep_delay(abi.CLOCK_MONOTONIC, 0, timespec(-1, 0)) == -abi.EINVAL


def test_initial_stack_and_layout_match_qemu():
    sp, image = abi.initial_stack(["prog", "a b"])
    words = [int.from_bytes(image[i : i + 4], "little") for i in range(0, 40, 4)]
    assert sp % 16 == 0 and words[0] == 2 and words[3:9] == [0, 0, abi.AT_PAGESZ, PAGE, abi.AT_NULL, 0]
    # strings at the top, argv[0] highest: "a b" then "prog"
    assert image[words[2] - sp :].startswith(b"a b\0prog\0") and image[words[1] - sp :].startswith(b"prog\0")

    class Seg:
        def __init__(self, vaddr, memsz, data, perms):
            self.vaddr, self.memsz, self.data, self.perms = vaddr, memsz, data, perms

    perms, images, brk_start, sp2 = abi.layout([Seg(0x10000, 0x1800, b"\x13" * 8, "rx"),
                                                Seg(0x11400, 0x100, b"d", "rw")], ["p"])
    assert perms == {0x10: "rx", 0x11: "rwx"}  # the shared page gets both segments' rights
    assert images[0x10][:8] == b"\x13" * 8 and images[0x11][0x400] == ord("d")
    assert brk_start == 0x12000 and sp2 < abi.STACK_TOP and (sp2 >> 12) in images


def test_fault_reports_name_the_access_and_the_signal():
    assert abi.fault_report(riscv.STORE_PAGE_FAULT, 0xFF0, 0x1005C) == (
        "segmentation fault (store to an unmapped address) at 0x00000ff0 pc=0x0001005c", abi.SIGSEGV)
    assert abi.fault_report(riscv.ILLEGAL_INSTRUCTION, 0, 0x10004) == (
        "illegal instruction 0x00000000 pc=0x00010004", abi.SIGILL)
    assert abi.fault_report(99, 1, 2)[1] == abi.SIGSEGV
    assert abi.SYSCALL_NAMES[abi.SYS_CLOCK_NANOSLEEP64] == "clock_nanosleep64"
    assert riscv.signed(0xFFFFFFFF) == -1 and riscv.signed(-1) == -1 and riscv.signed(5) == 5
