"""The CLI as a user expects it (issue 17, "Using it"): every help screen
shows its defaults and examples and no ``<bool>`` after a flag; ``--version``;
a bad ``HWEMU_LOG`` is one line; logs say something at the default level;
``hwemu run`` reads piped standard input and reports with ``--json``; the
UART's console port is in the status table; ``route set --create``.

Help screens are rendered in-process (typer's runner: no process starts);
the rest runs the console script against real clusters.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from orchestrator.cli.main import app
from tests.integration import test_cli
from tests.integration.test_cli import HWEMU, ROOT, hwemu, one_json_object
from tests.integration.test_native import wc_output

BUILD = ROOT / "guest" / "build" / "samples"
run_dir = test_cli.run_dir  # a fixture: the tests take it as a parameter


def command_paths() -> list[list[str]]:
    """Every visible command and command group of ``hwemu``, as argv prefixes."""
    paths: list[list[str]] = []

    def walk(cmd, path: list[str]) -> None:
        paths.append(path)
        if hasattr(cmd, "commands"):  # a group
            for name, sub in cmd.commands.items():
                if not sub.hidden:
                    walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "hwemu")
def test_every_help_screen_has_examples_defaults_and_no_bool_type(path):
    result = CliRunner().invoke(app, [*path, "--help"], prog_name="hwemu")
    assert result.exit_code == 0, result.output
    text = result.output
    assert "<bool>" not in text
    assert "Examples:" in text and "hwemu " in text.split("Examples:", 1)[1], text
    if "--run-dir" in text:  # its default used to vanish as rich markup
        assert "[default: $HWEMU_RUN_DIR or ./.hwemu]" in re.sub(r"\s+", " ", text), text


def test_version():
    result = subprocess.run([HWEMU, "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and re.fullmatch(r"hwemu \d+\.\d+\.\d+\n", result.stdout), result


@pytest.mark.parametrize("argv, error", [
    (["status", "--json", "--timeout", "soon"], "Invalid value for '--timeout'"),
    (["route", "show", "--bogus", "--json"], "No such option: --bogus"),
])
def test_a_usage_error_given_json_is_one_json_object_on_stdout_too(argv, error):
    result = subprocess.run([HWEMU, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result
    data = one_json_object(result.stdout)
    assert data["ok"] is False and data["exit"] == 2 and data["error"].startswith(error), data
    assert f"Error: {error}" in result.stderr and "Traceback" not in result.stderr  # the usual line, for a person
    plain = subprocess.run([HWEMU, *(a for a in argv if a != "--json")], capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and plain.stdout == "", plain  # without --json, stdout stays empty


def test_a_bad_log_level_is_one_line_and_exit_2(run_dir):
    rd, _ = run_dir
    result = hwemu(rd, "up", "compose/native.toml", "--detach", HWEMU_LOG="bogus")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "hwemu: HWEMU_LOG='bogus': expected one of DEBUG, INFO, WARNING, ERROR (default INFO)"]
    assert not rd.exists() or not any(rd.iterdir())


def test_demo_report_file_needs_json(run_dir):
    rd, _ = run_dir
    result = hwemu(rd, "demo", "report.json")
    assert result.returncode == 2 and "after --json" in result.stderr, result.stderr


@pytest.mark.integration
def test_logs_status_table_route_create_and_piped_stdin(guest_build, run_dir):
    """One native cluster: its logs speak at the default level, its UART's
    port is in the table, `hwemu run` feeds piped stdin and reports in JSON;
    then the flip cluster, started from outside the checkout: `route set`
    adds a flow only with --create."""
    rd, pids = run_dir
    env = {k: v for k, v in os.environ.items() if k != "HWEMU_LOG"}
    up = subprocess.run([HWEMU, "up", "compose/native.toml", "--detach", "--json"], cwd=ROOT, timeout=120,
                        env={**env, "HWEMU_RUN_DIR": str(rd)}, capture_output=True, text=True)
    assert up.returncode == 0, up.stderr
    status = one_json_object(up.stdout)
    pids |= {status["orchestrator"]["pid"], *(n["pid"] for n in status["nodes"])}

    for node in ("memctl", "cpu0", "uart0", "timer0", "os1"):
        log = (rd / "logs" / f"{node}.log").read_text()
        assert f"{node} (" in log and "running, pid" in log, (node, log)
    assert "started os1 (os)" in (rd / "orchestrator.log").read_text()

    port = next(n for n in status["nodes"] if n["name"] == "uart0")["stats"]["tcp_port"]
    table = hwemu(rd, "status").stdout
    row = next(ln for ln in table.splitlines() if ln.startswith("│ uart0 "))
    assert f" tcp 127.0.0.1:{port} " in row, table

    text = b"one two\nthree four five\n"
    piped = subprocess.run([HWEMU, "run", "compose/native.toml", str(BUILD / "wc.elf")], cwd=ROOT, input=text,
                           capture_output=True, timeout=120, env={**os.environ, "HWEMU_RUN_DIR": str(rd)})
    assert (piped.returncode, piped.stdout) == (0, wc_output(text)), piped.stderr
    with open(Path(rd) / "input.txt", "wb") as f:
        f.write(text)
    with open(Path(rd) / "input.txt", "rb") as f:
        redirected = subprocess.run([HWEMU, "run", "compose/native.toml", str(BUILD / "wc.elf"), "--json"],
                                    cwd=ROOT, stdin=f, capture_output=True, timeout=120,
                                    env={**os.environ, "HWEMU_RUN_DIR": str(rd)})
    report = one_json_object(redirected.stdout.decode())
    assert redirected.returncode == 0, redirected.stderr
    assert (report["code"], report["reason"], report["output"]) == (0, "exit", wc_output(text).decode())

    assert hwemu(rd, "down").returncode == 0
    elsewhere = rd.parent / "elsewhere"  # not the checkout: its streamer nodes are a shipped kind, not test code
    elsewhere.mkdir()
    up = subprocess.run([HWEMU, "up", str(ROOT / "compose" / "flip.toml"), "--detach", "--json"], cwd=elsewhere,
                        env={**os.environ, "HWEMU_RUN_DIR": str(rd)}, capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    pids |= {n["pid"] for n in one_json_object(up.stdout)["nodes"]}
    refused = hwemu(rd, "route", "set", "data:sink_a", "sink_b")
    assert refused.returncode == 1 and "add it with --create" in refused.stderr, refused.stderr
    created = hwemu(rd, "route", "set", "data:sink_a", "sink_b", "--create", "--json")
    assert created.returncode == 0, created.stderr
    routes = one_json_object(hwemu(rd, "route", "show", "--json").stdout)["routes"]
    assert routes == {"data:src": "sink_a", "data:sink_a": "sink_b"}
    assert one_json_object(created.stdout)["flows"] == {"data:sink_a": [None, "sink_b"]}
