"""`hwemu run TOPOLOGY PROGRAM.elf [-- ARGS]`: run one program on an OS of a
cluster, like running it on a computer (DESIGN.md §4).

If no cluster runs in the run directory, one is started exactly as
``hwemu up --detach`` starts it, and stopped again at the end (also on
Ctrl-C or an error); a cluster that was already running is left running.
The OS and its console are found through ``ctl_status``. The command joins
the message plane as a client (``run-<pid>``, advertising its inbox), sends
``os_exec`` {elf, argv, notify} to the OS, copies the console log to stdout
while the program runs, and after the OS's ``proc_exit`` asks the UART how
much is logged (``uart_sync``) and copies the rest. Its exit status is the
program's (128 + signal for a guest fault); a program the OS refuses (a bad
ELF) exits 1 with the OS's reason.

Standard input: piped or redirected from a file (``echo hi | hwemu run ...``,
``hwemu run ... < file``), it is the program's fd 0, then EOF, as under
``qemu-riscv32`` and ``hwemu cpu run``; from a terminal (or ``/dev/null``)
fd 0 reads the console (what ``hwemu console`` types). ``--stdin FILE``
names the input explicitly.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import stat
import sys
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Optional

import trio
import typer

import protocol.hw  # noqa: F401  (registers os_exec / proc_exit / uart_sync)
from orchestrator.cli import cluster
from orchestrator.cli import trace as trace_cli
from orchestrator.cli.cluster import _call
from orchestrator.cli.common import Json, RunDir, emit_json, err_console, fail, run_dir_of
from orchestrator.client import NotRunning, call, client_auth
from orchestrator.daemon import is_locked
from orchestrator.errors import ForwardRefused, Lost
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.transport import Party

POLL_S = 0.05  # how often the console log is looked at while the program runs
CHECK_S = 2.0  # how often the OS is asked whether it still has the program


def _pick(status: dict, os_name: str | None) -> tuple[dict, dict]:
    """The OS node and the uart node its console goes to."""
    nodes = {n["name"]: n for n in status["nodes"]}
    oses = sorted(n for n, v in nodes.items() if v["kind"] == "os")
    if os_name is None:
        if not oses:
            fail(f"the cluster has no OS node (nodes: {', '.join(sorted(nodes))})")
        os_name = oses[0]
    node = nodes.get(os_name)
    if node is None or node["kind"] != "os":
        fail(f"no OS node {os_name!r} in the cluster (OS nodes: {', '.join(oses) or 'none'})")
    if not node["alive"]:
        fail(f"OS {os_name!r} is {node['state']} (see `hwemu status`)")
    routes = status["routes"]["routes"]
    uart = nodes.get(routes.get(f"io:{os_name}.uart", ""))
    if uart is None or uart["kind"] != "uart":
        uarts = sorted(n for n, v in nodes.items() if v["kind"] == "uart")
        if not uarts:
            fail(f"the cluster has no uart for the console of {os_name}")
        uart = nodes[uarts[0]]
    if not uart["stats"].get("log"):
        fail(f"uart {uart['name']!r} does not report its log file (is it running? see `hwemu status`)")
    return node, uart


async def run_program(run_dir: Path, status: dict, os_node: dict, uart: dict, elf: bytes,
                      argv: list[str], out: BinaryIO, timeout: float | None = None,
                      stdin: bytes | None = None, info: dict | None = None,
                      forwards: list[tuple[str, int, int]] | None = None) -> dict[str, Any]:
    """Run one program on ``os_node`` and copy its console output to ``out``.

    ``forwards``: (nic node, host port, guest port) maps sent to the NIC
    (``nic_forward``) before the program starts.

    Returns the ``proc_exit`` body {pid, code, reason}.

    Raises:
        RemoteError: the OS refused the program (its reason in ``detail``).
        Lost: the cluster did not answer.
        trio.TooSlowError: ``timeout`` seconds passed before the program exited.
    """
    me = f"run-{os.getpid()}"
    directory = {n["name"]: n["endpoint"] for n in status["nodes"]}
    directory["orch"] = status["orchestrator"]["endpoint"]
    party = Party(me, f"ipc://{run_dir}/{me}.sock", directory, advertise=True, auth=client_auth(run_dir, me))
    exits: dict[int, dict] = {}
    arrived = trio.Event()
    log_path = Path(uart["stats"]["log"])

    async def handler(msg) -> None:
        nonlocal arrived
        if msg.kind == "proc_exit":
            exits[msg.body["pid"]] = msg.body
            arrived.set()
            arrived = trio.Event()

    def copy(f: BinaryIO, limit: int | None) -> int:
        n = 0
        while True:
            want = 1 << 16 if limit is None else min(1 << 16, limit - n)
            if want <= 0:
                return n
            chunk = f.read(want)
            if not chunk:
                return n
            out.write(chunk)
            out.flush()
            n += len(chunk)

    failed: BaseException | None = None
    pid = -1
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(party.serve, handler)
            try:
                for nic, host, guest in forwards or []:
                    try:
                        await party.request(nic, "nic_forward", {"guest_port": guest, "host_port": host}, timeout=20)
                    except RemoteError as exc:
                        raise ForwardRefused(f"{nic} refused {host}:{guest}: {exc.detail}") from None
                    except RequestTimeout as exc:
                        raise Lost(f"{nic} does not answer: {exc}") from None
                pid = await _exec_and_copy(party, os_node, uart, elf, argv, log_path, exits, lambda: arrived,
                                           copy, timeout, stdin, info if info is not None else {}, run_dir)
            except (RemoteError, Lost, trio.TooSlowError, ProtocolError, ForwardRefused) as exc:
                failed = exc  # raised outside the nursery, so not wrapped in an ExceptionGroup
            nursery.cancel_scope.cancel()
    finally:
        party.close()
    if failed is not None:
        raise failed
    return exits[pid]


KILLED_WITH_OS = 128 + signal.SIGKILL  # the program's OS crashed and was restarted: it died with it


async def _still_there(party: Party, os_node: dict, pid: int, incarnation: int | None,
                       run_dir: Path | None = None) -> dict[str, Any] | None:
    """The OS still runs ``pid`` (or has just ended it): None. The OS that ran it
    crashed and was restarted (a new incarnation answers), or the orchestrator
    stopped it (a VMM crash stops an OS whose context died with it): the program
    died with it, its exit (status 137, as a process killed with SIGKILL; a new
    life of the OS may already run another program with the same pid). Else
    :class:`Lost`."""
    os_name = os_node["name"]
    try:
        reply = await party.request(os_name, "os_ps", timeout=10)
    except (RequestTimeout, RemoteError) as exc:  # (a request to a process that died is lost with it)
        now = await _os_node(run_dir, os_name)
        if now is not None and now.get("state") != "running":
            why = "was stopped" if now.get("state") == "stopped" else f"crashed ({now.get('state')})"
            return {"pid": pid, "code": KILLED_WITH_OS, "reason": f"killed: {os_name} {why}"}
        if now is not None and os_node.get("pid") is not None and now.get("pid") != os_node["pid"]:
            return {"pid": pid, "code": KILLED_WITH_OS, "reason": f"killed: {os_name} crashed and was restarted"}
        raise Lost(f"{os_name} does not answer: {exc}") from None
    if incarnation is not None and reply.inc is not None and reply.inc != incarnation:
        return {"pid": pid, "code": KILLED_WITH_OS, "reason": f"killed: {os_name} crashed and was restarted"}
    ps = reply.body["data"]
    if not any(p["pid"] == pid for p in ps["procs"] + ps["exited"]):
        raise Lost(f"{os_name} no longer knows pid {pid} (was it restarted?)")
    return None


async def _os_node(run_dir: Path | None, os_name: str) -> dict[str, Any] | None:
    """The OS node as the orchestrator's status shows it now (None: it cannot say)."""
    if run_dir is None:
        return None
    try:
        status = await call(run_dir, "ctl_status", {}, 10)
    except (NotRunning, RemoteError, RequestTimeout, ProtocolError):
        return None
    return next((n for n in status["nodes"] if n["name"] == os_name), None)


async def _exec_and_copy(party: Party, os_node: dict, uart: dict, elf: bytes, argv: list[str], log_path: Path,
                         exits: dict[int, dict], arrived, copy, timeout: float | None,
                         stdin: bytes | None = None, info: dict | None = None, run_dir: Path | None = None) -> int:
    try:
        start = (await party.request(uart["name"], "uart_sync", timeout=10)).body["data"]["logged"]
        body: dict[str, Any] = {"elf": elf, "argv": argv, "notify": True}
        if stdin is not None:
            body["stdin"] = stdin
        reply = await party.request(os_node["name"], "os_exec", body, timeout=30)
    except RequestTimeout as exc:
        raise Lost(str(exc)) from None
    pid = reply.body["data"]["pid"]
    if info is not None:
        info["pid"] = pid
    with contextlib.ExitStack() as files:
        f = files.enter_context(open(log_path, "rb"))
        f.seek(start)
        pos = start

        def follow(f: BinaryIO, pos: int) -> tuple[BinaryIO, int]:
            """Copy what is new; if the UART began a new log (its ``log_max``), finish the
            old one and go on at the start of the new one."""
            pos += copy(f, None)
            try:
                rotated = os.stat(log_path).st_ino != os.fstat(f.fileno()).st_ino
            except FileNotFoundError:
                rotated = False
            if rotated:
                copy(f, None)
                f = files.enter_context(open(log_path, "rb"))
                pos = copy(f, None)
            return f, pos

        with trio.fail_after(timeout) if timeout else contextlib.nullcontext():
            next_check = trio.current_time() + CHECK_S
            while pid not in exits:
                f, pos = follow(f, pos)
                with trio.move_on_after(POLL_S):
                    await arrived().wait()
                if pid not in exits and trio.current_time() >= next_check:
                    gone = await _still_there(party, os_node, pid, reply.inc, run_dir)
                    if gone is not None:
                        exits[pid] = gone
                        break
                    next_check = trio.current_time() + CHECK_S
        try:
            logged = (await party.request(uart["name"], "uart_sync", timeout=10)).body["data"]["logged"]
        except RequestTimeout as exc:
            raise Lost(str(exc)) from None
        f, pos = follow(f, pos)
        copy(f, max(0, logged - pos))
    return pid


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, possibly wrapped in an exception group by a nursery."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None


def _stop_on_terminate() -> list[int]:
    """SIGTERM or SIGHUP (a supervisor, a closed terminal) stop the run as Ctrl-C does: the
    program is killed and a cluster we started goes down, so no guest keeps its ports.
    Python's default for them ends the process on the spot, leaving both behind.

    Returns:
        A list that receives the signal's number once one came (for the exit status).
    """
    came: list[int] = []

    def handler(signum, frame) -> None:
        if not came:
            came.append(signum)
            # trio turns a SIGINT into KeyboardInterrupt at a safe point (outside trio: Python does)
            os.kill(os.getpid(), signal.SIGINT)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)
    # a shell starts a background job with SIGINT ignored, which would swallow ours
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return came


def _kill(rd: Path, os_name: str, pid: int) -> None:
    """Ctrl-C: stop our program on a cluster we leave running (``os_kill``, SIGINT)."""
    try:
        trio.run(call, rd, "ctl_request", {"node": os_name, "kind": "os_kill", "body": {"pid": pid, "signal": 2}})
    except (RemoteError, RequestTimeout, ProtocolError, NotRunning):
        pass  # it ended meanwhile, or the cluster is gone


def _parse_forward(specs: list[str]) -> list[tuple[int, int]]:
    """``HOSTPORT:GUESTPORT`` (as QEMU's hostfwd) -> [(host_port, guest_port)]."""
    out = []
    for spec in specs:
        host, sep, guest = spec.partition(":")
        try:
            h, g = int(host), int(guest)
        except ValueError:
            h = g = -1
        if not sep or not 0 <= h <= 65535 or not 1 <= g <= 65535:
            fail(f"--forward {spec!r}: expected HOSTPORT:GUESTPORT (host 0..65535, guest 1..65535)")
        out.append((h, g))
    return out


def _forward(status: dict, os_name: str, forwards: list[tuple[int, int]]) -> list[tuple[str, int, int]]:
    """The OS's NIC (the node on ``io:<os>.nic``) with each (host port, guest
    port) map, for :func:`run_program` to send (``nic_forward``)."""
    nic = status["routes"]["routes"].get(f"io:{os_name}.nic")
    if nic is None:
        fail(f"--forward: {os_name} has no network card (no route io:{os_name}.nic)")
    return [(nic, host, guest) for host, guest in forwards]


EXAMPLES = [
    "hwemu run compose/native.toml guest/build/samples/hello.elf -- world",
    "printf 'one two\\nthree\\n' | hwemu run compose/native.toml guest/build/samples/wc.elf",
    "hwemu run compose/native.toml guest/build/samples/primes.elf --json",
    "hwemu run compose/io.toml guest/build/samples/kvstore.elf --forward 17000:7000 -- /dev/disk0 7000",
]


def _piped_stdin() -> bytes | None:
    """Our stdin if it is a pipe or a file (the program's input), else None (fd 0 reads the console)."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode):
        return sys.stdin.buffer.read()
    return None


def run(
    topology: Annotated[Path, typer.Argument(metavar="TOPOLOGY",
                                             help="Topology file (compose/*.toml); started if no cluster runs.")],
    program: Annotated[Path, typer.Argument(metavar="PROGRAM", help="The RV32 ELF program to run.")],
    args: Annotated[Optional[list[str]], typer.Argument(metavar="ARGS",
                                                        help="The program's arguments (after --).")] = None,
    os_name: Annotated[Optional[str], typer.Option("--os",
                                                   help="The OS node to run it on [default: the first].")] = None,
    stdin: Annotated[Optional[Path], typer.Option(
        "--stdin", help="Feed this file ('-': our stdin) to the program's fd 0, then EOF "
                        "[default: our stdin if it is a pipe or a file, else fd 0 reads the console].")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds (0: wait for the program).")] = 0.0,
    forward: Annotated[Optional[list[str]], typer.Option(
        "--forward", metavar="HOSTPORT:GUESTPORT",
        help="Forward UDP 127.0.0.1:HOSTPORT to the guest's port GUESTPORT (repeatable; the OS's NIC).")] = None,
    run_dir: RunDir = None,
    trace: trace_cli.TraceFile = None,
    json_out: Json = False,
) -> None:
    """Run a program on the cluster's OS: its console output on stdout, its exit status as ours.

    With --json: one JSON object {pid, code, reason, output} on stdout once it exits."""
    rd = run_dir_of(run_dir)
    trace_cli.check_file(trace)
    try:
        elf = program.read_bytes()
    except OSError as exc:
        fail(f"cannot read {program}: {exc.strerror or exc}", code=2)
    forwards = _parse_forward(forward or [])
    feed = None
    if stdin is not None:
        try:
            feed = sys.stdin.buffer.read() if str(stdin) == "-" else stdin.read_bytes()
        except OSError as exc:
            fail(f"cannot read {stdin}: {exc.strerror or exc}")
    else:
        feed = _piped_stdin()
    out = io.BytesIO() if json_out else sys.stdout.buffer
    started = False
    code = 1
    terminated = _stop_on_terminate()
    try:
        if not is_locked(rd):
            # exactly what `hwemu up --detach` does; its status report is not our output
            with contextlib.redirect_stdout(io.StringIO()):
                cluster.up(topology, detach=True, run_dir=rd, json_out=True)
            started = True
        status = _call(rd, "ctl_status")
        if trace is not None:
            trace_cli.start_for(rd)
        os_node, uart = _pick(status, os_name)
        nic_maps = _forward(status, os_node["name"], forwards) if forwards else None
        info: dict[str, Any] = {}
        try:
            result = trio.run(run_program, rd, status, os_node, uart, elf, [str(program), *(args or [])],
                              out, timeout or None, feed, info, nic_maps)
        except (KeyboardInterrupt, BaseExceptionGroup) as exc:
            if not _interrupted(exc):
                raise
            if not started and "pid" in info:  # the cluster stays: the program must not
                _kill(rd, os_node["name"], info["pid"])
            raise typer.Exit(128 + terminated[0] if terminated else 130) from None
        except RemoteError as exc:  # a bad ELF is bad input (2); anything else a failed run (1)
            fail(f"{os_node['name']} cannot run {program}: {exc.detail}", code=2 if exc.reason == "bad_elf" else 1)
        except Lost as exc:
            fail(f"the cluster in {rd} stopped answering: {exc}")
        except ForwardRefused as exc:
            fail(f"--forward: {exc}")
        except trio.TooSlowError:
            fail(f"{program} did not finish within {timeout:g} s")
        except ProtocolError as exc:
            fail(f"cannot reach the cluster in {rd}: {exc.detail}")
        code = result["code"]
        reason = result.get("reason") or "exit"
        if json_out:
            emit_json({"pid": result["pid"], "code": code, "reason": reason,
                       "output": out.getvalue().decode("utf-8", errors="replace")})
        elif reason != "exit":
            err_console.print(f"hwemu: pid {result['pid']} {reason}", soft_wrap=True)
    finally:
        if trace is not None and is_locked(rd):
            trace_cli.finish(rd, trace)
        if started:
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    cluster.down(run_dir=rd, timeout=5.0, json_out=True)
                except typer.Exit:
                    pass
    raise typer.Exit(code)
