"""Without Docker, or with its daemon down, the swarm commands fail in one line (exit 1) and leave
nothing behind; `--engine` takes local or swarm only. These run everywhere: no Docker needed."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def hwemu(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


def one_line_error(done: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwemu: ") and "Traceback" not in done.stderr, done.stderr
    for word in words:
        assert word in lines[0]


def test_no_docker_on_the_path(tmp_path):
    bare = tmp_path / "bin"  # a PATH with no docker on it
    bare.mkdir()
    for cmd in ("image build", "image build --tag hwemu:x --json"):
        done = hwemu(*cmd.split(), env={"PATH": str(bare)})
        if "--json" in cmd:
            assert '"ok": false' in done.stdout and "docker is not installed" in done.stdout
            continue
        one_line_error(done, 1, "docker is not installed", "swarm-setup.sh")
    rd = tmp_path / "rd"
    done = hwemu("up", "--engine", "swarm", "compose/native.toml", "--detach", "--run-dir", str(rd),
                 env={"PATH": str(bare)})
    one_line_error(done, 1, "docker is not installed")
    assert not rd.exists()  # refused before anything was made


def test_daemon_not_reachable(tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    rd = tmp_path / "rd"
    done = hwemu("up", "--engine", "swarm", "compose/native.toml", "--detach", "--run-dir", str(rd), env=env)
    # with docker installed the daemon is not there; without, docker is not: one line either way
    one_line_error(done, 1, "docker")
    assert not rd.exists()


def test_engine_is_local_or_swarm(tmp_path):
    done = hwemu("up", "--engine", "kubernetes", "compose/native.toml", "--run-dir", str(tmp_path / "rd"))
    one_line_error(done, 2, "--engine must be local or swarm")
    done = hwemu("demo", "--engine", "nomad", "--run-dir", str(tmp_path / "rd"))
    one_line_error(done, 2, "--engine must be local or swarm")
