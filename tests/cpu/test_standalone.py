"""`python -m nodes.cpu run` and `hwemu cpu run` end to end, and the ELF loader's errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nodes.elf import ElfError, load_elf

# write(1, argv[i], strlen) for every argument, then a newline, then exit(argc + 40).
ECHO_ARGS = r"""
_start:
    lw s0, 0(sp)            # argc
    addi s1, sp, 4          # argv
    mv s2, s0
1:  beqz s2, 3f
    lw a1, 0(s1)
    mv a2, a1
2:  lbu t0, 0(a2)
    addi a2, a2, 1
    bnez t0, 2b
    sub a2, a2, a1
    addi a2, a2, -1
    li a0, 1
    li a7, 64
    ecall
    addi s1, s1, 4
    addi s2, s2, -1
    j 1b
3:  lw t0, 0(s1)            # argv[argc] == NULL
    bnez t0, 9f
    lw t0, 4(s1)            # envp[0] == NULL
    bnez t0, 9f
    la a1, nl
    li a2, 1
    li a0, 1
    li a7, 64
    ecall
    addi a0, s0, 40
    li a7, 93
    ecall
9:  li a0, 99
    li a7, 93
    ecall
nl: .byte 10
"""

SYSCALLS = r"""
_start:
    li a7, 999              # unknown syscall
    ecall
    mv s0, a0
    li a0, 1                # write from an unmapped pointer
    li a1, 0x123
    li a2, 4
    li a7, 64
    ecall
    mv s1, a0
    li a0, 0                # brk(0) then grow by two pages and touch them
    li a7, 214
    ecall
    mv s2, a0
    li t0, 8192
    add a0, a0, t0
    li a7, 214
    ecall
    sub s3, a0, s2
    sw s3, 4(s2)
    lw t1, 4(s2)
    sub s3, s3, t1          # 0 if the heap is usable
    li a0, 0                # read 5 bytes from stdin into the heap
    mv a1, s2
    li a2, 5
    li a7, 63
    ecall
    mv a2, a0
    li a0, 1                # echo them
    mv a1, s2
    li a7, 64
    ecall
    li t0, -38
    bne s0, t0, bad
    li t0, -14
    bne s1, t0, bad
    bnez s3, bad
    li a0, 0
    li a7, 94
    ecall
bad:
    li a0, 3
    li a7, 94
    ecall
"""


def _run(args, stdin=b""):
    return subprocess.run([sys.executable, "-m", "nodes.cpu", "run", *args], input=stdin, capture_output=True,
                          check=False)


def test_runner_passes_argv_and_exit_status_like_linux(tmp_path, cpu_helpers):
    elf = cpu_helpers.assemble(tmp_path, ECHO_ARGS)
    stats = tmp_path / "stats.json"
    done = _run([str(elf), "--stats", str(stats), "--", "a b", "--flag"])
    assert done.stdout == f"{elf}a b--flag\n".encode()
    assert done.returncode == 43
    numbers = json.loads(stats.read_text())
    assert numbers["instret"] > 0 and numbers["seconds"] > 0 and numbers["mips"] > 0


def test_syscalls_enosys_efault_brk_and_read(tmp_path, cpu_helpers):
    elf = cpu_helpers.assemble(tmp_path, SYSCALLS)
    done = _run([str(elf)], stdin=b"hello, world")
    assert (done.returncode, done.stdout) == (0, b"hello")


@pytest.mark.parametrize(
    ("source", "status", "words"),
    [
        # the report of protocol/linux_abi.py's fault_report, as the OS node's
        ("_start:\n nop\n .word 0\n", 132, ["illegal instruction 0x00000000 pc=0x00010004"]),
        ("_start:\n li t0, 0x5000\n sw t0, 0(t0)\n", 139,
         ["segmentation fault (store to an unmapped address) at 0x00005000 pc=0x00010004"]),
        ("_start:\n la t0, _start\n sw t0, 0(t0)\n", 139,
         ["segmentation fault (store to a read-only page) at 0x00010000"]),
        ("_start:\n li t0, 0x7000000\n jr t0\n", 139,
         ["segmentation fault (fetch from an unmapped address) at 0x07000000 pc=0x07000000"]),
        ("_start:\n ebreak\n", 133, ["breakpoint at 0x00010000 pc=0x00010000"]),
    ],
)
def test_guest_faults_print_one_line_and_exit_with_the_signal(tmp_path, cpu_helpers, source, status, words):
    done = _run([str(cpu_helpers.assemble(tmp_path, source))])
    assert done.returncode == status
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines


def test_hwemu_cli_execs_the_runner(tmp_path, cpu_helpers):
    elf = cpu_helpers.assemble(tmp_path, ECHO_ARGS)
    done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli.main", "cpu", "run", str(elf), "--", "x"], capture_output=True,
        check=False
    )
    assert (done.returncode, done.stdout) == (42, f"{elf}x\n".encode())


def test_hwemu_cpu_run_stats_writes_instret_seconds_mips_and_exits_with_the_guest_status(tmp_path, cpu_helpers):
    elf = cpu_helpers.assemble(tmp_path, ECHO_ARGS)
    hwemu = str(Path(sys.executable).parent / "hwemu")
    stats = tmp_path / "cli-stats.json"
    done = subprocess.run([hwemu, "cpu", "run", str(elf), "--stats", str(stats), "--", "a", "bc"],
                          capture_output=True, check=False)
    assert (done.returncode, done.stdout) == (43, f"{elf}abc\n".encode()), done.stderr
    numbers = json.loads(stats.read_text())
    assert {"instret", "seconds", "mips"} <= set(numbers)
    # the same program and arguments under `python -m nodes.cpu run` retire exactly as many instructions
    _run([str(elf), "--stats", str(tmp_path / "direct.json"), "--", "a", "bc"])
    assert numbers["instret"] == json.loads((tmp_path / "direct.json").read_text())["instret"]
    assert numbers["seconds"] > 0
    assert numbers["mips"] == pytest.approx(numbers["instret"] / numbers["seconds"] / 1e6, rel=1e-9)


def test_bad_file_is_one_line_and_status_2(tmp_path):
    bad = tmp_path / "bad.elf"
    bad.write_bytes(b"#!/bin/sh\n")
    done = _run([str(bad)])
    assert done.returncode == 2 and b"not an ELF" in done.stderr and b"Traceback" not in done.stderr


# ---------------------------------------------------------------- ELF errors

def _corrupt(good: bytes, offset: int, value: bytes) -> bytes:
    return good[:offset] + value + good[offset + len(value):]


def _point_first_load_past_end(good: bytes) -> bytes:
    phoff = int.from_bytes(good[28:32], "little")
    phnum = int.from_bytes(good[44:46], "little")
    for i in range(phnum):
        ph = phoff + 32 * i
        if int.from_bytes(good[ph : ph + 4], "little") == 1:  # PT_LOAD
            return _corrupt(good, ph + 4, (len(good) - 2).to_bytes(4, "little"))
    raise AssertionError("no PT_LOAD")


def test_good_elf_has_entry_and_segments_with_permissions(tmp_path, cpu_helpers):
    program = load_elf(cpu_helpers.assemble(tmp_path, "_start:\n ecall\n.data\n.word 1\n"))
    assert program.entry == 0x10000
    assert program.segments[0].perms == "rx"
    assert any("w" in s.perms for s in program.segments)


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda b: b"MZ" + b[2:], "not an ELF"),
        (lambda b: b[:30], "truncated"),
        (lambda b: _corrupt(b, 4, b"\x02"), "64-bit"),
        (lambda b: _corrupt(b, 18, (62).to_bytes(2, "little")), "not a RISC-V"),
        (lambda b: _corrupt(b, 16, (3).to_bytes(2, "little")), "not an executable"),
        (lambda b: _corrupt(b, 44, (0).to_bytes(2, "little")), "no loadable"),
        (lambda b: _corrupt(b, 24, (0x7000).to_bytes(4, "little")), "entry point 0x7000"),
        (lambda b: _point_first_load_past_end(b), "beyond the end of the file"),
    ],
)
def test_bad_elf_files_are_refused_with_the_reason(tmp_path, cpu_helpers, mangle, message):
    good = cpu_helpers.assemble(tmp_path, "_start:\n ecall\n").read_bytes()
    with pytest.raises(ElfError, match=message):
        load_elf(mangle(good))


def test_an_unwritable_stats_path_is_refused_before_running_with_exit_2(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    elf = root / "guest/build/samples/hello.elf"
    if not elf.exists():
        subprocess.run(["make", "-C", str(root / "guest"), "-s"], check=True)
    out = subprocess.run([sys.executable, "-m", "nodes.cpu", "run", str(elf), "--stats",
                          str(tmp_path / "no/such/dir.json")],
                         cwd=root, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stdout == ""
    assert "cannot write --stats file" in out.stderr and "Traceback" not in out.stderr
