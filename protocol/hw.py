"""Message kinds of the hardware and the OS (DESIGN.md §3, §4), registered
with the schema of :mod:`protocol.messages`.

Flows (route table entries) and who sends on them:

===================  ==========  ===============================================
flow                 sender      kinds
===================  ==========  ===============================================
``trap:cpu0``        cpu0        ``trap`` (register file, cause; the CPU waits)
``priv:os1``         os1         ``cpu_resume``, ``cpu_save``, ``tlb_write``,
                                 ``tlb_flush``, ``cpu_preempt``, ``cpu_halt``,
                                 ``irq_mask``
``irq:timer0``       timer0      ``tick``, ``alarm``
``irq:uart0``        uart0       ``uart_rx``
``io:os1.uart``      os1         ``uart_write``
``io:os1.timer``     os1         ``timer_set``, ``timer_alarm``
``io:os1.disk``      os1         ``disk_read``, ``disk_write``, ``disk_flush``
``irq:disk0``        disk0       ``disk_done``
``io:os1.nic``       os1         ``nic_bind``, ``nic_send``, ``nic_close``,
                                 ``nic_rx_ack``, ``nic_rx_post``
``irq:nic0``         nic0        ``nic_done``, ``nic_rx``
===================  ==========  ===============================================

Memory traffic is request/reply with the memory controller (``mem_*``).
"""

from __future__ import annotations

from typing import Any

from protocol.constants import PAGE_SIZE
from protocol.errors import ProtocolError
from protocol.messages import Field, register

_opt = lambda t, **kw: Field(t, required=False, **kw)  # noqa: E731

# -- CPU ------------------------------------------------------------------------
# cause: RISC-V scause code; interrupt traps (preemption) use cause 0x80000005.
# after: [flow, fseq] of the cpu_resume whose context raised it (absent if that came on no flow): a
# trap raised under an older resume than the last one its handler sent is stale (the newer resume,
# on its way, replaces that context): the VMM drops it (nodes/vmm/node.py ``on_trap``)
# mem: [[addr, bytes], ...], the user memory a system call reads (its ``peek`` entries, below),
# as the CPU held it when it trapped: the OS takes it instead of reading it from the memory
# controller (after its own checks of the pointers). Ranges the CPU could not read from the
# pages it holds (not cached, no TLB entry, not readable, longer than PEEK_MAX) are left out.
register("trap", cause="int", tval="int", pc="int", regs=Field("list", items="int"), asid="int",
         instret="int", insn=_opt("int"), after=_opt("list"), mem=_opt("list", items="list"))
# Privileged operations (priv:<os>). Each is answered ``ok`` {data} when it
# carries ``ack: true`` (after it took effect; an error reply says why not);
# without it, none is sent: on the hot path (a trap's resume) the answer is the
# CPU running again. ``cpu_save`` is always answered.
# cpu_resume's ``tlb``: entries [asid, vpn, ppn, perms] installed (after
# flush_tlb) before the CPU runs, saving a tlb_write round each on a switch.
# ``peek``: entries [ecall number (a7), pointer register, length register (0: the fixed
# length), fixed length]: at an ecall of that number in this ``space`` the trap carries the
# bytes the registers name (``mem``); the CPU keeps the last table of each space.
# ``stores``: [[gpn, offset, bytes], ...], the kernel's writes into the process (a system call's
# results) in this space, in order: the CPU makes them, as stores of its own to pages it then
# holds writable, before the context runs or traps (protocol/hw.py ``store_entry``).
register("cpu_resume", regs=_opt("list", items="int"), pc=_opt("int"), asid=_opt("int"),
         space=_opt("str"), flush_tlb=_opt("bool"), tlb=_opt("list", items="list"),
         peek=_opt("list", items="list"), stores=_opt("list", items="list"))
register("cpu_save")              # reply ok {data: {regs, pc, asid, space, cpu_state, instret}}; refused while running
register("tlb_write", asid="int", vpn="int", ppn="int", perms="str")
register("tlb_flush", asid=_opt("int", nullable=True), vpn=_opt("int", nullable=True))
register("cpu_preempt")           # take an interrupt trap at the next instruction boundary
register("cpu_halt")              # stop executing until the next cpu_resume
register("irq_mask", masked="bool")
for _priv in ("cpu_resume", "tlb_write", "tlb_flush", "cpu_preempt", "cpu_halt", "irq_mask"):
    register(_priv, ack=_opt("bool"))


def tlb_entry(entry: Any, where: str) -> tuple[int, int, int, str]:
    """An [asid, vpn, ppn, perms] TLB entry (cpu_resume's ``tlb``, a tlb_write), checked.

    Raises:
        ProtocolError: not four fields, a negative or non-int number, or perms not a subset of
            "rwx"; the field named is ``where`` (``body.perms`` for a tlb_write's perms).
    """
    if (not isinstance(entry, list) or len(entry) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry[:3])
            or not isinstance(entry[3], str)):
        raise ProtocolError("bad_field", f"a TLB entry is [asid, vpn, ppn, perms] with non-negative ints, "
                            f"got {entry!r}", where)
    if not set(entry[3]) <= set("rwx"):
        raise ProtocolError("bad_field", f"TLB perms must be a subset of 'rwx', got {entry[3]!r}",
                            f"{where}.perms" if where == "body" else where)
    return entry[0], entry[1], entry[2], entry[3]


def store_entry(entry: Any, where: str) -> tuple[int, int, bytes]:
    """A [gpn, offset, bytes] store of cpu_resume's ``stores``, checked: within one page.

    Raises:
        ProtocolError: not three fields, a negative gpn or offset, or bytes past the page's end.
    """
    if (not isinstance(entry, list) or len(entry) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in entry[:2])
            or not isinstance(entry[2], bytes) or entry[1] + len(entry[2]) > PAGE_SIZE):
        raise ProtocolError("bad_field", f"a store is [gpn, offset, bytes] within one {PAGE_SIZE}-byte page, "
                            f"got {entry!r:.80}", where)
    return entry[0], entry[1], entry[2]


PEEK_MAX = 16384  # the most bytes one range of a trap's ``mem`` carries (more: the OS reads them)


def peek_table(entries: Any, where: str = "body.peek") -> dict[int, tuple[tuple[int, int, int], ...]]:
    """cpu_resume's ``peek`` as {ecall number: ((pointer reg, length reg, fixed length), ...)}.

    Raises:
        ProtocolError: an entry is not four non-negative ints, a register is not 1..31 (the
            length register may be 0), or a fixed length is over PEEK_MAX.
    """
    table: dict[int, tuple[tuple[int, int, int], ...]] = {}
    for i, e in enumerate(entries):
        if (not isinstance(e, list) or len(e) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in e)
                or not 1 <= e[1] <= 31 or e[2] > 31 or e[3] > PEEK_MAX):
            raise ProtocolError("bad_field", f"a peek entry is [ecall number, pointer register 1..31, length "
                                f"register 0..31, fixed length <= {PEEK_MAX}], got {e!r}", f"{where}[{i}]")
        table[e[0]] = table.get(e[0], ()) + ((e[1], e[2], e[3]),)
    return table


register("cpu_run", elf=_opt("bytes"))  # standalone convenience; unused by the OS

# -- memory controller ------------------------------------------------------------
register("mem_acquire", space="str", gpn="int", write="bool")
register("mem_grant", frame="int", gpn="int", data="bytes", writable="bool")
register("mem_recall", frame="int", mode="str")          # mode: invalidate | downgrade
register("mem_recalled", frame="int", data=_opt("bytes", nullable=True))
register("mem_release", frame="int", data=_opt("bytes", nullable=True))
register("mem_read", space="str", addr="int", length="int")
register("mem_write", space="str", addr="int", data="bytes")
register("mem_data", data="bytes")
# several uncached reads ([addr, length]) and writes ([addr, bytes]) of one space in one request, applied
# in order (an OS copying a syscall's buffers: one round trip); reply ok {data: {"reads": [bytes, ...]}}
register("mem_batch", space="str", ops=Field("list", items="list"))
register("mem_space", space="str", frames=Field("list", items="int"))  # create / describe a space
register("mem_info")

# -- UART ----------------------------------------------------------------------
register("uart_write", data="bytes")
register("uart_rx", data="bytes")
register("uart_sync")                # reply ok {data: {"logged": bytes written to the log so far}}

# -- timer -----------------------------------------------------------------------
register("timer_set", period_ms=Field("float"))        # 0 stops the periodic tick
register("timer_alarm", id="int", delay_ms=Field("float"))
register("tick", n="int", time_ns="int")
register("alarm", id="int", time_ns="int")
register("timer_now")                # reply ok {data: {"time_ns": int}} (wall clock)

# -- disk (nodes/disk/node.py has the full interface) ------------------------------
# status: 0, or -errno (EINVAL malformed/misaligned, EIO out of range or outside
# the issuer's partition, EFAULT bad DMA, EAGAIN queue full); reason says why.
# block: from the start of the issuer's partition if it has one (each OS sees its
# partition as the device, from block 0), else absolute.
# (``inline``: a read's bytes come back in its disk_done's ``data``, no DMA; a write's ``data``: its bytes
# travel with it, no DMA: the driver waits for no memory round trip either way)
register("disk_read", id="int", block="int", count="int", space="str", addr="int", inline=_opt("bool"))
register("disk_write", id="int", block="int", count="int", space="str", addr="int", data=_opt("bytes"))
register("disk_flush", id="int")
register("disk_done", id="int", status="int", count="int", reason=_opt("str"), data=_opt("bytes"))
register("disk_info", os=_opt("str"))  # reply ok {data: {blocks, block_size, write_back, ...}};
# os: the geometry as that OS sees it (the VMM asks, to serve the OS's partition)

# -- NIC (nodes/nic/node.py has the full interface) -----------------------------------
# os (optional): the OS the issuer acts for; honoured only from the node that
# io:<os>.nic is routed to (the VMM serving that OS's virtual-mode driver)
register("nic_bind", id="int", port="int", os=_opt("str"))     # port 0: the NIC picks a free guest port
register("nic_send", id="int", src_port="int", dst_host="str", dst_port="int", data="bytes", os=_opt("str"))
register("nic_close", id="int", port="int", os=_opt("str"))
register("nic_rx_ack", port="int", count="int", os=_opt("str"))  # the driver hands back receive slots
register("nic_done", id="int", status="int", port=_opt("int"), reason=_opt("str"))
register("nic_rx_post", buffers=Field("list", items="int"), space="str", reset=_opt("bool"), os=_opt("str"),
         inline=_opt("bool"))  # the issuer takes each datagram in its nic_rx (``data``), no DMA
# the driver posts receive buffers: guest addresses of page frames it owns (pinned); reset: they
# replace every buffer posted before (a restarted OS's old frames are not its buffers any more)
register("nic_rx", port="int", src_host="str", src_port="int", length="int", buffers=Field("list", items="int"),
         data=_opt("bytes"))  # the datagram itself, carried with its interrupt (no buffers then)
# a datagram of `length` bytes DMA'd into `buffers` (in order, a page each), taken from the posted ones
register("nic_forward", guest_port="int", host_port="int")  # direct request: map a guest port to a host port (hostfwd)

# -- OS instance -----------------------------------------------------------------
# reply ok {data: {"pid": int}}; proc_exit sent to the requester if notify
register("os_exec", elf="bytes", argv=Field("list", items="str"), name=_opt("str"),
         notify=_opt("bool"), stdin=_opt("bytes", nullable=True))
# stdin: the process's fd 0 reads these bytes, then EOF (default: the console)
register("proc_exit", pid="int", code="int", reason=_opt("str"))
register("os_ps")
register("os_kill", pid="int", signal=_opt("int"))   # reply ok {data: {"pid"}}; exit status 128 + signal (9)
register("os_driver_mode", device="str", mode="str")   # reply ok {data: the driver's state}

# -- OS kernel module (DESIGN.md §4, FIG. 4) ---------------------------------------
# Frames as runs [[first, count], ...] (protocol/frames.py) or, formerly, a list
# "frames" [...]: a body names them one way (frames.body_frames checks which).
# mod_alloc_pin is answered ok {data: {"runs": [...], "free": free frames left,
# "lend_floor"}}: the module allocated them and pinned them with the memory
# controller (DESIGN.md §5 ¶39: "allocates + pins"); mod_add / mod_give_back
# are answered ok {data: {"frames": how many, "free"}}. mod_give_back pins,
# with the memory controller, the frames that were free in the OS (those it
# allocated with mod_alloc_pin are pinned already): only pinned frames change owner.
_frames = dict(runs=_opt("list", items="list"), frames=_opt("list", items="int"))
register("mod_alloc_pin", n="int", min=_opt("int"))  # allocate and pin n frames (at least min, default n)
register("mod_add", **_frames)        # received frames join the free list
register("mod_give_back", **_frames)  # pinned or free frames leave the OS
