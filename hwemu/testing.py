"""The ``cluster`` pytest fixture: start real hwemu clusters in a test
(a pytest plugin, registered as ``hwemu`` through the ``pytest11`` entry point).

    async def test_mine(cluster):
        orch = await cluster("compose/native.toml")      # or a dict / Topology
        reply = await orch.request("cpu0", "ping")

Every cluster gets its own directory under the test's ``tmp_path`` (ipc
endpoints, configs, logs); every process it started is stopped by pid when
the test ends, pass or fail. Needs pytest-trio (``trio_mode = true``).

And what such tests need (docs/testing.md has a whole example):

- :func:`run_program`: run an ELF on an OS of the cluster, its console
  output and exit status back (:class:`Program`);
- :func:`wait_for_console`: wait for a console line matching a regex;
- :func:`forward_port` + :func:`udp_client`: a UDP socket on the host that
  reaches a guest port through the NIC;
- :func:`flow_audit`: every message of every flow delivered exactly once?
"""

from __future__ import annotations

import io
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import trio

from orchestrator import flowaudit
from orchestrator.cli.run import run_program as _run_program
from orchestrator.cluster import Orchestrator
from orchestrator.topology import Topology, load, parse
from protocol.constants import DEFAULT_UART


def _topology(spec: str | Path | dict | Topology) -> Topology:
    if isinstance(spec, Topology):
        return spec
    if isinstance(spec, dict):
        return parse(spec, "<test topology>")
    return load(spec)


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    """An async factory ``await cluster(topology) -> Orchestrator``; all stopped at teardown."""
    started: list[Orchestrator] = []
    async with trio.open_nursery() as nursery:

        async def start(spec: str | Path | dict | Topology, run_dir: Path | None = None) -> Orchestrator:
            orch = Orchestrator(_topology(spec), run_dir or tmp_path / f"c{len(started)}")
            started.append(orch)
            await orch.start(nursery)
            return orch

        try:
            yield start
        finally:
            with trio.CancelScope(shield=True):
                for orch in started:
                    await orch.shutdown()
            nursery.cancel_scope.cancel()


Factory = Callable[..., Awaitable[Orchestrator]]


# -- helpers for tests of your own scenarios (docs/testing.md) ---------------------------


@dataclass
class Program:
    """What a guest program did: its exit ``code``, why it ended (``reason``:
    ``exit``, or the signal / fault that killed it), its ``pid``, and every
    byte it wrote to the console (``output``; ``text`` decoded)."""

    code: int
    reason: str
    pid: int
    output: bytes

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")


def _os_and_uart(status: dict[str, Any], os_name: str | None) -> tuple[dict, dict]:
    nodes = {n["name"]: n for n in status["nodes"]}
    oses = sorted(n for n, v in nodes.items() if v["kind"] == "os" and v["alive"])
    name = os_name or (oses[0] if oses else None)
    if name not in oses:
        raise LookupError(f"no running OS {name!r} in the cluster (running: {', '.join(oses) or 'none'})")
    # its console: where its uart flow goes (natively the uart itself), else the first uart
    uart = nodes.get(status["routes"]["routes"].get(f"io:{name}.uart", ""))
    if uart is None or uart["kind"] != "uart":
        uarts = sorted(n for n, v in nodes.items() if v["kind"] == "uart")
        if not uarts:
            raise LookupError("the cluster has no uart: a program's output has nowhere to go")
        uart = nodes[uarts[0]]
    return nodes[name], uart


def _console_of(orch: Orchestrator, uart: str) -> Path:
    return orch.run_dir / f"{uart}.console.log"


async def run_program(orch: Orchestrator, elf: str | Path | bytes, args: list[str] | None = None, *,
                      os: str | None = None, stdin: bytes | None = None, timeout: float = 60.0) -> Program:
    """Run an RV32 ELF on OS ``os`` (default: the first) and wait for its exit.

    ``args`` are its arguments (``argv[1:]``; ``argv[0]`` is the file's name);
    ``stdin``: bytes its fd 0 reads (then EOF), else fd 0 reads the console.

    Raises:
        trio.TooSlowError: it did not exit within ``timeout`` seconds.
        protocol.errors.RemoteError: the OS refused it (a bad ELF, no memory).
    """
    if isinstance(elf, bytes):
        image, name = elf, "program"
    else:
        image, name = Path(elf).read_bytes(), Path(elf).name
    status = await orch.ctl_status()
    os_node, uart = _os_and_uart(status, os)
    out = io.BytesIO()
    info: dict[str, Any] = {}
    result = await _run_program(orch.run_dir, status, os_node, uart, image, [name, *(args or [])], out,
                                timeout, stdin, info)
    return Program(code=result["code"], reason=result.get("reason") or "exit", pid=result["pid"],
                   output=out.getvalue())


async def wait_for_console(orch: Orchestrator, pattern: str | re.Pattern, *, uart: str = DEFAULT_UART,
                           timeout: float = 10.0, since: int = 0) -> re.Match:
    """Wait until the console of ``uart`` (all it was sent since byte ``since``)
    has a line matching ``pattern`` (a regex, searched in each line); the match.

    Raises:
        AssertionError: none within ``timeout`` seconds (the console's last lines in the message).
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    path = _console_of(orch, uart)
    text = ""
    with trio.move_on_after(timeout):
        while True:
            try:
                text = path.read_bytes()[since:].decode("utf-8", "replace")
            except FileNotFoundError:
                text = ""
            for line in text.splitlines():
                m = regex.search(line)
                if m:
                    return m
            await trio.sleep(0.05)
    tail = "\n".join(text.splitlines()[-10:])
    raise AssertionError(f"no line of {uart}'s console matches {regex.pattern!r} within {timeout:g} s; "
                         f"its last lines:\n{tail}")


def _nic_of(orch: Orchestrator, nic: str | None) -> str:
    if nic is not None:
        return nic
    nics = sorted(n for n, s in orch.topology.nodes.items() if s.kind == "nic")
    if not nics:
        raise LookupError(f"topology {orch.topology.source} has no NIC")
    return nics[0]


async def forward_port(orch: Orchestrator, guest_port: int, host_port: int = 0, *, nic: str | None = None) -> None:
    """Have the NIC put guest UDP port ``guest_port`` on ``127.0.0.1:host_port``
    (0: a free one) from the guest's next bind of that port on: call it
    before the program binds (as ``hwemu run --forward``)."""
    await orch.request(_nic_of(orch, nic), "nic_forward", {"guest_port": guest_port, "host_port": host_port},
                       timeout=20)


class UdpClient:
    """A UDP socket on the host connected to a guest port (see :func:`udp_client`)."""

    def __init__(self, address: tuple[str, int], timeout: float):
        self.address = address
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)
        self.sock.connect(address)

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, size: int = 65535) -> bytes:
        """The next datagram; ``TimeoutError`` if none comes within the client's timeout."""
        return self.sock.recv(size)

    def request(self, data: bytes) -> bytes:
        """Send one datagram and return the reply (blocks this thread: see :meth:`ask`)."""
        self.send(data)
        return self.recv()

    async def ask(self, data: bytes) -> bytes:
        """:meth:`request` in a worker thread: the test's trio loop (and an
        orchestrator the ``cluster`` fixture runs in it) goes on meanwhile."""
        return await trio.to_thread.run_sync(self.request, data)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "UdpClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


async def udp_client(orch: Orchestrator, guest_port: int, *, nic: str | None = None, timeout: float = 10.0,
                     wait: float = 30.0) -> UdpClient:
    """A UDP client bound to guest port ``guest_port`` as the NIC forwards it:
    waits (up to ``wait`` seconds) until the guest has bound the port, then
    connects to its host address. ``timeout``: each receive's."""
    name = _nic_of(orch, nic)
    with trio.move_on_after(wait):
        while True:
            ports = (await orch.request(name, "stats")).body["stats"].get("ports", {})
            host_port = (ports.get(str(guest_port)) or {}).get("host_port")
            if host_port:
                return UdpClient(("127.0.0.1", host_port), timeout)
            await trio.sleep(0.05)
    raise AssertionError(f"the guest did not bind UDP port {guest_port} on {name} within {wait:g} s")


async def node_stats(orch: Orchestrator, node: str) -> dict[str, Any]:
    """``node``'s statistics (its ``stats`` reply)."""
    return (await orch.request(node, "stats")).body["stats"]


async def wait_stats(orch: Orchestrator, node: str, pred: Callable[[dict[str, Any]], bool],
                     timeout: float = 15.0) -> dict[str, Any]:
    """Poll ``node``'s statistics until ``pred(stats)``; fail after ``timeout`` s."""
    with trio.fail_after(timeout):
        while True:
            s = await node_stats(orch, node)
            if pred(s):
                return s
            await trio.sleep(0.01)


async def flow_audit(orch: Orchestrator) -> dict[str, Any]:
    """Every flow's deliveries, from the records of all its receivers
    (orchestrator/flowaudit.py): ``{"ok", "flows": {flow: {sent, receivers,
    lost_count, duplicated_count, ...}}, "problems", "notes"}``. ``ok`` is
    False if any message of any flow was lost or delivered twice."""
    status = await orch.ctl_status()

    async def request(node: str, kind: str, body: dict) -> dict:
        return (await orch.request(node, kind, body, timeout=10.0)).body

    histories, sent, notes = await flowaudit.collect(request, status, orch.run_dir)
    result = flowaudit.audit(histories, sent)
    result["notes"] = notes
    result["ok"] = result["ok"] and not notes
    return result
