"""The README's tour works when pasted (the way doctest checks examples).

Every ```sh block of README.md runs, in order, in one bash shell with
``set -euo pipefail``, in a fresh copy of the checkout (its tracked and new
files; ``.venv`` and ``guest/build`` linked from this checkout, as
``make demo`` leaves them), so the run directory is the copy's own
``./.hwemu``. A block preceded by ``<!-- readme-test: skip ... -->`` is not
run (the two ``make`` commands, which set the machine up); blocks of any
other language (```text, ```toml, ```python) are illustrations.

A command that fails fails the test with the README line it is on.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.integration.procs import alive, recorded_pids

ROOT = Path(__file__).resolve().parents[2]
SKIP = "<!-- readme-test: skip"
TIMEOUT_S = 420  # the tour starts five clusters and runs six choreographies


def sh_blocks(text: str) -> list[tuple[int, list[str]]]:
    """The runnable blocks: (line number of the block's first line, its lines)."""
    blocks: list[tuple[int, list[str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if fence.group(1) == "sh" and not before.startswith(SKIP):
            blocks.append((i + 2, lines[i + 1:end]))
        i = end + 1
    return blocks


def script(blocks: list[tuple[int, list[str]]]) -> str:
    """One bash script: each command line is announced, a failure names its README line."""
    out = ["set -euo pipefail", "__line=0",
           "trap 'echo \"README.md:$__line: command failed (exit $?)\" >&2' ERR"]
    for first, lines in blocks:
        continued = False
        for n, line in enumerate(lines, first):
            if not continued and line.strip() and not line.lstrip().startswith("#"):
                out += [f"__line={n}", f"echo '$ README.md:{n}: '{_quote(line)}"]
            out.append(line)
            continued = line.rstrip().endswith("\\")
    return "\n".join(out) + "\n"


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def test_blocks_are_found():
    """The parser sees the tour and skips what is marked (else the run below would prove little)."""
    text = (ROOT / "README.md").read_text()
    blocks = sh_blocks(text)
    commands = [ln for _, lines in blocks for ln in lines if ln.strip() and not ln.startswith("#")]
    assert len(blocks) >= 3 and len(commands) >= 15
    assert not any(ln.startswith("make ") for ln in commands), "the setup block must stay marked skip"
    for ln in commands:  # syntax, not commands: `[--json]` or `a|b` would run as a glob or a pipe
        assert not re.search(r"\[--|\w\|\w", ln), f"README block line is syntax, not a command: {ln}"


@pytest.mark.integration
def test_readme_tour_runs(guest_build):
    copy = Path(tempfile.mkdtemp(prefix="readme", dir="/tmp"))  # short: ipc socket paths have a limit
    try:
        files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                               capture_output=True, check=True).stdout.decode().split("\0")
        for name in filter(None, files):
            if (ROOT / name).is_file() and not name.startswith("guest/build/"):
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, copy / name)
        (copy / ".venv").symlink_to(ROOT / ".venv")
        (copy / "guest" / "build").symlink_to(ROOT / "guest" / "build")
        env = {k: v for k, v in os.environ.items() if not k.startswith("HWEMU_")}
        text = script(sh_blocks((copy / "README.md").read_text()))
        try:
            done = subprocess.run(["bash", "-c", text], cwd=copy, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"the tour did not end within {TIMEOUT_S} s:\n{(exc.stdout or b'')[-4000:]!r}")
        assert done.returncode == 0, f"{done.stderr[-3000:]}\n--- stdout ---\n{done.stdout[-3000:]}"
        assert "Hello from hwemu!" in done.stdout and "2 lines, 3 words" in done.stdout
    finally:
        rd = copy / ".hwemu"
        pids = recorded_pids(rd)
        subprocess.run([str(ROOT / ".venv" / "bin" / "hwemu"), "down", "--run-dir", str(rd)], cwd=copy,
                       capture_output=True, timeout=60)
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(copy, ignore_errors=True)
