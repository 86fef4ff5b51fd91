"""`hwemu fault ...`: start, list and clear nemeses on a running cluster
(issue 14 part 2; the orchestrator side is :mod:`orchestrator.faults`, whose
docstring is the control API these commands use).

Every command prints one line per fault (``--json``: one JSON object). A bad
argument (a probability outside [0, 1], an unknown node or flow, a node of the
wrong kind) exits 2 with one line; a fault a node could not apply exits 1.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import trio
import typer
from rich.table import Table

from orchestrator.cli.common import Json, RunDir, command, console, emit_json, fail, new_app, run_dir_of
from orchestrator.client import NotRunning, call
from protocol.errors import RemoteError, RequestTimeout

app = new_app("Inject faults (nemeses) into a running cluster; list and clear them.",
              ["hwemu fault kill disk0", "hwemu fault flow io:os1.disk --drop 0.1 --for 5", "hwemu fault list"])

For = Annotated[Optional[float], typer.Option("--for", help="Clear the fault by itself after S seconds.",
                                              metavar="S")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Seed of the fault's random choices "
                                                            "(default: drawn, and shown by `hwemu fault list`).")]
Prob = Annotated[float, typer.Option(metavar="P", help="Probability in [0, 1].")]

BAD_INPUT = ("bad_fault",)  # the orchestrator's reasons that mean "your arguments", exit 2


def _call(run_dir: Path, kind: str, body: dict[str, Any] | None = None, timeout: float = 15.0) -> Any:
    try:
        return trio.run(call, run_dir, kind, body, timeout)
    except NotRunning as exc:
        fail(str(exc))
    except RemoteError as exc:
        # error_body puts "reason [field]: " in front: the sentence alone is the line a person reads
        detail = re.sub(rf"^{re.escape(exc.reason)}( \[[^\]]*\])?: ", "", exc.detail)
        fail(detail, code=2 if exc.reason in BAD_INPUT else 1)
    except RequestTimeout:
        fail(f"the orchestrator in {run_dir} does not answer within {timeout:g} s")


def describe(fault: dict[str, Any]) -> str:
    """One line a person reads: what the fault does and to whom."""
    spec = fault["spec"]
    t = fault["type"]
    if t in ("kill", "pause"):
        what = f"{t} {spec['node']}" + (f" (pid {fault['pid']})" if fault.get("pid") else "")
    elif t == "partition":
        arrow = "→" if spec["oneway"] else "↔"
        what = f"partition {','.join(spec['nodes'])} {arrow} {','.join(spec['from'])}"
    elif t == "flow":
        parts = [f"{k} {spec[k]:g}" for k in ("drop", "dup", "reorder", "corrupt") if spec[k]]
        if spec["delay_ms"]:
            parts.append(f"delay {spec['delay_ms']:g}" + (f"±{spec['jitter_ms']:g}" if spec["jitter_ms"] else "")
                         + " ms")
        what = f"flow {','.join(spec['flows'])}: {', '.join(parts)}"
    elif t == "disk":
        parts = [f"{k} {spec[k]:g}" for k in ("eio", "torn_write", "fsync_fail") if spec[k]]
        if spec.get("latency_ms"):
            parts.append(f"latency {spec['latency_ms']:g} ms")
        what = f"disk {spec['node']}: {', '.join(parts)}"
    else:
        what = f"clock {spec['node']}: skew {spec['skew_ms']:+g} ms"
    if fault.get("ends") is not None and "for_s" in spec:
        what += f", for {spec['for_s']:g} s"
    return what


def faults_table(faults: list[dict[str, Any]]) -> Table:
    """The active faults (also part of `hwemu status`)."""
    table = Table(title="active faults")
    for col in ("id", "fault", "seed", "targets", "ends in s"):
        table.add_column(col, no_wrap=col != "fault")
    now = time.time()
    for f in faults:
        ends = f"{max(0.0, f['ends'] - now):.1f}" if f.get("ends") else "at clear"
        table.add_row(f["id"], describe(f), str(f["seed"]), ", ".join(f["targets"]), ends)
    return table


def _add(run_dir: Path | None, json_out: bool, spec: dict[str, Any]) -> None:
    spec = {k: v for k, v in spec.items() if v is not None}
    data = _call(run_dir_of(run_dir), "ctl_fault_add", {"spec": spec})
    if json_out:
        emit_json(data)
        return
    fault = data["fault"]
    verb = "done" if fault["type"] == "kill" else "active"
    console.print(f"fault {data['id']} {verb}: {describe(fault)} (seed {fault['seed']})", highlight=False)


def _list_of(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@command(app, "kill", ["hwemu fault kill disk0"])
def kill(node: Annotated[str, typer.Argument(help="The node to SIGKILL (its supervisor restarts it per policy).")],
         run_dir: RunDir = None, json_out: Json = False) -> None:
    """SIGKILL a node's process; the supervisor restarts it per its `restart` policy."""
    _add(run_dir, json_out, {"type": "kill", "node": node})


@command(app, "pause", ["hwemu fault pause cpu0 --for 5"])
def pause(node: Annotated[str, typer.Argument(help="The node to SIGSTOP.")],
          for_s: For = None, run_dir: RunDir = None, json_out: Json = False) -> None:
    """SIGSTOP a node; SIGCONT after --for, or at `hwemu fault clear`."""
    _add(run_dir, json_out, {"type": "pause", "node": node, "for_s": for_s})


@command(app, "partition", ["hwemu fault partition os1,cpu0 --from memctl --for 3"])
def partition(
    nodes: Annotated[str, typer.Argument(help="One side: comma-separated node names (A,B).")],
    from_: Annotated[str, typer.Option("--from", help="The other side: comma-separated node names (C,D).")],
    oneway: Annotated[bool, typer.Option("--oneway", help="Drop only what the first side sends to the other.")] = False,
    for_s: For = None, seed: Seed = None, run_dir: RunDir = None, json_out: Json = False,
) -> None:
    """Cut the nodes of one side off from the other (each sender drops what it sends across)."""
    _add(run_dir, json_out, {"type": "partition", "nodes": _list_of(nodes), "from": _list_of(from_),
                             "oneway": oneway, "for_s": for_s, "seed": seed})


def _delay(value: str | None) -> tuple[float | None, float | None]:
    if value is None:
        return None, None
    ms, _, jitter = value.partition(":")
    try:
        return float(ms), float(jitter) if jitter else None
    except ValueError:
        fail(f"--delay must be MS or MS:JITTER (milliseconds), got {value!r}", code=2)


@command(app, "flow", ["hwemu fault flow io:os1.disk --drop 0.1 --dup 0.05 --delay 2:1 --for 10 --seed 7"])
def flow(
    flows: Annotated[str, typer.Argument(help="The flow(s), comma-separated (see `hwemu route show`).")],
    drop: Prob = 0.0, dup: Prob = 0.0, reorder: Prob = 0.0, corrupt: Prob = 0.0,
    delay: Annotated[Optional[str], typer.Option(metavar="MS[:JITTER]", help="Delay each message MS ms "
                                                 "(± JITTER ms).")] = None,
    for_s: For = None, seed: Seed = None, run_dir: RunDir = None, json_out: Json = False,
) -> None:
    """Drop, duplicate, delay, reorder or corrupt what a flow's sender sends (its transport does it)."""
    delay_ms, jitter_ms = _delay(delay)
    _add(run_dir, json_out, {"type": "flow", "flows": _list_of(flows), "drop": drop, "dup": dup,
                             "reorder": reorder, "corrupt": corrupt, "delay_ms": delay_ms, "jitter_ms": jitter_ms,
                             "for_s": for_s, "seed": seed})


@command(app, "disk", ["hwemu fault disk disk0 --eio 0.2 --torn-write 0.1"])
def disk(
    node: Annotated[str, typer.Argument(help="A disk node.")],
    eio: Prob = 0.0,
    torn_write: Annotated[float, typer.Option("--torn-write", metavar="P",
                                              help="Probability a write lands partly, then fails with EIO.")] = 0.0,
    fsync_fail: Annotated[float, typer.Option("--fsync-fail", metavar="P",
                                              help="Probability an fdatasync fails (the command gets EIO).")] = 0.0,
    latency: Annotated[float, typer.Option("--latency", metavar="MS",
                                           help="Every command waits this long before it runs (a slow disk).")] = 0.0,
    for_s: For = None, seed: Seed = None, run_dir: RunDir = None, json_out: Json = False,
) -> None:
    """Make a disk fail commands with EIO, tear writes, fail its syncs, or slow it down."""
    _add(run_dir, json_out, {"type": "disk", "node": node, "eio": eio, "torn_write": torn_write,
                             "fsync_fail": fsync_fail, "latency_ms": latency, "for_s": for_s, "seed": seed})


@command(app, "clock", ["hwemu fault clock timer0 --skew 60000"])
def clock(
    node: Annotated[str, typer.Argument(help="A timer node.")],
    skew: Annotated[float, typer.Option("--skew", metavar="MS", help="Milliseconds added to the wall clock "
                                                                    "it reports (negative: behind).")],
    for_s: For = None, run_dir: RunDir = None, json_out: Json = False,
) -> None:
    """Skew the wall clock a timer node reports (and so the guests' CLOCK_REALTIME)."""
    _add(run_dir, json_out, {"type": "clock", "node": node, "skew_ms": skew, "for_s": for_s})


@command(app, "list", ["hwemu fault list", "hwemu fault list --json"])
def list_(run_dir: RunDir = None, json_out: Json = False) -> None:
    """The active faults: id, what, seed, targets, time left."""
    data = _call(run_dir_of(run_dir), "ctl_fault_list")
    if json_out:
        emit_json(data)
    elif not data["faults"]:
        console.print("no active faults")
    else:
        console.print(faults_table(data["faults"]))


@command(app, "clear", ["hwemu fault clear f3", "hwemu fault clear --all"])
def clear(
    fault_id: Annotated[Optional[str], typer.Argument(metavar="[ID]", help="The fault to clear (`hwemu fault list`).")]
    = None,
    all_: Annotated[bool, typer.Option("--all", help="Clear every active fault.")] = False,
    run_dir: RunDir = None, json_out: Json = False,
) -> None:
    """Clear one fault (ID) or every one (--all): paused nodes continue, injections stop."""
    if (fault_id is None) == (not all_):
        fail("give a fault ID or --all (not both)" if all_ else "give a fault ID or --all", code=2)
    data = _call(run_dir_of(run_dir), "ctl_fault_clear", {"id": fault_id})
    if json_out:
        emit_json(data)
    else:
        console.print(f"cleared {', '.join(data['cleared']) or 'nothing (no active faults)'}")
