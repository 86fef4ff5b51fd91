"""Disk and NIC for the OS: dual-mode drivers and the file/socket syscalls
(DESIGN.md §4, issue #6 parts 3-4).

Syscalls (Linux RV32 numbers, :data:`SYSCALLS`, served by the kernel with the others):
``openat`` (56) of ``/dev/disk0`` only (any other path: -ENOENT), ``close``
(57), ``pread64`` (67) / ``pwrite64`` (68) (the 64-bit offset in the a3/a4
register pair, low word first, as the SDK passes it), ``fsync`` (82, also
used for fdatasync: ``disk_flush``), ``socket`` (198, AF_INET/SOCK_DGRAM
only), ``bind`` (200), ``sendto`` (206), ``recvfrom`` (207).

Block device semantics are Linux's for a raw block device: byte offsets and
lengths need not be block multiples (whole blocks are read-modify-written
through a kernel bounce frame of the OS's own); a ``pread64`` at or past the
end of the device returns 0 (EOF) and one that straddles it a short count; a
``pwrite64`` at or past the end is ``-ENOSPC``, one straddling it a short
count; a negative offset is ``-EINVAL``. Every user pointer is checked
before anything happens (``-EFAULT``).

Blocking: a call that needs the device blocks the *process* (state
``blocked``); the device work runs in a task of the node and its result is
handed back to the kernel task as an ``io_done`` event, so other processes
run meanwhile. A process killed while blocked simply never gets its result.

Drivers are dual-mode like :class:`~nodes.guest_os.drivers.UartDriver`:
``native`` sends on ``io:<os>.disk`` / ``io:<os>.nic``, ``virtual`` on the
VMM's flow; :meth:`set_mode` drains the commands in flight, exports the
state, flips the bit and imports it.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

from nodes.errors import Refused
from nodes.guest_os.drivers import NATIVE, DualModeDriver
from protocol import linux_abi as abi
from protocol.constants import PAGE_SIZE as PAGE

if TYPE_CHECKING:  # pragma: no cover
    from nodes.guest_os.kernel import Kernel, Process

log = logging.getLogger("hwemu.os.io")

DISK_PATH = "/dev/disk0"
RX_BUFFERS = 32  # receive buffers (a frame each) the NIC driver posts: two largest datagrams
POST_TIMEOUT = 5.0  # s for the NIC (or the VMM) to take posted receive buffers
CMD_TIMEOUT = 3.0  # s before a command is re-issued (the device may have restarted)
IO_DEADLINE = 120.0  # s before an I/O gives up with -EIO
FIRST_FD = 3


class _Driver(DualModeDriver):
    """What the disk and NIC drivers share: the mode bit, ids, completions."""

    device = ""
    done_kind = ""

    def __init__(self, node: Any, os_name: str, mode: str = NATIVE, virtual_flow: str | None = None):
        super().__init__(node, os_name, mode, virtual_flow)
        self.next_id = 1
        self.waiting: dict[int, list] = {}  # id -> [event, body]
        self.commands = 0
        self.retries = 0
        self.errors = 0
        self.resets = 0  # restarts of the device this driver reset it after
        self._idle = trio.Event()
        self._idle.set()

    def complete(self, body: dict[str, Any]) -> None:
        """A ``*_done`` arrived (interrupt or reply): wake its issuer."""
        slot = self.waiting.get(body.get("id"))
        if slot is not None:
            slot[1] = body
            slot[0].set()

    async def command(self, kind: str, body: dict[str, Any], *, retry: bool = True) -> dict[str, Any]:
        """Emit one command and wait for its completion; re-issued (new id)
        after CMD_TIMEOUT while the device is away, up to IO_DEADLINE."""
        deadline = trio.current_time() + IO_DEADLINE
        while True:
            cid = self.next_id
            self.next_id += 1
            slot = [trio.Event(), None]  # [completed or to re-issue, the completion]
            self.waiting[cid] = slot
            self._idle = trio.Event() if self._idle.is_set() else self._idle
            self.commands += 1
            try:
                try:
                    await self.node.emit(self.flow, kind, {"id": cid, **body})
                except Exception as exc:  # the device is away: retry
                    log.info("%s: %s not sent: %s", self.device, kind, exc)
                else:
                    with trio.move_on_after(CMD_TIMEOUT):
                        await slot[0].wait()
            finally:
                self.waiting.pop(cid, None)
                if not self.waiting:
                    self._idle.set()
            if slot[1] is not None:
                if slot[1].get("status", 0) == -abi.EAGAIN and trio.current_time() < deadline:
                    await trio.sleep(0.005)
                    continue
                if slot[1].get("status", 0) < 0:
                    self.errors += 1
                return slot[1]
            if not retry or trio.current_time() >= deadline:
                raise Refused(abi.EIO, f"{self.device}: no completion for {kind}")
            self.retries += 1
            await trio.sleep(0.05)

    def reissue(self) -> int:
        """The device restarted: what is in flight died with it. Each command
        waiting for a completion is re-issued now (a new id), not after
        CMD_TIMEOUT. Safe because every command is idempotent: a read reads
        again, a write writes the same bytes to the same blocks (the driver
        holds one transfer at a time), a flush flushes again. Returns how many."""
        waiting = [slot for slot in self.waiting.values() if slot[1] is None]
        for slot in waiting:
            slot[0].set()
        self.resets += 1
        return len(waiting)

    async def drain(self, timeout: float = 30.0) -> None:
        with trio.fail_after(timeout):
            await self._idle.wait()

    async def quiesce(self) -> None:
        await self.drain()

    def export_state(self) -> dict[str, Any]:
        return {**super().export_state(), "next_id": self.next_id, "commands": self.commands}

    def import_state(self, state: dict[str, Any]) -> None:
        self.next_id = int(state.get("next_id", self.next_id))
        self.commands = int(state.get("commands", self.commands))

    def stats(self) -> dict[str, Any]:
        return {"mode": self.mode, "commands": self.commands, "retries": self.retries, "errors": self.errors,
                "inflight": len(self.waiting), "resets": self.resets}


class DiskDriver(_Driver):
    """``disk_read``/``disk_write``/``disk_flush`` on ``io:<os>.disk``, DMA
    into one bounce frame of the OS (allocated and pinned at first use)."""

    device = "disk"
    done_kind = "disk_done"

    def __init__(self, node: Any, os_name: str, mode: str = NATIVE, virtual_flow: str | None = None):
        super().__init__(node, os_name, mode, virtual_flow)
        self.block_size: int | None = None
        self.blocks: int | None = None
        self.partition: list[int] | None = None  # [first, count] on the device (disk_info), for status
        # the device has a volatile write cache (disk_info write_back; unknown: assume it has): without
        # one, every write it acknowledged is durable already, and a flush has nothing to do (Linux
        # sends no flush to such a device either)
        self.write_back = True
        self.write_failed = False  # a write failed since the last flush: the next fsync asks the disk
        self.bounce: int | None = None  # gpn
        self.lock = trio.Lock()  # one transfer at a time through the bounce frame
        self.read_bytes = 0
        self.written_bytes = 0
        self.flushes = 0
        self.flushes_elided = 0

    def export_state(self) -> dict[str, Any]:
        return {**super().export_state(), "block_size": self.block_size, "blocks": self.blocks,
                "partition": self.partition, "write_back": self.write_back, "inflight": len(self.waiting)}

    def import_state(self, state: dict[str, Any]) -> None:
        super().import_state(state)
        self.block_size = state.get("block_size", self.block_size)
        self.blocks = state.get("blocks", self.blocks)
        self.partition = state.get("partition", self.partition)
        self.write_back = state.get("write_back", self.write_back)

    async def set_mode(self, mode: str) -> dict[str, Any]:
        """The switch waits for the whole transfer in progress, not only for the
        command in flight: a multi-block pread/pwrite holds the lock across its
        chunks, so a switch can never land between two of them."""
        async with self.lock:
            return await super().set_mode(mode)

    async def geometry(self) -> tuple[int, int | None]:
        """(block size, number of blocks or None if the device does not say).

        Asked of whoever serves the driver's flow: the disk natively, the VMM in
        virtual mode; both describe the OS's partition (or the whole device),
        and block numbers count from its start either way, so the commands are
        the same in both modes."""
        if self.block_size is None:
            dest = self.node.routes.get(self.flow)
            info: dict[str, Any] = {}
            if dest is not None:
                try:
                    reply = await self.node.party.request(dest, "disk_info", {}, timeout=10.0)
                    info = reply.body.get("data") or {}
                except Exception as exc:  # fall back to 512 and -EIO at the end
                    log.warning("disk_info from %s failed: %s", dest, exc)
            self.block_size = int(info.get("block_size", 512))
            self.write_back = info.get("write_back") is not False
            part = info.get("partition")
            self.blocks = int(part[1]) if part else (int(info["blocks"]) if "blocks" in info else None)
            self.partition = list(part) if part else None
        return self.block_size, self.blocks

    def _bounce(self) -> int:
        if self.bounce is None:
            self.bounce = self.node.module.alloc_pin(1)[0]
        return self.bounce

    async def _move(self, kind: str, block: int, count: int, data: bytes | None = None) -> bytes | None:
        """One command of ``count`` blocks, its bytes carried in the messages
        (``data`` with a write, in the completion of a read: inline), so the
        driver waits for no DMA through the memory controller; the bytes read."""
        body: dict[str, Any] = {"block": block, "count": count, "space": self.node.name,
                                "addr": self._bounce() * PAGE}  # where a disk that knew no inline would DMA
        if kind == "disk_read":
            body["inline"] = True
        else:
            body["data"] = bytes(data or b"")
        done = await self.command(kind, body)
        if done.get("status", 0) < 0:
            if kind == "disk_write":
                self.write_failed = True
            raise Refused(-done["status"], done.get("reason", ""))
        if kind != "disk_read":
            return None
        got = done.get("data")
        if got is None or len(got) != count * (self.block_size or 512):
            raise Refused(abi.EIO, f"disk_read of {count} blocks came back with "
                                   f"{'no' if got is None else len(got)} bytes")
        return got

    async def pread(self, offset: int, length: int) -> bytes:
        bs, blocks = await self.geometry()
        if blocks is not None:
            length = max(0, min(length, blocks * bs - offset))
        out = bytearray()
        per = PAGE // bs
        async with self.lock:
            pos = offset
            end = offset + length
            while pos < end:
                first = pos // bs
                count = min(per, (end - 1) // bs - first + 1)
                data = await self._move("disk_read", first, count)
                lo = pos - first * bs
                hi = min(end - first * bs, count * bs)
                out += data[lo:hi]
                pos = first * bs + hi
        self.read_bytes += len(out)
        return bytes(out)

    async def pwrite(self, offset: int, data: bytes) -> int:
        bs, blocks = await self.geometry()
        if blocks is not None:
            if offset >= blocks * bs:
                raise Refused(abi.ENOSPC, "at or past the end of the device")
            data = data[:blocks * bs - offset]
        per = PAGE // bs
        async with self.lock:
            pos, end = offset, offset + len(data)
            while pos < end:
                first = pos // bs
                count = min(per, (end - 1) // bs - first + 1)
                lo = pos - first * bs
                hi = min(end - first * bs, count * bs)
                chunk = data[pos - offset:pos - offset + hi - lo]
                if lo % bs or hi % bs:  # a partial block at either end: read-modify-write
                    blocks_now = bytearray(await self._move("disk_read", first, count))
                    blocks_now[lo:hi] = chunk
                    chunk = bytes(blocks_now)
                await self._move("disk_write", first, count, chunk)
                pos = first * bs + hi
        self.written_bytes += len(data)
        return len(data)

    def flush_needed(self) -> bool:
        """Whether an fsync must ask the disk: it has a volatile write cache (or its geometry is
        not known yet), or a write failed since the last flush (a failed sync of it may have
        left bytes that are not durable: the disk says what a flush of them gives)."""
        return self.block_size is None or self.write_back or self.write_failed

    async def flush(self) -> None:
        await self.geometry()
        if not self.flush_needed():
            self.flushes_elided += 1
            return
        done = await self.command("disk_flush", {})
        if done.get("status", 0) < 0:
            raise Refused(-done["status"], done.get("reason", ""))
        self.write_failed = False
        self.flushes += 1

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "read_bytes": self.read_bytes, "written_bytes": self.written_bytes,
                "flushes": self.flushes, "flushes_elided": self.flushes_elided, "bounce": self.bounce}


class _Port:
    __slots__ = ("port", "queue", "readers", "pending_ack")

    def __init__(self, port: int):
        self.port = port
        self.queue: deque[tuple[bytes, str, int]] = deque()
        self.readers: deque = deque()  # (proc, wait) blocked in recvfrom


class NicDriver(_Driver):
    """``nic_bind``/``nic_send``/``nic_close`` on ``io:<os>.nic``; receives
    ``nic_rx`` and hands slots back with ``nic_rx_ack`` once the guest took
    the datagram."""

    device = "nic"
    done_kind = "nic_done"

    def __init__(self, node: Any, os_name: str, mode: str = NATIVE, virtual_flow: str | None = None):
        super().__init__(node, os_name, mode, virtual_flow)
        self.ports: dict[int, _Port] = {}
        self.rx = self.tx = self.dropped = 0
        self.rx_frames: set[int] | None = None  # gpns of the receive buffers, posted at the first bind
        self.bad_rx = 0

    async def _post_buffers(self) -> None:
        """Pin RX_BUFFERS frames and post them to the NIC, replacing whatever this
        OS posted in an earlier life (a restart: those frames are not buffers now)."""
        if self.rx_frames is not None:
            return
        try:
            frames = self.node.module.alloc_pin(RX_BUFFERS)
        except Exception as exc:  # no memory for buffers: no network
            raise Refused(abi.ENOMEM, f"no frames for {RX_BUFFERS} receive buffers: {exc}") from None
        if not await self.post(self.node.name, [f * PAGE for f in frames], reset=True):
            self.node.module.give_back(frames)  # not buffers after all: back on the free list
            self.node.module.add_frames(frames)
            raise Refused(abi.EIO, "the NIC did not take the receive buffers")
        self.rx_frames = set(frames)

    async def post(self, space: str, buffers: list[int], *, reset: bool) -> bool:
        """A direct request, not a flow message: right after a restart the flow's
        receiver may not know yet that its sequence starts again (it would drop
        the post as a duplicate), and the bind that follows must find the buffers."""
        dest = self.node.routes.get(self.flow)
        try:
            # inline: each datagram comes in its nic_rx, so no memory round trip comes before it
            await self.node.party.request(dest, "nic_rx_post", {"buffers": buffers, "space": space,
                                                                 "reset": reset, "inline": True},
                                          timeout=POST_TIMEOUT)
        except Exception as exc:  # the NIC is away
            log.warning("%s: nic_rx_post to %s failed: %s", space, dest, exc)
            return False
        return True

    async def reset(self) -> dict[str, Any]:
        """The NIC restarted: it forgot this OS's receive buffers and bound ports.
        Post every buffer again (replacing any) and bind every port again; the
        NIC's host sockets come back on the same host ports (its forward table
        outlives its process: nodes/nic). Datagrams it held are lost, as UDP may
        lose them; none is duplicated or corrupted (a buffer is the NIC's again
        only once posted anew). Returns what was restored."""
        self.resets += 1
        posted = self.rx_frames is not None and await self.post(
            self.node.name, sorted(f * PAGE for f in self.rx_frames), reset=True)
        bound, failed = [], {}
        for port in sorted(self.ports):
            done = await self.command("nic_bind", {"port": port})
            if done.get("status", 0) == 0:
                bound.append(port)
            else:
                failed[str(port)] = done.get("reason", done.get("status"))
                log.error("%s: port %d not bound again after the NIC restarted: %s", self.node.name, port,
                          failed[str(port)])
        return {"posted": bool(posted), "bound": bound, "failed": failed}

    async def repost(self, buffers: list[int]) -> None:
        try:
            await self.node.emit(self.flow, "nic_rx_post", {"buffers": list(buffers), "space": self.node.name})
        except Exception as exc:
            log.info("nic_rx_post not sent: %s", exc)

    async def receive(self, body: dict[str, Any]) -> bytes | None:
        """The datagram of a ``nic_rx``: carried in it (inline), or read out of
        the buffers the NIC wrote it into (which are then posted again); None
        if they are not this driver's."""
        buffers, length = list(body["buffers"]), body["length"]
        if body.get("data") is not None:
            if buffers or len(body["data"]) != length:
                self.bad_rx += 1
                log.warning("%s: inline nic_rx of %d bytes for a length of %d (buffers %s)", self.node.name,
                            len(body["data"]), length, buffers[:4])
                return None
            return bytes(body["data"])
        mine = self.rx_frames or set()
        if any(a % PAGE or a // PAGE not in mine for a in buffers) or len(buffers) != -(-length // PAGE):
            self.bad_rx += 1
            log.warning("%s: nic_rx with buffers %s for %d bytes that are not its receive buffers",
                        self.node.name, buffers[:4], length)
            return None
        out = bytearray()
        i = 0
        try:
            while i < len(buffers):  # one read per run of consecutive frames
                n = 1
                while i + n < len(buffers) and buffers[i + n] == buffers[i] + n * PAGE:
                    n += 1
                out += await self.node.mem_read(buffers[i], min(n * PAGE, length - i * PAGE))
                i += n
        except Exception as exc:  # memctl away: the datagram is lost, the buffers are not
            log.warning("%s: reading a datagram out of its buffers failed: %s", self.node.name, exc)
            self.bad_rx += 1
            await self.repost(buffers)
            return None
        await self.repost(buffers)
        return bytes(out)

    async def bind(self, port: int) -> int:
        await self._post_buffers()
        done = await self.command("nic_bind", {"port": port})
        if done.get("status", 0) == -abi.EADDRINUSE and port and port not in self.ports:
            # a port the NIC holds for this OS that this driver does not know of is a
            # leftover of the OS's previous life (a restart): take it back, bind again
            closed = await self.command("nic_close", {"port": port})
            if closed.get("status", 0) == 0:
                done = await self.command("nic_bind", {"port": port})
        if done.get("status", 0) < 0:
            raise Refused(-done["status"], done.get("reason", ""))
        got = int(done.get("port", port))
        self.ports[got] = _Port(got)
        return got

    async def send(self, src_port: int, host: str, port: int, data: bytes) -> None:
        cid = self.next_id
        self.next_id += 1
        self.commands += 1
        await self.node.emit(self.flow, "nic_send", {"id": cid, "src_port": src_port, "dst_host": host,
                                                     "dst_port": port, "data": bytes(data)})
        self.tx += 1

    async def close(self, port: int) -> None:
        self.ports.pop(port, None)
        cid = self.next_id
        self.next_id += 1
        try:
            await self.node.emit(self.flow, "nic_close", {"id": cid, "port": port})
        except Exception as exc:
            log.info("nic_close %d not sent: %s", port, exc)

    async def ack(self, port: int, count: int = 1) -> None:
        try:
            await self.node.emit(self.flow, "nic_rx_ack", {"port": port, "count": count})
        except Exception as exc:
            log.info("nic_rx_ack %d not sent: %s", port, exc)

    def export_state(self) -> dict[str, Any]:
        return {**super().export_state(), "ports": sorted(self.ports),
                "rx_buffers": sorted(f * PAGE for f in self.rx_frames or ())}

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "rx": self.rx, "tx": self.tx, "dropped": self.dropped, "bad_rx": self.bad_rx,
                "ports": {str(p): len(v.queue) for p, v in self.ports.items()}}


class Socket:
    def __init__(self) -> None:
        self.port: int | None = None


class DiskFile:
    def __init__(self, flags: int) -> None:
        self.flags = flags


class Io:
    """Per-OS I/O state: the drivers and every process's descriptors."""

    def __init__(self, node: Any):
        self.node = node
        self.disk = DiskDriver(node, node.name)
        self.nic = NicDriver(node, node.name)
        self.fds: dict[int, dict[int, Any]] = {}  # pid -> fd -> DiskFile | Socket

    async def boot(self) -> None:
        """At boot, before the kernel runs anything: whatever receive buffers this
        OS posted in an earlier life are withdrawn (reset to none), so the NIC never
        writes a datagram for an old port into a frame that now belongs to a process."""
        if self.node.routes.get(self.nic.flow) is not None:
            await self.nic.post(self.node.name, [], reset=True)

    # ---- descriptors ----
    def table(self, p: "Process") -> dict[int, Any]:
        return self.fds.setdefault(p.pid, {})

    def new_fd(self, p: "Process", obj: Any) -> int:
        t = self.table(p)
        fd = FIRST_FD
        while fd in t:
            fd += 1
        t[fd] = obj
        return fd

    async def process_gone(self, pid: int) -> None:
        for obj in (self.fds.pop(pid, None) or {}).values():
            if isinstance(obj, Socket) and obj.port is not None:
                await self._drop_port(obj.port)

    async def _drop_port(self, port: int) -> None:
        st = self.nic.ports.get(port)
        if st is not None and st.queue:
            await self.nic.ack(port, len(st.queue))
        await self.nic.close(port)

    # ---- blocking: the work runs in a task, the result comes back as an event ----
    def start(self, k: "Kernel", p: "Process", work: Callable[[], Awaitable[Any]],
              finish: Callable[[Any], Awaitable[int]] | None = None, what: str = "io") -> None:
        wait = (what,)
        k.block(p, wait)

        async def run() -> None:
            try:
                result = await work()
            except Refused as exc:
                result = exc.status
            except Exception as exc:  # an I/O failure is the process's -EIO
                log.exception("%s: %s for pid %d failed", self.node.name, what, p.pid)
                result = -abi.EIO if not isinstance(exc, trio.TooSlowError) else -abi.ETIMEDOUT
            self.node.kernel_event(functools.partial(self.io_done, k), (p, wait, result, finish))

        self.node.nursery.start_soon(run)

    async def io_done(self, k: "Kernel", payload: tuple) -> None:
        p, wait, result, finish = payload
        if p.wait is not wait or p.pid not in k.procs:
            return  # killed meanwhile
        if finish is not None and not isinstance(result, int):
            result = await finish(result)
        elif finish is not None and isinstance(result, int) and result >= 0:
            result = await finish(result)
        p.regs[10] = result & 0xFFFFFFFF
        k.make_ready(p)
        await k.dispatch()

    # ---- the NIC's receive side (kernel task) ----
    async def nic_rx(self, k: "Kernel", body: dict[str, Any]) -> None:
        data = await self.nic.receive(body)
        port = self.nic.ports.get(body["port"])
        if port is None or data is None:  # closed meanwhile (or not ours): hand the slot back
            self.nic.dropped += 1
            await self.nic.ack(body["port"], 1)
            return
        self.nic.rx += 1
        port.queue.append((data, body["src_host"], body["src_port"]))
        while port.readers and port.queue:
            p, wait, args = port.readers.popleft()
            if p.wait is not wait or p.pid not in k.procs:
                continue
            result = await self._deliver(k, p, port, *args)
            p.regs[10] = result & 0xFFFFFFFF
            k.make_ready(p)
        await k.dispatch()

    async def _deliver(self, k: "Kernel", p: "Process", port: _Port, buf: int, length: int,
                       addr: int, addrlen_p: int, room: int) -> int:
        """The next datagram into the process: its bytes, the source address
        (``room`` bytes of it, as the caller's addrlen said when it called) and
        the address length, written in one memory request."""
        data, host, sport = port.queue.popleft()
        await self.nic.ack(port.port, 1)
        n = min(length, len(data))
        writes = [(buf, data[:n])] if n else []
        if addr and addrlen_p:
            if room:
                writes.append((addr, _sockaddr(host, sport)[:room]))
            writes.append((addrlen_p, (16).to_bytes(4, "little")))
        if writes and not await k.copy_to_user_many(p, writes):
            return -abi.EFAULT
        return n

    def stats(self) -> dict[str, Any]:
        return {"disk": self.disk.stats(), "nic": self.nic.stats(),
                "fds": {str(pid): len(t) for pid, t in self.fds.items() if t}}


def _sockaddr(host: str, port: int) -> bytes:
    try:
        ip = ipaddress.IPv4Address(host).packed
    except ValueError:
        ip = bytes(4)
    return abi.sockaddr_in(ip, port)


def _io(k: "Kernel") -> Io | None:
    return getattr(k.hw, "io", None)


async def _user_string(k: "Kernel", p: "Process", addr: int) -> bytes | None:
    steps = abi.user_string(addr)  # the ABI's reader, its reads done here through the memory controller
    try:
        request = next(steps)
        while True:
            request = steps.send(await k.copy_from_user(p, *request))
    except StopIteration as done:
        return done.value


# ---------------------------------------------------------------- syscalls

async def sys_openat(k: "Kernel", p: "Process", dirfd: int, path: int, flags: int, mode: int, *_: int) -> int:
    io = _io(k)
    name = await _user_string(k, p, path)
    if name is None:
        return -abi.EFAULT
    if io is None or name.decode("latin-1") != DISK_PATH:
        return -abi.ENOENT
    if io.node.routes.get(io.disk.flow) is None:
        return -abi.ENODEV
    return io.new_fd(p, DiskFile(flags))


async def sys_close(k: "Kernel", p: "Process", fd: int, *_: int) -> int:
    io = _io(k)
    fd = abi.signed(fd)
    obj = io.table(p).pop(fd, None) if io is not None else None
    if obj is None:
        return abi.check_close(fd, is_open=False)
    if isinstance(obj, Socket) and obj.port is not None:
        await io._drop_port(obj.port)
    return 0


def _disk_fd(io: Io | None, p: "Process", fd: int) -> DiskFile | None:
    obj = io.table(p).get(abi.signed(fd)) if io is not None else None
    return obj if isinstance(obj, DiskFile) else None


async def sys_pread64(k: "Kernel", p: "Process", fd: int, buf: int, count: int, lo: int, hi: int,
                      *_: int) -> int | None:
    io = _io(k)
    if _disk_fd(io, p, fd) is None:
        return -abi.EBADF
    offset = abi.signed(hi) << 32 | lo
    count = min(count, abi.RW_MAX)
    if offset < 0 or abi.signed(count) < 0:
        return -abi.EINVAL
    if k.user_pieces(p, buf, count, "w") is None:
        return -abi.EFAULT
    if count == 0:
        return 0

    async def finish(data: bytes) -> int:
        if data and not await k.copy_to_user(p, buf, data):
            return -abi.EFAULT
        return len(data)

    io.start(k, p, lambda: io.disk.pread(offset, count), finish, "pread64")
    return None


async def sys_pwrite64(k: "Kernel", p: "Process", fd: int, buf: int, count: int, lo: int, hi: int,
                       *_: int) -> int | None:
    io = _io(k)
    if _disk_fd(io, p, fd) is None:
        return -abi.EBADF
    offset = abi.signed(hi) << 32 | lo
    count = min(count, abi.RW_MAX)
    if offset < 0:
        return -abi.EINVAL
    data = await k.copy_from_user(p, buf, count)
    if data is None:
        return -abi.EFAULT
    if count == 0:
        return 0
    io.start(k, p, lambda: io.disk.pwrite(offset, data), None, "pwrite64")
    return None


async def sys_fsync(k: "Kernel", p: "Process", fd: int, *_: int) -> int | None:
    io = _io(k)
    obj = io.table(p).get(abi.signed(fd)) if io is not None else None
    if obj is None:
        return -abi.EBADF
    if isinstance(obj, Socket):
        return -abi.EINVAL
    if not io.disk.flush_needed():
        io.disk.flushes_elided += 1  # no volatile cache: what it acknowledged is durable (DiskDriver.flush)
        return 0

    async def work() -> int:
        await io.disk.flush()
        return 0

    io.start(k, p, work, None, "fsync")
    return None


async def sys_socket(k: "Kernel", p: "Process", domain: int, type_: int, proto: int, *_: int) -> int:
    io = _io(k)
    error = abi.check_socket(domain, type_, proto)
    if error:
        return error
    if io is None or io.node.routes.get(io.nic.flow) is None:
        return -abi.EAFNOSUPPORT  # no network device
    return io.new_fd(p, Socket())


def _sock(io: Io | None, p: "Process", fd: int) -> Socket | int:
    obj = io.table(p).get(abi.signed(fd)) if io is not None else None
    if obj is None:
        return -abi.EBADF
    if not isinstance(obj, Socket):
        return -abi.ENOTSOCK
    return obj


def _datagram_sock(io: Io | None, p: "Process", fd: int, length: int) -> Socket | int:
    """The socket ``fd`` names for a datagram of ``length`` bytes, or -errno (as Linux checks them)."""
    s = _sock(io, p, fd)
    if isinstance(s, int):
        return s
    return -abi.EINVAL if abi.signed(length) < 0 else s


async def _read_sockaddr(k: "Kernel", p: "Process", addr: int, addrlen: int,
                         raw: bytes | None = None) -> tuple[str, int] | int:
    """The (host, port) of a user's sockaddr_in, or -errno (``raw``: its bytes, read already)."""
    if abi.signed(addrlen) < 0:
        return -abi.EINVAL
    if addrlen < 16:
        return -abi.EINVAL
    if raw is None:
        raw = await k.copy_from_user(p, addr, abi.SOCKADDR_IN_SIZE)
    if raw is None:
        return -abi.EFAULT
    parsed = abi.parse_sockaddr_in(raw)
    if isinstance(parsed, int):
        return parsed
    ip, port = parsed
    return str(ipaddress.IPv4Address(ip)), port


async def sys_bind(k: "Kernel", p: "Process", fd: int, addr: int, addrlen: int, *_: int) -> int | None:
    io = _io(k)
    s = _sock(io, p, fd)
    if isinstance(s, int):
        return s
    sa = await _read_sockaddr(k, p, addr, addrlen)
    if isinstance(sa, int):
        return sa
    if s.port is not None:
        return -abi.EINVAL
    host, port = sa
    if host not in ("0.0.0.0", "127.0.0.1"):
        return -abi.EADDRNOTAVAIL

    async def work() -> int:
        s.port = await io.nic.bind(port)
        return 0

    io.start(k, p, work, None, "bind")
    return None


async def sys_sendto(k: "Kernel", p: "Process", fd: int, buf: int, length: int, flags: int, addr: int,
                     addrlen: int) -> int | None:
    io = _io(k)
    s = _datagram_sock(io, p, fd, length)
    if isinstance(s, int):
        return s
    if length > abi.MAX_DATAGRAM:
        return -abi.EMSGSIZE
    if not addr:
        return -abi.EDESTADDRREQ
    # the address and the buffer in one memory request when both are good pointers
    # (else as Linux orders it: the address's errors first, then the buffer's -EFAULT)
    both = None
    if abi.signed(addrlen) >= 16:
        both = await k.copy_from_user_many(p, [(addr, abi.SOCKADDR_IN_SIZE), (buf, length)])
    sa = await _read_sockaddr(k, p, addr, addrlen, both[0] if both else None)
    if isinstance(sa, int):
        return sa
    data = both[1] if both else await k.copy_from_user(p, buf, length)
    if data is None:
        return -abi.EFAULT
    host, port = sa
    if host == "0.0.0.0":
        host = "127.0.0.1"
    if ipaddress.IPv4Address(host) not in ipaddress.IPv4Network("127.0.0.0/8"):
        return -abi.ENETUNREACH
    if port == 0:
        return -abi.EINVAL
    if s.port is not None:
        await io.nic.send(s.port, host, port, data)
        return length

    async def work() -> int:  # an unbound socket gets an ephemeral port first, as on Linux
        if s.port is None:
            s.port = await io.nic.bind(0)
        await io.nic.send(s.port, host, port, data)
        return length

    io.start(k, p, work, None, "sendto")
    return None


async def sys_recvfrom(k: "Kernel", p: "Process", fd: int, buf: int, length: int, flags: int, addr: int,
                       addrlen_p: int) -> int | None:
    io = _io(k)
    s = _datagram_sock(io, p, fd, length)
    if isinstance(s, int):
        return s
    if length and k.user_pieces(p, buf, length, "w") is None:
        return -abi.EFAULT
    room = 0
    if addr and addrlen_p:
        raw = await k.copy_from_user(p, addrlen_p, 4)
        if raw is None or k.user_pieces(p, addrlen_p, 4, "w") is None:
            return -abi.EFAULT
        if abi.signed(int.from_bytes(raw, "little")) < 0:
            return -abi.EINVAL
        room = min(int.from_bytes(raw, "little"), 16)
        if room and k.user_pieces(p, addr, room, "w") is None:
            return -abi.EFAULT
    if s.port is None:
        return -abi.EINVAL  # nothing can arrive on an unbound socket
    port = io.nic.ports.get(s.port)
    if port is None:
        return -abi.EBADF
    args = (buf, length, addr, addrlen_p, room)
    if port.queue and not port.readers:
        return await io._deliver(k, p, port, *args)
    wait = ("recvfrom", s.port)
    k.block(p, wait)
    port.readers.append((p, wait, args))
    return None


SYSCALLS = {
    abi.SYS_OPENAT: sys_openat,
    abi.SYS_CLOSE: sys_close,
    abi.SYS_PREAD64: sys_pread64,
    abi.SYS_PWRITE64: sys_pwrite64,
    abi.SYS_FSYNC: sys_fsync,
    abi.SYS_FDATASYNC: sys_fsync,
    abi.SYS_SOCKET: sys_socket,
    abi.SYS_BIND: sys_bind,
    abi.SYS_SENDTO: sys_sendto,
    abi.SYS_RECVFROM: sys_recvfrom,
}
