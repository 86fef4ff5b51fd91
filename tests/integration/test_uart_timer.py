"""The UART and timer devices (DESIGN.md §3, Devices) in real clusters: a
sink node stands where the OS would (``tests.fixtures.irqsink``), sending
device commands on ``io:os1.*`` and taking interrupts on ``irq:*``; the
console's TCP side is driven with real sockets on loopback."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from hwemu.testing import node_stats as stats
from hwemu.testing import wait_stats
from orchestrator.client import call
from protocol.errors import RemoteError
from tests.integration.procs import identity

pytestmark = pytest.mark.integration

SINK = {"kind": "irqsink", "module": "tests.fixtures.irqsink"}


def uart_topology(options: dict | None = None, routed: bool = True) -> dict:
    routes = {"io:os1.uart": "uart0"}
    if routed:
        routes["irq:uart0"] = "os1"
    return {"cluster": {"name": "uart"},
            "nodes": {"uart0": {"kind": "uart", "options": options or {}}, "os1": SINK},
            "routes": routes}


def timer_topology(period_ms: float) -> dict:
    return {"cluster": {"name": "timer"},
            "nodes": {"timer0": {"kind": "timer", "options": {"period_ms": period_ms}}, "os1": SINK},
            "routes": {"irq:timer0": "os1", "io:os1.timer": "timer0"}}


async def wait_events(orch, pred, timeout: float = 10.0) -> dict:
    """Poll the sink's record until ``pred(events)``; fail after ``timeout`` s."""
    with trio.fail_after(timeout):
        while True:
            data = (await orch.request("os1", "sink_events", timeout=10)).body["data"]
            if pred(data["events"]):
                return data
            await trio.sleep(0.01)


async def read_exactly(stream: trio.SocketStream, n: int, timeout: float = 20.0) -> bytes:
    got = bytearray()
    with trio.fail_after(timeout):
        while len(got) < n:
            chunk = await stream.receive_some(65536)
            assert chunk, f"console closed after {len(got)} of {n} bytes"
            got += chunk
    return bytes(got)


async def test_console_output_reaches_log_and_tcp_client_in_order_and_sync_counts_the_log(cluster, tmp_path):
    log_path = tmp_path / "console.log"
    orch = await cluster(uart_topology({"log": str(log_path)}))
    port = (await stats(orch, "uart0"))["tcp_port"]
    assert port > 0
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await wait_stats(orch, "uart0", lambda s: s["clients"] == 1)

    lines = [f"line {i:04d} {'x' * (i % 37)}\n".encode() for i in range(500)]
    reply = await orch.request("os1", "sink_emit", {"flow": "io:os1.uart", "kind": "uart_write",
                                                    "bodies": [{"data": b} for b in lines]}, timeout=30)
    assert reply.body["data"]["fseq"] == len(lines)
    # two senders are not ordered with each other: let the flow land first
    await wait_stats(orch, "uart0", lambda s: s["flows_in"].get("io:os1.uart", {}).get("consumed") == len(lines))
    direct = await orch.request("uart0", "uart_write", {"data": b"direct\n"})
    expected = b"".join(lines) + b"direct\n"
    assert direct.body["data"]["logged"] == len(expected)

    synced = await orch.request("uart0", "uart_sync")
    assert synced.body["data"]["logged"] == len(expected) == log_path.stat().st_size
    assert log_path.read_bytes() == expected
    assert await read_exactly(client, len(expected)) == expected
    s = await stats(orch, "uart0")
    assert (s["bytes_out"], s["drops"]) == (len(expected), 0)
    await client.aclose()


async def test_console_log_defaults_to_run_dir_and_sync_counts_what_was_there(cluster, tmp_path):
    run_dir = tmp_path / "rd"
    run_dir.mkdir(mode=0o700)  # a run directory must be private (protocol/auth.py)
    (run_dir / "uart0.console.log").write_bytes(b"earlier boot\n")
    orch = await cluster(uart_topology(), run_dir=run_dir)
    await orch.request("uart0", "uart_write", {"data": b"again\n"})
    synced = await orch.request("uart0", "uart_sync")
    assert synced.body["data"]["logged"] == (run_dir / "uart0.console.log").stat().st_size == 19


async def test_bytes_typed_on_tcp_reach_the_sink_as_uart_rx_with_consecutive_fseq(cluster):
    orch = await cluster(uart_topology())
    port = (await stats(orch, "uart0"))["tcp_port"]
    typed = [f"cmd {i} {'y' * (i % 200)}\n".encode() for i in range(600)]  # ~70 KB: many uart_rx
    total = sum(map(len, typed))
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        for piece in typed:
            await client.send_all(piece)
        data = await wait_events(orch, lambda ev: sum(len(e["body"]["data"]) for e in ev) >= total, timeout=20)
    events = data["events"]
    assert all((e["flow"], e["kind"]) == ("irq:uart0", "uart_rx") for e in events)
    assert [e["fseq"] for e in events] == list(range(1, len(events) + 1))
    assert b"".join(e["body"]["data"] for e in events) == b"".join(typed)
    await wait_stats(orch, "uart0", lambda s: s["clients"] == 0)  # a closed client is gone at once
    assert data["flows"]["irq:uart0"] == {"gaps": 0, "dups": 0}
    s = await stats(orch, "uart0")
    assert (s["bytes_in"], s["rx_dropped"]) == (total, 0)


async def test_typed_bytes_without_a_route_are_buffered_to_the_bound_then_delivered_once_routed(cluster):
    orch = await cluster(uart_topology({"rx_buffer": 100}, routed=False))
    port = (await stats(orch, "uart0"))["tcp_port"]
    typed = bytes(range(256)) + b"tail" * 11  # 300 bytes
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(typed)
        s = await wait_stats(orch, "uart0", lambda s: s["bytes_in"] == 300)
        assert s["rx_dropped"] == 200
        await orch.routes.change({"irq:uart0": "os1"})
        data = await wait_events(orch, lambda ev: sum(len(e["body"]["data"]) for e in ev) >= 100)
    assert b"".join(e["body"]["data"] for e in data["events"]) == typed[:100]
    assert [e["fseq"] for e in data["events"]] == list(range(1, len(data["events"]) + 1))


async def test_a_client_that_never_reads_is_dropped_and_does_not_stop_other_output(cluster):
    orch = await cluster(uart_topology())
    port = (await stats(orch, "uart0"))["tcp_port"]
    stalled = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # little room in the kernel either
    try:
        stalled.connect(("127.0.0.1", port))
        reader = await trio.open_tcp_stream("127.0.0.1", port)
        await wait_stats(orch, "uart0", lambda s: s["clients"] == 2)
        # 2 MiB: far more than the stalled client's queue (256 KiB) plus kernel
        # buffers. Written in rounds the reader confirms, so the reader is
        # never more than a round behind: only the stalled client can overflow.
        blocks = [bytes([65 + i % 26]) * 4096 for i in range(512)]
        got = bytearray()
        for start in range(0, len(blocks), 16):
            chunk = blocks[start:start + 16]
            await orch.request("os1", "sink_emit", {"flow": "io:os1.uart", "kind": "uart_write",
                                                    "bodies": [{"data": b} for b in chunk]})
            got += await read_exactly(reader, sum(map(len, chunk)))
        expected = b"".join(blocks)
        assert bytes(got) == expected
        s = await wait_stats(orch, "uart0", lambda s: s["clients"] == 1)
        assert s["drops"] == 1
        assert (await orch.request("uart0", "uart_sync")).body["data"]["logged"] == len(expected)
        await reader.aclose()
    finally:
        stalled.close()


async def test_ticks_arrive_with_consecutive_n_and_fseq_and_alarms_fire_once_each(cluster):
    orch = await cluster(timer_topology(period_ms=10))
    await wait_events(orch, lambda ev: sum(e["kind"] == "tick" for e in ev) >= 10)
    ids = [1, 2, 3, 4, 5, 6]
    # armed on the device's command flow, as an OS would
    await orch.request("os1", "sink_emit", {"flow": "io:os1.timer", "kind": "timer_alarm",
                                            "bodies": [{"id": i, "delay_ms": 5 * i} for i in ids]})
    await wait_events(orch, lambda ev: {e["body"]["id"] for e in ev if e["kind"] == "alarm"} >= set(ids))
    assert (await orch.request("timer0", "timer_set", {"period_ms": 0})).body["data"] == {"period_ms": 0.0}
    # a later sentinel alarm: everything due before it has arrived by the time it does
    await orch.request("timer0", "timer_alarm", {"id": 99, "delay_ms": 200})
    data = await wait_events(orch, lambda ev: any(e["kind"] == "alarm" and e["body"]["id"] == 99 for e in ev))
    events = data["events"]
    assert all(e["flow"] == "irq:timer0" for e in events)
    assert [e["fseq"] for e in events] == list(range(1, len(events) + 1))
    ticks = [e for e in events if e["kind"] == "tick"]
    assert [t["body"]["n"] for t in ticks] == list(range(1, len(ticks) + 1))
    alarms = [e["body"]["id"] for e in events if e["kind"] == "alarm"]
    assert sorted(alarms) == ids + [99]
    assert events[-1]["kind"] == "alarm", "a tick came after the timer was stopped"
    assert data["flows"]["irq:timer0"] == {"gaps": 0, "dups": 0}
    s = await stats(orch, "timer0")
    assert (s["period_ms"], s["alarms_pending"], s["ticks"]) == (0, 0, len(ticks))


async def test_timer_now_reads_the_wall_clock_and_bad_periods_are_refused(cluster):
    orch = await cluster(timer_topology(period_ms=0))
    before = time.time_ns()
    now = (await orch.request("timer0", "timer_now")).body["data"]["time_ns"]
    after = time.time_ns()
    assert before <= now <= after
    with pytest.raises(RemoteError, match="period_ms"):
        await orch.request("timer0", "timer_set", {"period_ms": -1})
    assert (await stats(orch, "timer0"))["period_ms"] == 0


CLI = [sys.executable, "-m", "orchestrator.cli.main"]
TOPOLOGY_TOML = """
[cluster]
name = "console"
[nodes.uart0]
kind = "uart"
[nodes.os1]
kind = "irqsink"
module = "tests.fixtures.irqsink"
[routes]
"irq:uart0" = "os1"
"""


async def test_hwemu_console_shows_output_types_input_and_refuses_unknown_or_non_uart_nodes(tmp_path):
    rd = tmp_path / "rd"
    topo = tmp_path / "console.toml"
    topo.write_text(TOPOLOGY_TOML)
    repo = Path(__file__).resolve().parents[2]
    up = await trio.run_process([*CLI, "up", "--detach", "--run-dir", str(rd), str(topo)],
                                cwd=repo, capture_stdout=True, capture_stderr=True, check=False)
    assert up.returncode == 0, up.stderr.decode()
    try:
        async def ctl(node: str, kind: str, body: dict | None = None) -> dict:
            return (await call(rd, "ctl_request", {"node": node, "kind": kind, "body": body or {}}))["body"]

        proc = await trio.lowlevel.open_process([*CLI, "console", "uart0", "--run-dir", str(rd)], cwd=repo,
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            with trio.fail_after(20):
                while (await ctl("uart0", "stats"))["stats"]["clients"] != 1:
                    await trio.sleep(0.02)
                await ctl("uart0", "uart_write", {"data": b"hello from the machine\n"})
                shown = b""
                while b"hello from the machine\n" not in shown:
                    chunk = await proc.stdout.receive_some(4096)
                    assert chunk, "hwemu console ended early"
                    shown += chunk
                await proc.stdin.send_all(b"typed on the console\n")
                while b"".join(e["body"]["data"] for e in (await ctl("os1", "sink_events"))["data"]["events"]) \
                        != b"typed on the console\n":
                    await trio.sleep(0.02)
                await proc.stdin.aclose()  # EOF ends the session
                assert await proc.wait() == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

        for name, why in (("nope", "no node 'nope'"), ("os1", "not a uart")):
            res = await trio.run_process([*CLI, "console", name, "--run-dir", str(rd)], cwd=repo,
                                         capture_stdout=True, capture_stderr=True, check=False)
            assert res.returncode == 1
            assert why in res.stderr.decode()
    finally:
        with trio.CancelScope(shield=True):  # stop every process even when the test failed
            await trio.run_process([*CLI, "down", "--run-dir", str(rd)], cwd=repo, capture_stdout=True, check=False)


async def test_clients_that_reset_mid_output_leave_the_console_running(cluster):
    orch = await cluster(uart_topology())
    pid = identity((await orch.request("uart0", "ping")).body)
    port = (await stats(orch, "uart0"))["tcp_port"]
    for _ in range(3):
        rude = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        rude.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        rude.connect(("127.0.0.1", port))
        rude.sendall(b"half a command")
        await wait_stats(orch, "uart0", lambda s: s["clients"] == 1)
        await orch.request("uart0", "uart_write", {"data": b"z" * 200_000})
        rude.close()
        await wait_stats(orch, "uart0", lambda s: s["clients"] == 0)
    assert identity((await orch.request("uart0", "ping")).body) == pid
    s = await stats(orch, "uart0")
    assert (s["state"], s["bytes_in"]) == ("running", 3 * len(b"half a command"))
    assert orch.supervisor.nodes["uart0"].restarts == 0
