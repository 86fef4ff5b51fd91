"""Regression tests for what issue 14 part 7 found when the CLI was tried as a
new user would (each failed before its fix):

- `hwemu down` in a shell ended the shell too (it sent SIGTERM to every
  process whose command line named the run directory): it must end only the
  processes the cluster launched, by pid;
- SIGTERM to `hwemu run` left the guest program running, its UDP port bound:
  stopping `hwemu run` stops its program;
- a bad ELF (truncated, empty, x86-64, random bytes, a directory) exited 1
  where bad input is 2;
- a run directory that cannot be created, a tcp endpoint already in use and
  a disk image of a bad size ended in tracebacks: one line naming the cause.

(A SIGSTOPped node shown `running` is tested in test_faults.py.)
"""

from __future__ import annotations

import json
import random
import signal
import socket
import subprocess
import sys

import pytest

from tests.guest.test_network_samples import free_udp_port
from tests.integration import test_native
from tests.integration.procs import alive
from tests.integration.test_io import GUEST_PORT, IO, Program, status, up
from tests.integration.test_native import BUILD, HWEMU, REPO, hwemu, show

pytestmark = pytest.mark.integration


cluster_dir = test_native.run_dir  # `hwemu down` and SIGKILL for anything of ours left at the end


def one_line(run: subprocess.CompletedProcess, code: int) -> str:
    """The run exited ``code`` with exactly one line on stderr (no traceback); that line."""
    lines = run.stderr.decode().strip().splitlines()
    assert run.returncode == code and len(lines) == 1 and lines[0].startswith(("hwemu", "hwemu-cpu")), show(run)
    return lines[0]


def test_down_run_by_a_shell_ends_the_cluster_and_not_the_shell(cluster_dir):
    rd, pids = cluster_dir
    for wrapper in (["bash", "-c", f"{HWEMU} down --run-dir {rd}; echo after"],
                    ["timeout", "60", HWEMU, "down", "--run-dir", str(rd)]):
        up(rd, "compose/flip.toml")
        state = json.loads((rd / "cluster.json").read_text())
        cluster = [state["pid"], *state["nodes"].values()]
        done = subprocess.run(wrapper, cwd=REPO, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, show(done)
        if wrapper[0] == "bash":
            assert done.stdout.decode().splitlines()[-1] == "after", show(done)
        assert not [pid for pid in cluster if alive(pid)], show(done)


def test_sigterm_to_hwemu_run_stops_its_program_and_frees_its_port(guest_build, cluster_dir):
    rd, pids = cluster_dir
    up(rd)
    for _ in range(2):  # the second one binds the very port the first one had
        prog = Program(rd, pids, "udpecho.elf", [str(GUEST_PORT)], free_udp_port())
        try:
            assert prog.line() == b"udpecho listening on 7000\n"
            prog.proc.send_signal(signal.SIGTERM)
            code, out, err = prog.finish()
            assert code == 128 + signal.SIGTERM, (code, out, err)
        finally:
            prog.kill()
        os1 = next(n for n in status(rd)["nodes"] if n["name"] == "os1")
        assert os1["stats"]["procs"] == [] and os1["stats"]["kernel"]["procs"] == 0, os1["stats"]["procs"]


def bad_elves(tmp_path) -> dict[str, str]:
    hello = (BUILD / "hello.elf").read_bytes()
    files = {"truncated": hello[:100], "empty": b"", "random": random.Random(14).randbytes(3000)}
    out = {}
    for name, data in files.items():
        path = tmp_path / f"{name}.elf"
        path.write_bytes(data)
        out[name] = str(path)
    out["x86-64"] = sys.executable  # this interpreter: a 64-bit x86-64 (or other host) ELF
    (tmp_path / "adir").mkdir()
    out["directory"] = str(tmp_path / "adir")
    return out


def test_a_bad_elf_is_bad_input_exit_2_in_one_line(guest_build, cluster_dir, tmp_path):
    rd, pids = cluster_dir
    up(rd, "compose/native.toml")
    for what, path in bad_elves(tmp_path).items():
        line = one_line(hwemu(rd, "run", "compose/native.toml", path), 2)
        assert path in line or "program" in line, (what, line)
        one_line(subprocess.run([HWEMU, "cpu", "run", path], capture_output=True, timeout=60,
                                stdin=subprocess.DEVNULL), 2)
    assert all(n["state"] == "running" for n in status(rd)["nodes"])  # every other party keeps running


def test_a_run_dir_that_cannot_be_created_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("")
    line = one_line(hwemu(afile / "r", "up", IO, "--detach"), 1)
    assert line == f"hwemu: cannot create the run directory {afile / 'r'}: Not a directory", line


def test_a_tcp_endpoint_in_use_is_one_line(cluster_dir, tmp_path):
    rd, pids = cluster_dir
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        topo = (REPO / "compose/flip.toml").read_text().replace(
            "[nodes.sink_b]", f'[nodes.sink_b]\nendpoint = "tcp://127.0.0.1:{port}"')
        (tmp_path / "tcp.toml").write_text(topo)
        line = one_line(hwemu(rd, "up", str(tmp_path / "tcp.toml"), "--detach"), 1)
    finally:
        holder.close()
    assert line.startswith("hwemu: cluster failed to start: node sink_b (streamer) exited during start-up"), line
    assert line.endswith(f"cannot bind tcp://127.0.0.1:{port}: Address already in use"), line


def test_a_disk_image_of_a_bad_size_is_one_line(cluster_dir):
    rd, pids = cluster_dir
    rd.mkdir(mode=0o700, parents=True)  # a run directory must be private (protocol/auth.py)
    (rd / "disk0.img").write_bytes(bytes(1000))
    line = one_line(hwemu(rd, "up", IO, "--detach"), 1)
    assert line == (f"hwemu: cluster failed to start: node disk0 (disk) exited during start-up with code 1: "
                    f"disk disk0: image {rd / 'disk0.img'} is 1000 bytes, not a multiple of the block size 512"), line
