"""The ``disk`` node: a block device over an image file, with DMA through the
memory controller and completion interrupts (DESIGN.md §3, Devices; flows in
:mod:`protocol.hw`).

Message interface (for the OS driver):

- ``disk_read`` {id, block, count, space, addr} — read ``count`` blocks from
  block ``block`` into guest memory (``block`` counts from the start of the
  issuer's partition if it has one: each OS sees its partition as the device,
  from block 0, as an NVMe namespace does; else absolute): ``mem_write`` of
  ``count * block_size`` bytes to ``memctl`` at guest physical ``addr`` of
  address space ``space``.
- ``disk_write`` {id, block, count, space, addr} — ``mem_read`` the bytes from
  guest memory, ``pwrite`` them to the image and ``fdatasync`` before the
  completion (unless the ``write_back`` option: then durable at the next
  ``disk_flush``).
  With ``data`` (the ``count * block_size`` bytes themselves) there is no
  DMA: the bytes travel with the command.
- ``disk_read`` with ``inline`` true: no DMA either; the bytes come back in
  the completion's ``data``.
- ``disk_flush`` {id} — ``fdatasync`` the image, then complete (count 0).
- completion ``disk_done`` {id, status, count, reason?}: ``status`` 0 and
  ``count`` = blocks moved, or ``status`` = -errno, ``count`` 0 and a
  human ``reason``:

  ===========  ==============================================================
  ``-EINVAL``  malformed: ``count`` < 1 or above ``max_blocks``, a negative
               block, a negative or misaligned (not a multiple of
               ``DMA_ALIGN`` = 4) guest address
  ``-EIO``     blocks beyond the end of the device, or outside the issuer's
               partition (as Linux fails a bio beyond the end of a device: a
               partition is the device as that OS sees it); a host I/O error
  ``-EFAULT``  the DMA failed (memctl refused the guest range) or an issuer
               with a partition named another OS's address space
  ``-EAGAIN``  the command queue was full (``queue_depth``); nothing was done
  ===========  ==============================================================

  Commands on flow ``io:<os>.disk`` complete with ``disk_done`` emitted on
  ``irq:<name>``; commands sent directly as requests are answered with a
  ``disk_done`` reply instead. Completions come in command order (one worker).
- ``disk_info`` {os?} (direct request) — reply ``ok`` {data: {blocks,
  block_size, write_back, queue_depth, max_blocks, partition}}; ``partition``
  is the requester's (or, with ``os``, that OS's) ``[first_block, count]`` or
  null (the whole device). ``blocks`` is always the whole device's.

The issuer of a command is ``<os>`` of its flow ``io:<os>.disk``, or the
sender of a direct request. An issuer named in the ``partitions`` option may
only touch its partition's blocks and DMA only into its own address space
(otherwise the disk would be a deputy into another instance's memory, since
memctl lets devices name any space). Any other issuer (the VMM, tools)
addresses the whole device and names the space of the OS it acts for.

Options: ``image`` (path, default ``<run_dir>/<name>.img``; created at
``size_mb`` MiB, default 16, if absent; an existing image keeps its size),
``block_size`` (512 or 4096, default 512: the logical sector of real disks
and of raw images made by host tools, so offsets line up with ``dd``/``mkfs``;
4096 suits page-sized transfers), ``write_back`` (default false),
``partitions`` ({os: [first_block, count]}), ``memctl`` (node name, default
``"memctl"``), ``queue_depth`` (default 64).

Back-pressure: at most ``queue_depth`` commands are waiting; a command past it
completes at once with ``-EAGAIN`` (a driver keeps no more than
``queue_depth`` outstanding, as with a hardware submission ring). The inbox
is never blocked on a full queue: the DMA replies the worker waits for arrive
on that same inbox, so blocking it would deadlock.

Crash safety: a completion is emitted only after ``fdatasync`` returned, so a
``kill -9`` of this process (or a host crash) never loses an acknowledged
write; the supervisor restarts the node over the same image.

Faults (``fault_set`` type ``disk``, CONTRACTS.md; ``hwemu fault disk``), each
a probability per command drawn from ``random.Random(seed)``, several faults
at once each with its own stream:

- ``eio``: a read or write (after its checks above) completes with ``-EIO``
  and touches neither the image nor guest memory, as a media error;
- ``torn_write``: a write puts only its first k of n 512-byte sectors on the
  image (k drawn in [0, n): sectors are what a disk writes atomically), makes
  them durable, and completes with ``-EIO``; the rest keeps its old bytes;
- ``fsync_fail``: an ``fdatasync`` (of a write, or a ``disk_flush``) fails:
  the command completes with ``-EIO``, never as a success; what it wrote may
  or may not be on the image, as after a real failed fsync.

Counted in ``stats`` (``faults_injected`` per kind); ``fault_clear`` ends them.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import zlib
from pathlib import Path
from typing import Any

import trio

import protocol.hw  # noqa: F401  (registers the device message kinds)
from nodes.errors import OptionError, Refused
from nodes.options import Option, boolean, integer, mapping, one_of, optional, pair, string
from nodes.runtime import Node, NodeConfig, handles
from protocol.constants import DEFAULT_MEMCTL
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.faults import probability
from protocol.messages import Message

log = logging.getLogger("hwemu.disk")

BLOCK_SIZES = (512, 4096)
DMA_ALIGN = 4  # guest buffer alignment, as most DMA engines' descriptors require
MAX_TRANSFER = 1024 * 1024  # bytes per command: well inside one message frame
# a transfer this small (and a flush) is made in the node's own thread: a handoff to the I/O
# thread costs ~0.2 ms here, more than a 4 KiB pwrite + fdatasync (~0.1 ms), and the inbox
# waiting that long is harmless; larger ones go to the I/O thread, so the inbox keeps answering
INLINE_IO_MAX = 64 * 1024
DMA_TIMEOUT = 10.0  # s for one memctl request
DMA_DEADLINE = 30.0  # s of retrying while memctl recovers from a restart
SECTOR = 512  # what a disk writes atomically: a torn write tears between sectors
FAULT_KINDS = ("eio", "torn_write", "fsync_fail")


def _block_crcs(data: bytes, block_size: int) -> list[int]:
    """The CRC-32 of each block of ``data``."""
    return [zlib.crc32(data[i:i + block_size]) for i in range(0, len(data), block_size)]


def _write_durably(fd: int, data: bytes, offset: int) -> int:
    """``pwrite`` then, if it wrote everything, ``fdatasync`` (run in the I/O thread)."""
    written = os.pwrite(fd, data, offset)
    if written == len(data):
        os.fdatasync(fd)
    return written


class Disk(Node):
    """The block device. See the module docstring for its messages."""

    kind = "disk"
    OPTIONS = {
        "image": Option(optional(string()), None),
        "size_mb": Option(integer(min=1), 16),
        "block_size": Option(one_of(*BLOCK_SIZES), 512),
        "write_back": Option(boolean(), False),
        "memctl": Option(string(), DEFAULT_MEMCTL),
        "queue_depth": Option(integer(min=1), 64),
        "partitions": Option(optional(mapping(pair(integer(min=0), "first_block, count"))), None),
    }

    def __init__(self, cfg: NodeConfig):
        super().__init__(cfg)
        opts = self.options
        self.image = Path(opts["image"] or Path(cfg.run_dir) / f"{cfg.name}.img")
        self.size_mb = opts["size_mb"]
        self.block_size = opts["block_size"]
        self.write_back = opts["write_back"]
        # written since the last fdatasync (True at start: a previous life may have died between
        # a write and its sync); a flush of a clean image has nothing to make durable
        self.dirty = True
        self.memctl = opts["memctl"]
        self.queue_depth = opts["queue_depth"]
        self.max_blocks = MAX_TRANSFER // self.block_size
        self.partitions = {os_name: (rng[0], rng[1]) for os_name, rng in (opts["partitions"] or {}).items()}
        self.irq_flow = f"irq:{cfg.name}"
        self.blocks = 0
        self.fd: int | None = None
        self._send, self._recv = trio.open_memory_channel(self.queue_depth)
        self.queued = 0
        self.counts = {"reads": 0, "writes": 0, "flushes": 0, "blocks_read": 0, "blocks_written": 0,
                       "syncs": 0, "clean_flushes": 0, "errors": 0, "busy": 0, "unrouted": 0}
        # kind_faults (nodes/runtime.py): id -> (its random stream, probability of each of FAULT_KINDS)
        self.injected = dict.fromkeys(FAULT_KINDS, 0)
        self.latency: dict[str, float] = {}  # fault id -> s every command waits before it runs
        self._open_image()

    # -- life cycle -------------------------------------------------------------

    def _open_image(self) -> None:
        # here rather than in setup(): a bad image ends the process with one line (SystemExit)
        try:
            self.image.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.image, os.O_RDWR | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
            if size == 0:
                os.ftruncate(fd, self.size_mb * 1024 * 1024)
                os.fsync(fd)
                dfd = os.open(self.image.parent, os.O_RDONLY)  # the new name must survive a crash too
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
                size = os.fstat(fd).st_size
        except OSError as exc:
            raise SystemExit(f"disk {self.name}: cannot open image {self.image}: {exc}") from None
        self.fd = fd
        if size % self.block_size:
            raise SystemExit(f"disk {self.name}: image {self.image} is {size} bytes, "
                             f"not a multiple of the block size {self.block_size}")
        self.blocks = size // self.block_size
        for os_name, (first, count) in self.partitions.items():
            if first + count > self.blocks:
                raise OptionError(self.kind, self.name, "partitions", {os_name: [first, count]},
                                  f"[first_block, count] within the device's {self.blocks} blocks")

    async def work(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._worker)

    async def teardown(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(self.counts)
        s.update(image=str(self.image), blocks=self.blocks, block_size=self.block_size,
                 write_back=self.write_back, queued=self.queued, queue_depth=self.queue_depth,
                 faults=sorted(self.kind_faults), faults_injected=dict(self.injected))
        return s

    # -- faults -----------------------------------------------------------------------

    def fault_disk(self, spec: dict[str, Any]) -> None:
        """``fault_set`` type ``disk``: probabilities ``eio``, ``torn_write``, ``fsync_fail``;
        ``latency_ms``: every command waits that long before it runs (a slow or failing
        disk: a command is then in the disk, taken and not completed, for that long)."""
        latency = spec.get("latency_ms", 0.0)
        if isinstance(latency, bool) or not isinstance(latency, (int, float)) or not 0.0 <= latency <= 10_000.0:
            raise ProtocolError("bad_fault", f"latency_ms must be in [0, 10000], got {latency!r}", "body.latency_ms")
        probs = {key: probability(spec, key) for key in FAULT_KINDS}
        self.kind_faults[spec["id"]] = (random.Random(spec["seed"]), probs)
        if latency:
            self.latency[spec["id"]] = float(latency) / 1e3

    def _injects(self, kind: str) -> str | None:
        """Whether an active fault makes ``kind`` happen now: the fault's id, else None.
        Every fault with a non-zero probability of ``kind`` draws once, so one seed gives one schedule."""
        hit = None
        for fid, (rng, probs) in self.kind_faults.items():
            if probs[kind] and rng.random() < probs[kind] and hit is None:
                hit = fid
        if hit is not None:
            self.injected[kind] += 1
            if self.recorder.on:
                self.recorder("fault", "inject", id=hit, type="disk", what=kind)
        return hit

    # -- commands -------------------------------------------------------------------

    async def on_disk_info(self, msg: Message) -> None:
        part = self.partitions.get(msg.body.get("os") or self._issuer(msg))
        await self.party.reply(msg, "ok", {"data": {
            "blocks": self.blocks, "block_size": self.block_size, "write_back": self.write_back,
            "queue_depth": self.queue_depth, "max_blocks": self.max_blocks,
            "partition": list(part) if part is not None else None}})

    @handles("disk_read", "disk_write", "disk_flush")
    async def _submit(self, msg: Message) -> None:
        try:
            self._send.send_nowait(msg)
        except trio.WouldBlock:
            self.counts["busy"] += 1
            await self._complete(msg, -errno.EAGAIN, 0, f"command queue full ({self.queue_depth} waiting)")
            return
        self.queued += 1

    @staticmethod
    def _issuer(msg: Message) -> str:
        flow = msg.flow
        if flow is not None and flow.startswith("io:") and flow.endswith(".disk"):
            return flow[3:-5]
        return msg.src

    async def _worker(self) -> None:
        """The one executor: commands run and complete in arrival order."""
        async for msg in self._recv:
            self.queued -= 1
            if self.latency:  # (a latency fault cleared meanwhile is forgotten here)
                self.latency = {f: t for f, t in self.latency.items() if f in self.kind_faults}
                if self.latency:
                    await trio.sleep(max(self.latency.values()))
            try:
                done = await self._execute(msg)
            except Refused as exc:
                self.counts["errors"] += 1
                log.info("%s: %s %s refused: %s", self.name, msg.kind, msg.body.get("id"), exc.reason)
                await self._complete(msg, exc.status, 0, exc.reason)
            else:
                count, data = done if isinstance(done, tuple) else (done, None)
                await self._complete(msg, 0, count, None, data)

    async def _complete(self, msg: Message, status: int, count: int, reason: str | None,
                        data: bytes | None = None) -> None:
        body: dict[str, Any] = {"id": msg.body["id"], "status": status, "count": count}
        if reason is not None:
            body["reason"] = reason
        if data is not None:
            body["data"] = data
        if msg.flow is None:
            await self.party.reply(msg, "disk_done", body)
            return
        try:
            await self.emit(self.irq_flow, "disk_done", body)
        except ProtocolError as exc:  # nobody takes the interrupt
            self.counts["unrouted"] += 1
            log.warning("%s: disk_done %s not delivered: %s", self.name, body["id"], exc)

    async def _execute(self, msg: Message) -> int | tuple[int, bytes]:
        if msg.kind == "disk_flush":
            await self._sync()
            self.counts["flushes"] += 1
            return 0
        b = msg.body
        block, count, addr, space = b["block"], b["count"], b["addr"], b["space"]
        if count < 1 or count > self.max_blocks:
            raise Refused(errno.EINVAL, f"count {count}: expected 1..{self.max_blocks} blocks")
        if block < 0:
            raise Refused(errno.EINVAL, f"block {block} is negative")
        if addr < 0 or addr % DMA_ALIGN:
            raise Refused(errno.EINVAL, f"guest address {addr:#x} is not {DMA_ALIGN}-byte aligned")
        issuer = self._issuer(msg)
        part = self.partitions.get(issuer)
        if part is not None:
            first, n = part
            if block + count > n:
                raise Refused(errno.EIO, f"blocks [{block}, {block + count}) outside {issuer}'s partition "
                                          f"of {n} blocks")
            if space != issuer:
                raise Refused(errno.EFAULT, f"{issuer} may only DMA into its own address space, not {space!r}")
            block += first
        if block + count > self.blocks:
            raise Refused(errno.EIO, f"blocks [{block}, {block + count}) beyond the end of the device "
                                      f"({self.blocks} blocks)")
        offset = block * self.block_size
        length = count * self.block_size
        fid = self._injects("eio")
        if fid is not None:
            raise Refused(errno.EIO, f"media error at blocks [{block}, {block + count}) (fault {fid})")
        if msg.kind == "disk_read":
            data = await self._io(os.pread, self.fd, length, offset, inline=length <= INLINE_IO_MAX)
            if len(data) != length:
                raise Refused(errno.EIO, f"short read from the image: {len(data)} of {length} bytes")
            self.counts["reads"] += 1
            self.counts["blocks_read"] += count
            if b.get("inline"):
                return count, data
            await self._dma("mem_write", {"space": space, "addr": addr, "data": data})
        else:
            data = b.get("data")
            if data is not None:
                if len(data) != length:
                    raise Refused(errno.EINVAL, f"{len(data)} bytes of data for {count} blocks of "
                                                f"{self.block_size}")
            else:
                reply = await self._dma("mem_read", {"space": space, "addr": addr, "length": length})
                data = reply.body["data"]
                if len(data) != length:
                    raise Refused(errno.EFAULT, f"memctl returned {len(data)} of {length} bytes")
            rec = self.recorder
            if rec.on:  # what the image may hold from now on, acknowledged or not (a checker's candidates)
                rec("disk", "write", req=b["id"], block=block, count=count, crcs=_block_crcs(data, self.block_size))
            fid = self._injects("torn_write")
            if fid is not None:
                await self._tear(fid, data, offset)
            # durable before the completion (unless write_back): that is the contract. The write
            # and its fdatasync in one call of the I/O thread (a handoff costs as much as the sync)
            failing = None if self.write_back else self._injects("fsync_fail")
            durably = not self.write_back and failing is None
            self.dirty = True
            written = await self._io(_write_durably if durably else os.pwrite, self.fd, data, offset,
                                     inline=length <= INLINE_IO_MAX)
            if written != length:
                raise Refused(errno.EIO, f"short write to the image: {written} of {length} bytes")
            if failing is not None:
                raise Refused(errno.EIO, f"fdatasync failed (fault {failing})")
            if durably:
                self.dirty = False
                self.counts["syncs"] += 1
                if rec.on:
                    rec("disk", "write_acked", req=b["id"], block=block, count=count, crc32=zlib.crc32(data),
                        image=str(self.image), block_size=self.block_size)
            self.counts["writes"] += 1
            self.counts["blocks_written"] += count
        return count

    async def _io(self, fn, *args, inline: bool = False):
        # in a thread, so the inbox keeps answering (stats, info, DMA replies), unless ``inline``
        # (a small transfer or a flush: INLINE_IO_MAX)
        try:
            if inline:
                return fn(*args)
            return await trio.to_thread.run_sync(fn, *args)
        except OSError as exc:
            raise Refused(exc.errno or errno.EIO, f"image {self.image}: {exc.strerror or exc}") from None

    async def _tear(self, fid: str, data: bytes, offset: int) -> None:
        """A torn write: the first k sectors reach the image (durably), then the command fails."""
        sectors = len(data) // SECTOR
        k = self.kind_faults[fid][0].randrange(sectors)
        if k:
            await self._io(os.pwrite, self.fd, data[:k * SECTOR], offset)
            await self._io(os.fdatasync, self.fd)
        raise Refused(errno.EIO, f"torn write: {k} of {sectors} sectors written (fault {fid})")

    async def _sync(self) -> None:
        fid = self._injects("fsync_fail")
        if fid is not None:
            raise Refused(errno.EIO, f"fdatasync failed (fault {fid})")
        if not self.dirty:  # every write since the last sync was made durable with it
            self.counts["clean_flushes"] += 1
            return
        await self._io(os.fdatasync, self.fd, inline=True)
        self.dirty = False
        self.counts["syncs"] += 1

    async def _dma(self, kind: str, body: dict[str, Any]) -> Message:
        """One memctl request; retried while memctl is recovering from a restart."""
        with trio.move_on_after(DMA_DEADLINE):
            while True:
                try:
                    return await self.party.request(self.memctl, kind, body, timeout=DMA_TIMEOUT)
                except RemoteError as exc:
                    if exc.reason != "recovering":
                        raise Refused(errno.EFAULT, f"DMA {kind} at {body['addr']:#x} in space "
                                                     f"{body['space']!r}: {exc.reason}: {exc.detail}") from None
                except RequestTimeout:
                    pass  # memctl down or restarting: the supervisor brings it back
                except ProtocolError as exc:
                    raise Refused(errno.EIO, f"DMA {kind}: {exc}") from None
                await trio.sleep(0.05)
        raise Refused(errno.EIO, f"DMA {kind}: memctl {self.memctl!r} did not answer within {DMA_DEADLINE:g} s")
