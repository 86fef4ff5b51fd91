"""`hwemu status --watch`: the cluster as a live view, refreshed every second.

Each refresh asks the orchestrator for its status (``ctl_status``) and shows,
from the difference to the previous answer: every node's state, messages in
and out per second, restarts, the CPU's MIPS, each device's I/O rate (disk
operations and blocks, datagrams of each NIC port, console bytes, timer
ticks), the active faults the orchestrator reports, and who controls each
resource (the OS itself or the VMM, from the route table the choreographies
changed). On a terminal it is a rich ``Live`` view (Ctrl-C ends it); piped,
each refresh is printed after the previous one, like ``top -b``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from orchestrator.client import NotRunning, call
from orchestrator.errors import Lost
from protocol.errors import RemoteError, RequestTimeout


def _per_s(cur: dict, prev: dict | None, key: str, dt: float) -> float | None:
    if prev is None or dt <= 0 or not isinstance(cur.get(key), (int, float)):
        return None
    return max(0.0, (cur[key] - prev.get(key, 0)) / dt)


def _rate(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


def device_io(node: dict[str, Any], prev: dict[str, Any] | None, dt: float) -> str:
    """One node's I/O over the last refresh, in words (its kind's own counters)."""
    s, p = node["stats"], (prev or {}).get("stats")
    kind = node["kind"]
    if kind == "cpu":
        return f"{s.get('mips', 0):.2f} MIPS, {s.get('cpu_state', '?')}"
    if p is None:
        return ""
    parts = []
    if kind == "disk":
        ops = sum(filter(None, (_per_s(s, p, k, dt) for k in ("reads", "writes"))))
        blocks = sum(filter(None, (_per_s(s, p, k, dt) for k in ("blocks_read", "blocks_written"))))
        parts.append(f"{_rate(ops)} ops/s, {_rate(blocks)} blocks/s")
    elif kind == "nic":
        for port, view in sorted(s.get("ports", {}).items()):
            old = p.get("ports", {}).get(port, {})
            rx, tx = _per_s(view, old, "rx", dt), _per_s(view, old, "tx", dt)
            parts.append(f"port {port}: rx {_rate(rx)}/s tx {_rate(tx)}/s")
    elif kind == "uart":
        parts.append(f"out {_rate(_per_s(s, p, 'bytes_out', dt))} B/s, in {_rate(_per_s(s, p, 'bytes_in', dt))} B/s")
    elif kind == "timer":
        parts.append(f"{_rate(_per_s(s, p, 'ticks', dt))} ticks/s")
    return "; ".join(parts)


def render(data: dict[str, Any], prev: dict[str, Any] | None, dt: float) -> Group:
    """The view of one status answer (``prev``: the one before, ``dt`` seconds earlier)."""
    before = {n["name"]: n for n in (prev or {}).get("nodes", [])}
    nodes = Table(title=f"cluster {data['cluster']}  (routes epoch {data['routes']['epoch']})  "
                        f"{time.strftime('%H:%M:%S')}", expand=False)
    for col in ("node", "kind", "state", "msgs in/s", "msgs out/s", "restarts", "I/O"):
        nodes.add_column(col, no_wrap=True, justify="right" if "/s" in col or col == "restarts" else "left")
    o = data["orchestrator"]
    nodes.add_row("orch", "orchestrator", o["state"], "", "", "", "")
    for n in data["nodes"]:
        old = before.get(n["name"])
        if old is not None and old.get("pid") != n.get("pid"):
            old = None  # restarted: its counters started over
        state = n["state"] if n["alive"] else Text(f"{n['state']} (not alive)", style="red")
        if n.get("unresponsive"):
            state = Text(f"{n['state']} (unresponsive)", style="yellow")
        nodes.add_row(n["name"], n["kind"], state, _rate(_per_s(n, old, "msgs_in", dt)),
                      _rate(_per_s(n, old, "msgs_out", dt)), str(n["restarts"]), device_io(n, old, dt))
    parts: list[Any] = [nodes]
    faults = data.get("faults") or []
    ft = Table(title="active faults")
    for col in ("id", "type", "targets", "ends in s", "detail"):
        ft.add_column(col)
    now = time.time()
    for f in faults:  # as the orchestrator's fault manager lists them (ctl_fault_list)
        targets = f.get("targets") or []
        ends = f"{max(0.0, f['ends'] - now):.1f}" if isinstance(f.get("ends"), (int, float)) else "at clear"
        rest = {k: v for k, v in f.items() if k not in ("id", "type", "targets", "ends")}
        ft.add_row(str(f.get("id", "")), str(f.get("type", "")), ", ".join(map(str, targets)), ends,
                   ", ".join(f"{k}={v}" for k, v in rest.items()))
    parts.append(ft if faults else Text("active faults: none reported"))
    virt = data.get("virt")
    if virt:
        rt = Table(title="who controls each resource")
        rt.add_column("resource", no_wrap=True)
        rt.add_column("controlled by", no_wrap=True)
        v = virt["vmm"]
        rt.add_row("vmm", f"loaded in {v['frames']} frames of {v['host']}" if v["loaded"] else "not loaded")
        for res, who in sorted(virt["resources"].items()):
            rt.add_row(res, Text("VMM", style="bold magenta") if who == "vmm" else f"OS ({who})")
        for ln in virt.get("loans", []):
            rt.add_row(f"{ln['count']} frames lent by {ln['from']}", f"{ln['to']} (loan {ln['id']})")
        parts.append(rt)
    return Group(*parts)


def _status(run_dir: Path, timeout: float) -> dict[str, Any]:
    try:
        return trio.run(call, run_dir, "ctl_status", {}, timeout)
    except NotRunning as exc:
        raise Lost(str(exc)) from None
    except (RemoteError, RequestTimeout) as exc:
        raise Lost(f"the orchestrator in {run_dir} does not answer: {exc}") from None


def watch(run_dir: Path, console: Console, interval: float = 1.0, count: int = 0, timeout: float = 10.0) -> None:
    """Refresh every ``interval`` seconds until Ctrl-C (or ``count`` refreshes, if not 0).

    Raises:
        Lost: the cluster stopped (or never ran).
    """
    prev, t_prev = None, 0.0
    shown = 0

    def frame() -> Group:
        nonlocal prev, t_prev
        data = _status(run_dir, timeout)
        now = time.monotonic()
        view = render(data, prev, now - t_prev)
        prev, t_prev = data, now
        return view

    if not console.is_terminal:
        while True:
            console.print(frame())
            shown += 1
            if count and shown >= count:
                return
            time.sleep(interval)
    with Live(frame(), console=console, auto_refresh=False) as live:
        shown = 1
        while not count or shown < count:
            time.sleep(interval)
            live.update(frame(), refresh=True)
            shown += 1
