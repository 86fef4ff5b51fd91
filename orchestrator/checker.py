"""The history checker: re-checks a recorded fault-injection run offline (Jepsen's way).

Input: the JSON-lines history files of a run (``<run_dir>/history/<node>.jsonl``
from every node, see ``nodes/recorder.py``, plus ``chaos.jsonl`` written by
``hwemu chaos``: its client requests and replies, guest program exits, the
disk images read back at the end). Every event is one object with ``t``
(``CLOCK_MONOTONIC`` ns, one clock for all the processes of one host),
``node``, ``cat``, ``ev`` and its fields. The checker is pure: it reads
files, nothing else, so any stored history can be checked again.

What it checks, each violation naming the flow and ``fseq``, frame, block or
request, and the history file and line of the event that shows it:

- **flows** — every message a sender numbered on a flow is delivered exactly
  once and in order, across restarts of either side (a node's *lives* are
  delimited by its ``node start`` events) and route changes (deliveries by
  several receivers are merged by time). A sender's life numbers its flows
  from 1; a delivery belongs to the sender's life named by its ``inc`` field,
  else to the latest life of the sender that sent that ``fseq`` before it
  was delivered. *Lost*: an ``fseq`` never delivered while a later one was,
  or acknowledged (``flow acked``) and never delivered; only a tail of
  unacknowledged messages may be missing, and only if it was in flight when
  its sender or receiver died, or sent in the last ``TAIL_S`` seconds of its
  sender's life (the run stopped). *Duplicate*: delivered twice to one life of
  a receiver, or again after it was acknowledged. *Reordered*: delivered
  after a later ``fseq`` of the same sender life.
- **disk** — every acknowledged write (``disk write_acked``) is what the
  image holds at the end (``disk final``, per-block CRC-32), unless a write
  begun later (``disk write``) covered the block.
- **frames** — every frame has exactly one owner in each snapshot memctl
  records at a start (``frame owners``), a restarted memctl finds the
  ownership the history left, and every change (``frame owner``) moves a
  frame from the owner it had; no frame is granted (``frame grant``) into the
  address space of an OS that does not own it.
- **key-value store** — the client's replies (``client request``/``reply``/
  ``timeout``) are linearizable against a model of guest/samples/kvstore.c.
  The chaos client is sequential (one request outstanding), so each answered
  request has one linearization point between its send and its reply; a
  request that got no reply, or an ``ERR`` reply, is *indeterminate*: its
  effect may take place at any later moment or never (Knossos keeps the same
  set of possible states). The check is per key (linearizability is local);
  ``COUNT`` is checked against the range of counts the per-key states allow,
  which can miss a violation that only a joint state would show, never
  report a false one.
- **UDP echo** — every reply is the bytes of a request the client sent
  (by CRC-32 and size), and no request is echoed twice (UDP may lose).
- **the run** — a scenario step that failed (``scenario check``), a killed
  node that was not running again in time (``fault not_recovered``).
- **guest outputs** — every program (``guest exit``) exited 0 with exactly
  the fault-free run's bytes, or was killed by the schedule and ended with
  the documented status (``killed_status``) and a prefix of those bytes.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from orchestrator.errors import HistoryError

TAIL_S = 2.0  # a sender's last messages may still have been in flight when the run stopped
MAX_CONFIGS = 20000  # key-value states kept per key before the check gives up on that key (said so)
SYSTEM_OWNERS = frozenset({"free", "vmm", "firmware"})  # memctl's non-OS owners (nodes/memctl/directory.py)


@dataclass
class Violation:
    """One broken guarantee."""

    check: str  # flow | disk | frame | kv | output | history
    what: str  # lost | duplicate | reordered | ...
    detail: str
    where: str  # file:line of the event that shows it
    subject: dict[str, Any] = field(default_factory=dict)  # flow/fseq, frame, block, request...

    def text(self) -> str:
        return f"{self.check}: {self.what}: {self.detail} ({self.where})"

    def to_json(self) -> dict[str, Any]:
        return {"check": self.check, "what": self.what, "detail": self.detail, "where": self.where, **self.subject}


@dataclass
class Report:
    """The verdict: every violation and what was checked."""

    violations: list[Violation] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def add(self, check: str, what: str, detail: str, ev: dict[str, Any] | None, **subject: Any) -> None:
        self.violations.append(Violation(check, what, detail, _where(ev), subject))

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "violations": len(self.violations),
                "details": [v.to_json() for v in self.violations], "checked": self.checked,
                "notes": self.notes, "files": self.files}


def _where(ev: dict[str, Any] | None) -> str:
    return f"{ev['_file']}:{ev['_line']}" if ev else "?"


# -- reading ------------------------------------------------------------------------------


def history_files(path: str | Path) -> list[Path]:
    """The history files at ``path`` (a ``.jsonl`` file, or a directory of them)."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(p.glob("*.jsonl"))
        if not files:
            raise HistoryError(f"{p}: no history files (*.jsonl) in this directory")
        return files
    raise HistoryError(f"{p}: no such history file or directory")


def load(paths: Iterable[str | Path], report: Report) -> list[dict[str, Any]]:
    """Every event of ``paths``, in time order, each with ``_file``, ``_line`` and ``_life``.

    A line that is not a JSON event is a violation (a history that cannot be
    read proves nothing), not a crash.
    """
    events: list[dict[str, Any]] = []
    for path in paths:
        report.files.append(str(path))
        lives: dict[str, int] = {}
        try:
            text = Path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise HistoryError(f"{path}: cannot read: {exc.strerror or exc}") from None
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            loc = {"_file": Path(path).name, "_line": n}
            try:
                ev = json.loads(line)
                if not isinstance(ev, dict) or not isinstance(ev.get("t"), int) or "cat" not in ev or "ev" not in ev:
                    raise ValueError("not an event")
            except ValueError:
                report.add("history", "unreadable", f"line is not a history event: {line[:80]!r}", loc)
                continue
            ev.update(loc)
            node = ev.get("node", "?")
            if (ev["cat"], ev["ev"]) == ("node", "start"):
                lives[node] = lives.get(node, 0) + 1
            ev["_life"] = (node, lives.get(node, 0))
            events.append(ev)
    events.sort(key=lambda e: e["t"])  # stable: one file's order is kept for equal stamps
    return events


# -- flows --------------------------------------------------------------------------------


class _Life:
    __slots__ = ("node", "n", "inc", "start", "end", "killed", "start_ev")

    def __init__(self, node: str, n: int):
        self.node, self.n = node, n
        self.inc = None
        self.start = self.end = 0
        self.killed = True  # until its "node stop" is seen
        self.start_ev = None


def _lives(events: list[dict[str, Any]]) -> dict[tuple[str, int], _Life]:
    lives: dict[tuple[str, int], _Life] = {}
    for ev in events:
        key = ev["_life"]
        life = lives.get(key)
        if life is None:
            life = lives[key] = _Life(*key)
            life.start = ev["t"]
        life.end = ev["t"]
        if ev["cat"] == "node":
            if ev["ev"] == "start":
                life.inc, life.start, life.start_ev = ev.get("inc"), ev["t"], ev
            elif ev["ev"] == "stop":
                life.killed = False
    return lives


def check_flows(events: list[dict[str, Any]], report: Report) -> None:
    lives = _lives(events)
    by_inc = {(lf.node, lf.inc): key for key, lf in lives.items() if lf.inc is not None}
    # (flow, sender life) -> fseq -> sent event; acked upto with its event
    sent: dict[tuple[str, tuple], dict[int, dict]] = {}
    acked: dict[tuple[str, tuple], list[tuple[int, int]]] = {}  # [(t, upto)]
    abandoned: dict[tuple[str, tuple], list[tuple[int, int]]] = {}  # [(t, upto)]
    sent_by_flow_fseq: dict[tuple[str, str, int], list[dict]] = {}
    deliveries: list[dict] = []
    for ev in events:
        cat, name = ev["cat"], ev["ev"]
        if cat != "flow":
            continue
        if name == "sent":
            key = (ev["flow"], ev["_life"])
            sent.setdefault(key, {}).setdefault(ev["fseq"], ev)  # a retransmission is not a new send
            sent_by_flow_fseq.setdefault((ev["flow"], ev["node"], ev["fseq"]), []).append(ev)
        elif name == "retransmit":
            pass
        elif name == "acked":
            acked.setdefault((ev["flow"], ev["_life"]), []).append((ev["t"], ev["upto"]))
        elif name == "abandoned":  # its receiver died: the tail up to ``upto`` was given up, delivered to nobody
            abandoned.setdefault((ev["flow"], ev["_life"]), []).append((ev["t"], ev["upto"]))
        elif name == "deliver":
            deliveries.append(ev)

    def sender_life(ev: dict) -> tuple:
        src = ev.get("src", "?")
        inc = ev.get("inc")
        if inc is not None and (src, inc) in by_inc:
            return by_inc[(src, inc)]
        cands = [s for s in sent_by_flow_fseq.get((ev["flow"], src, ev["fseq"]), ()) if s["t"] <= ev["t"]]
        if cands:
            return cands[-1]["_life"]
        return (f"{src}?", 0)  # a sender with no history (or before it recorded)

    # per (flow, sender life): the ack times and the highest upto acknowledged by each, for bisection
    ack_index: dict[tuple, tuple[list[int], list[int]]] = {}
    for key, acks in acked.items():
        times, best, top = [], [], 0
        for at, upto in acks:  # in time order (the events are)
            top = max(top, upto)
            times.append(at)
            best.append(top)
        ack_index[key] = (times, best)

    def acked_upto(key: tuple, t: int) -> int:
        times, best = ack_index.get(key, ((), ()))
        i = bisect.bisect_right(times, t)
        return best[i - 1] if i else 0

    per: dict[tuple, list[dict]] = {}
    for ev in deliveries:
        per.setdefault((ev["flow"], sender_life(ev)), []).append(ev)
    report.checked["flow_messages_delivered"] = len(deliveries)
    report.checked["flow_messages_sent"] = sum(len(v) for v in sent.values())
    keys = set(per) | set(sent)
    report.checked["flows"] = len({k[0] for k in keys})
    for key in sorted(keys, key=repr):
        flow, slife = key
        seen: dict[int, dict] = {}  # fseq -> its first delivery
        seen_in_life: set[tuple[tuple, int]] = set()
        highest = 0
        for ev in per.get(key, ()):
            fseq, rlife = ev["fseq"], ev["_life"]
            subject = {"flow": flow, "fseq": fseq, "sender": f"{slife[0]}#{slife[1]}"}
            if (rlife, fseq) in seen_in_life:
                report.add("flow", "duplicate", f"{flow} #{fseq} delivered twice to {rlife[0]} "
                           f"(first at {_where(seen[fseq])})", ev, **subject)
                continue
            if fseq in seen and fseq <= acked_upto(key, ev["t"]):
                report.add("flow", "duplicate", f"{flow} #{fseq} delivered again after it was acknowledged "
                           f"(first at {_where(seen[fseq])})", ev, **subject)
                continue
            if fseq < highest and fseq not in seen:
                report.add("flow", "reordered", f"{flow} #{fseq} delivered after #{highest}", ev, **subject)
            seen_in_life.add((rlife, fseq))
            seen.setdefault(fseq, ev)
            highest = max(highest, fseq)
        numbered = sent.get(key, {})
        if not numbered:
            continue
        life = lives.get(slife)
        last_sent = max(numbered)
        for fseq in sorted(set(numbered) - set(seen)):
            sev = numbered[fseq]
            subject = {"flow": flow, "fseq": fseq, "sender": f"{slife[0]}#{slife[1]}"}
            given_up = any(at >= sev["t"] and upto >= fseq for at, upto in abandoned.get(key, ()))
            if given_up:  # its receiver died with it (a later life of the receiver starts after it)
                if not _in_flight_at_death(sev, life, lives):
                    report.add("flow", "lost", f"{flow} #{fseq} given up by {slife[0]} (abandoned), but "
                               f"{sev.get('dst')} did not die after it was sent", sev, **subject)
            elif fseq <= acked_upto(key, 1 << 62):
                report.add("flow", "lost", f"{flow} #{fseq} acknowledged to {slife[0]} but never delivered",
                           sev, **subject)
            elif fseq < highest:
                report.add("flow", "lost", f"{flow} #{fseq} never delivered, #{highest} was", sev, **subject)
            elif not _in_flight_at_death(sev, life, lives):
                report.add("flow", "lost", f"{flow} #{fseq} (of {last_sent}) never delivered, and neither its "
                           f"sender nor {sev.get('dst')} died after it was sent", sev, **subject)


def _in_flight_at_death(sev: dict, life: _Life | None, lives: dict[tuple[str, int], _Life]) -> bool:
    """May the unacknowledged tail message ``sev`` have been lost with a dying party?"""
    if life is None or life.killed:
        return True
    if life.end - sev["t"] <= TAIL_S * 1e9:
        return True
    # the receiver's life that was current when it was sent (or already dead, not yet restarted) was killed
    dst = sev.get("dst")
    current = [lf for lf in lives.values() if lf.node == dst and lf.start <= sev["t"]]
    return bool(current) and max(current, key=lambda lf: lf.start).killed


# -- disk ----------------------------------------------------------------------------------


def check_disk(events: list[dict[str, Any]], report: Report) -> None:
    # per disk node: block -> (crc, the ack event), and crcs written to the block since that ack
    last: dict[str, dict[int, tuple[int, dict]]] = {}
    later: dict[str, dict[int, set[int]]] = {}
    acks = 0
    finals = 0
    for ev in events:
        if ev["cat"] != "disk":
            continue
        disk = ev.get("disk", ev.get("node"))
        if ev["ev"] == "write":
            for i, crc in enumerate(ev.get("crcs", ())):
                later.setdefault(disk, {}).setdefault(ev["block"] + i, set()).add(crc)
        elif ev["ev"] == "write_acked":
            acks += 1
            crcs = _crcs_of_ack(ev, events)
            for i in range(ev["count"]):
                b = ev["block"] + i
                if crcs is not None:
                    last.setdefault(disk, {})[b] = (crcs[i], ev)
                later.setdefault(disk, {})[b] = set()
        elif ev["ev"] == "final":
            finals += 1
            have = {int(b): c for b, c in ev["crcs"].items()}
            for b, (crc, aev) in sorted(last.get(disk, {}).items()):
                now = have.get(b)
                if now is None:
                    report.add("disk", "unread", f"{disk} block {b}: acknowledged (req {aev.get('req')}) but not "
                               "read back at the end", ev, disk=disk, block=b, req=aev.get("req"))
                elif now != crc and now not in later.get(disk, {}).get(b, ()):
                    report.add("disk", "lost_write", f"{disk} block {b}: the write acknowledged as req "
                               f"{aev.get('req')} at {_where(aev)} is not what the image holds at the end "
                               f"(crc {now:#010x}, acknowledged {crc:#010x})", aev, disk=disk, block=b,
                               req=aev.get("req"))
    report.checked["disk_writes_acked"] = acks
    report.checked["disk_blocks_read_back"] = finals and sum(len(v) for v in last.values())
    if acks and not finals:
        report.notes.append("disk: acknowledged writes recorded but no image read back (no 'disk final'): "
                            "durability not checked")


def _crcs_of_ack(ack: dict, events: list[dict]) -> list[int] | None:
    """Per-block CRCs of an acknowledged write: its own, or those its ``disk write`` recorded."""
    if "crcs" in ack:
        return ack["crcs"]
    if ack["count"] == 1 and "crc32" in ack:
        return [ack["crc32"]]
    return ack.get("_crcs")


def _attach_write_crcs(events: list[dict]) -> None:
    """Give each ``write_acked`` the per-block CRCs of the ``write`` with the same disk and request id."""
    pending: dict[tuple, dict] = {}
    for ev in events:
        if ev["cat"] == "disk" and ev["ev"] == "write":
            pending[(ev.get("node"), ev.get("req"), ev["block"])] = ev
        elif ev["cat"] == "disk" and ev["ev"] == "write_acked":
            w = pending.pop((ev.get("node"), ev.get("req"), ev["block"]), None)
            if w is not None:
                ev["_crcs"] = w["crcs"]
                # the acked write's own blocks are not "written since the ack"
                w["_acked"] = True


# -- frames --------------------------------------------------------------------------------


def check_frames(events: list[dict[str, Any]], report: Report) -> None:
    owner: dict[int, str] = {}
    nframes = 0
    changes = grants = 0
    for ev in events:
        if ev["cat"] != "frame":
            continue
        name = ev["ev"]
        if name == "owners":
            nframes = ev.get("nframes", nframes)
            snap: dict[int, str] = {}
            for who, frames in ev["owners"].items():
                if who == "invariants":
                    continue
                for f in frames:
                    if f in snap:
                        report.add("frame", "two_owners", f"frame {f} owned by both {snap[f]} and {who}", ev,
                                   frame=f)
                    snap[f] = who
            missing = sorted(set(range(nframes)) - set(snap))
            if missing:
                report.add("frame", "not_conserved", f"{len(missing)} frames have no owner (first {missing[:8]})",
                           ev, frame=missing[0])
            if owner:
                moved = sorted(f for f in snap if owner.get(f) != snap[f])
                if moved:
                    f = moved[0]
                    report.add("frame", "owner_changed_at_restart", f"memctl restarted with frame {f} owned by "
                               f"{snap[f]}, the history left it to {owner.get(f)} ({len(moved)} such frames)",
                               ev, frame=f)
            owner = snap
        elif name == "owner":
            changes += 1
            old, new = ev.get("old"), ev.get("new")
            for f in ev["frames"]:
                had = owner.get(f)
                if owner and had != old:
                    report.add("frame", "two_owners", f"frame {f} moved from {old} to {new}, but it was "
                               f"{had}'s", ev, frame=f)
                owner[f] = new
        elif name == "grant":
            grants += 1
            space, f = ev.get("space"), ev.get("frame")
            if owner and space not in SYSTEM_OWNERS and owner.get(f) != space:
                report.add("frame", "foreign_read", f"frame {f}, owned by {owner.get(f)}, granted into "
                           f"{space}'s address space (to {ev.get('initiator')})", ev, frame=f, space=space)
    report.checked["frame_owner_changes"] = changes
    report.checked["frame_grants"] = grants


# -- key-value store -------------------------------------------------------------------------


def _effect(op: tuple, value: bytes | None) -> bytes | None:
    return op[2] if op[0] == "SET" else None  # SET key value / DEL key


def _parse_kv(request: str) -> tuple | None:
    cmd, _, rest = request.partition(" ")
    if cmd == "SET":
        key, _, value = rest.partition(" ")
        return ("SET", key, value)
    if cmd in ("GET", "DEL"):
        return (cmd, rest, None)
    if cmd == "COUNT":
        return ("COUNT", None, None)
    return None


def _answers(op: tuple, value: str | None, reply: str) -> tuple[bool, str | None]:
    """Whether ``reply`` is what the store answers to ``op`` in state ``value``; the value after."""
    cmd = op[0]
    if cmd == "SET":
        return reply == "OK", op[2]
    if cmd == "GET":
        return reply == (f"VALUE {value}" if value is not None else "NOTFOUND"), value
    if cmd == "DEL":
        return reply == ("OK" if value is not None else "NOTFOUND"), None
    return False, value


def check_kv(events: list[dict[str, Any]], report: Report) -> None:
    """Per key: the set of possible (value, pending indeterminate ops) after each answered request."""
    configs: dict[str, set[tuple[str | None, frozenset]]] = {}
    ops: dict[Any, tuple] = {}  # pending indeterminate op id -> op
    requests: dict[Any, tuple[tuple, dict]] = {}
    gave_up: set[str] = set()
    answered = indeterminate = 0

    def start(key: str) -> set:
        return configs.setdefault(key, {(None, frozenset())})

    for ev in events:
        if ev["cat"] != "client" or ev.get("client", "kv") != "kv":
            continue
        if ev["ev"] == "request":
            op = _parse_kv(ev["request"])
            if op is not None:
                requests[ev["id"]] = (op, ev)
            continue
        if ev["id"] not in requests:
            continue
        op, rev = requests.pop(ev["id"])
        reply = ev.get("reply")
        if ev["ev"] == "timeout" or (reply is not None and reply.startswith("ERR")):
            indeterminate += 1
            if op[0] in ("SET", "DEL") and op[1] not in gave_up:
                ops[ev["id"]] = op
                start(op[1])
                configs[op[1]] = {(v, p | {ev["id"]}) for v, p in configs[op[1]]}
            continue
        if ev["ev"] != "reply":
            continue
        answered += 1
        subject = {"request": ev["id"], "op": rev["request"][:80], "reply": reply[:80]}
        if op[0] == "COUNT":
            lo = hi = 0
            for key, cs in configs.items():
                if key in gave_up:
                    hi += 1
                    continue
                vals = {v for v, _ in _before(cs, ops)}
                lo += None not in vals
                hi += any(v is not None for v in vals)
            try:
                n = int(reply.split(" ", 1)[1]) if reply.startswith("COUNT ") else -1
            except ValueError:
                n = -1
            if not lo <= n <= hi:
                report.add("kv", "not_linearizable", f"request {ev['id']} COUNT -> {reply!r}: the store can "
                           f"hold {lo}..{hi} keys then", ev, **subject)
            continue
        key = op[1]
        if key in gave_up:
            continue
        cs = start(key)
        after = set()
        for v, pending in _before(cs, ops):
            good, nv = _answers(op, v, reply)
            if good:
                after.add((nv, pending))
        if not after:
            vals = sorted({repr(v) for v, _ in _before(cs, ops)})
            report.add("kv", "not_linearizable", f"request {ev['id']} {rev['request'][:60]!r} -> {reply[:60]!r}: "
                       f"no order of the requests before it gives that; {key} could hold "
                       f"{', '.join(vals[:4])}{' ...' if len(vals) > 4 else ''}", ev, **subject)
            # go on from what the store said it holds, so one fault is one violation
            after = {(_answers(op, v, reply)[1] if op[0] != "GET" else _got(reply), p) for v, p in cs}
        if len(after) > MAX_CONFIGS:
            gave_up.add(key)
            report.notes.append(f"kv: key {key}: more than {MAX_CONFIGS} possible states; not checked further")
        configs[key] = after
    report.checked["kv_requests_answered"] = answered
    report.checked["kv_requests_indeterminate"] = indeterminate


def _got(reply: str) -> str | None:
    return reply[6:] if reply.startswith("VALUE ") else None


def _before(configs: set, ops: dict) -> set:
    """The states a request may see: each config, or it after one of its pending ops took effect.

    (Applying several pending ops in a row ends in the last one's value with
    the others still pending, which this already covers.)"""
    out = set(configs)
    for v, pending in configs:
        for pid in pending:
            out.add((_effect(ops[pid], v), pending - {pid}))
    return out


# -- guest outputs ---------------------------------------------------------------------------


def check_outputs(events: list[dict[str, Any]], report: Report) -> None:
    n = 0
    for ev in events:
        if (ev["cat"], ev["ev"]) != ("guest", "exit"):
            continue
        n += 1
        prog, status = ev.get("program"), ev.get("status")
        exact = ev.get("sha256") == ev.get("expected_sha256")
        subject = {"program": prog}
        if status == 0 and exact:
            continue
        if ev.get("killed") and status in ev.get("killed_status", ()) and ev.get("prefix", False):
            continue
        why = (f"exit {status}" + ("" if exact else f", output differs from the fault-free run's "
                                   f"({ev.get('length')} of {ev.get('expected_length')} bytes)"))
        if ev.get("killed"):
            why += f"; killed by the schedule, documented status {ev.get('killed_status')}"
        report.add("output", "differs", f"{prog}: {why}", ev, **subject)
    report.checked["guest_programs"] = n


# -- the UDP echo client, the run itself ----------------------------------------------------


def check_echo(events: list[dict[str, Any]], report: Report) -> None:
    """UDP may lose a datagram, never corrupt or duplicate one: each reply is a request's bytes, once."""
    sent: dict[Any, dict] = {}
    got: dict[Any, dict] = {}
    for ev in events:
        if ev["cat"] != "client" or ev.get("client") != "echo":
            continue
        if ev["ev"] == "request":
            sent[ev["id"]] = ev
        elif ev["ev"] == "reply":
            rid = ev.get("id")
            req = sent.get(rid)
            if req is None or (req["crc32"], req["size"]) != (ev["crc32"], ev["size"]):
                report.add("echo", "corrupted", f"a reply of {ev['size']} bytes that no request sent "
                           f"(as request {rid})", ev, request=rid)
            elif rid in got:
                report.add("echo", "duplicate", f"request {rid} echoed twice (first at {_where(got[rid])})", ev,
                           request=rid)
            else:
                got[rid] = ev
    report.checked["echo_requests"] = len(sent)
    report.checked["echo_replies"] = len(got)


def check_run(events: list[dict[str, Any]], report: Report) -> None:
    """What the chaos run checked as it went: a scenario step that failed, a killed node never back."""
    for ev in events:
        kind = (ev["cat"], ev["ev"])
        if kind == ("scenario", "check") and not ev.get("ok"):
            report.add("scenario", "failed", f"{ev.get('name')}: {ev.get('detail', '')}", ev)
        elif kind == ("fault", "not_recovered"):
            report.add("recovery", "not_recovered", f"{ev.get('target')} ({ev.get('node_kind')}) not running "
                       f"again {ev.get('after_s')} s after a {ev.get('kind')}", ev, node=ev.get("target"))


# -- all ------------------------------------------------------------------------------------

CHECKS = (check_flows, check_disk, check_frames, check_kv, check_outputs, check_echo, check_run)


def check(path: str | Path | Iterable[str | Path]) -> Report:
    """Check the history at ``path`` (a file, a directory of ``*.jsonl``, or a list of files)."""
    report = Report()
    paths = history_files(path) if isinstance(path, (str, Path)) else [Path(p) for p in path]
    events = load(paths, report)
    _attach_write_crcs(events)
    report.checked["events"] = len(events)
    for fn in CHECKS:
        fn(events, report)
    return report
