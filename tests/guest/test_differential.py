"""Differential tests: hwemu's CPU against qemu-riscv32 on real guest ELF files.

Every program in ``guest/samples/`` and ``guest/isa/`` that has a
``<name>.expected`` file is run twice, under ``qemu-riscv32`` (Linux user
mode, the reference) and under ``python -m nodes.cpu run`` (DESIGN.md §3), and
both runs must print exactly the expected bytes and exit with the same code.
Files beside a program describe how to run it (see guest/README.md):

- ``<name>.args``: command-line arguments, one per line;
- ``<name>.stdin``: bytes fed to standard input (otherwise it is empty);
- ``<name>.exit``: the exit code when it is not 0;
- ``<name>.fault``: the symbol of the instruction at which the program must
  die; both runs must then exit non-zero, and hwemu's report on stderr must
  name that pc.

The reference runs and the hwemu runs are separate tests, so a wrong
``.expected`` file and a wrong CPU show up as different failures.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guest"
GROUPS = ("samples", "isa")
TOOLS = ("make", "riscv64-unknown-elf-gcc", "qemu-riscv32")
# A guard against a hung run, not a performance check: the slowest program
# needs a few million instructions.
HANG_LIMIT_S = 240
# Servers that need a network (and a disk), with no fixed stdout to compare:
# tests/guest/test_network_samples.py drives them over UDP instead.
# no .expected file: the network samples need a peer, syscost prints times
# (each has its own tests under tests/integration/: test_disk_nic, test_io, test_native)
# naps sleeps (clock_nanosleep: the OS's timer), which `hwemu cpu run` alone does not serve
# (tests/integration/test_recovery.py runs it on a cluster)
# faultprobe needs a disk and a fault injected under it (tests/integration/test_faults.py runs it)
NETWORK_SAMPLES = {"samples": {"udpecho", "kvstore", "iobad", "syscost", "naps", "faultprobe"}}


@dataclass(frozen=True)
class GuestProgram:
    """One guest program and what it must do when run."""

    group: str
    name: str
    args: tuple[str, ...]
    stdin: bytes
    expected_stdout: bytes
    expected_exit: int
    fault_symbol: str | None

    @property
    def elf(self) -> Path:
        return GUEST / "build" / self.group / f"{self.name}.elf"

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"


def _optional_text(path: Path) -> str | None:
    return path.read_text() if path.exists() else None


def discover_programs() -> list[GuestProgram]:
    programs = []
    for group in GROUPS:
        for expected in sorted((GUEST / group).glob("*.expected")):
            stem = expected.with_suffix("")
            args = _optional_text(stem.with_suffix(".args"))
            exit_code = _optional_text(stem.with_suffix(".exit"))
            fault = _optional_text(stem.with_suffix(".fault"))
            stdin = stem.with_suffix(".stdin")
            programs.append(
                GuestProgram(
                    group=group,
                    name=stem.name,
                    args=tuple(args.splitlines()) if args else (),
                    stdin=stdin.read_bytes() if stdin.exists() else b"",
                    expected_stdout=expected.read_bytes(),
                    expected_exit=int(exit_code) if exit_code else 0,
                    fault_symbol=fault.strip() if fault else None,
                )
            )
    return programs


PROGRAMS = discover_programs()
CLEAN_EXIT = [p for p in PROGRAMS if p.fault_symbol is None]
FAULTING = [p for p in PROGRAMS if p.fault_symbol is not None]


def _ids(programs: list[GuestProgram]) -> list[str]:
    return [p.id for p in programs]


@pytest.fixture(scope="session")
def guest_build() -> Path:
    """Builds guest/build with `make -C guest` unless it is up to date."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: run ./scripts/setup.sh to install "
            "the RISC-V toolchain and qemu-user",
            pytrace=False,
        )
    up_to_date = subprocess.run(
        ["make", "-q", "-C", str(GUEST)], capture_output=True
    ).returncode == 0
    if not up_to_date:
        built = subprocess.run(
            ["make", "-C", str(GUEST)], capture_output=True, text=True
        )
        if built.returncode != 0:
            pytest.fail(
                f"`make -C guest` failed:\n{built.stdout[-2000:]}{built.stderr[-4000:]}",
                pytrace=False,
            )
    return GUEST / "build"


def run_qemu(program: GuestProgram) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["qemu-riscv32", str(program.elf), *program.args],
        capture_output=True,
        input=program.stdin,
        timeout=HANG_LIMIT_S,
    )


def run_hwemu(program: GuestProgram) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "nodes.cpu", "run", str(program.elf), "--", *program.args],
        capture_output=True,
        input=program.stdin,
        cwd=REPO,
        timeout=HANG_LIMIT_S,
    )


def first_difference(actual: bytes, expected: bytes) -> str:
    """Says where two outputs part ways, without dumping thousands of lines."""
    got, want = actual.splitlines(keepends=True), expected.splitlines(keepends=True)
    for lineno, (g, w) in enumerate(zip(got, want), start=1):
        if g != w:
            return f"line {lineno}: got {g!r}, expected {w!r}"
    if len(got) != len(want):
        return (
            f"got {len(got)} lines, expected {len(want)}; first extra line: "
            f"{(got[len(want):] or want[len(got):])[0]!r}"
        )
    return "outputs differ only in the last line's ending"


def assert_stdout(run: subprocess.CompletedProcess[bytes], expected: bytes, who: str) -> None:
    if run.stdout != expected:
        pytest.fail(
            f"{who}: stdout differs from the expected output, "
            f"{first_difference(run.stdout, expected)}\n"
            f"exit code {run.returncode}, stderr tail: {run.stderr[-1500:].decode(errors='replace')}",
            pytrace=False,
        )


def symbol_address(elf: Path, symbol: str) -> int:
    with elf.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert symtab is not None, f"{elf} has no symbol table"
        found = symtab.get_symbol_by_name(symbol)
        assert found, f"{elf} has no symbol {symbol!r} (named in its .fault file)"
        return found[0]["st_value"]


def test_every_guest_program_has_expected_output() -> None:
    """A program added without a .expected file would silently go untested."""
    for group in GROUPS:
        sources = {p.stem for p in (GUEST / group).iterdir() if p.suffix in (".c", ".S")}
        sources -= NETWORK_SAMPLES.get(group, set())
        expected = {p.stem for p in (GUEST / group).glob("*.expected")}
        assert sources == expected, f"guest/{group}: sources without .expected: " \
            f"{sorted(sources - expected)}, .expected without sources: {sorted(expected - sources)}"


@pytest.mark.parametrize("program", CLEAN_EXIT, ids=_ids(CLEAN_EXIT))
def test_qemu_reference_prints_expected_output(guest_build: Path, program: GuestProgram) -> None:
    run = run_qemu(program)
    assert_stdout(run, program.expected_stdout, "qemu-riscv32")
    assert run.returncode == program.expected_exit


@pytest.mark.parametrize("program", CLEAN_EXIT, ids=_ids(CLEAN_EXIT))
def test_hwemu_cpu_matches_qemu(guest_build: Path, program: GuestProgram) -> None:
    reference = run_qemu(program)
    ours = run_hwemu(program)
    assert_stdout(ours, reference.stdout, "hwemu cpu vs qemu-riscv32")
    assert_stdout(ours, program.expected_stdout, "hwemu cpu")
    assert ours.returncode == reference.returncode == program.expected_exit, (
        f"exit codes: hwemu {ours.returncode}, qemu {reference.returncode}, "
        f"expected {program.expected_exit}; hwemu stderr: {ours.stderr[-1500:]!r}"
    )


@pytest.mark.parametrize("program", FAULTING, ids=_ids(FAULTING))
def test_qemu_reference_dies_on_fault(guest_build: Path, program: GuestProgram) -> None:
    run = run_qemu(program)
    assert_stdout(run, program.expected_stdout, "qemu-riscv32")
    assert run.returncode != 0


@pytest.mark.parametrize("program", FAULTING, ids=_ids(FAULTING))
def test_hwemu_cpu_dies_on_fault_naming_the_pc(guest_build: Path, program: GuestProgram) -> None:
    assert program.fault_symbol is not None
    pc = symbol_address(program.elf, program.fault_symbol)
    ours = run_hwemu(program)
    assert_stdout(ours, program.expected_stdout, "hwemu cpu")
    stderr = ours.stderr.decode(errors="replace")
    assert ours.returncode != 0, f"hwemu exited 0 after the fault; stderr: {stderr!r}"
    # qemu-riscv32 dies of the signal (SIGILL, SIGSEGV, SIGTRAP for ebreak ...);
    # hwemu exits with 128 + that signal, as a shell reports it
    reference = run_qemu(program)
    assert reference.returncode < 0 and ours.returncode == 128 - reference.returncode, (
        f"exit codes: hwemu {ours.returncode}, qemu {reference.returncode} (negative: killed by that signal)")
    assert re.search(r"\bpc\b", stderr, re.IGNORECASE), f"no 'pc' in stderr: {stderr!r}"
    assert re.search(rf"0x0*{pc:x}\b", stderr, re.IGNORECASE), (
        f"stderr does not name pc 0x{pc:08x} ({program.fault_symbol}): {stderr!r}"
    )
