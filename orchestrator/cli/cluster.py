"""`hwemu up`, `hwemu status`, `hwemu down`: a cluster's life cycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated

import trio
import typer
from rich.table import Table
from rich.text import Text

from orchestrator import swarm
from orchestrator.cli import watch
from orchestrator.cli.common import Json, RunDir, console, emit_json, fail, run_dir_of
from orchestrator.cli.fault import faults_table
from orchestrator.client import NotRunning, call
from orchestrator.daemon import is_locked, read_state
from orchestrator.errors import Lost
from orchestrator.supervisor import LAUNCHED, launched, record_launch
from orchestrator.topology import ORCHESTRATOR, TopologyError, load
from protocol.auth import check_private
from protocol.errors import RemoteError, RequestTimeout

UP_EXAMPLES = ["hwemu up compose/native.toml --detach", "hwemu up compose/flip.toml --detach --run-dir /tmp/flip",
               "hwemu up --engine swarm compose/native.toml --detach    # one Docker Swarm service per node",
               "hwemu up compose/io.toml    # in the foreground: Ctrl-C stops it"]
STATUS_EXAMPLES = ["hwemu status", "hwemu status --json", "hwemu status --run-dir /tmp/flip --timeout 2"]
DOWN_EXAMPLES = ["hwemu down", "hwemu down --timeout 1 --json"]


def _console(node: dict) -> str:
    """A UART's console: its TCP port on loopback (``hwemu console``, ``nc 127.0.0.1 PORT``)."""
    port = node.get("stats", {}).get("tcp_port")
    return f"tcp 127.0.0.1:{port}" if node["kind"] == "uart" and port else ""


def _status_table(data: dict) -> Table:
    table = Table(title=f"cluster {data['cluster']}  ({data['topology']}, routes epoch {data['routes']['epoch']})")
    for col in ("node", "kind", "pid", "state", "alive", "uptime s", "msgs in", "msgs out", "restarts", "console",
                "endpoint"):
        table.add_column(col, no_wrap=True,
                         justify="right" if col in ("pid", "uptime s", "msgs in", "msgs out", "restarts") else "left")
    o = data["orchestrator"]
    table.add_row("orch", "orchestrator", str(o["pid"]), o["state"], "yes", f"{o['uptime']:.1f}", "", "", "", "",
                  o["endpoint"])
    for n in data["nodes"]:
        state = n["state"]
        if state == "unresponsive":  # SIGSTOPped or hung: its last counters are stale
            state = Text.assemble(("unresponsive", "bold yellow"), f" (no heartbeat {n['silent_s']:.1f} s)")
        elif n["kind"] == "cpu" and isinstance(n["stats"].get("cpu_state"), str):
            state += f" / {n['stats']['cpu_state']}"
        refused = n["stats"].get("wrong_key", 0) + n["stats"].get("curve_refused", 0)
        if refused:  # across hosts: connections or messages refused by CURVE (docs/hosts.md)
            state += f" / {refused} refused"
        dropped = (n["stats"].get("rx_dropped") or {}).get("total") if n["kind"] == "nic" else None
        if dropped:
            state += f" / {dropped} dropped"  # received datagrams that never reached the guest
        table.add_row(n["name"], n["kind"], str(n["pid"]), state, "yes" if n["alive"] else Text("no", style="red"),
                      f"{n['uptime']:.1f}", str(n["msgs_in"]), str(n["msgs_out"]), str(n["restarts"]), _console(n),
                      n["endpoint"])
    return table


def _routes_table(routes: dict) -> Table:
    table = Table(title=f"routes (epoch {routes['epoch']})")
    table.add_column("flow")
    table.add_column("→ node")
    for flow, node in sorted(routes["routes"].items()):
        table.add_row(flow, node)
    return table


def _call(run_dir: Path, kind: str, body: dict | None = None, timeout: float = 10.0):
    try:
        return trio.run(call, run_dir, kind, body, timeout)
    except NotRunning as exc:
        fail(str(exc))
    except RemoteError as exc:
        fail(f"{exc.detail}")
    except RequestTimeout:
        fail(f"the orchestrator in {run_dir} does not answer within {timeout:g} s (is it hung? `hwemu down` kills it)")


def up(
    topology: Annotated[Path, typer.Argument(metavar="TOPOLOGY", help="Topology file (compose/*.toml).")],
    detach: Annotated[bool, typer.Option("--detach", "-d",
                                         help="Return once the cluster runs; stop it with `hwemu down`.")] = False,
    run_dir: RunDir = None,
    json_out: Json = False,
    engine: Annotated[str, typer.Option(
        help="local: the nodes are processes of this host; swarm: one Docker Swarm service per node, deployed "
             "with `docker stack deploy` (docs/swarm.md).")] = "local",
    image: Annotated[str, typer.Option(help="With --engine swarm: the nodes' image (`hwemu image build`).")]
    = swarm.DEFAULT_IMAGE,
) -> None:
    """Launch the cluster a topology describes and show its status."""
    rd = run_dir_of(run_dir)
    try:
        topo = load(topology)
        topo.check_run_dir(rd)
    except TopologyError as exc:
        fail(str(exc), code=2)
    if is_locked(rd):
        state = read_state(rd) or {}
        fail(f"a cluster is already running in {rd} (pid {state.get('pid', '?')}, topology "
             f"{state.get('topology', '?')}): run `hwemu down` first, or use another --run-dir")
    if rd.exists():  # its sockets, configs and keys give control of the cluster: private (0700, yours)
        try:
            check_private(rd)
        except OSError as exc:
            fail(str(exc), code=2)
    if engine not in ("local", "swarm"):
        fail(f"--engine must be local or swarm, not {engine!r}", code=2)
    if engine == "swarm":
        try:
            swarm.check_swarm(image)
        except swarm.DockerError as exc:
            fail(str(exc))
    log_path = rd / "orchestrator.log"
    try:
        rd.mkdir(mode=0o700, parents=True, exist_ok=True)
        log = open(log_path, "ab")
    except OSError as exc:
        fail(f"cannot create the run directory {rd}: {exc.strerror or exc}")
    before = log.tell()  # this start's part of the log: a failed start is explained by its own lines
    with log:
        daemon = subprocess.Popen(
            # on the orchestrator's host if the topology places it (docs/hosts.md)
            [*topo.placement().launcher(ORCHESTRATOR), sys.executable, "-m", "orchestrator.daemon",
             "--topology", str(topology.resolve()), "--run-dir", str(rd), "--engine", engine, "--image", image],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    record_launch(rd, "orch", daemon.pid)
    # a stack deploys, and its containers start, in seconds each
    deadline = time.monotonic() + topo.ready_timeout + 10 + (60 + 5 * len(topo.nodes) if engine == "swarm" else 0)
    while True:
        state = read_state(rd)
        if state and state.get("pid") == daemon.pid and state.get("state") == "running":
            break
        code = daemon.poll()
        if code is not None or time.monotonic() > deadline:
            if code is None:
                daemon.kill()
                daemon.wait()
            fail(_start_failure(log_path, before))
        time.sleep(0.05)
    data = _call(rd, "ctl_status")
    if json_out:
        emit_json(data)
    else:
        console.print(_status_table(data))
    if detach:
        return
    if not json_out:
        console.print(Text("running; Ctrl-C stops the cluster", style="dim"))
    try:
        daemon.wait()
    except KeyboardInterrupt:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()


def _start_failure(log_path: Path, offset: int) -> str:
    """The one line the daemon wrote about its failed start (``hwemu: ...``), else its log's last lines."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        lines = f.read().decode(errors="replace").strip().splitlines()
    said = [ln.removeprefix("hwemu: ") for ln in lines if ln.startswith("hwemu: ")]
    if said:
        return said[-1]
    return "cluster failed to start:\n" + "\n".join(lines[-20:])


def status(
    run_dir: RunDir = None,
    json_out: Json = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds to wait for the orchestrator's answer.")] = 10.0,
    watch_: Annotated[bool, typer.Option(
        "--watch", "-w", help="A live view refreshed every --interval seconds: rates, MIPS, device I/O, faults, "
                              "who controls what (Ctrl-C ends it).")] = False,
    interval: Annotated[float, typer.Option(min=0.2, help="Seconds between two refreshes of --watch.")] = 1.0,
    count: Annotated[int, typer.Option(min=0, help="With --watch: stop after this many refreshes (0: never).")] = 0,
) -> None:
    """Every node: kind, pid, state, alive, uptime, messages in/out; and the routes."""
    rd = run_dir_of(run_dir)
    if watch_:
        if json_out:
            fail("--watch and --json do not go together: `hwemu status --json` in a loop", code=2)
        try:
            watch.watch(rd, console, interval, count, timeout)
        except Lost as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            pass
        return
    data = _call(rd, "ctl_status", timeout=timeout)
    if json_out:
        emit_json(data)
        return
    console.print(_status_table(data))
    console.print(_routes_table(data["routes"]))
    if data.get("faults"):
        console.print(faults_table(data["faults"]))
    if data.get("virt"):
        console.print(_virt_table(data["virt"]))


def _virt_table(virt: dict) -> Table:
    """Who controls each resource: the OS itself (native) or the VMM."""
    v = virt["vmm"]
    table = Table(title="resources")
    table.add_column("resource", no_wrap=True)
    table.add_column("controlled by", no_wrap=True)
    table.add_row("vmm", f"loaded in {v['frames']} frames of {v['host']}" if v["loaded"] else "not loaded")
    table.add_row("policy", f"auto-devirtualize {'on' if virt['policy']['auto_devirtualize'] else 'off'}")
    for res, who in sorted(virt["resources"].items()):
        table.add_row(res, Text("vmm", style="bold") if who == "vmm" else who)
    for ln in virt["loans"]:
        table.add_row(f"{ln['count']} frames lent by {ln['from']}", f"{ln['to']} (loan {ln['id']})")
    return table


def _alive(pid: int) -> bool:
    """A zombie (exited; its parent, maybe a hung orchestrator, has not reaped it) is not alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True  # no /proc: trust the signal


TERM_GRACE = 2.0  # seconds between SIGTERM and SIGKILL in `hwemu down`


def _signal(pid: int, sig: int) -> bool:
    """Send ``sig``; False if the process was already gone."""
    try:
        os.kill(pid, sig)
        return True
    except ProcessLookupError:
        return False


def _wait_gone(pids, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_alive(p) for p in pids if p):
        time.sleep(0.05)


def _ours(pid: int, run_dir: Path) -> bool:
    """A pid of the state file written by an orchestrator that kept no launch record:
    ours only if its command line names our run directory (pids get reused)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return str(run_dir).encode() in cmdline


def _ancestors() -> set[int]:
    """This process and its ancestors: never ours to stop (a shell running `hwemu down; ...`)."""
    found, pid = set(), os.getpid()
    while pid > 1 and pid not in found:
        found.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def down(
    run_dir: RunDir = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a graceful stop before SIGKILL.")] = 5.0,
    json_out: Json = False,
) -> None:
    """Stop the cluster: shutdown messages, then SIGTERM, then SIGKILL; no process or socket left."""
    rd = run_dir_of(run_dir)
    state = read_state(rd)
    if state is None:
        _down_stack(rd)  # a swarm cluster whose orchestrator is gone: its stack still
        if json_out:
            emit_json({"stopped": [], "note": "no cluster running"})
        else:
            console.print(f"no cluster is running in {rd}")
        return
    try:
        trio.run(call, rd, "ctl_down", {"timeout": timeout}, timeout)
    except (NotRunning, RemoteError, RequestTimeout):
        pass  # fall through to signals
    pids = {"orch": state["pid"], **state.get("nodes", {})}
    # a swarm cluster's orchestrator removes its stack before it exits: seconds more
    _wait_gone(set(pids.values()) | set(launched(rd)), timeout + 2 + (30 if (rd / swarm.SWARM_FILE).exists() else 0))
    # still there (a hung orchestrator, a node it could not stop): SIGTERM lets
    # it clean up; whatever ignores that too gets SIGKILL. The launch record names
    # every process started for this cluster (a node restarted after the state file
    # was last written, or with the daemon killed, too): end those, by pid, and
    # nothing else (never a process that merely names the run directory)
    record = launched(rd)
    left = {name: pid for pid, name in record.items() if _alive(pid)}
    if not record:  # a cluster started before launches were recorded
        left = {name: pid for name, pid in pids.items() if pid and _alive(pid) and _ours(pid, rd)}
    spared = _ancestors()
    left = {name: pid for name, pid in left.items() if pid not in spared}
    terminated = [name for name, pid in left.items() if _signal(pid, signal.SIGTERM)]
    _wait_gone(left.values(), TERM_GRACE)
    killed = [name for name, pid in left.items() if _alive(pid) and _signal(pid, signal.SIGKILL)]
    _down_stack(rd)
    for sock in rd.glob("*.sock"):
        sock.unlink(missing_ok=True)
    (rd / "cluster.json").unlink(missing_ok=True)
    (rd / LAUNCHED).unlink(missing_ok=True)
    if json_out:
        emit_json({"stopped": sorted(pids), "terminated": terminated, "killed": killed})
    else:
        notes = [f"{', '.join(names)} needed {sig}" for names, sig in ((terminated, "SIGTERM"), (killed, "SIGKILL"))
                 if names]
        console.print(f"stopped {len(pids)} processes" + (f" ({'; '.join(notes)})" if notes else ""))


def _down_stack(rd: Path) -> None:
    """A swarm cluster's stack, if its orchestrator did not remove it: no service, container or secret left."""
    try:
        swarm.down(rd)
    except swarm.DockerError as exc:
        fail(str(exc))
