"""The RV32IM core: registers, software TLB, local page cache, run loop.

This is what both the standalone runner (`standalone.py`) and the message-
plane node (`node.py`) drive; there is no second interpreter. The contract
they rely on:

`Core.run(max_instructions) -> Stop` executes at most `max_instructions`
instructions and says why it stopped:

- `QUANTUM`: the budget is used up.
- `TRAP`: `cause` is a RISC-V scause code, `tval` its value, `pc` the
  faulting instruction (like sepc: for `ecall` the ecall itself, the handler
  adds 4). Causes: 0 misaligned jump target, 2 illegal instruction (tval =
  the instruction bits), 3 `ebreak`, 8 `ecall`; a TLB miss (no entry for
  (asid, vpn)) is a page fault 12 fetch / 13 load / 15 store with tval = the
  faulting virtual address; an entry that forbids the access is an access
  fault 1 / 5 / 7.
- `PAGE_MISS`: the TLB maps the access to physical page `ppn`, but that page
  is not in the local page cache, or `write` is set and the page is held
  read-only. The node fetches the page (directory protocol), calls
  `install_page` and `run` again; the instruction restarts.
- `HALT`: `halt()` was called; the core runs no more.

Every stop happens before the stopping instruction has any side effect
(register, memory, pc), including a misaligned access that spans two pages,
and `Core.instret` counts exactly the instructions retired so far. A guest
fault is never a Python exception out of `run`.

Physical memory is a local cache of 4 KiB pages keyed by physical page number
(`install_page`, `evict_page`, `downgrade_page`). Guest state for trap
messages and `resume` replies is `get_state()` / `set_state()`: plain ints and
lists, msgpack-able.

Speed: code is interpreted (`interpret`, calling `isa.execute_*`) until a
block start has been reached `hot_threshold` times; then it runs as a
translated region (`translate.py`) that keeps registers in Python locals and
reaches memory through per-page dicts for the current address space
(`R1/R2/R4` readable pages as byte / halfword / word views, `W1/W2/W4`
writable ones, keyed by page base address; `X1` executable pages by vpn).
Those dicts hold only pages that are both mapped by the TLB and present
locally (writable ones: held writable), so a hit needs no further check;
anything else takes the slow path in this module, which raises the stop.
Translations are dropped when the TLB
entry or the local page they came from goes (`tlb_write`/`tlb_flush`
replacing it, `evict_page`) and on `fence.i`; a store into code without
`fence.i` may leave the old code running, as the RISC-V spec allows.

Privileged operations the node maps its `priv:` messages onto:
`tlb_write(asid, vpn, ppn, perms)`, `tlb_flush(asid=None, vpn=None)`,
`set_asid(asid)`, `install_page(ppn, data, writable)`, `evict_page(ppn)`,
`downgrade_page(ppn)`, `get_state()`, `set_state(state)`, `halt()`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from nodes.cpu import isa
from nodes.cpu.fault import Fault
from nodes.cpu.isa import M
from nodes.cpu.tlb import TLB
from nodes.cpu.translate import Translator
from protocol.constants import PAGE_SIZE

TIMEBASE_HZ = 10_000_000  # rdtime ticks per second

QUANTUM = "quantum"
TRAP = "trap"
PAGE_MISS = "page_miss"
HALT = "halt"

_PAGE_FAULT = {"x": isa.INSTR_PAGE_FAULT, "r": isa.LOAD_PAGE_FAULT, "w": isa.STORE_PAGE_FAULT}
_ACCESS_FAULT = {"x": isa.INSTR_ACCESS_FAULT, "r": isa.LOAD_ACCESS_FAULT, "w": isa.STORE_ACCESS_FAULT}
_COUNTERS = frozenset({isa.CSR_CYCLE, isa.CSR_TIME, isa.CSR_INSTRET, isa.CSR_CYCLEH, isa.CSR_TIMEH, isa.CSR_INSTRETH})

_CONTROL = isa.CONTROL
HOT_THRESHOLD = 32  # times a block start is interpreted before it is translated

if sys.byteorder != "little":  # pragma: no cover - the word views assume it
    raise ImportError("nodes.cpu needs a little-endian host")


@dataclass
class Stop:
    """Why `Core.run` returned.

    Attributes:
        kind: QUANTUM, TRAP, PAGE_MISS or HALT.
        pc: the pc at the stop (for TRAP / PAGE_MISS: the stopped instruction).
        cause: scause code (TRAP only).
        tval: trap value (TRAP only).
        ppn: the missing physical page (PAGE_MISS only).
        write: whether the access needs the page writable (PAGE_MISS only).
    """

    kind: str
    pc: int = 0
    cause: int | None = None
    tval: int | None = None
    ppn: int | None = None
    write: bool = False


class Core:
    """One RV32IM hart with a software TLB and a local page cache."""

    def __init__(
        self,
        tlb_capacity: int = 1024,
        time_source: Callable[[], int] | None = None,
        hot_threshold: int = HOT_THRESHOLD,
    ):
        """Create a core with all registers zero and no pages.

        Args:
            tlb_capacity: number of TLB entries (FIFO replacement).
            time_source: returns the `rdtime` value; default: a monotonic
                clock in TIMEBASE_HZ ticks.
            hot_threshold: how many times a block start is interpreted
                before it is translated (0: translate at once).
        """
        self.hot_threshold = hot_threshold
        self.x = [0] * 32
        self.pc = 0
        self.asid = 0
        self.instret = 0
        self.tlb = TLB(tlb_capacity)
        self.halted = False
        self.stop: Stop | None = None
        self._time = time_source or (lambda: time.monotonic_ns() // (1_000_000_000 // TIMEBASE_HZ))
        self._pages: dict[int, bytearray] = {}
        self._writable: set[int] = set()
        self._views: dict[int, tuple] = {}  # ppn -> (bytes, halfword, word) views
        self.R1, self.R2, self.R4 = {}, {}, {}
        self.W1, self.W2, self.W4 = {}, {}, {}
        self.X1 = {}
        self._maps_dirty = False
        self._blocks_by_asid: dict[int, dict[int, Callable]] = {}
        self._blocks = self._blocks_by_asid.setdefault(0, {})
        self._heat: dict[int, int] = {}  # block start -> times interpreted
        self._inflight = 0  # instructions the interpreter retired but run() has not counted

        self._translator = Translator(self)

    # ---------------------------------------------------------------- state

    def get_state(self) -> dict:
        """Return the architectural state: {"x": [32 ints], "pc", "asid", "instret"}."""
        return {"x": list(self.x), "pc": self.pc, "asid": self.asid, "instret": self.instret}

    def set_state(self, state: dict) -> None:
        """Load registers, pc and asid (and instret if present) from `get_state()` output."""
        regs = state["x"]
        if len(regs) != 32:
            raise ValueError(f"state['x'] must have 32 registers, got {len(regs)}")
        self.x[:] = [v & M for v in regs]
        self.x[0] = 0
        self.pc = state["pc"] & M
        self.set_asid(state.get("asid", self.asid))
        if "instret" in state:
            self.instret = state["instret"]

    def halt(self) -> None:
        """Make every further `run` return HALT at once."""
        self.halted = True

    # ------------------------------------------------------------------ TLB

    def set_asid(self, asid: int) -> None:
        """Switch to address space `asid` (no flush: entries are tagged)."""
        if asid != self.asid:
            self.asid = asid
            self._blocks = self._blocks_by_asid.setdefault(asid, {})
            self._maps_dirty = True

    def tlb_write(self, asid: int, vpn: int, ppn: int, perms: str) -> None:
        """Install a translation (asid, vpn) → ppn with `perms` ⊆ "rwx"."""
        for key in self.tlb.write(asid, vpn, ppn, perms):
            self._drop_blocks(*key)
        if asid == self.asid:
            self._maps_dirty = True

    def tlb_flush(self, asid: int | None = None, vpn: int | None = None) -> None:
        """Remove translations matching `asid` and/or `vpn` (None: all)."""
        for key in self.tlb.flush(asid, vpn):
            self._drop_blocks(*key)
        self._maps_dirty = True

    # --------------------------------------------------------- page cache

    def install_page(self, ppn: int, data: bytearray, writable: bool) -> None:
        """Put physical page `ppn` in the local cache.

        Args:
            ppn: physical page number.
            data: exactly 4096 bytes; a bytearray is used in place (no copy).
            writable: whether stores may hit it without a PAGE_MISS.
        """
        if len(data) != PAGE_SIZE:
            raise ValueError(f"page {ppn:#x}: expected {PAGE_SIZE} bytes, got {len(data)}")
        if not isinstance(data, bytearray):
            data = bytearray(data)
        self._pages[ppn] = data
        view = memoryview(data)
        self._views[ppn] = (data, view.cast("H"), view.cast("I"))
        if writable:
            self._writable.add(ppn)
        else:
            self._writable.discard(ppn)
        self._maps_dirty = True

    def evict_page(self, ppn: int) -> bytes:
        """Remove page `ppn` from the cache and return its current bytes.

        Also drops any translated code that came from that page.
        """
        data = self._pages.pop(ppn)
        self._views.pop(ppn)
        self._writable.discard(ppn)
        for (asid, vpn), (entry_ppn, _) in list(self.tlb.entries()):
            if entry_ppn == ppn:
                self._drop_blocks(asid, vpn)
        self._maps_dirty = True
        return bytes(data)

    def downgrade_page(self, ppn: int) -> bytes:
        """Make page `ppn` read-only locally and return its current bytes."""
        self._writable.discard(ppn)
        self._maps_dirty = True
        return bytes(self._pages[ppn])

    def page_bytes(self, ppn: int) -> bytes:
        """The current bytes of page `ppn`, which stays cached as it is."""
        return bytes(self._pages[ppn])

    def has_page(self, ppn: int) -> bool:
        """Whether page `ppn` is in the local cache."""
        return ppn in self._pages

    def poke(self, ppn: int, off: int, data: bytes) -> None:
        """Write ``data`` at ``off`` of cached page ``ppn`` (the caller holds it writable)."""
        self._pages[ppn][off:off + len(data)] = data

    def peek(self, addr: int, size: int) -> bytes | None:
        """The ``size`` bytes at virtual ``addr`` as a user load would read them, if every
        page of them is readable through the TLB and in the local cache; else None.
        Nothing changes: no trap, no page miss (a trap carries these, nodes/cpu/node.py)."""
        out = bytearray()
        while size > 0:
            off = addr & 4095
            n = min(size, PAGE_SIZE - off)
            entry = self.tlb.lookup(self.asid, addr >> 12)
            if entry is None or "r" not in entry[1]:
                return None
            page = self._pages.get(entry[0])
            if page is None:
                return None
            out += page[off:off + n]
            addr = (addr + n) & M
            size -= n
        return bytes(out)

    # ------------------------------------------------------------- running

    def run(self, max_instructions: int) -> Stop:
        """Execute up to `max_instructions` instructions.

        Returns:
            A `Stop` saying why the core stopped (see the module docstring).
        """
        if self.halted:
            return Stop(HALT, pc=self.pc)
        if self._maps_dirty:
            self._rebuild_maps()
        self.stop = None
        blocks = self._blocks
        done = 0
        heat = self._heat
        while done < max_instructions:
            block = blocks.get(self.pc)
            if block is not None:
                count = block(self, max_instructions - done)
            elif heat.get(self.pc, 0) < self.hot_threshold:
                # Cold code runs once (start-up, error paths): interpreting it
                # costs far less than translating it.
                heat[self.pc] = heat.get(self.pc, 0) + 1
                count = self.interpret(max_instructions - done, to_control=True)
            else:
                try:
                    block = self._translate_at(self.pc)
                except Fault:
                    break
                count = block(self, max_instructions - done)
            done += count
            self.instret += count
            if self.stop is not None:
                break
        stop = self.stop
        self.stop = None
        if stop is None:
            return Stop(QUANTUM, pc=self.pc)
        stop.pc = self.pc
        return stop

    def _translate_at(self, pc: int) -> Callable:
        """Translate the hot code at `pc` and install it; return what runs there.

        If a region already leads to `pc` (it left `pc` out because `pc` was
        cold when it was built), that region is rebuilt around it instead:
        a loop whose blocks warmed up at different times ends up in one
        region, so its iterations never go back through `run`.
        """
        translator = self._translator
        blocks = self._blocks
        owner = translator.exit_owner.pop(pc, None)
        if owner is not None and blocks.get(owner.entry) is owner:
            for start in owner.starts:
                if blocks.get(start) is owner:
                    del blocks[start]
            self._install(translator.translate(owner.entry))
            block = blocks.get(pc)
            if block is not None:
                return block
        block = blocks[pc] = translator.translate(pc)
        self._install(block)
        return block

    def _install(self, block: Callable) -> None:
        # A region can be entered at any of its blocks.
        for start in getattr(block, "starts", ()):
            self._blocks.setdefault(start, block)

    def interpret(self, budget: int, to_control: bool = False) -> int:
        """Execute up to `budget` instructions one at a time, without translation.

        Used for instructions a block cannot hold (ecall, CSR reads, fence.i,
        illegal words) and for a budget smaller than the next block. Returns
        the number retired; leaves `self.stop` set if one stopped.
        With `to_control`, also returns after a control transfer, so that
        the run loop sees the start of every block.
        """
        x = self.x
        n = 0
        decode_cache = self._translator.decode_cache
        try:
            while n < budget:
                pc = self.pc
                word = self.fetch(pc)
                insn = decode_cache.get(word)
                if insn is None:
                    insn = isa.decode(word)
                    if insn is None:
                        self.trap(isa.ILLEGAL_INSTRUCTION, word)
                    decode_cache[word] = insn
                self._inflight = n
                target = insn.execute(self, insn)
                x[0] = 0
                n += 1
                if target is None:
                    self.pc = (pc + 4) & M
                else:
                    self.pc = target
                    if to_control:
                        break
                if to_control and insn.mnemonic in _CONTROL:
                    break
        except Fault:
            pass
        self._inflight = 0
        return n

    # ----------------------------------- the interface isa.execute_* uses

    def trap(self, cause: int, tval: int) -> None:
        """Stop at the current instruction with a trap (raises Fault)."""
        self.stop = Stop(TRAP, cause=cause, tval=tval & M)
        raise Fault

    def load(self, addr: int, size: int) -> int:
        """Read `size` bytes at virtual `addr`, zero-extended, little-endian."""
        off = addr & 4095
        page = self.R1.get(addr & 0xFFFFF000)
        if page is not None and off + size <= PAGE_SIZE:
            return int.from_bytes(page[off : off + size], "little")
        return self.load_slow(addr, size)

    def store(self, addr: int, size: int, value: int) -> None:
        """Write the low `size` bytes of `value` at virtual `addr`."""
        off = addr & 4095
        page = self.W1.get(addr & 0xFFFFF000)
        if page is not None and off + size <= PAGE_SIZE:
            page[off : off + size] = value.to_bytes(size, "little")
        else:
            self.store_slow(addr, size, value)

    def fetch(self, pc: int) -> int:
        """Read the instruction word at `pc` (stops on a fetch fault or page miss)."""
        page = self.X1.get(pc >> 12)
        if page is None:
            page = self._resolve(pc, "x")
        off = pc & 4095
        return int.from_bytes(page[off : off + 4], "little")

    def flush_code(self) -> None:
        """fence.i: forget every translated block, in every address space."""
        for blocks in self._blocks_by_asid.values():
            blocks.clear()

    def counter_exists(self, csr: int) -> bool:
        """Whether `csr` is a Zicntr counter this core implements."""
        return csr in _COUNTERS

    def read_counter(self, csr: int) -> int:
        """Value of a Zicntr counter; cycle counts retired instructions."""
        if csr in (isa.CSR_TIME, isa.CSR_TIMEH):
            value = self._time()
        else:
            value = self.instret + self._inflight
        return (value >> 32) & M if csr & 0x80 else value & M

    # ------------------------------------------------------------ slow path

    def load_slow(self, addr: int, size: int) -> int:
        """Load through the TLB: misaligned page-crossing, faults, page misses."""
        data = b"".join(page[off : off + n] for page, off, n in self._pieces(addr, size, "r"))
        return int.from_bytes(data, "little")

    def store_slow(self, addr: int, size: int, value: int) -> None:
        """Store through the TLB; every page is checked before any byte is written."""
        data = value.to_bytes(size, "little")
        pos = 0
        for page, off, n in self._pieces(addr, size, "w"):
            page[off : off + n] = data[pos : pos + n]
            pos += n

    def _pieces(self, addr: int, size: int, access: str) -> list[tuple[bytearray, int, int]]:
        off = addr & 4095
        first = min(size, PAGE_SIZE - off)
        pieces = [(self._resolve(addr, access), off, first)]
        if first < size:
            second = (addr + first) & M
            pieces.append((self._resolve(second, access), 0, size - first))
        return pieces

    def _resolve(self, vaddr: int, access: str) -> bytearray:
        """The local page behind `vaddr` for `access` in "rwx", or stop."""
        entry = self.tlb.lookup(self.asid, vaddr >> 12)
        if entry is None:
            self.trap(_PAGE_FAULT[access], vaddr)
        ppn, perms = entry
        if access not in perms:
            self.trap(_ACCESS_FAULT[access], vaddr)
        page = self._pages.get(ppn)
        if page is None or (access == "w" and ppn not in self._writable):
            self.stop = Stop(PAGE_MISS, ppn=ppn, write=access == "w")
            raise Fault
        return page

    # --------------------------------------------------------- bookkeeping

    def _rebuild_maps(self) -> None:
        # Mutated in place: translated blocks hold references to these dicts.
        maps = (self.R1, self.R2, self.R4, self.W1, self.W2, self.W4, self.X1)
        for m in maps:
            m.clear()
        for (_, vpn), (ppn, perms) in self.tlb.entries(self.asid):
            views = self._views.get(ppn)
            if views is None:
                continue
            base = vpn << 12  # the data maps are keyed by page base (see translate.py)
            if "r" in perms:
                self.R1[base], self.R2[base], self.R4[base] = views
            if "w" in perms and ppn in self._writable:
                self.W1[base], self.W2[base], self.W4[base] = views
            if "x" in perms:
                self.X1[vpn] = views[0]
        self._maps_dirty = False

    def _drop_blocks(self, asid: int, vpn: int) -> None:
        blocks = self._blocks_by_asid.get(asid)
        if blocks:
            stale = [pc for pc, block in blocks.items() if vpn in getattr(block, "vpns", (pc >> 12,))]
            for pc in stale:
                del blocks[pc]
