"""CPU benchmark (issues #4, #16): guest MIPS of our core, before and after, and against qemu-riscv32.

For `bench.elf` (mixed code: loads, stores, branches, mul/div), `mixed.elf`
(list sorting, matrix products, a tokenizer state machine) and `aluloop.elf`
(a straight-line ALU loop of known instruction count) it runs
`python -m nodes.cpu run PROG --stats` — exactly what a user runs — and
reads the guest MIPS from the stats file (guest execution only, no start-up),
then times the whole process and the same program under qemu-riscv32.

The core as it was before the issue #16 work (commit BEFORE_COMMIT, taken
from this repository's git history with `git archive` into a temporary
directory) runs the same programs in the same run, alternating with ours, so
the speed-up is measured on the same host load: `before MIPS` and `× before`.
Each core also runs each program in a process of its own that measures the
guest's run in CPU seconds (`CPU MIPS`, translation included, start-up not):
on a busy host that figure and its ratio are much steadier than wall time.

    .venv/bin/python bench/cpu.py [--json] [--repeat N] [--before COMMIT | --no-before]

`--json` prints one JSON object: mips_alu, mips_mixed, mips_real,
mips_<kind>_before, speedup_<kind> (ours ÷ before), mips_<kind>_cpu,
mips_<kind>_cpu_before, speedup_<kind>_cpu (the same in CPU time),
qemu_ratio_<kind> (our wall time ÷ qemu's), and the raw numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.report import printed_as_json  # noqa: E402

PROGRAMS = {"mixed": "bench", "real": "mixed", "alu": "aluloop"}
BEFORE_COMMIT = "03476f7"  # main before issue #16's core work


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


def checkout_before(commit: str, into: Path) -> Path:
    """Extract the `nodes` package of `commit` into `into`; return the directory to import it from."""
    done = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit, "nodes"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False,
    )
    if done.returncode != 0:
        sys.exit(f"bench/cpu.py: cannot take the core of {commit} from git "
                 f"({done.stderr.decode().strip()}); use --no-before outside a clone")
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def run_ours(elf: Path, code: Path = ROOT) -> dict:
    """One run under a core (ours, or the one imported from `code`): runner stats plus wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        stats = Path(tmp) / "stats.json"
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "nodes.cpu", "run", str(elf), "--stats", str(stats)],
            cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False,
            env={**os.environ, "PYTHONPATH": str(code)},
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"bench/cpu.py: {elf.name} failed under nodes.cpu "
                     f"(status {done.returncode}): {done.stderr.decode().strip()}")
        result = json.loads(stats.read_text())
    result["wall"] = wall
    return result


# The guest's run in CPU seconds of its process (translation included, start-up
# not): on a busy host the wall time depends on what else runs, the CPU time
# much less. The same lines drive either core (their Machine API is the same).
_CPU_RUN = """
import io, sys, time
from nodes.elf import load_elf
from nodes.cpu.standalone import Machine
machine = Machine(load_elf(sys.argv[1]), [sys.argv[1]], stdin=io.BytesIO(), stdout=io.BytesIO())
start = time.process_time()
machine.run()
print(machine.core.instret, time.process_time() - start)
"""


def run_cpu_time(elf: Path, code: Path = ROOT) -> float:
    """Guest MIPS of one run under a core, in CPU time of its process."""
    done = subprocess.run(
        [sys.executable, "-c", _CPU_RUN, str(elf)], cwd=code, capture_output=True, check=False,
        env={**os.environ, "PYTHONPATH": str(code)},
    )
    if done.returncode != 0:
        sys.exit(f"bench/cpu.py: {elf.name} failed under the core in {code}: {done.stderr.decode().strip()}")
    instret, seconds = done.stdout.split()
    return int(instret) / float(seconds) / 1e6


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


def measure(repeat: int, before: Path | None) -> dict:
    """Best of `repeat` runs of each program: ours, the core before (alternating with ours), qemu."""
    programs = ensure_programs()
    report: dict = {}
    for kind, elf in programs.items():
        runs, old_runs = [], []
        for _ in range(repeat):
            runs.append(run_ours(elf))
            if before is not None:
                old_runs.append(run_ours(elf, before))
        ours = min(runs, key=lambda r: r["seconds"])
        qemu = min(run_qemu(elf) for _ in range(repeat))
        if old_runs:
            old = min(old_runs, key=lambda r: r["seconds"])
            report[f"mips_{kind}_before"] = round(old["mips"], 2)
            report[f"speedup_{kind}"] = round(ours["mips"] / old["mips"], 2)
            cpu, old_cpu = [], []
            for _ in range(repeat):
                cpu.append(run_cpu_time(elf))
                old_cpu.append(run_cpu_time(elf, before))
            report[f"mips_{kind}_cpu"] = round(max(cpu), 2)
            report[f"mips_{kind}_cpu_before"] = round(max(old_cpu), 2)
            report[f"speedup_{kind}_cpu"] = round(max(cpu) / max(old_cpu), 2)
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
    parser.add_argument("--repeat", type=int, default=5, help="runs per program; the best counts")
    parser.add_argument("--before", default=BEFORE_COMMIT, metavar="COMMIT",
                        help=f"the core to compare with, from git history (default {BEFORE_COMMIT})")
    parser.add_argument("--no-before", action="store_true", help="measure our core only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        before = None if args.no_before else checkout_before(args.before, Path(tmp))
        report = measure(max(1, args.repeat), before)
    if printed_as_json(report, args):
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"hwemu CPU (CPython {report['python']}, best of {args.repeat})")
    compared = f"mips_{next(iter(PROGRAMS))}_before" in report
    columns = ["program", "instret", "guest s", "MIPS"]
    if compared:
        columns += [f"MIPS {args.before}", "× before", "CPU MIPS", f"CPU MIPS {args.before}", "× before (CPU)"]
    for column in (*columns, "wall s", "qemu s", "÷ qemu"):
        table.add_column(column, justify="right")
    for kind in PROGRAMS:
        before_cells = [
            f"{report[f'mips_{kind}_before']:.2f}", f"{report[f'speedup_{kind}']:.2f}×",
            f"{report[f'mips_{kind}_cpu']:.2f}", f"{report[f'mips_{kind}_cpu_before']:.2f}",
            f"{report[f'speedup_{kind}_cpu']:.2f}×",
        ] if compared else []
        table.add_row(
            f"{kind}: {report[f'{kind}_program']}",
            f"{report[f'{kind}_instret']:,}",
            f"{report[f'{kind}_seconds']:.3f}",
            f"{report[f'mips_{kind}']:.2f}",
            *before_cells,
            f"{report[f'{kind}_wall']:.3f}",
            f"{report[f'{kind}_qemu_wall']:.3f}",
            f"{report[f'qemu_ratio_{kind}']:.1f}×",
        )
    Console(width=max(150, Console().width)).print(table)  # the columns need ~140


if __name__ == "__main__":
    main()
