"""The ``nic`` node: guest UDP sockets bridged to host UDP sockets on loopback
(DESIGN.md §3, Devices; flows in :mod:`protocol.hw`), so a real client outside
the cluster can talk to a guest program. Traffic never leaves 127.0.0.0/8.

Message interface (for the OS driver), on flow ``io:<os>.nic`` or sent
directly as requests:

- ``nic_bind`` {id, port} — open guest UDP port ``port`` (1..65535; 0 = the
  NIC picks a free one from 49152 up and returns it). A port listed in the
  ``forward`` option gets a host socket on ``127.0.0.1:<host_port>``; any
  other an ephemeral host socket on 127.0.0.1. Completion carries ``port``.
- ``nic_send`` {id, src_port, dst_host, dst_port, data} — send one datagram
  from the (bound) guest port's host socket, so the peer sees it come from
  ``127.0.0.1:<host_port>``.
- ``nic_close`` {id, port} — close the guest port and its host socket; its
  queued datagrams are dropped.
- ``nic_rx_ack`` {port, count} — no completion: the driver hands back
  ``count`` receive slots of ``port`` (see below) once the guest has taken the
  datagrams (``recvfrom``).
- completion ``nic_done`` {id, status, port?, reason?}: ``status`` 0, or
  -errno with a ``reason``: ``-EINVAL`` (bad port number), ``-EADDRINUSE``
  (guest port already bound, or the forwarded host port is taken),
  ``-EBADF`` (port not bound, or bound by another issuer), ``-EMSGSIZE``
  (datagram over ``mtu``), ``-ENETUNREACH`` (``dst_host`` not an IPv4 address
  in 127.0.0.0/8; names are not resolved), other -errno from the host socket.
  Flow commands complete with ``nic_done`` emitted on ``irq:<name>``; direct
  requests get a ``nic_done`` reply.
- ``nic_forward`` {guest_port, host_port} (direct request) — add or change a
  ``forward`` entry (taking effect at the port's next bind); reply ``ok``.
  The table outlives a crash of this process (``<run_dir>/<name>.forward.json``,
  removed when it stops cleanly), so a NIC restarted by the supervisor binds
  the guest's ports again on the same host ports (docs/recovery.md).
- ``nic_rx_post`` {buffers, space, reset?} — no completion: the driver posts
  receive buffers, the guest physical addresses (page-aligned) of page frames
  of its own address space ``space`` (an issuer may only post its own:
  otherwise the NIC would be a deputy into another instance's memory); with
  ``reset`` they replace every buffer the issuer posted before. With
  ``inline`` (kept until a post without it that has ``reset``) the issuer's
  datagrams travel in their ``nic_rx`` itself (``data``; ``buffers`` empty):
  no DMA, so the driver waits for no memory round trip before it has the
  datagram, and none of its buffers is taken.
- interrupt ``nic_rx`` {port, src_host, src_port, length, buffers} on
  ``irq:<name>``: a datagram of ``length`` bytes received for guest ``port``,
  written by DMA (``mem_write`` to ``memctl``) into ``buffers``, one page
  each, in order, taken from the buffers the port's owner posted (0 bytes: no
  buffer). The buffers are the driver's again: it reads the datagram out and
  posts them anew. For an issuer that asked for ``inline``, ``data`` carries
  the datagram and ``buffers`` is empty.

Receive ring: each bound port has ``rx_queue`` slots (default 64). A
datagram takes a slot when it arrives from the host and keeps it until the
driver returns it with ``nic_rx_ack``, so the ring bounds what the guest has
not yet consumed, as a real NIC's descriptor ring does. A datagram that
arrives with no free slot is dropped and counted (``drops``), as is one for
which its owner has not posted enough buffers (``no_buffers``) or whose DMA
failed (``dma_errors``; those buffers are not reused). A driver that
never acks receives ``rx_queue`` datagrams per port and then only drops.

The issuer of a command is ``<os>`` of its flow ``io:<os>.nic``, or the
sender of a direct request; a port belongs to the issuer that bound it. A
command may name, in ``os``, the OS its sender acts for: honoured only when
the route table sends ``io:<os>.nic`` to that sender (the VMM serving the
OS's virtual-mode driver, FIG. 5), else refused ``-EPERM``. So a port keeps
its owner, the OS, whichever way its driver reaches the NIC.

Options: ``forward`` ({guest_port: host_port}; host_port 0 = any free port,
``stats`` shows the actual one once bound), ``rx_queue`` (default 64),
``memctl`` (node name, default ``"memctl"``),
``mtu`` (largest datagram, default and at most 65507).

``stats`` adds ``ports`` {guest_port: {host_port, owner, rx, tx, drops,
host_drops, queued, inflight}} (``host_drops``: datagrams the host kernel
dropped because the port's socket queue was full under a flood, read from
/proc/net/udp), ``rx_dropped`` {total, ring, host} (every received datagram
that never reached the guest is counted in one of them; ``hwemu status``
shows the total), ``buffers`` {owner: posted and free}, and totals
(``refused`` non-loopback sends, ``oversize``, ``unrouted`` interrupts,
``stale_acks``, ``no_buffers``, ``dma_errors``, ``bad_posts``).
"""

from __future__ import annotations

import errno
import ipaddress
import json
import logging
import os
import socket
from collections import deque
from pathlib import Path
from typing import Any

import trio

import protocol.hw  # noqa: F401  (registers the device message kinds)
from nodes.errors import OptionError, Refused
from nodes.options import Option, integer, mapping, optional, string
from nodes.runtime import Node, NodeConfig
from protocol.constants import DEFAULT_MEMCTL
from protocol.constants import PAGE_SIZE as PAGE
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.messages import Message

log = logging.getLogger("hwemu.nic")

MAX_DATAGRAM = 65507  # the largest UDP payload over IPv4
DMA_TIMEOUT = 10.0  # s for one memctl request
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
PROC_UDP = Path("/proc/net/udp")  # Linux: per socket, the datagrams its full receive queue dropped
EPHEMERAL = range(49152, 65536)  # guest ports the NIC picks for bind(port 0)
HOST = "127.0.0.1"


class _Port:
    """One bound guest port: its host socket, receive ring and counters."""

    __slots__ = ("guest", "owner", "sock", "host_port", "queue", "inflight", "rx", "tx", "drops", "host_drops",
                 "scope")

    def __init__(self, guest: int, owner: str, sock: trio.socket.SocketType, host_port: int):
        self.guest = guest
        self.owner = owner
        self.sock = sock
        self.host_port = host_port
        self.queue: deque[tuple[bytes, str, int]] = deque()  # received, not yet emitted
        self.inflight = 0  # emitted, not yet acked by the driver
        self.rx = 0  # datagrams delivered to the guest (emitted)
        self.tx = 0
        self.drops = 0  # dropped here: ring full, no buffers, DMA failed, nobody took the interrupt
        self.host_drops = 0  # dropped by the host kernel: the socket's receive queue was full (/proc/net/udp)
        self.scope = trio.CancelScope()

    def view(self) -> dict[str, Any]:
        return {"host_port": self.host_port, "owner": self.owner, "rx": self.rx, "tx": self.tx,
                "drops": self.drops, "host_drops": self.host_drops, "queued": len(self.queue),
                "inflight": self.inflight}


def _port_number(value: Any, what: str, *, zero: bool = False) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not (0 if zero else 1) <= value <= 65535:
        raise Refused(errno.EINVAL, f"{what} {value!r}: expected {0 if zero else 1}..65535")
    return value


def _runs(buffers: list[tuple[str, int]]) -> list[tuple[int, int]]:
    """(first index, length) of each run of buffers on consecutive pages of one space."""
    runs: list[tuple[int, int]] = []
    for i, (space, addr) in enumerate(buffers):
        if runs and buffers[i - 1] == (space, addr - PAGE):
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((i, 1))
    return runs


class Nic(Node):
    """The UDP network device. See the module docstring for its messages."""

    kind = "nic"
    OPTIONS = {
        "forward": Option(optional(mapping(integer(min=0, max=65535))), None),
        "rx_queue": Option(integer(min=1), 64),
        "mtu": Option(integer(min=1, max=MAX_DATAGRAM), MAX_DATAGRAM),
        "memctl": Option(string(), DEFAULT_MEMCTL),
    }

    def __init__(self, cfg: NodeConfig):
        super().__init__(cfg)
        opts = self.options
        self.forward: dict[int, int] = {}
        # the forwards added at runtime (nic_forward) outlive a crash of this process, as a
        # host's NAT table outlives a reset of its card: kept here, removed at a clean stop
        self.forward_file = Path(cfg.run_dir) / f"{cfg.name}.forward.json"
        for guest, host in {**(opts["forward"] or {}), **self._saved_forwards()}.items():
            try:
                self.forward[_port_number(int(guest), "guest port")] = _port_number(host, "host port", zero=True)
            except (ValueError, Refused) as exc:
                raise OptionError(self.kind, cfg.name, "forward", {guest: host},
                                  f"guest ports 1..65535 to host ports: {exc}") from None
        self.rx_queue = opts["rx_queue"]
        self.mtu = opts["mtu"]
        self.memctl = opts["memctl"]
        self.irq_flow = f"irq:{cfg.name}"
        self.ports: dict[int, _Port] = {}
        self.buffers: dict[str, deque[tuple[str, int]]] = {}  # owner -> posted buffers (space, addr)
        self.inline: set[str] = set()  # owners that take their datagrams in the nic_rx (nic_rx_post inline)
        self.counts = {"refused": 0, "oversize": 0, "unrouted": 0, "stale_acks": 0, "errors": 0,
                       "no_buffers": 0, "dma_errors": 0, "bad_posts": 0,
                       "closed_drops": 0, "closed_host_drops": 0}  # drops of ports closed since
        self._wake = trio.Event()  # a datagram was queued

    # -- life cycle -------------------------------------------------------------

    def _saved_forwards(self) -> dict[str, int]:
        try:
            saved = json.loads(self.forward_file.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s: ignoring %s: %s", self.name, self.forward_file, exc)
            return {}
        if saved:
            log.warning("%s: restarted: forwards added at runtime restored: %s", self.name, saved)
        return saved if isinstance(saved, dict) else {}

    def _save_forwards(self) -> None:
        tmp = self.forward_file.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({str(g): h for g, h in sorted(self.forward.items())}))
            os.replace(tmp, self.forward_file)
        except OSError as exc:  # a full disk costs the forwards a restart, not the request
            log.warning("%s: cannot keep the forwards in %s: %s", self.name, self.forward_file, exc)

    async def work(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._rx_pump)

    async def teardown(self) -> None:
        for port in self.ports.values():
            port.scope.cancel()
            port.sock.close()
        self.ports.clear()
        self.forward_file.unlink(missing_ok=True)  # stopped, not killed: the next start is a fresh card

    def _count_host_drops(self) -> None:
        """Read each host socket's drop count (its receive queue was full) from the
        host kernel; on a host without /proc/net/udp they stay uncounted (0)."""
        if not self.ports:
            return
        try:
            table = PROC_UDP.read_text().splitlines()[1:]
        except OSError:
            return
        drops = {}  # socket inode -> drops (the last two columns: ... inode ref pointer drops)
        for line in table:
            cols = line.split()
            if len(cols) >= 13:
                drops[cols[9]] = int(cols[-1])
        for port in self.ports.values():
            try:
                inode = str(os.fstat(port.sock.fileno()).st_ino)
            except OSError:
                continue
            port.host_drops = drops.get(inode, port.host_drops)

    def dropped(self) -> dict[str, int]:
        """Received datagrams that never reached the guest, by where they were dropped."""
        self._count_host_drops()
        ring = sum(p.drops for p in self.ports.values()) + self.counts["closed_drops"]
        host = sum(p.host_drops for p in self.ports.values()) + self.counts["closed_host_drops"]
        return {"total": ring + host, "ring": ring, "host": host}

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(self.counts)
        s["rx_dropped"] = self.dropped()  # first: it reads the host's counts the ports show
        s["ports"] = {str(g): p.view() for g, p in sorted(self.ports.items())}
        s["forward"] = {str(g): h for g, h in sorted(self.forward.items())}
        s["buffers"] = {o: len(b) for o, b in sorted(self.buffers.items())}
        return s

    # -- commands -------------------------------------------------------------------

    def _issuer(self, msg: Message) -> str:
        flow = msg.flow
        if flow is not None and flow.startswith("io:") and flow.endswith(".nic"):
            sender = flow[3:-4]
        else:
            sender = msg.src
        acting_for = msg.body.get("os")
        if acting_for is None or acting_for == sender:
            return sender
        if sender not in self.routed_to(f"io:{acting_for}.nic"):  # (either table during a route change)
            raise Refused(errno.EPERM, f"{sender} may not act for {acting_for}: io:{acting_for}.nic is not "
                                        f"routed to it")
        return acting_for

    async def _run(self, msg: Message, action) -> None:
        body: dict[str, Any]
        try:
            body = {"id": msg.body["id"], "status": 0, **(await action(msg))}
        except Refused as exc:
            self.counts["errors"] += 1
            body = {"id": msg.body["id"], "status": exc.status, "reason": exc.reason}
        if msg.flow is None:
            await self.party.reply(msg, "nic_done", body)
        else:
            await self._raise_irq("nic_done", body)

    async def _raise_irq(self, kind: str, body: dict[str, Any]) -> bool:
        try:
            await self.emit(self.irq_flow, kind, body)
        except ProtocolError as exc:  # nobody takes the interrupt
            self.counts["unrouted"] += 1
            log.warning("%s: %s not delivered: %s", self.name, kind, exc)
            return False
        return True

    def _owned(self, msg: Message, port: Any, what: str) -> _Port:
        issuer = self._issuer(msg)
        p = self.ports.get(port)
        if p is None:
            raise Refused(errno.EBADF, f"{what} {port!r} is not bound")
        if p.owner != issuer:
            raise Refused(errno.EBADF, f"{what} {port} is bound by {p.owner}, not {issuer}")
        return p

    async def on_nic_bind(self, msg: Message) -> None:
        await self._run(msg, self._bind)

    async def _bind(self, msg: Message) -> dict[str, Any]:
        owner = self._issuer(msg)
        guest = _port_number(msg.body["port"], "port", zero=True)
        if guest == 0:
            guest = next((p for p in EPHEMERAL if p not in self.ports), 0)
            if not guest:
                raise Refused(errno.EADDRINUSE, "no free guest port")
        elif guest in self.ports:
            raise Refused(errno.EADDRINUSE, f"guest port {guest} is already bound")
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await sock.bind((HOST, self.forward.get(guest, 0)))
        except OSError as exc:
            sock.close()
            raise Refused(exc.errno or errno.EIO,
                           f"host port {self.forward.get(guest, 0)} for guest port {guest}: {exc.strerror}") from None
        port = self.ports[guest] = _Port(guest, owner, sock, sock.getsockname()[1])
        self.nursery.start_soon(self._reader, port)
        return {"port": guest}

    async def on_nic_close(self, msg: Message) -> None:
        await self._run(msg, self._close)

    async def _close(self, msg: Message) -> dict[str, Any]:
        port = self._owned(msg, msg.body["port"], "port")
        self._count_host_drops()
        del self.ports[port.guest]
        self.counts["closed_drops"] += port.drops
        self.counts["closed_host_drops"] += port.host_drops
        port.scope.cancel()
        port.sock.close()
        return {"port": port.guest}

    async def on_nic_send(self, msg: Message) -> None:
        await self._run(msg, self._send)

    async def _send(self, msg: Message) -> dict[str, Any]:
        b = msg.body
        port = self._owned(msg, b["src_port"], "src_port")
        dst_port = _port_number(b["dst_port"], "dst_port")
        data = b["data"]
        if len(data) > self.mtu:
            self.counts["oversize"] += 1
            raise Refused(errno.EMSGSIZE, f"datagram of {len(data)} bytes exceeds the mtu {self.mtu}")
        try:
            dst = ipaddress.IPv4Address(b["dst_host"])
        except ValueError:
            dst = None
        if dst is None or dst not in LOOPBACK:
            self.counts["refused"] += 1
            raise Refused(errno.ENETUNREACH, f"destination {b['dst_host']!r} is not in {LOOPBACK}: "
                                              "traffic never leaves loopback")
        try:
            await port.sock.sendto(data, (str(dst), dst_port))
        except OSError as exc:
            raise Refused(exc.errno or errno.EIO, f"sendto {dst}:{dst_port}: {exc.strerror}") from None
        if self.recorder.on:  # where a guest's send ends (bench/io.py)
            self.recorder("nic", "tx", port=port.guest, length=len(data))
        port.tx += 1
        return {"port": port.guest}

    async def on_nic_rx_ack(self, msg: Message) -> None:
        port = self.ports.get(msg.body["port"])
        try:
            issuer = self._issuer(msg)
        except Refused:
            issuer = None
        if port is None or port.owner != issuer:
            self.counts["stale_acks"] += 1  # the port was closed meanwhile: nothing to hand back
        else:
            port.inflight = max(0, port.inflight - max(0, msg.body["count"]))
        if msg.flow is None:
            await self.party.reply(msg, "ok")

    async def on_nic_rx_post(self, msg: Message) -> None:
        b = msg.body
        try:
            owner = self._issuer(msg)
            if b["space"] != owner:
                raise Refused(errno.EFAULT, f"{owner} may only post buffers of its own address space, "
                                             f"not {b['space']!r}")
            bad = [a for a in b["buffers"] if not isinstance(a, int) or a < 0 or a % PAGE]
            if bad:
                raise Refused(errno.EINVAL, f"buffers {bad[:4]} are not page-aligned guest addresses")
        except Refused as exc:
            self.counts["bad_posts"] += 1
            log.info("%s: nic_rx_post refused: %s", self.name, exc.reason)
            if msg.flow is None:
                await self.party.reply(msg, "error", {"reason": "bad_field", "detail": exc.reason,
                                                      "ref": "nic_rx_post"})
            return
        pool = self.buffers.setdefault(owner, deque())
        if b.get("reset"):
            pool.clear()
            self.inline.discard(owner)
        if b.get("inline"):
            self.inline.add(owner)
        pool.extend((b["space"], a) for a in b["buffers"])
        if msg.flow is None:
            await self.party.reply(msg, "ok", {"data": {"buffers": len(pool)}})

    async def on_nic_forward(self, msg: Message) -> None:
        """``nic_forward`` {guest_port, host_port} (direct request, e.g. from
        ``hwemu run --forward``): the guest port's host socket is on
        ``127.0.0.1:<host_port>`` from its next bind on; reply ``ok`` {data:
        {forward}}, or ``error`` bad_field for a bad port number."""
        try:
            g = _port_number(msg.body["guest_port"], "guest_port")
            h = _port_number(msg.body["host_port"], "host_port", zero=True)
        except Refused as exc:
            await self.party.reply(msg, "error", {"reason": "bad_field", "detail": exc.reason, "ref": "nic_forward"})
            return
        self.forward[g] = h
        self._save_forwards()
        await self.party.reply(msg, "ok", {"data": {"forward": {str(k): v for k, v in sorted(self.forward.items())}}})

    # -- receive: host socket -> ring -> nic_rx on irq:<name> --------------------------

    async def _reader(self, port: _Port) -> None:
        with port.scope:
            while True:
                try:
                    data, (src_host, src_port) = await port.sock.recvfrom(MAX_DATAGRAM + 1)
                except trio.ClosedResourceError:
                    return
                except OSError as exc:  # e.g. an ICMP error reported on the socket: keep reading
                    log.info("%s: port %d: %s", self.name, port.guest, exc)
                    continue
                if len(port.queue) + port.inflight >= self.rx_queue:
                    port.drops += 1
                    continue
                port.queue.append((data, src_host, src_port))
                if self.recorder.on:  # where a guest's receive starts (bench/io.py counts its hops from here)
                    self.recorder("nic", "rx", port=port.guest, length=len(data))
                self._wake.set()

    async def _rx_pump(self) -> None:
        """The one emitter of ``nic_rx``: ports served round-robin, each in arrival order."""
        while True:
            busy = [p for p in self.ports.values() if p.queue]
            if not busy:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            for port in busy:
                if not port.queue or self.ports.get(port.guest) is not port:
                    continue  # closed while an earlier emit waited
                data, src_host, src_port = port.queue.popleft()
                port.inflight += 1  # keeps its slot while its DMA runs
                body = {"port": port.guest, "src_host": src_host, "src_port": src_port, "length": len(data)}
                if port.owner in self.inline:
                    body.update(buffers=[], data=data)
                else:
                    buffers = await self._dma_in(port, data)
                    if buffers is None:
                        port.inflight -= 1
                        port.drops += 1
                        continue
                    body["buffers"] = buffers
                if await self._raise_irq("nic_rx", body):
                    port.rx += 1
                else:
                    port.inflight -= 1
                    port.drops += 1

    async def _dma_in(self, port: _Port, data: bytes) -> list[int] | None:
        """Write ``data`` into buffers its owner posted, a page each; their addresses, or None (dropped)."""
        pool = self.buffers.get(port.owner) or deque()
        need = -(-len(data) // PAGE)
        if len(pool) < need:
            self.counts["no_buffers"] += 1
            return None
        taken = [pool.popleft() for _ in range(need)]
        for i, n in _runs(taken):  # one DMA burst per run of consecutive pages
            space, addr = taken[i]
            try:
                await self.party.request(self.memctl, "mem_write", {
                    "space": space, "addr": addr, "data": data[i * PAGE:(i + n) * PAGE]}, timeout=DMA_TIMEOUT)
            except (RemoteError, RequestTimeout, ProtocolError) as exc:
                self.counts["dma_errors"] += 1
                log.warning("%s: DMA into %s %#x failed: %s", self.name, space, addr, exc)
                refused = isinstance(exc, RemoteError) and exc.reason != "recovering"
                # a buffer the memory controller refuses is not used again; the others are fine
                pool.extend(taken[i + 1:] if refused else taken)
                return None
        return [addr for _space, addr in taken]
