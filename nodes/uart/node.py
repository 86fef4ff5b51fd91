"""The ``uart`` node: a console whose wire is a log file plus TCP clients on
loopback (DESIGN.md §3, Devices; the flows are listed in :mod:`protocol.hw`).

Message interface:

- ``uart_write`` {data} — on flow ``io:<os>.uart`` or sent directly. The bytes
  are appended to the log and flushed before the node handles anything else,
  then queued to every connected TCP client. A direct (non-flow) write is
  answered ``ok`` {data: {"logged": n}}; a flow write is not answered.
- ``uart_sync`` {writer?} — reply ``ok`` {data: {"logged": bytes in the log
  file, "have": where ``writer``'s stream ends in the log}}. Since handlers
  run in arrival order, once it answers, every write sent before it is in
  the file.
- A write may carry ``writer`` and ``at`` (its offset in that writer's
  stream; ``resync``: the writer re-sends from there): it is logged exactly
  once, in stream order, across a crash of this node or of a VMM it went
  through (``<log>.writers`` keeps where each stream ends; see
  ``_in_stream`` and docs/recovery.md).
- emits ``uart_rx`` {data} on ``irq:<name>``: bytes typed by TCP clients, in
  arrival order, coalesced up to ``RX_CHUNK`` bytes per message.

Options: ``log`` (path, default ``<run_dir>/<name>.console.log``), ``port``
(TCP port on 127.0.0.1, 0 picks one; ``stats`` shows it as ``tcp_port``),
``client_buffer`` (bytes queued per client before it is dropped, default
256 KiB), ``rx_buffer`` (typed bytes held while ``irq:<name>`` has no route,
default 64 KiB; the excess is dropped and counted), ``log_max`` (bytes, default
64 MiB: once the log reaches it, it is renamed ``<log>.1``, replacing the
previous one, and a new log begins, so the console never takes more than
twice that on disk; ``stats``: ``rotations``; ``logged`` counts the bytes of
the current log, and a reader that kept the old file open finishes it, then
opens the new one, as after a logrotate).

Neither a slow nor a dead client can stall the node: each client has its own
writer task and bounded queue, and a client whose queue overflows is
disconnected (``drops``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

import trio

import protocol.hw  # noqa: F401  (registers the device message kinds)
from nodes.options import Option, integer, optional, string
from nodes.runtime import Node, NodeConfig
from protocol.errors import ProtocolError
from protocol.messages import Message

log = logging.getLogger("hwemu.uart")

RESYNC_WAIT_S = 2.0  # how long writes past a gap in their stream wait for the writer to fill it
WRITERS_KEPT = 64  # writer streams remembered (one per OS life)
RX_CHUNK = 4096  # bytes per uart_rx: a burst of typing or a pasted line
_SNDBUF = 64 * 1024  # a fixed kernel send buffer keeps "bounded" bounded (no autotuning to MBs)


class _ByteQueue:
    """Bytes for one consumer task: put without waiting, taken all at once."""

    __slots__ = ("_chunks", "pending", "_wake")

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self.pending = 0  # bytes queued, not yet taken
        self._wake = trio.Event()

    def __bool__(self) -> bool:
        return self.pending > 0

    def put(self, data: bytes) -> None:
        self._chunks.append(data)
        self.pending += len(data)
        self._wake.set()

    def poke(self) -> None:
        """Wake the consumer to re-check its conditions (nothing was put)."""
        self._wake.set()

    async def wait(self) -> None:
        """Until the next :meth:`put` or :meth:`poke`."""
        await self._wake.wait()
        self._wake = trio.Event()

    def take(self) -> bytes:
        data = b"".join(self._chunks)
        self._chunks.clear()
        self.pending = 0
        return data


class _Client:
    """One TCP client: its stream, its output queue and the scope to drop it."""

    __slots__ = ("stream", "peer", "out", "scope")

    def __init__(self, stream: trio.SocketStream, scope: trio.CancelScope):
        self.stream = stream
        self.peer = "?"
        self.out = _ByteQueue()
        self.scope = scope


class Uart(Node):
    """The console device. See the module docstring for its messages."""

    kind = "uart"
    OPTIONS = {
        "log": Option(optional(string()), None),
        "port": Option(integer(min=0, max=65535), 0),
        "client_buffer": Option(integer(min=1), 256 * 1024),  # bytes
        "rx_buffer": Option(integer(min=1), 64 * 1024),
        "log_max": Option(integer(min=1), 64 << 20),
    }

    def __init__(self, cfg: NodeConfig):
        super().__init__(cfg)
        opts = self.options
        self.log_path = Path(opts["log"] or Path(cfg.run_dir) / f"{cfg.name}.console.log")
        self.port = opts["port"]
        self.client_buffer = opts["client_buffer"]
        self.rx_buffer = opts["rx_buffer"]
        self.log_max = opts["log_max"]
        self.writers: dict[str, int] = {}  # writer -> where its stream ends in the log
        self._gaps: dict[str, float] = {}  # writer -> since when its writes wait for a gap to be filled
        self._writers_file = None
        self._writers_len = 0
        self.held_writes = self.dup_bytes = self.gap_bytes = 0
        self.rotations = 0
        self.rx_flow = f"irq:{cfg.name}"
        self.tcp_port = 0
        self.logged = 0
        self.bytes_out = 0
        self.bytes_in = 0
        self.drops = 0  # clients disconnected because their queue overflowed
        self.rx_dropped = 0  # typed bytes lost while irq:<name> had no route
        self.clients: set[_Client] = set()
        self._log = None
        self._listeners: list[trio.SocketListener] = []
        self._rx = _ByteQueue()  # typed bytes not yet emitted; poked when the routes change
        self._rx_space = trio.Event()  # the pump took data out

    # -- life cycle -------------------------------------------------------------

    async def setup(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        writers_path = self.log_path.with_name(self.log_path.name + ".writers")
        try:  # left by a life of this node that was killed: its writers must re-sync
            self.writers = {w: int(n) for w, n in json.loads(writers_path.read_bytes() or b"{}").items()}
        except (OSError, ValueError, AttributeError):
            self.writers = {}
        self._writers_file = open(writers_path, "wb")
        if self.writers:
            self._save_writers()
        self._log = open(self.log_path, "ab")
        self.logged = os.fstat(self._log.fileno()).st_size
        # loopback only: the console is as private as the machine's run directory
        self._listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.tcp_port = self._listeners[0].socket.getsockname()[1]

    async def work(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._rx_pump)
        nursery.start_soon(trio.serve_listeners, self._serve_client, self._listeners)

    async def teardown(self) -> None:
        if self._writers_file is not None:  # stopped, not killed: the next start is a fresh device
            self._writers_file.close()
            self.log_path.with_name(self.log_path.name + ".writers").unlink(missing_ok=True)
        if self._log is not None:
            self._log.close()
            self._log = None
        for listener in self._listeners:
            listener.socket.close()

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(tcp_port=self.tcp_port, log=str(self.log_path), logged=self.logged,
                 bytes_out=self.bytes_out, bytes_in=self.bytes_in, clients=len(self.clients),
                 drops=self.drops, rx_dropped=self.rx_dropped, log_max=self.log_max, rotations=self.rotations,
                 held_writes=self.held_writes, dup_bytes=self.dup_bytes, gap_bytes=self.gap_bytes)
        return s

    # -- output: uart_write -> log file -> TCP clients ------------------------------

    def _in_stream(self, body: dict[str, Any]) -> bytes | None:
        """What of a write goes into the log, by its place in its writer's stream.

        A write that names its ``writer`` (an OS's console driver: ``<os>:<its
        incarnation>``) and its byte offset ``at`` in that stream is logged
        exactly once: bytes the log has already are skipped (``dup_bytes``); a
        write past a gap (bytes lost in a process that died: this node's
        previous life, a VMM) is held back (dropped, ``held_writes``) for up to
        RESYNC_WAIT_S, while the driver re-sends from where the log ends
        (``resync``, after ``uart_sync`` {writer}); after that it is taken as
        it comes and the gap counted (``gap_bytes``). ``<log>.writers`` keeps
        where each stream ends, so this holds across a crash of this node.
        """
        data, writer, at = body["data"], body.get("writer"), body.get("at")
        if not isinstance(writer, str) or not isinstance(at, int):
            return data
        expected = self.writers.get(writer)
        if expected is None or body.get("resync"):
            expected = at
        if at > expected:
            since = self._gaps.setdefault(writer, time.monotonic())
            if time.monotonic() - since < RESYNC_WAIT_S:
                self.held_writes += 1
                return None
            self.gap_bytes += at - expected
            expected = at
        self._gaps.pop(writer, None)
        if at < expected:
            skip = min(len(data), expected - at)
            self.dup_bytes += skip
            data = data[skip:]
        self.writers[writer] = max(expected, at + len(body["data"]))
        return data

    def _save_writers(self) -> None:
        """Where each writer's stream ends in the log (page cache: survives a kill -9 of this process)."""
        doc = json.dumps(dict(list(self.writers.items())[-WRITERS_KEPT:])).encode()
        self._writers_file.seek(0)
        self._writers_file.write(doc.ljust(max(len(doc), self._writers_len)))
        self._writers_file.flush()
        self._writers_len = len(doc)

    async def on_uart_write(self, msg: Message) -> None:
        data = self._in_stream(msg.body)
        if data is None:
            if msg.flow is None:
                await self.party.reply(msg, "ok", {"data": {"logged": self.logged, "held": True}})
            return
        # the log is the durable record: written and flushed before anything
        # after this message is handled (uart_sync relies on that ordering)
        self._log.write(data)
        self._log.flush()
        self.logged += len(data)
        self.bytes_out += len(data)
        if "writer" in msg.body:
            self._save_writers()
        if self.logged >= self.log_max:
            self._rotate()
        queued = False
        for client in list(self.clients):
            if client.out.pending + len(data) > self.client_buffer:
                self._drop(client)
                continue
            client.out.put(data)
            queued = True
        if queued:
            # the inbox loop does not yield while messages wait; let the
            # client writers hand this to the kernel before the next write,
            # or a burst would overflow even a client that keeps up
            await trio.lowlevel.checkpoint()
        if msg.flow is None:
            await self.party.reply(msg, "ok", {"data": {"logged": self.logged}})

    def _rotate(self) -> None:
        """The log is full: it becomes ``<log>.1`` (the previous one goes) and a new one begins."""
        self._log.close()
        os.replace(self.log_path, self.log_path.with_name(self.log_path.name + ".1"))
        self._log = open(self.log_path, "ab")
        self.logged = 0
        self.rotations += 1

    async def on_uart_sync(self, msg: Message) -> None:
        data = {"logged": self.logged}
        writer = msg.body.get("writer")
        if isinstance(writer, str):  # where that writer's stream ends in the log (None: nothing of it)
            data["have"] = self.writers.get(writer)
        await self.party.reply(msg, "ok", {"data": data})

    def _drop(self, client: _Client) -> None:
        log.warning("%s: client %s does not keep up (%d bytes queued): disconnected",
                    self.name, client.peer, client.out.pending)
        self.drops += 1
        self.clients.discard(client)
        client.scope.cancel()

    async def _serve_client(self, stream: trio.SocketStream) -> None:
        try:
            stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SNDBUF)
            peer = stream.socket.getpeername()
        except OSError:
            await trio.aclose_forcefully(stream)
            return
        with trio.CancelScope() as scope:
            client = _Client(stream, scope)
            client.peer = f"{peer[0]}:{peer[1]}"
            self.clients.add(client)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._client_writer, client)
                    await self._client_reader(client)
                    # EOF: a closed client and a half-closed one look alike
                    # here; ending the session is what keeps closed ones from
                    # lingering until the next output (nc does not half-close)
                    nursery.cancel_scope.cancel()
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass  # a client that vanished is no concern of the machine's
            finally:
                self.clients.discard(client)
        await trio.aclose_forcefully(stream)

    async def _client_writer(self, client: _Client) -> None:
        while True:
            if not client.out:
                await client.out.wait()
                continue
            await client.stream.send_all(client.out.take())

    # -- input: TCP clients -> uart_rx on irq:<name> ---------------------------------

    async def _client_reader(self, client: _Client) -> None:
        while True:
            data = await client.stream.receive_some(RX_CHUNK)
            if not data:
                return
            self.bytes_in += len(data)
            await self._rx_put(data)

    async def _rx_put(self, data: bytes) -> None:
        if self.routes.get(self.rx_flow) is not None:
            # someone takes interrupts: stop reading the socket instead of
            # losing keystrokes (TCP flow control pushes back on the typist)
            while self._rx.pending >= self.rx_buffer and self.routes.get(self.rx_flow) is not None:
                await self._rx_space.wait()
        room = max(0, self.rx_buffer - self._rx.pending)
        if len(data) > room:
            self.rx_dropped += len(data) - room
            data = data[:room]
        if data:
            self._rx.put(data)

    async def _rx_pump(self) -> None:
        """The one emitter of ``irq:<name>``, so uart_rx leaves in typing order."""
        while True:
            if not self._rx or self.routes.get(self.rx_flow) is None:
                await self._rx.wait()
                continue
            data = self._rx.take()
            self._rx_space.set()
            self._rx_space = trio.Event()
            for start in range(0, len(data), RX_CHUNK):
                try:
                    await self.emit(self.rx_flow, "uart_rx", {"data": data[start:start + RX_CHUNK]})
                except ProtocolError as exc:  # the route vanished between check and send
                    self.rx_dropped += len(data) - start
                    log.warning("%s: uart_rx not delivered: %s", self.name, exc)
                    break

    async def on_route_install(self, msg: Message) -> None:
        await super().on_route_install(msg)
        self._rx.poke()  # irq:<name> may have just got a receiver
        self._rx_space.set()  # or lost it: blocked readers re-check and drop instead
        self._rx_space = trio.Event()
