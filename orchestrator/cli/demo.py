"""`hwemu demo`: the main job (issue #7 part 4) on compose/demo.toml.

A cluster is started in its own run directory (and always stopped at the
end, also on an error or Ctrl-C). os1 runs a compute program (``timeshare``)
and the UDP echo server, driven by a real UDP client for the whole demo;
meanwhile the VMM is loaded (FIG. 4), interposed under the running os1
(FIG. 3, FIG. 5), os2 is booted under the VMM, borrows memory from os1 (¶39),
runs its own program, gives the memory back and shuts down; then everything
is devirtualized and the VMM unloaded (FIG. 6, 7, 8) while os1's program goes
on. At the end: every step with its pause, the guest outputs checked byte for
byte against what they must print, the UDP replies checked, and the
invariants (every frame exactly one owner, no gap or duplicate in any flow of
any node). Exit 0 only if every check passed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Optional

import trio
import typer
from rich.table import Table

from orchestrator.cli import cluster
from orchestrator.cli.common import RunDir, console, fail
from orchestrator.cli.run import _interrupted, _pick, run_program
from orchestrator.client import call, default_run_dir
from orchestrator.daemon import is_locked
from orchestrator.topology import load
from protocol.errors import RemoteError, RequestTimeout

REPO = Path(__file__).resolve().parents[2]
TOPOLOGY = REPO / "compose" / "demo.toml"
SAMPLES = REPO / "guest" / "build" / "samples"
CTL_TIMEOUT = 120.0
GUEST_PORT = 7000
OS1_LINES = 60    # timeshare on os1, one round; rounds follow each other until the VMM is gone
OS2_LINES = 6     # timeshare on os2, under the VMM, time-sliced with os1
BORROW = 64       # frames os1 lends os2
VMM_FRAMES = 64


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

    def __init__(self, rd: Path, show: bool = True):
        self.rd = rd
        self.show = show
        self.steps: list[dict[str, Any]] = []
        self.checks: list[dict[str, Any]] = []
        self.io = {"udp_sent": 0, "udp_replies": 0, "udp_mismatched": 0, "udp_lost": 0}
        self.phase = "starting"
        self.t0 = time.monotonic()

    def say(self, text: str) -> None:
        if self.show:
            console.print(f"[dim]{time.monotonic() - self.t0:6.1f}s[/] {text}", highlight=False)

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"check": name, "ok": bool(ok), "detail": detail})
        self.say(f"{'[green]✓[/]' if ok else '[bold red]✗[/]'} check {name}" + (f": {detail}" if detail else ""))
        return ok

    async def ctl(self, kind: str, body: dict | None = None) -> Any:
        return await call(self.rd, kind, body or {}, CTL_TIMEOUT)

    async def choreography(self, what: str, kind: str, body: dict | None = None) -> list[dict]:
        """One control request; its reports' steps recorded with their pauses."""
        self.phase = what
        data = await self.ctl(kind, body)
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
        return reports


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
        sock.settimeout(10.0)
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


def _quit(address: tuple[str, int]) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10.0)
        sock.sendto(b"quit", address)
        return sock.recvfrom(64)[0]


async def _uart_log(d: Demo, uart: str) -> tuple[int, Path]:
    logged = (await d.ctl("ctl_request", {"node": uart, "kind": "uart_sync", "body": {}}))["body"]["data"]["logged"]
    return logged, d.rd / f"{uart}.console.log"


async def run_demo(d: Demo) -> None:
    """The demo's story; every check recorded in ``d.checks``."""
    topo = load(TOPOLOGY)
    nframes = topo.nodes["memctl"].options["frames"]
    status = await d.ctl("ctl_status")
    os1, uart0 = _pick(status, "os1")
    console_start, uart0_log = await _uart_log(d, uart0["name"])

    stop_udp = threading.Event()
    try:
        await _story(d, topo, status, uart0, uart0_log, stop_udp, console_start, nframes)
    finally:
        stop_udp.set()  # the client's thread ends on its own (a cancelled trio cannot stop a thread)


async def _story(d: Demo, topo, status: dict, uart0: dict, uart0_log: Path, stop_udp: threading.Event,
                 console_start: int, nframes: int) -> None:
    async with trio.open_nursery() as nursery:
        # 1. os1's workloads: the UDP echo server, then the compute program
        echo: dict[str, Any] = {}
        d.phase = "os1: udpecho"
        await nursery.start(_hwemu_run, d, [str(SAMPLES / "udpecho.elf"), "--", str(GUEST_PORT)], echo)
        nic = await _node_stats(d, "nic0")
        with trio.fail_after(30):
            while str(GUEST_PORT) not in (nic.get("ports") or {}) or not _logged_text(uart0_log).count(b"listening"):
                await trio.sleep(0.1)
                nic = await _node_stats(d, "nic0")
        address = ("127.0.0.1", nic["ports"][str(GUEST_PORT)]["host_port"])
        d.say(f"os1: udpecho listening, reachable at udp://{address[0]}:{address[1]}")
        # abandoned on cancellation (Ctrl-C, an error): run_demo's finally then stops it
        nursery.start_soon(partial(trio.to_thread.run_sync, _udp_client, address, d, stop_udp, abandon_on_cancel=True))

        rounds: list[dict[str, Any]] = []
        devirtualized = trio.Event()
        compute_done = trio.Event()

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
                while "code" not in res:
                    await trio.sleep(0.05)
                if devirtualized.is_set() or res["code"] != 0:
                    compute_done.set()
                    return

        await nursery.start(compute)
        await _wait_console(uart0_log, b"A1: line 1 of", 60)
        d.say(f"os1: timeshare rounds of {OS1_LINES} lines run natively; UDP client running")

        # 2. the VMM comes in under the running OS
        await d.choreography("load VMM (FIG. 4)", "ctl_vmm_load", {"host": "os1", "frames": VMM_FRAMES})
        await d.choreography("interpose os1 (FIG. 3, FIG. 5)", "ctl_interpose", {"os": "os1"})

        # 3. a second OS joins, borrows memory, runs, leaves
        os2_out = None
        try:
            started = await d.ctl("ctl_os_start", {"os": "os2"})
        except RemoteError as exc:
            started = None
            d.say(f"os2 cannot be booted here ({exc}); skipping os2's part")
        if started is not None:
            d.say("os2 booted")
            await d.choreography("interpose os2 (FIG. 3, FIG. 5)", "ctl_interpose", {"os": "os2"})
            await d.choreography("borrow os1 → os2 (¶39)", "ctl_memory_borrow",
                                 {"from_os": "os1", "to_os": "os2", "frames": BORROW})
            status = await d.ctl("ctl_status")
            os2, _ = _pick(status, "os2")
            # its console's route goes to the VMM now: the uart is the one the topology gives it
            uart1 = {n["name"]: n for n in status["nodes"]}[topo.nodes["os2"].options["uart"]]
            d.phase = "os2: timeshare"
            buf = io.BytesIO()
            res = await run_program(d.rd, status, os2, uart1, (SAMPLES / "timeshare.elf").read_bytes(),
                                    ["timeshare", "B", str(OS2_LINES)], buf, timeout=120)
            os2_out = (res["code"], buf.getvalue())
            d.check("os2 timeshare output exact", os2_out == (0, timeshare_output("B", OS2_LINES)),
                    f"exit {res['code']}, {len(os2_out[1])} bytes" + (f": {os2_out[1][:300]!r}" if os2_out[1] != timeshare_output("B", OS2_LINES) else ""))
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

        # 4. the VMM goes away again under the running program
        await d.choreography("devirtualize os1 (FIG. 6, FIG. 7)", "ctl_devirtualize", {"os": "os1"})
        await d.choreography("unload VMM (FIG. 8)", "ctl_vmm_unload")
        d.io["compute_running_at_devirtualize"] = "code" not in rounds[-1]
        devirtualized.set()

        # 5. the workloads end natively
        d.phase = "os1: timeshare finishing natively"
        with trio.fail_after(300):
            await compute_done.wait()
        stop_udp.set()
        await trio.sleep(0.5)
        bye = await trio.to_thread.run_sync(_quit, address)
        with trio.fail_after(60):
            while "code" not in echo:
                await trio.sleep(0.1)

    d.io["compute_rounds"] = len(rounds)
    want = b""
    for r in rounds:
        expected = timeshare_output(r["tag"], OS1_LINES)
        want += expected
        d.check(f"os1 timeshare {r['tag']} output exact", (r["code"], r["out"]) == (0, expected),
                f"exit {r['code']}, {len(r['out'])} of {len(expected)} bytes {r.get('err', '')[-200:]}")
    served = d.io["udp_replies"] + d.io["udp_mismatched"] + d.io["udp_lost"]
    d.check("UDP echo: every datagram echoed exactly", d.io["udp_replies"] == d.io["udp_sent"] > 0 and bye == b"bye",
            f"{d.io['udp_replies']}/{d.io['udp_sent']} replies, quit -> {bye!r}")
    echo_line = b"udpecho served %d datagrams\n" % served
    d.check("os1 udpecho exit and report", echo.get("code") == 0 and echo.get("out", b"").endswith(echo_line),
            f"exit {echo.get('code')}")
    end, _ = await _uart_log(d, uart0["name"])
    whole = uart0_log.read_bytes()[console_start:end]
    d.check("os1 console byte-identical", whole == b"udpecho listening on %d\n" % GUEST_PORT + want + echo_line,
            f"{len(whole)} bytes")

    # 6. invariants
    owners = (await d.ctl("ctl_request", {"node": "memctl", "kind": "mem_owners", "body": {}}))["body"]["data"]
    frames = sorted(f for o, fs in owners.items() if o != "invariants" for f in fs)
    d.check("frame conservation (mem_owners)", owners.get("invariants") == "ok" and frames == list(range(nframes)),
            f"invariants {owners.get('invariants')}, {len(frames)} of {nframes} frames, owners "
            f"{ {o: len(fs) for o, fs in owners.items() if o != 'invariants'} }")
    status = await d.ctl("ctl_status")
    bad = {n["name"]: {f: v for f, v in n["stats"].get("flows_in", {}).items() if v.get("gaps") or v.get("dups")}
           for n in status["nodes"] if n["alive"]}
    bad = {n: v for n, v in bad.items() if v}
    d.check("no gap or duplicate in any flow of any node", not bad, str(bad) if bad else
            f"{sum(1 for n in status['nodes'] if n['alive'])} nodes")
    res = status["virt"]["resources"]
    d.check("native again", all(who != "vmm" for who in res.values()) and not status["virt"]["vmm"]["loaded"],
            ", ".join(f"{k}={v}" for k, v in sorted(res.items())))


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
            "run_dir": str(d.rd),
            "pause_ms": {"max": max((s["pause_ms"] for s in d.steps), default=0.0),
                         "total": round(sum(s["pause_ms"] for s in d.steps), 3)}}


def _tables(rep: dict[str, Any]) -> None:
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
        checks.add_row(c["check"], "[green]ok[/]" if c["ok"] else "[bold red]FAILED[/]", c["detail"])
    console.print(checks)
    console.print(f"UDP: {rep['io']['udp_sent']} datagrams sent, {rep['io']['udp_replies']} exact replies, "
                  f"{rep['io']['udp_lost']} lost, {rep['io']['udp_mismatched']} wrong; "
                  f"longest pause {rep['pause_ms']['max']:.2f} ms; {rep['seconds']:.1f} s")
    if "compute_rounds" in rep["io"]:
        console.print(f"os1 compute: {rep['io']['compute_rounds']} timeshare rounds, one running at the "
                      f"devirtualization: {'yes' if rep['io'].get('compute_running_at_devirtualize') else 'no'}")


def demo(
    json_file: Annotated[Optional[Path], typer.Option("--json", help="Also write the report as JSON to this file.")] = None,
    run_dir: RunDir = None,
) -> None:
    """The main job: a VMM interposed under a running OS, memory lent, everything devirtualized; all checked."""
    rd = run_dir.resolve() if run_dir is not None else default_run_dir() / "demo"
    for elf in ("timeshare.elf", "udpecho.elf"):
        if not (SAMPLES / elf).exists():
            fail(f"missing {SAMPLES / elf}: run `make guest` first")
    if is_locked(rd):
        fail(f"a cluster is already running in {rd}: `hwemu down --run-dir {rd}` first, or use another --run-dir")
    d = Demo(rd)
    error: str | None = None
    try:
        d.say(f"starting {TOPOLOGY.relative_to(REPO)} in {rd}")
        with contextlib.redirect_stdout(io.StringIO()):
            cluster.up(TOPOLOGY, detach=True, run_dir=rd, json_out=True)
        d.say("cluster up")
        with console.status("demo running") as spinner:
            async def main() -> None:
                async with trio.open_nursery() as n:
                    async def ticker() -> None:
                        while True:
                            spinner.update(f"[bold]{d.phase}[/]  UDP {d.io['udp_replies']}/{d.io['udp_sent']} "
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
    except BaseException as exc:  # noqa: BLE001 - reported as a failed check, the cluster still stopped
        error = f"{d.phase}: " + ("interrupted (Ctrl-C)" if _interrupted(exc) else _describe(exc))
    finally:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                cluster.down(run_dir=rd, timeout=5.0, json_out=True)
            except typer.Exit:
                pass
        d.say("cluster down")
    if error is not None:
        d.check("demo ran to its end", False, error)
    rep = _report(d)
    _tables(rep)
    if json_file is not None:
        json_file.write_text(json.dumps(rep, indent=2, default=str) + "\n")
    if not rep["ok"]:
        fail(f"demo failed: {rep['failed'][0]}" + (f" ({len(rep['failed'])} checks failed)" if len(rep['failed']) > 1 else ""))
    console.print("[bold green]demo passed: every check held[/]")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    if isinstance(exc, (RemoteError, RequestTimeout)):
        return f"{type(exc).__name__}: {exc}"
    return f"{type(exc).__name__}: {exc}"
