"""CPU benchmark (issue #4): guest MIPS of our core, and wall time against qemu-riscv32.

For `bench.elf` (mixed code: calls, loads, stores, branches) and
`aluloop.elf` (a straight-line ALU loop of known instruction count) it runs
`python -m nodes.cpu run PROG --stats` — exactly what a user runs — and
reads the guest MIPS from the stats file (guest execution only, no start-up),
then times the whole process and the same program under qemu-riscv32.

    .venv/bin/python bench/cpu.py [--json] [--repeat N]

`--json` prints one JSON object: mips_alu, mips_mixed, qemu_ratio_alu,
qemu_ratio_mixed (our wall time ÷ qemu's), and the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROGRAMS = {"mixed": "bench", "alu": "aluloop"}


def find_elf(stem: str) -> Path | None:
    """The built guest program `stem`, wherever the guest Makefile puts it."""
    for candidate in (ROOT / "guest/build" / f"{stem}.elf", ROOT / "guest/build/samples" / f"{stem}.elf"):
        if candidate.exists():
            return candidate
    return None


def ensure_programs() -> dict[str, Path]:
    """Find (building with `make -C guest` if needed) every benchmark program."""
    found = {kind: find_elf(stem) for kind, stem in PROGRAMS.items()}
    if None in found.values():
        subprocess.run(["make", "-C", str(ROOT / "guest")], stdout=subprocess.DEVNULL, check=False)
        found = {kind: find_elf(stem) for kind, stem in PROGRAMS.items()}
    missing = [PROGRAMS[kind] for kind, path in found.items() if path is None]
    if missing:
        sys.exit(f"bench/cpu.py: {', '.join(m + '.elf' for m in missing)} not found in guest/build "
                 "even after `make -C guest`; build the guest programs first")
    return found


def run_ours(elf: Path) -> dict:
    """One run under our core: stats from the runner plus the process wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "nodes.cpu", "run", str(elf), "--stats", str(stats)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"bench/cpu.py: {elf.name} failed under nodes.cpu "
                     f"(status {done.returncode}): {done.stderr.decode().strip()}")
        result = json.loads(stats.read_text())
    result["wall"] = wall
    return result


def run_qemu(elf: Path) -> float:
    """Wall time of one run under qemu-riscv32."""
    start = time.perf_counter()
    done = subprocess.run(
        ["qemu-riscv32", str(elf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"bench/cpu.py: {elf.name} failed under qemu-riscv32: {done.stderr.decode().strip()}")
    return wall


def measure(repeat: int) -> dict:
    """Best of `repeat` runs of each program, ours and qemu's."""
    programs = ensure_programs()
    report: dict = {}
    for kind, elf in programs.items():
        ours = min((run_ours(elf) for _ in range(repeat)), key=lambda r: r["seconds"])
        qemu = min(run_qemu(elf) for _ in range(repeat))
        report[f"mips_{kind}"] = round(ours["mips"], 2)
        report[f"qemu_ratio_{kind}"] = round(ours["wall"] / qemu, 1)
        report[f"{kind}_program"] = elf.name
        report[f"{kind}_instret"] = ours["instret"]
        report[f"{kind}_seconds"] = round(ours["seconds"], 4)
        report[f"{kind}_wall"] = round(ours["wall"], 4)
        report[f"{kind}_qemu_wall"] = round(qemu, 4)
    report["python"] = sys.version.split()[0]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object, nothing else")
    parser.add_argument("--repeat", type=int, default=3, help="runs per program; the best counts")
    args = parser.parse_args()
    report = measure(max(1, args.repeat))
    if args.json:
        print(json.dumps(report))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hwemu CPU (CPython {report['python']}, best of {args.repeat})")
    for column in ("program", "instret", "guest s", "MIPS", "wall s", "qemu s", "÷ qemu"):
        table.add_column(column, justify="right")
    for kind in PROGRAMS:
        table.add_row(
            f"{kind}: {report[f'{kind}_program']}",
            f"{report[f'{kind}_instret']:,}",
            f"{report[f'{kind}_seconds']:.3f}",
            f"{report[f'mips_{kind}']:.2f}",
            f"{report[f'{kind}_wall']:.3f}",
            f"{report[f'{kind}_qemu_wall']:.3f}",
            f"{report[f'qemu_ratio_{kind}']:.1f}×",
        )
    Console().print(table)


if __name__ == "__main__":
    main()
