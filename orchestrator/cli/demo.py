"""`hwemu demo`: the main job (issue #7 part 4) on compose/demo.toml.

A cluster is started in its own run directory (and always stopped at the
end, also on an error or Ctrl-C). os1 runs a compute program (``timeshare``),
the UDP echo server and the key-value store on the disk (``kvstore``), each
server driven by a real UDP client for the whole demo;
meanwhile the VMM is loaded (FIG. 4), interposed under the running os1
(FIG. 3, FIG. 5), os2 is booted under the VMM, borrows memory from os1 (¶39),
runs its own program, gives the memory back and shuts down; then everything
is devirtualized and the VMM unloaded (FIG. 6, 7, 8) while os1's program goes
on. At the end: every step with its pause, the guest outputs checked byte for
byte against what they must print, every UDP reply checked (the key-value
replies against a model of the store), the store read back by a second run,
the I/O counts, and the invariants (every frame exactly one owner after every
step, no gap in any flow of any node). Exit 0 only if every
check passed.

``--control`` runs the same workloads and clients with no VMM at all (one
compute round): the run that the transparency test compares against.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
import random
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import trio
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from orchestrator import flowaudit, report, swarm
from orchestrator.choreographies.base import OVER_BUDGET
from orchestrator.cli import cluster
from orchestrator.cli import trace as trace_cli
from orchestrator.cli.common import Json, RunDir, console, emit_json, err_console, fail
from orchestrator.cli.run import _interrupted, _pick, run_program
from orchestrator.client import call, default_run_dir
from orchestrator.daemon import is_locked
from orchestrator.topology import load
from protocol.errors import RemoteError, RequestTimeout

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "compose" / "demo.toml"
SAMPLES = REPO / "guest" / "build" / "samples"
CTL_TIMEOUT = 120.0
MEMCTL_BACK_S = 60.0  # how long a check of the frames waits for a memory controller restarting
GUEST_PORT = 7000
KV_PORT = 7001
KV_SEED = 39
# how long a client waits for one reply before it counts it lost: the clients wait for each reply
# before the next request, so a reply counted lost that comes later is taken for the next one's
# (every later reply then "wrong"). Generous: with the VMM interposed, two OS instances share one
# CPU node, and on a loaded host one reply has been seen to take over 10 s
REPLY_TIMEOUT = 60.0
OS1_LINES = 60    # timeshare on os1, one round; rounds follow each other until the VMM is gone
OS2_LINES = 6     # timeshare on os2, under the VMM, time-sliced with os1
# its bound: a guard against a hang, not a speed check. Two OS instances time-sliced by the VMM on one CPU
# node, on a crowded host (a swarm's containers beside a test suite), have taken over 120 s for these lines
OS2_TIMEOUT = 300.0
BORROW = 64       # frames os1 lends os2
VMM_FRAMES = 64
DEMO_TRACE_RING = 1 << 18  # events per node: the whole demo, on the busiest node too


def timeshare_output(tag: str, lines: int) -> bytes:
    """What ``timeshare TAG LINES`` prints (guest/samples/timeshare.c, its checksum computed here)."""
    x, out = 1, []
    for i in range(1, lines + 1):
        for _ in range(25000):
            x = (x * 1664525 + 1013904223) & 0xFFFFFFFF
            x ^= x >> 11
        out.append(f"{tag}: line {i} of {lines}, work 0x{x:08x}\n")
    return "".join(out).encode()


class Demo:
    """The demo's state: the steps done, the checks made, the I/O counts."""

    def __init__(self, rd: Path, show: bool = True, control: bool = False, out: Console = console):
        self.out = out  # where the progress and tables go (stderr when the JSON report goes to stdout)
        self.rd = rd
        self.show = show
        self.control = control
        self.steps: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.io: dict[str, Any] = {"udp_sent": 0, "udp_replies": 0, "udp_mismatched": 0, "udp_lost": 0,
                                   "kv_requests": 0, "kv_exact": 0, "kv_wrong": 0, "kv_lost": 0}
        self.kv_model: dict[bytes, bytes] = {}
        self.kv_replies: list[bytes] = []
        self.outputs: dict[str, str] = {}  # program -> sha256 of its exact output (the control run's are compared)
        self.os2_program: dict[str, Any] | None = None  # os2's program of the cycle, as it ended
        self.retry_over_budget = 0.0  # s to retry a choreography rolled back over its pause budget
        self.over_budget: list[dict[str, str]] = []  # those rollbacks
        self.phase = "starting"
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        if self.show:
            self.out.print(Text.assemble((f"{time.monotonic() - self.t0:6.1f}s", "dim"), " ", text))

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        self.say(f"{'✓' if ok else '✗'} check {name}" + (f": {detail}" if detail else ""))
        return ok

    async def ctl(self, kind: str, body: dict | None = None) -> Any:
        return await call(self.rd, kind, body or {}, CTL_TIMEOUT)

    async def choreography(self, what: str, kind: str, body: dict | None = None) -> list[dict]:
        """One control request; its reports' steps recorded with their pauses.

        A choreography that held its senders longer than its pause budget is rolled back
        (orchestrator/choreographies/base.py): with :attr:`retry_over_budget` (seconds; ``hwemu
        chaos`` sets it, whose dropped and delayed messages can hold a drain for a retransmission
        timeout) the request is made again, as its user would, until it commits or that time is
        up; every rollback is recorded in :attr:`over_budget`."""
        self.phase = what
        deadline = time.monotonic() + self.retry_over_budget
        while True:
            try:
                data = await self.ctl(kind, body)
                break
            except RemoteError as exc:
                if OVER_BUDGET not in str(exc) or time.monotonic() >= deadline:
                    raise
                self.over_budget.append({"phase": what, "error": str(exc)[:300]})
                self.say(f"{what}: rolled back over its pause budget ({exc}); again")
                await trio.sleep(0.2)
        reports = data.get("reports", []) + data.get("policy", []) if isinstance(data, dict) else []
        for rep in reports:
            for s in rep.get("steps", []):
                self.steps.append({"phase": what, "figure": rep["figure"], "title": rep["title"],
                                   "outcome": rep["outcome"], "step": s["name"], "patent": s.get("patent", ""),
                                   "ms": round(s["ms"], 3), "pause_ms": round(s["pause_ms"] or 0.0, 3)})
            self.say(f"{rep.get('title', rep.get('figure'))} [{rep.get('outcome')}] "
                     f"pause {rep.get('pause_ms', 0):.2f} ms")
            self.check(f"{what}: {rep.get('figure')} committed", rep.get("outcome") == "committed",
                       rep.get("error") or "")
        await self.conserved(f"after {what}")
        return reports

    async def conserved(self, when: str) -> bool:
        """Every frame has exactly one owner (memctl's own invariant check and the count).

        Asked again while the memory controller is away (killed: its supervisor restarts it, and
        its next life restores every frame from its file) or recovering, up to MEMCTL_BACK_S: an
        observer of the machine, it must not take a controller's restart for a failed check."""
        reply = None
        with trio.move_on_after(MEMCTL_BACK_S):
            while reply is None:
                try:
                    reply = await self.ctl("ctl_request", {"node": "memctl", "kind": "mem_owners", "body": {}})
                except RemoteError as exc:
                    if exc.reason not in ("timeout", "recovering"):
                        raise
                    await trio.sleep(0.2)
        if reply is None:
            raise RequestTimeout("memctl", "mem_owners", MEMCTL_BACK_S)
        owners = reply["body"]["data"]
        frames = sorted(f for o, fs in owners.items() if o != "invariants" for f in fs)
        counts = {o: len(fs) for o, fs in owners.items() if o != "invariants"}
        return self.check(f"frame conservation {when}",
                          owners.get("invariants") == "ok" and frames == list(range(self.nframes)),
                          f"invariants {owners.get('invariants')}, {len(frames)} of {self.nframes} frames, "
                          f"owners {counts}")


async def _node_stats(d: Demo, node: str) -> dict:
    return (await d.ctl("ctl_request", {"node": node, "kind": "stats", "body": {}}))["body"]["stats"]


async def _hwemu_run(d: Demo, args: list[str], result: dict, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """`hwemu run` on the running cluster (run.py: os_exec, console copy, proc_exit) as a child process."""
    cmd = [sys.executable, "-m", "orchestrator.cli.main", "run", "--run-dir", str(d.rd), "--os", "os1",
           str(TOPOLOGY), *args]
    task_status.started()
    proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False,
                                  stdin=subprocess.DEVNULL)
    result.update(code=proc.returncode, out=proc.stdout, err=proc.stderr.decode(errors="replace"))


def _udp_client(address: tuple[str, int], d: Demo, stop: threading.Event) -> None:
    """A real UDP client: datagrams of growing sizes, each reply checked byte for byte."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(REPLY_TIMEOUT)
        i = 0
        while not stop.is_set():
            payload = (b"demo %d " % i) + bytes((i * 7 + k) & 0xFF for k in range((i * 97) % 2000))
            if payload.startswith(b"quit"):
                payload = b"x" + payload
            sock.sendto(payload, address)
            d.io["udp_sent"] += 1
            try:
                reply, sender = sock.recvfrom(65536)
            except TimeoutError:
                d.io["udp_lost"] += 1
                continue
            if reply == payload and sender == address:
                d.io["udp_replies"] += 1
            else:
                d.io["udp_mismatched"] += 1
            i += 1
            time.sleep(0.02)


def kv_script(seed: int = KV_SEED) -> Iterator[bytes]:
    """The key-value client's requests: an endless, seeded mix of SET, GET, DEL and COUNT on 24 keys."""
    rng = random.Random(seed)
    keys = [b"key%02d" % i for i in range(24)]
    for i in itertools.count():
        key, r = rng.choice(keys), rng.random()
        if r < 0.45:
            yield b"SET %s v%d-%s" % (key, i, b"%x" % rng.getrandbits(40) * rng.randrange(1, 12))
        elif r < 0.85:
            yield b"GET " + key
        elif r < 0.95:
            yield b"DEL " + key
        else:
            yield b"COUNT"


def kv_expect(model: dict[bytes, bytes], request: bytes) -> bytes:
    """What guest/samples/kvstore.c answers to ``request`` (for the requests of kv_script); updates ``model``."""
    cmd, _, rest = request.partition(b" ")
    if cmd == b"SET":
        key, _, value = rest.partition(b" ")
        model[key] = value
        return b"OK"
    if cmd == b"GET":
        return b"VALUE " + model[rest] if rest in model else b"NOTFOUND"
    if cmd == b"DEL":
        return b"OK" if model.pop(rest, None) is not None else b"NOTFOUND"
    return b"COUNT %d" % len(model)


def _kv_client(address: tuple[str, int], d: Demo, stop: threading.Event) -> None:
    """A real UDP client of the key-value store: kv_script's requests, each reply checked against the model."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(REPLY_TIMEOUT)
        for request in kv_script():
            if stop.is_set():
                return
            want = kv_expect(d.kv_model, request)
            sock.sendto(request, address)
            d.io["kv_requests"] += 1
            try:
                reply, sender = sock.recvfrom(65536)
            except TimeoutError:
                d.io["kv_lost"] += 1  # the model may now differ from the store: the checks at the end say so
                continue
            d.kv_replies.append(reply)
            d.io["kv_exact" if (reply, sender) == (want, address) else "kv_wrong"] += 1
            time.sleep(0.02)


def _converse(address: tuple[str, int], requests: list[bytes]) -> list[bytes]:
    """One datagram each, one reply each (a lost reply is b"")."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(REPLY_TIMEOUT)
        for request in requests:
            sock.sendto(request, address)
            try:
                out.append(sock.recvfrom(65536)[0])
            except TimeoutError:
                out.append(b"")
    return out


async def _uart_log(d: Demo, uart: str) -> tuple[int, Path]:
    logged = (await d.ctl("ctl_request", {"node": uart, "kind": "uart_sync", "body": {}}))["body"]["data"]["logged"]
    return logged, d.rd / f"{uart}.console.log"


async def run_demo(d: Demo) -> None:
    """The demo's story; every check recorded in ``d.checks``."""
    topo = load(TOPOLOGY)
    d.nframes = topo.nodes["memctl"].options["frames"]
    status = await d.ctl("ctl_status")
    os1, uart0 = _pick(status, "os1")
    console_start, uart0_log = await _uart_log(d, uart0["name"])
    await d.conserved("at boot")

    stop_clients = threading.Event()
    try:
        await _story(d, topo, uart0, uart0_log, stop_clients, console_start)
    finally:
        stop_clients.set()  # the clients' threads end on their own (a cancelled trio cannot stop a thread)


async def _server(d: Demo, nursery: trio.Nursery, uart_log: Path, elf: str, args: list[str], port: int,
                  ready: bytes) -> tuple[dict[str, Any], tuple[str, int]]:
    """Start a UDP server program on os1 and wait until it is bound and has said ``ready``; its host address."""
    result: dict[str, Any] = {}
    d.phase = f"os1: {elf}"
    seen = _logged_text(uart_log).count(ready)
    await nursery.start(_hwemu_run, d, [str(SAMPLES / elf), "--", *args], result)
    with trio.fail_after(60):
        while True:
            nic = await _node_stats(d, "nic0")
            if str(port) in (nic.get("ports") or {}) and _logged_text(uart_log).count(ready) > seen:
                break
            if "code" in result:
                raise RuntimeError(f"{elf} ended before it was ready: exit {result['code']}: {result['err'][-300:]}")
            await trio.sleep(0.1)
    address = ("127.0.0.1", nic["ports"][str(port)]["host_port"])
    d.say(f"os1: {elf} ready, reachable at udp://{address[0]}:{address[1]}")
    return result, address


async def _wait_exit(result: dict[str, Any], timeout: float) -> None:
    with trio.fail_after(timeout):
        while "code" not in result:
            await trio.sleep(0.05)


async def _story(d: Demo, topo, uart0: dict, uart0_log: Path, stop_clients: threading.Event,
                 console_start: int) -> None:
    async with trio.open_nursery() as nursery:
        # 1. os1's workloads: the UDP echo server and the key-value store, each with a real client, then compute
        echo, echo_at = await _server(d, nursery, uart0_log, "udpecho.elf", [str(GUEST_PORT)], GUEST_PORT,
                                      b"udpecho listening")
        kv, kv_at = await _server(d, nursery, uart0_log, "kvstore.elf", ["/dev/disk0", str(KV_PORT)], KV_PORT,
                                  b"kvstore ready")
        # abandoned on cancellation (Ctrl-C, an error): run_demo's finally then stops them
        for client, at in ((_udp_client, echo_at), (_kv_client, kv_at)):
            nursery.start_soon(partial(trio.to_thread.run_sync, client, at, d, stop_clients, abandon_on_cancel=True))

        rounds: list[dict[str, Any]] = []
        devirtualized = trio.Event()
        compute_done = trio.Event()
        if d.control:
            devirtualized.set()  # one round, natively: the run without any VMM

        async def compute(task_status=trio.TASK_STATUS_IGNORED) -> None:
            """timeshare rounds (tags A1, A2, ...) one after the other on os1, as long as the VMM is there:
            compute runs under every choreography, and the last round ends natively."""
            while True:
                res: dict[str, Any] = {"tag": f"A{len(rounds) + 1}"}
                rounds.append(res)
                await nursery.start(_hwemu_run, d, [str(SAMPLES / "timeshare.elf"), "--", res["tag"],
                                                    str(OS1_LINES)], res)
                task_status.started()
                task_status = trio.TASK_STATUS_IGNORED
                await _wait_exit(res, 600)
                if devirtualized.is_set() or res["code"] != 0:
                    compute_done.set()
                    return

        await nursery.start(compute)
        await _wait_console(uart0_log, b"A1: line 1 of", 60)
        d.say(f"os1: timeshare rounds of {OS1_LINES} lines run natively; UDP clients running")

        if not d.control:
            await _virtualization(d, topo)
            d.io["compute_running_at_devirtualize"] = "code" not in rounds[-1]
            devirtualized.set()

        # 5. the workloads end natively; the store is read back by a second run of kvstore
        d.phase = "os1: timeshare finishing natively"
        with trio.fail_after(300):
            await compute_done.wait()
        stop_clients.set()
        await trio.sleep(0.5)  # the clients' last exchanges
        ports = (await _node_stats(d, "nic0")).get("ports") or {}
        d.io["nic0"] = {f"guest port {g}": {k: p[k] for k in ("rx", "tx", "drops")} for g, p in ports.items()}
        d.phase = "os1: kvstore stopping"
        kv_bye = await trio.to_thread.run_sync(_converse, kv_at, [b"QUIT"])
        await _wait_exit(kv, 60)
        again, again_at = await _server(d, nursery, uart0_log, "kvstore.elf", ["/dev/disk0", str(KV_PORT)],
                                        KV_PORT, b"kvstore ready")
        model = dict(d.kv_model)
        readback = [b"COUNT", *[b"GET " + k for k in sorted(model)], b"QUIT"]
        got = await trio.to_thread.run_sync(_converse, again_at, readback)
        await _wait_exit(again, 60)
        d.phase = "os1: udpecho stopping"
        bye = await trio.to_thread.run_sync(_converse, echo_at, [b"quit"])
        await _wait_exit(echo, 60)

    # the checks
    d.io["compute_rounds"] = len(rounds)
    want = b""
    for r in rounds:
        expected = timeshare_output(r["tag"], OS1_LINES)
        want += expected
        d.outputs[f"os1 timeshare {r['tag']}"] = hashlib.sha256(r["out"]).hexdigest()
        d.check(f"os1 timeshare {r['tag']} output exact", (r["code"], r["out"]) == (0, expected),
                f"exit {r['code']}, {len(r['out'])} of {len(expected)} bytes {r.get('err', '')[-200:]}")
    served = d.io["udp_replies"] + d.io["udp_mismatched"] + d.io["udp_lost"]
    d.check("UDP echo: every datagram echoed exactly", d.io["udp_replies"] == d.io["udp_sent"] > 0 and bye == [b"bye"],
            f"{d.io['udp_replies']}/{d.io['udp_sent']} replies, quit -> {bye!r}")
    echo_line = b"udpecho served %d datagrams\n" % served
    d.check("os1 udpecho exit and report", echo.get("code") == 0 and echo.get("out", b"").endswith(echo_line),
            f"exit {echo.get('code')}")
    kv_n = len(d.kv_model)
    d.kv_digest = hashlib.sha256(b"\n".join(d.kv_replies)).hexdigest()
    d.check("key-value store: every reply as the model says", d.io["kv_exact"] == d.io["kv_requests"] > 0
            and kv_bye == [b"BYE"], f"{d.io['kv_exact']}/{d.io['kv_requests']} exact, {d.io['kv_wrong']} wrong, "
            f"{d.io['kv_lost']} lost, quit -> {kv_bye!r}")
    stopped = b"kvstore stopped: %d keys\n" % kv_n
    d.check("os1 kvstore exit and report", (kv.get("code"), kv.get("out", b"").endswith(stopped)) == (0, True),
            f"exit {kv.get('code')}, {kv_n} keys")
    expect_back = [b"COUNT %d" % kv_n, *[b"VALUE " + model[k] for k in sorted(model)], b"BYE"]
    d.check("key-value store read back by a new run: every acknowledged value durable",
            got == expect_back and again.get("code") == 0,
            f"{sum(a == b for a, b in zip(got, expect_back))}/{len(expect_back)} replies as written, "
            f"exit {again.get('code')}")
    end, _ = await _uart_log(d, uart0["name"])
    whole = uart0_log.read_bytes()[console_start:end]
    console_want = (b"udpecho listening on %d\n" % GUEST_PORT + b"kvstore ready: 0 keys\n" + want + stopped
                    + b"kvstore ready: %d keys\n" % kv_n + stopped + echo_line)
    d.outputs["os1 console"] = hashlib.sha256(whole).hexdigest()
    d.check("os1 console byte-identical", whole == console_want, f"{len(whole)} of {len(console_want)} bytes")

    # invariants and I/O counts
    await d.conserved("at the end")
    status = await d.ctl("ctl_status")
    alive = [n for n in status["nodes"] if n["alive"]]
    bad = {n["name"]: flowaudit.with_gaps(n["stats"].get("flows_in", {})) for n in alive}
    bad = {n: v for n, v in bad.items() if v}
    resent = sum(v.get("dups", 0) for n in alive for v in n["stats"].get("flows_in", {}).values())
    d.check("no gap in any flow of any node", not bad,
            str(bad) if bad else f"{len(alive)} nodes; {resent} copies sent again and dropped")

    async def request(node: str, kind: str, body: dict) -> dict:
        return (await d.ctl("ctl_request", {"node": node, "kind": kind, "body": body}))["body"]

    histories, sent, notes = await flowaudit.collect(request, status, d.rd)
    result = flowaudit.audit(histories, sent)
    d.io["flows_audited"] = {f: {"sent": v["sent"], "receivers": v["receivers"]} for f, v in result["flows"].items()}
    d.check("every message of every flow delivered exactly once (recorded history of all receivers)",
            result["ok"] and not notes, "; ".join(result["problems"] + notes)[:600] or
            f"{len(result['flows'])} flows, {sum(v['sent'] for v in result['flows'].values())} messages, "
            f"{sum(len(v['receivers']) > 1 for v in result['flows'].values())} of them moved between receivers")
    stats = {n["name"]: n["stats"] for n in alive}
    d.io["disk0"] = {k: stats["disk0"][k] for k in _DISK_COUNTS if k in stats.get("disk0", {})}
    d.io["interrupts"] = {f: n for st in stats.values() for f, n in st.get("flows_out", {}).items()
                          if f.startswith("irq:")}
    res = status["virt"]["resources"]
    if not d.control:
        d.check("native again", all(who != "vmm" for who in res.values()) and not status["virt"]["vmm"]["loaded"],
                ", ".join(f"{k}={v}" for k, v in sorted(res.items())))


# the counters of disk0 that the report shows
_DISK_COUNTS = ("reads", "writes", "flushes", "syncs", "blocks_read", "blocks_written", "errors")


async def _virtualization(d: Demo, topo) -> None:
    """Steps 2-4: the VMM comes in under the running os1, os2 joins with borrowed memory, everything goes back."""
    await d.choreography("load VMM (FIG. 4)", "ctl_vmm_load", {"host": "os1", "frames": VMM_FRAMES})
    await d.choreography("interpose os1 (FIG. 3, FIG. 5)", "ctl_interpose", {"os": "os1"})

    # 3. a second OS joins, borrows memory, runs, leaves
    try:
        await d.ctl("ctl_os_start", {"os": "os2"})
    except RemoteError as exc:
        raise RuntimeError(f"os2 could not be booted: {exc}") from None
    d.say("os2 booted")
    await d.conserved("after booting os2")
    await d.choreography("interpose os2 (FIG. 3, FIG. 5)", "ctl_interpose", {"os": "os2"})
    await d.choreography("borrow os1 → os2 (¶39)", "ctl_memory_borrow",
                         {"from_os": "os1", "to_os": "os2", "frames": BORROW})
    status = await d.ctl("ctl_status")
    os2, _ = _pick(status, "os2")
    # its console's route goes to the VMM now: the uart is the one the topology gives it
    uart1 = {n["name"]: n for n in status["nodes"]}[topo.nodes["os2"].options["uart"]]
    d.phase = "os2: timeshare"
    buf = io.BytesIO()
    t0 = time.monotonic()
    res = await run_program(d.rd, status, os2, uart1, (SAMPLES / "timeshare.elf").read_bytes(),
                            ["timeshare", "B", str(OS2_LINES)], buf, timeout=OS2_TIMEOUT)
    os2_out = (res["code"], buf.getvalue())
    want = timeshare_output("B", OS2_LINES)
    d.os2_program = {"name": "timeshare B on os2", "code": res["code"], "out": os2_out[1], "t0": t0,
                     "t1": time.monotonic(), "expected": want}  # (hwemu chaos records it as a guest program)
    d.check("os2 timeshare output exact", os2_out == (0, want),
            f"exit {res['code']}, {len(os2_out[1])} bytes" + (f": {os2_out[1][:300]!r}" if os2_out[1] != want else ""))
    await d.choreography("return os1 ← os2 (¶39)", "ctl_memory_return", {"from_os": "os1", "to_os": "os2"})
    d.phase = "shut down os2"
    deadline = trio.current_time() + 30
    while True:
        try:
            await d.choreography("shut down os2", "ctl_os_stop", {"os": "os2"})
            break
        except RemoteError as exc:  # refused (rolled back) while os2 still has a context on the CPU
            if trio.current_time() > deadline:
                raise
            d.say(f"os2 not ready to stop yet ({exc}); again")
            await trio.sleep(0.2)

    # 4. the VMM goes away again under the running programs
    await d.choreography("devirtualize os1 (FIG. 6, FIG. 7)", "ctl_devirtualize", {"os": "os1"})
    await d.choreography("unload VMM (FIG. 8)", "ctl_vmm_unload")


def _logged_text(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


async def _wait_console(path: Path, needle: bytes, timeout: float) -> None:
    with trio.fail_after(timeout):
        while needle not in _logged_text(path):
            await trio.sleep(0.05)


def _report(d: Demo) -> dict[str, Any]:
    failed = [c["check"] for c in d.checks if not c["ok"]]
    return {"ok": not failed and bool(d.checks), "failed": failed, "steps": d.steps, "checks": d.checks,
            "io": d.io, "seconds": round(time.monotonic() - d.t0, 2), "topology": str(TOPOLOGY),
            "run_dir": str(d.rd), "control": d.control, "outputs": d.outputs,
            "kv_replies": [r.decode("latin-1") for r in d.kv_replies],
            "pause_ms": {"max": max((s["pause_ms"] for s in d.steps), default=0.0),
                         "total": round(sum(s["pause_ms"] for s in d.steps), 3)}}


def _tables(rep: dict[str, Any], console: Console) -> None:
    steps = Table(title="every step of every choreography")
    for col in ("phase", "figure", "step", "patent", "ms", "pause ms"):
        steps.add_column(col, justify="right" if "ms" in col else "left")
    for s in rep["steps"]:
        steps.add_row(s["phase"], s["figure"], s["step"], s["patent"], f"{s['ms']:.2f}",
                      f"{s['pause_ms']:.2f}" if s["pause_ms"] else "")
    console.print(steps)
    checks = Table(title="checks")
    checks.add_column("check")
    checks.add_column("result")
    checks.add_column("detail")
    for c in rep["checks"]:
        checks.add_row(c["check"], Text("ok", style="green") if c["ok"] else Text("FAILED", style="bold red"),
                       c["detail"])
    console.print(checks)
    io_ = rep["io"]
    counts = Table(title="I/O")
    counts.add_column("what")
    counts.add_column("counts")
    counts.add_row("UDP echo client", f"{io_['udp_sent']} datagrams sent, {io_['udp_replies']} exact replies, "
                   f"{io_['udp_lost']} lost, {io_['udp_mismatched']} wrong")
    counts.add_row("key-value client", f"{io_['kv_requests']} requests, {io_['kv_exact']} exact replies, "
                   f"{io_['kv_lost']} lost, {io_['kv_wrong']} wrong")
    if io_.get("disk0"):
        counts.add_row("disk0", ", ".join(f"{k} {v}" for k, v in io_["disk0"].items()))
    for port, c in (io_.get("nic0") or {}).items():
        counts.add_row(f"nic0 {port}", ", ".join(f"{k} {v}" for k, v in c.items()))
    if io_.get("interrupts"):
        counts.add_row("interrupts (per flow)", ", ".join(f"{f} {n}" for f, n in sorted(io_["interrupts"].items())))
    console.print(counts)
    console.print(f"longest pause {rep['pause_ms']['max']:.2f} ms; {rep['seconds']:.1f} s")
    if "compute_rounds" in rep["io"]:
        console.print(f"os1 compute: {rep['io']['compute_rounds']} timeshare rounds, one running at the "
                      f"devirtualization: {'yes' if rep['io'].get('compute_running_at_devirtualize') else 'no'}")


EXAMPLES = ["hwemu demo", "hwemu demo --json > report.json   # the report on stdout, the progress on stderr",
            "hwemu demo --json report.json     # the report in a file, the progress on stdout",
            "hwemu demo --control", "hwemu demo --engine swarm    # on a Docker Swarm (hwemu image build first)",
            "hwemu demo --engine swarm --image hwemu:test"]


def demo(
    json_file: Annotated[Optional[Path], typer.Argument(
        metavar="FILE",
        help="With --json: write the report to this file instead of stdout (then the progress goes to stdout).",
        show_default=False)] = None,
    json_out: Json = False,
    control: Annotated[bool, typer.Option("--control", help="The same workloads and clients with no VMM at all "
                                          "(the run the virtualized one must be indistinguishable from).")] = False,
    run_dir: RunDir = None,
    trace: trace_cli.TraceFile = None,
    report_dir: Annotated[Optional[Path], typer.Option(
        "--report", metavar="DIR", help="Write an HTML report to DIR (index.html: the steps, a timeline "
                                        "picture, the checks, the I/O counts, and the trace beside it).")] = None,
    engine: Annotated[str, typer.Option(help="Where the cluster runs: local processes, or one Docker Swarm "
                                             "service per node (swarm: docs/swarm.md).")] = "local",
    image: Annotated[str, typer.Option(help="With --engine swarm: the nodes' image (`hwemu image build`).")]
    = swarm.DEFAULT_IMAGE,
) -> None:
    """The main job: a VMM interposed under a running OS, memory lent, everything devirtualized; all checked."""
    if json_file is not None and not json_out:
        fail(f"unexpected argument {json_file}: a report file goes after --json (hwemu demo --json FILE)", code=2)
    to_stdout = json_out and json_file is None
    out = err_console if to_stdout else console
    rd = run_dir.resolve() if run_dir is not None else default_run_dir() / "demo"
    if report_dir is not None:
        try:
            report_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"--report {report_dir}: {exc.strerror or exc}", code=2)
    trace_cli.check_file(trace)
    for elf in ("timeshare.elf", "udpecho.elf", "kvstore.elf"):
        if not (SAMPLES / elf).exists():
            fail(f"missing {SAMPLES / elf}: run `make guest` first")
    if engine not in ("local", "swarm"):
        fail(f"--engine must be local or swarm, not {engine!r}", code=2)
    if is_locked(rd):
        fail(f"a cluster is already running in {rd}: `hwemu down --run-dir {rd}` first, or use another --run-dir")
    d = Demo(rd, control=control, out=out)
    error: str | None = None
    try:
        d.say(f"starting {TOPOLOGY.relative_to(REPO)} in {rd}" + (" (control run: no VMM)" if control else ""))
        # a fresh disk: the key-value store starts empty, so its replies are the model's
        (rd / "disk0.img").unlink(missing_ok=True)
        with contextlib.redirect_stdout(io.StringIO()):
            cluster.up(TOPOLOGY, detach=True, run_dir=rd, json_out=True, engine=engine, image=image)
        d.say("cluster up")
        if trace is not None or report_dir is not None:
            trace_cli.start_for(rd, DEMO_TRACE_RING)
        with out.status("demo running") as spinner:
            async def main() -> None:
                async with trio.open_nursery() as n:
                    async def ticker() -> None:
                        while True:
                            spinner.update(f"{d.phase}  UDP {d.io['udp_replies']}/{d.io['udp_sent']} "
                                           f"echoed  {time.monotonic() - d.t0:.0f}s")
                            await trio.sleep(0.2)
                    n.start_soon(ticker)
                    await run_demo(d)
                    n.cancel_scope.cancel()
            trio.run(main)
    except KeyboardInterrupt:
        error = f"{d.phase}: interrupted (Ctrl-C)"
    except typer.Exit:
        error = "the cluster did not start"
    except BaseException as exc:  # reported as a failed check, the cluster still stopped
        error = f"{d.phase}: " + ("interrupted (Ctrl-C)" if _interrupted(exc) else _describe(exc))
    finally:
        if is_locked(rd):  # the report's timeline is drawn from its own JSON copy of the trace
            trace_cli.finish(rd, trace, report_dir and report_dir / report.TRACE)
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                cluster.down(run_dir=rd, timeout=5.0, json_out=True)
            except typer.Exit:
                pass
        d.say("cluster down")
    if error is not None:
        d.check("demo ran to its end", False, error)
    rep = _report(d)
    rep["trace"] = str(trace.resolve()) if trace is not None and trace.exists() else None
    _tables(rep, out)
    if report_dir is not None:
        out.print(f"report: {report.write(report_dir, rep, trace)}")
    if json_file is not None:
        json_file.write_text(json.dumps(rep, indent=2, default=str) + "\n")
    if not rep["ok"]:
        failed = rep["failed"]
        why = f"demo failed: {failed[0]}" + (f" ({len(failed)} checks failed)" if len(failed) > 1 else "")
        if to_stdout:  # the report is the one JSON object (its "ok" is false); the line goes to stderr
            emit_json(rep)
            err_console.print(f"hwemu: {why}", soft_wrap=True)
            raise typer.Exit(1)
        fail(why)
    if to_stdout:
        emit_json(rep)
    out.print(Text("demo passed: every check held", style="bold green"))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, (RemoteError, RequestTimeout)):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"
