"""The flow audit: no message lost or duplicated, proven from recorded history (DESIGN.md §6).

Every node numbers what it emits on a flow (``fseq`` 1, 2, ...) and every
receiver records the runs of ``fseq`` it accepted (``nodes/runtime.py``). A
flow's messages may have reached several receivers one after the other: the
OS, then the VMM after an interposition, then the OS again. The audit puts
the records of every receiver of the flow together and checks that they
cover ``1..sent`` exactly once: a number no receiver has is a lost message,
a number two receivers (or one, twice) have is a duplicate.

The records come from the running nodes (``stats``, after a ``route_drain``
has made each flow's current receiver consume up to what its sender reported)
and from the ``<run_dir>/<name>.flows.json`` that a stopped node left. A
node whose record is missing (killed with SIGKILL) is reported, never
guessed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

from protocol.errors import RemoteError, RequestTimeout
from protocol.routes import RouteTable

SHOWN = 5  # lost or duplicated fseq named per flow


def audit(histories: Mapping[str, Mapping[str, Any]], sent: Mapping[str, int] | None = None) -> dict[str, Any]:
    """Check every flow's deliveries against what was sent.

    Args:
        histories: node → ``{"flows_out": {flow: last fseq}, "flows_in": {flow: {"runs": [[a, b], ...],
            "runs_dropped": n}}}`` (``Node.flow_history()``).
        sent: flow → the number of messages to account for (default: what the histories' senders say).
            Messages numbered above it may have been sent after that count was taken; they must still
            not be duplicated.

    Returns:
        ``{"ok": bool, "flows": {flow: {"sent", "receivers", "lost_count", "lost", "duplicated_count",
        "duplicated"}}, "problems": [one line each]}`` (``lost``/``duplicated``: the first few fseq).
    """
    senders: dict[str, list[tuple[str, int]]] = {}
    for node, h in histories.items():
        for flow, n in (h.get("flows_out") or {}).items():
            senders.setdefault(flow, []).append((node, int(n)))
    runs: dict[str, list[tuple[int, int, str]]] = {}
    problems: list[str] = []
    for node, h in histories.items():
        for flow, rec in (h.get("flows_in") or {}).items():
            if rec.get("runs_dropped"):
                problems.append(f"{flow}: {node}'s history is incomplete ({rec['runs_dropped']} runs not recorded)")
            for a, b in rec.get("runs") or []:
                runs.setdefault(flow, []).append((int(a), int(b), node))
    flows: dict[str, Any] = {}
    for flow in sorted(set(senders) | set(runs)):
        who = senders.get(flow, [])
        if len(who) > 1:
            problems.append(f"{flow}: more than one sender ({', '.join(n for n, _ in who)})")
        if sent is not None and flow in sent:
            total = sent[flow]
        elif who:
            total = max(n for _, n in who)
        else:
            problems.append(f"{flow}: received, but no history of its sender")
            continue
        lost_n, lost, dup_n, dup = _coverage(sorted(runs.get(flow, [])), total)
        flows[flow] = {"sent": total, "lost_count": lost_n, "lost": lost, "duplicated_count": dup_n,
                       "duplicated": dup, "receivers": sorted({n for _, _, n in runs.get(flow, [])})}
        if lost_n:
            problems.append(f"{flow}: {lost_n} of {total} lost (first: {lost})")
        if dup_n:
            problems.append(f"{flow}: {dup_n} delivered twice (first: {dup})")
    return {"ok": not problems, "flows": flows, "problems": problems}


def _coverage(runs: list[tuple[int, int, str]], total: int) -> tuple[int, list[int], int, list[int]]:
    """Over sorted runs: how many fseq of 1..total no run covers, and how many are covered
    more than once, each with the first SHOWN of them."""
    lost_n, lost, dup_n, dup = 0, [], 0, []
    upto = 0  # everything in 1..upto is covered
    for a, b, _ in runs:
        if a <= upto:  # overlaps what is covered already
            hi = min(b, upto)
            dup_n += hi - a + 1
            dup.extend(range(a, min(hi, a + SHOWN - 1 - len(dup)) + 1) if len(dup) < SHOWN else ())
        elif a > upto + 1 and upto < total:
            hi = min(a - 1, total)
            lost_n += hi - upto
            lost.extend(range(upto + 1, min(hi, upto + SHOWN - len(lost)) + 1) if len(lost) < SHOWN else ())
        upto = max(upto, b)
    if upto < total:
        lost_n += total - upto
        lost.extend(range(upto + 1, min(total, upto + SHOWN - len(lost)) + 1) if len(lost) < SHOWN else ())
    return lost_n, lost, dup_n, dup


def with_gaps(flows_in: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The flows of one receiver's ``stats["flows_in"]`` that saw a gap: a message
    that arrived before one it follows. Without faults that is a defect (a route
    change that let a sender reach a receiver not ready for it, a message
    dropped on the way) even though the flow repairs it. Duplicates are not
    counted: a sender sends again what was not acknowledged within its timeout
    (on a loaded host, a reply can take longer), and the receiver drops the
    copy; whether anything was delivered twice is what :func:`audit` says."""
    return {f: v for f, v in flows_in.items() if v.get("gaps")}


Request = Callable[[str, str, dict], Awaitable[dict]]


async def collect(request: Request, status: Mapping[str, Any], run_dir: Path,
                  drain_timeout: float = 5.0) -> tuple[dict[str, Any], dict[str, int], list[str]]:
    """The histories of every node, and how much of each flow they must account for.

    ``request(node, kind, body)`` answers with the node's reply body. Each
    running sender's count is read first; then each flow's current receiver
    drains up to it (so nothing counted is merely in flight); then every
    running node's record is read. Stopped nodes contribute the file they left.

    Returns:
        (histories, sent, notes): notes name nodes whose history is missing.
    """
    alive = [n["name"] for n in status["nodes"] if n.get("alive")]
    table = RouteTable.from_wire(status["routes"])
    sent: dict[str, int] = {}
    for node in alive:
        for flow, n in (await request(node, "stats", {}))["stats"].get("flows_out", {}).items():
            sent[flow] = n
    upto: dict[str, dict[str, int]] = {}
    for flow, n in sent.items():
        receiver = table.get(flow)
        if n and receiver in alive:
            upto.setdefault(receiver, {})[flow] = n
    notes: list[str] = []
    for receiver, flows in upto.items():
        try:
            await request(receiver, "route_drain", {"upto": flows, "timeout": drain_timeout})
        except (RemoteError, RequestTimeout) as exc:
            notes.append(f"{receiver} did not drain {sorted(flows)}: {exc}")
    histories: dict[str, Any] = {}
    for node in alive:
        st = (await request(node, "stats", {}))["stats"]
        histories[node] = {"flows_out": st.get("flows_out", {}), "flows_in": st.get("flows_in", {})}
    for n in status["nodes"]:
        if n["name"] in histories:
            continue
        path = run_dir / f"{n['name']}.flows.json"
        try:
            histories[n["name"]] = json.loads(path.read_text())
        except FileNotFoundError:
            pass  # never ran, or killed: if it received anything, the audit says which flow lacks it
        except (OSError, ValueError) as exc:
            notes.append(f"{n['name']}: unreadable history {path}: {exc}")
    return histories, sent, notes
