"""The OS instance on the native topology (DESIGN.md §4, issue #5).

Two levels:

- the kernel (``nodes.guest_os.kernel.Kernel``) driven by the real RV32 core
  in-process, with memory and console as plain Python objects: ELF layout,
  syscalls, page faults, the scheduler and the kernel module, fast and exact;
- the real cluster of ``compose/native.toml`` (CPU, memory controller, UART,
  timer and the OS as processes): ``hwemu run`` end to end, and several
  processes started together through the OS's ``os_exec``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from nodes.cpu.core import PAGE_MISS, QUANTUM, TRAP, Core
from nodes.guest_os.kernel import Kernel, KernelError
from nodes.guest_os.module import FrameAllocator, FrameError, KernelModule, OutOfMemory
from protocol.auth import client_keyring
from protocol.errors import RemoteError
from protocol.frames import from_runs, to_runs
from protocol.linux_abi import initial_stack
from protocol.riscv import TIMER_INTERRUPT
from tests.integration.procs import cluster_dir, recorded_pids

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guest"
SAMPLES = GUEST / "samples"
BUILD = GUEST / "build" / "samples"
NATIVE = REPO / "compose" / "native.toml"


def sample_args(name: str) -> list[str]:
    args = SAMPLES / f"{name}.args"
    return args.read_text().splitlines() if args.exists() else []


def expected(name: str) -> bytes:
    return (SAMPLES / f"{name}.expected").read_bytes()


# =========================================================== kernel, in-process

class FakeConsole:
    def __init__(self) -> None:
        self.out = bytearray()

    async def write(self, data: bytes) -> None:
        self.out += data

    async def sync(self, timeout: float = 10.0) -> int:
        return len(self.out)


class Machine:
    """A CPU (the real core), memory and a console for one kernel, in-process.

    ``priv`` operations act on the core as the CPU node would; :meth:`run`
    executes until every process has exited, delivering a timer tick every
    ``quantum`` instructions (which preempts, as the real timer does)."""

    def __init__(self, first: int = 256, count: int = 512, quantum: int = 20_000):
        self.core = Core()
        self.mem: dict[int, bytearray] = {}
        self.console = FakeConsole()
        self.frames = FrameAllocator(first, count)
        self.kernel = Kernel("os1", self.frames, self)
        self.quantum = quantum
        self.running = False
        self.preempt = False
        self.exited: list[Any] = []
        self.priv_log: list[tuple[str, dict]] = []

    def page(self, gpn: int) -> bytearray:
        assert gpn in self.frames.owned, f"the kernel touched frame {gpn}, which is not its own"
        return self.mem.setdefault(gpn, bytearray(4096))

    async def mem_read(self, addr: int, length: int) -> bytes:
        out = bytearray()
        while length:
            off = addr & 4095
            n = min(length, 4096 - off)
            out += self.page(addr >> 12)[off:off + n]
            addr, length = addr + n, length - n
        return bytes(out)

    async def mem_write(self, addr: int, data: bytes) -> None:
        pos = 0
        while pos < len(data):
            off = (addr + pos) & 4095
            n = min(len(data) - pos, 4096 - off)
            self.page((addr + pos) >> 12)[off:off + n] = data[pos:pos + n]
            pos += n

    async def mem_batch(self, ops: list) -> list[bytes]:
        reads = []
        for addr, what in ops:  # in order, as memctl applies them
            if isinstance(what, int):
                reads.append(await self.mem_read(addr, what))
            else:
                await self.mem_write(addr, what)
        return reads

    async def priv(self, kind: str, body: dict) -> None:
        self.priv_log.append((kind, body))
        core = self.core
        if kind == "cpu_resume":
            assert body["space"] == "os1"
            for gpn, off, data in body.get("stores", ()):  # the kernel's writes, before the context runs
                self.page(gpn)[off:off + len(data)] = data
            core.set_state({"x": body["regs"], "pc": body["pc"], "asid": body["asid"]})
            self.running = True
        elif kind == "tlb_write":
            core.tlb_write(body["asid"], body["vpn"], body["ppn"], body["perms"])
        elif kind == "tlb_flush":
            core.tlb_flush(body.get("asid"), body.get("vpn"))
        elif kind == "cpu_preempt":
            self.preempt = True
        elif kind == "cpu_halt":
            self.running = False

    def process_exited(self, proc) -> None:
        self.exited.append(proc)

    def trap_body(self, cause: int, tval: int, pc: int) -> dict:
        return {"cause": cause, "tval": tval, "pc": pc, "regs": list(self.core.x),
                "asid": self.core.asid, "instret": self.core.instret}

    async def run(self, limit: int = 50_000_000, check: bool = True) -> None:
        core = self.core
        while (self.running or self.kernel.sleepers) and core.instret < limit:
            if not self.running:  # everyone sleeps: the timer still ticks
                await trio.sleep(0.002)
                await self.kernel.tick()
                continue
            stop = core.run(self.quantum)
            if stop.kind == PAGE_MISS:
                core.install_page(stop.ppn, self.page(stop.ppn), True)
            elif stop.kind == QUANTUM:
                await self.kernel.tick()
                if self.preempt:
                    self.preempt = False
                    self.running = False
                    await self.kernel.trap(self.trap_body(TIMER_INTERRUPT, 0, core.pc))
            elif stop.kind == TRAP:
                self.running = False
                await self.kernel.trap(self.trap_body(stop.cause, stop.tval, stop.pc))
            else:
                raise AssertionError(f"core stopped: {stop.kind}")
        assert not (check and self.running), "the guest did not finish within the instruction limit"


def elf_of(name: str) -> bytes:
    return (BUILD / f"{name}.elf").read_bytes()


async def test_initial_stack_is_the_linux_layout() -> None:
    sp, image = initial_stack(["prog", "a b"], top=0x80000000)
    assert sp % 16 == 0
    words = [int.from_bytes(image[i:i + 4], "little") for i in range(0, 36, 4)]
    argc, p0, p1, null, envp = words[:5]
    assert (argc, null, envp) == (2, 0, 0)
    assert words[5:9] == [6, 4096, 0, 0]  # AT_PAGESZ, AT_NULL

    def string_at(ptr: int) -> bytes:
        off = ptr - sp
        return image[off:image.index(b"\0", off)]

    assert (string_at(p0), string_at(p1)) == (b"prog", b"a b")


SAMPLE_NAMES = sorted(p.stem for p in SAMPLES.glob("*.expected"))


def symbol_address(elf: Path, symbol: str) -> int:
    from elftools.elf.elffile import ELFFile

    with elf.open("rb") as f:
        return ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(symbol)[0]["st_value"]


@pytest.mark.parametrize("name", SAMPLE_NAMES)
async def test_kernel_runs_every_sample_like_qemu(guest_build, name: str) -> None:
    """Output, exit status (128 + signal and a console line naming the pc for
    a fault) and every frame back on the free list, for each guest sample."""
    stdin = SAMPLES / f"{name}.stdin"
    fault = SAMPLES / f"{name}.fault"
    code = SAMPLES / f"{name}.exit"
    m = Machine()
    proc = await m.kernel.exec(elf_of(name), [f"/some/dir/{name}.elf", *sample_args(name)], notify=True,
                               stdin=stdin.read_bytes() if stdin.exists() else b"")
    await m.run(limit=200_000_000)
    out = bytes(m.console.out)
    assert [p.pid for p in m.exited] == [proc.pid]
    if fault.exists():
        pc = symbol_address(BUILD / f"{name}.elf", fault.read_text().strip())
        assert out.startswith(expected(name)), out
        line = out[len(expected(name)):].decode()
        assert re.fullmatch(rf"\[os1\] pid {proc.pid} \({name}.elf\) killed: .* pc=0x{pc:08x}\n", line), line
        assert m.exited[0].code in (132, 139)
    else:
        assert out == expected(name)
        assert m.exited[0].code == (int(code.read_text()) if code.exists() else 0)
    assert m.frames.free_count == 512, "the process's frames went back to the free list"


def syscost_rounds(out: bytes, n: int, rounds: int) -> list[int]:
    """The microseconds of each round syscost printed, after checking its output is whole."""
    text = out.decode()
    lines = re.findall(r"\nsyscost: round (\d+): (\d+) writes in (\d+) us\n", text)
    assert [(int(r), int(w)) for r, w, _ in lines] == [(i, n) for i in range(1, rounds + 1)], text
    assert text.count(".") == n * rounds
    return [int(us) for _r, _w, us in lines]


async def test_syscost_times_each_round_of_writes_on_the_guest_monotonic_clock(guest_build) -> None:
    """The workload of bench/vmm.py's syscall figures (no .expected: it prints times)."""
    m = Machine()
    proc = await m.kernel.exec(elf_of("syscost"), ["syscost", "40", "3"], notify=True)
    await m.run(limit=50_000_000)
    assert [(p.pid, p.code) for p in m.exited] == [(proc.pid, 0)]
    assert all(us > 0 for us in syscost_rounds(bytes(m.console.out), 40, 3))


def test_syscost_prints_the_same_shape_under_qemu(guest_build) -> None:
    run = subprocess.run(["qemu-riscv32", str(BUILD / "syscost.elf"), "25", "2"], capture_output=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert all(us >= 0 for us in syscost_rounds(run.stdout, 25, 2))


async def test_kernel_exec_installs_the_loaded_pages_tlb_entries_before_the_first_resume(guest_build) -> None:
    """exec hands the CPU the TLB entries of every page it loaded (segments,
    initial stack), so only pages touched later cost a TLB-miss trap."""
    m = Machine()
    proc = await m.kernel.exec(elf_of("bench"), ["bench"], notify=True)
    loaded = dict(proc.pages)
    resume = next(i for i, (kind, _) in enumerate(m.priv_log) if kind == "cpu_resume")
    prefilled = {b["vpn"]: (b["ppn"], b["perms"]) for kind, b in m.priv_log[:resume]
                 if kind == "tlb_write" and b["asid"] == proc.asid}
    assert prefilled == loaded
    await m.run()
    assert bytes(m.console.out) == expected("bench")
    later = [b["vpn"] for kind, b in m.priv_log[resume:] if kind == "tlb_write"]
    assert not set(later) & set(loaded), "a loaded page took a TLB-miss trap"
    assert m.kernel.counters["tlb_misses"] == len(later)


async def test_kernel_timeshares_and_kills_only_the_faulting_process(guest_build) -> None:
    m = Machine()
    a = await m.kernel.exec(elf_of("timeshare"), ["timeshare", "A", "4"])
    segv = await m.kernel.exec(elf_of("segv"), ["segv"])
    b = await m.kernel.exec(elf_of("timeshare"), ["timeshare", "B", "4"])
    await m.run()
    out = m.console.out.decode()
    lines = out.splitlines()
    a_lines = [ln for ln in lines if ln.startswith("A: ")]
    b_lines = [ln for ln in lines if ln.startswith("B: ")]
    assert len(a_lines) == len(b_lines) == 4
    assert lines.index(a_lines[0]) < lines.index(b_lines[-1]) and lines.index(b_lines[0]) < lines.index(a_lines[-1])
    codes = {p.pid: p.code for p in m.exited}
    assert codes == {a.pid: 0, segv.pid: 139, b.pid: 0}
    killed = [ln for ln in lines if "killed" in ln]
    assert len(killed) == 1 and f"pid {segv.pid}" in killed[0] and "0x00000ff0" in killed[0] and "pc=0x" in killed[0]
    assert m.kernel.counters["preempts"] > 0


SLEEPER_C = r"""
#include <stdio.h>

int main(void)
{
    struct hwemu_timespec64 t0, t1, req = {0, 30000000};
    sys_clock_gettime(HWEMU_CLOCK_MONOTONIC, &t0);
    long r = sys_nanosleep(&req);
    sys_clock_gettime(HWEMU_CLOCK_MONOTONIC, &t1);
    int64_t ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("pid %ld: nanosleep = %ld, slept at least 30 ms: %s\n", sys_getpid(), r, ns >= 30000000 ? "yes" : "NO");
    printf("clock_gettime(bad pointer) = %ld\n", sys_clock_gettime(HWEMU_CLOCK_REALTIME, (void *)0xff0));
    struct hwemu_timespec64 bad = {0, 2000000000};
    printf("nanosleep(bad nsec) = %ld\n", sys_nanosleep(&bad));
    return 0;
}
"""


@pytest.fixture(scope="session")
def sleeper(guest_build, tmp_path_factory) -> bytes:
    """A program that sleeps 30 ms (clock_nanosleep_time64), checks it with
    clock_gettime64, prints its pid, and passes bad arguments to both."""
    d = tmp_path_factory.mktemp("sleeper")
    (d / "sleeper.c").write_text(SLEEPER_C)
    cc = subprocess.run(
        ["riscv64-unknown-elf-gcc", "-march=rv32im", "-mabi=ilp32", "-O2", "-ffreestanding",
         f"-I{GUEST}/sdk", f"-I{GUEST}/sdk/include", "-static", "-nostartfiles", "-nostdlib",
         "-T", f"{GUEST}/sdk/link.ld", "-Wl,--no-warn-rwx-segments", f"{GUEST}/build/crt0.o",
         str(d / "sleeper.c"), f"{GUEST}/build/libhwemu.a", "-lgcc", "-o", str(d / "sleeper.elf")],
        capture_output=True, text=True)
    assert cc.returncode == 0, cc.stderr
    return (d / "sleeper.elf").read_bytes()


def sleeper_output(pid: int) -> str:
    return (f"pid {pid}: nanosleep = 0, slept at least 30 ms: yes\n"
            "clock_gettime(bad pointer) = -14\nnanosleep(bad nsec) = -22\n")


async def test_kernel_sleep_blocks_only_the_sleeper(guest_build, sleeper) -> None:
    m = Machine()
    s = await m.kernel.exec(sleeper, ["sleeper"])
    t = await m.kernel.exec(elf_of("timeshare"), ["timeshare", "T", "2"])
    await m.run()
    lines = m.console.out.decode().splitlines()
    mine = [ln for ln in lines if not ln.startswith("T: ")]
    assert mine == sleeper_output(s.pid).splitlines(), lines
    want = [ln.replace(" of 6", " of 2") for ln in expected("timeshare").decode().splitlines()[:2]]
    assert [ln for ln in lines if ln.startswith("T: ")] == want, lines
    assert {p.pid: p.code for p in m.exited} == {s.pid: 0, t.pid: 0}


async def test_kernel_os_kill_stops_a_running_and_a_waiting_process(guest_build) -> None:
    m = Machine()
    a = await m.kernel.exec(elf_of("timeshare"), ["timeshare", "A", "1000"])
    b = await m.kernel.exec(elf_of("timeshare"), ["timeshare", "B", "1000"])
    await m.run(limit=300_000, check=False)
    running, waiting = (a, b) if m.kernel.current is a else (b, a)
    await m.kernel.kill_request(waiting.pid, 15, by="test")
    assert waiting.code == 128 + 15 and m.kernel.current is running
    await m.kernel.kill_request(running.pid, 2, by="test")  # off the CPU at its next trap
    await m.run()
    assert running.code == 130 and not m.kernel.procs and m.frames.free_count == 512
    assert m.console.out.decode().count("killed: signal") == 2
    with pytest.raises(KernelError, match="no process"):
        await m.kernel.kill_request(running.pid)


async def test_kernel_rejects_a_bad_elf_and_goes_on(guest_build) -> None:
    m = Machine()
    with pytest.raises(KernelError) as info:
        await m.kernel.exec(b"\x7fELF" + b"\0" * 10, ["junk"])
    assert info.value.reason == "bad_elf" and "truncated" in info.value.detail
    await m.kernel.exec(elf_of("hello"), ["hello"])
    await m.run()
    assert m.console.out.startswith(b"Hello from hwemu!\n")


async def test_kernel_read_blocks_until_uart_rx(guest_build) -> None:
    m = Machine()
    proc = await m.kernel.exec(elf_of("wc"), ["wc"])
    await m.run()  # runs until wc blocks in read(0)
    assert proc.state == "blocked" and proc.wait[0] == "read"
    await m.kernel.uart_rx((SAMPLES / "wc.stdin").read_bytes())
    await m.run()
    # wc reads to EOF; a console never ends, so it is still waiting for more
    assert proc.state == "blocked"


def test_kernel_module_pins_adds_and_gives_back() -> None:
    fa = FrameAllocator(10, 4)
    mod = KernelModule(fa)
    pinned = mod.alloc_pin(2)
    assert pinned == [10, 11] and fa.pinned == {10, 11} and fa.free_count == 2
    with pytest.raises(OutOfMemory):
        mod.alloc_pin(3)
    assert mod.add_frames([100, 101]) == [100, 101] and fa.free_count == 4
    with pytest.raises(FrameError):
        mod.add_frames([12])
    used = fa.alloc()  # 12: in use by a "process"
    with pytest.raises(FrameError):
        mod.give_back([used])
    assert mod.give_back([10, 100]) == [10, 100]
    assert 10 not in fa.owned and 100 not in fa.owned and fa.pinned == {11}
    assert fa.free_count == 2  # 13 and 101


# ================================================================ real cluster

HWEMU = str(Path(sys.executable).parent / "hwemu")


def hwemu(run_dir: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([HWEMU, *args], cwd=REPO, env={**os.environ, "HWEMU_RUN_DIR": str(run_dir)},
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def _cluster_dir(rd: Path):
    """Yield (rd, pids); at the end `hwemu down` and SIGKILL for anything of ours left."""
    return cluster_dir(rd, lambda rd: hwemu(rd, "down", timeout=60))


@pytest.fixture
def run_dir(tmp_path):
    """A short run directory; at the end `hwemu down` and SIGKILL for anything of ours left."""
    with _cluster_dir(tmp_path / "r") as dir_and_pids:
        yield dir_and_pids


@pytest.fixture
def tiny_run_dir():
    """Like ``run_dir``, directly under /tmp: the endpoints in ``hwemu status``'s
    table (160 columns when piped) are short enough to leave every column whole."""
    import shutil
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="hw", dir="/tmp"))
    try:
        with _cluster_dir(top / "r") as dir_and_pids:
            yield dir_and_pids
    finally:
        shutil.rmtree(top, ignore_errors=True)


def show(run: subprocess.CompletedProcess) -> str:
    return f"exit {run.returncode}, stdout {run.stdout[-800:]!r}, stderr {run.stderr[-1500:]!r}"


@pytest.mark.integration
def test_hwemu_run_starts_a_cluster_runs_hello_and_stops_it(guest_build, run_dir):
    rd, pids = run_dir
    run = hwemu(rd, "run", "compose/native.toml", str(BUILD / "hello.elf"), "--", *sample_args("hello"))
    assert run.returncode == 0, show(run)
    assert run.stdout == expected("hello"), show(run)
    assert not (rd / "cluster.json").exists(), "hwemu run left the cluster it started running"
    assert not list(rd.glob("*.sock")), "sockets left behind"


# The exit status of each faulting sample (128 + the signal the OS kills it with).
FAULT_EXIT = {"illegal": 128 + 4, "segv": 128 + 11}
# (the report of protocol/linux_abi.py fault_report, which hwemu cpu run prints too)
FAULT_WHAT = {"illegal": re.escape("illegal instruction 0x00000000"),
              "segv": re.escape("segmentation fault (store to an unmapped address) at 0x00000ff0")}


@pytest.mark.integration
def test_hwemu_run_on_a_running_cluster_samples_faults_and_bad_elf(guest_build, run_dir, tmp_path):
    rd, pids = run_dir
    up = hwemu(rd, "up", "compose/native.toml", "--detach", "--json")
    pids |= recorded_pids(rd)
    assert up.returncode == 0, show(up)

    # every SDK sample with a known output, against the same .expected file as
    # qemu-riscv32 and `hwemu cpu run` (tests/guest/test_differential.py); fd 0
    # from the .stdin file, else empty, then EOF, as under qemu-riscv32 < file
    assert set(SAMPLE_NAMES) >= {"aluloop", "bench", "illegal", "sysloop", "timeshare", "wc", "sysabi", "segv"}
    for name in SAMPLE_NAMES:
        stdin = SAMPLES / f"{name}.stdin"
        code = SAMPLES / f"{name}.exit"
        fault = SAMPLES / f"{name}.fault"
        run = hwemu(rd, "run", "compose/native.toml", "--stdin", str(stdin) if stdin.exists() else "/dev/null",
                    str(BUILD / f"{name}.elf"), "--", *sample_args(name))
        if not fault.exists():
            want = int(code.read_text()) if code.exists() else 0
            assert (run.returncode, run.stdout) == (want, expected(name)), f"{name}: {show(run)}"
            continue
        # dies at the .fault symbol: its output so far, then the OS's console line naming the pc
        assert run.returncode == FAULT_EXIT[name], f"{name}: {show(run)}"
        pc = symbol_address(BUILD / f"{name}.elf", fault.read_text().strip())
        out = run.stdout.decode()
        assert out.startswith(expected(name).decode()), f"{name}: {show(run)}"
        assert re.fullmatch(rf"\[os1\] pid \d+ \({name}.elf\) killed: {FAULT_WHAT[name]} pc=0x{pc:08x}\n",
                            out[len(expected(name)):]), f"{name}: {show(run)}"
        assert re.fullmatch(rf"hwemu: pid \d+ killed: {FAULT_WHAT[name]} pc=0x{pc:08x}\n", run.stderr.decode()), \
            f"{name}: {show(run)}"

    junk = tmp_path / "junk.elf"
    junk.write_bytes(b"this is not a program\n")
    bad = hwemu(rd, "run", "compose/native.toml", str(junk))
    assert bad.returncode == 2, show(bad)  # bad input (issue 14 part 7)
    assert b"not an ELF file" in bad.stderr and bad.stderr.count(b"\n") == 1, show(bad)

    nope = hwemu(rd, "run", "compose/native.toml", "--os", "os9", str(BUILD / "hello.elf"))
    assert nope.returncode == 1 and b"no OS node 'os9'" in nope.stderr and nope.stderr.count(b"\n") == 1, show(nope)

    # the OS is still there and runs the next program; the cluster was not ours to stop
    again = hwemu(rd, "run", "compose/native.toml", str(BUILD / "hello.elf"), "--", *sample_args("hello"))
    assert (again.returncode, again.stdout) == (0, expected("hello")), show(again)
    assert (rd / "cluster.json").exists()

    # Ctrl-C: hwemu run exits 130 and its program goes too; the cluster stays
    import signal

    from orchestrator.client import call

    proc = subprocess.Popen([HWEMU, "run", "compose/native.toml", str(BUILD / "timeshare.elf"), "--", "Z", "100000"],
                            cwd=REPO, env={**os.environ, "HWEMU_RUN_DIR": str(rd)}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = read_line_within(proc, 60)
        assert first == b"Z: line 1 of 100000, work 0x092ad627\n", first
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    def os_ps() -> dict:
        return trio.run(call, rd, "ctl_request", {"node": "os1", "kind": "os_ps", "body": {}})["body"]["data"]

    deadline = time.monotonic() + 30
    while (ps := os_ps())["procs"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ps["procs"] == [], ps
    assert ps["exited"][-1]["code"] == 130 and "signal 2" in ps["exited"][-1]["reason"], ps["exited"][-1]

    # the OS dies under a running program (SIGKILL; the supervisor restarts it
    # empty): hwemu run does not wait forever, it says so and exits 137, as for a
    # program killed with its OS (docs/recovery.md)
    import json

    proc = subprocess.Popen([HWEMU, "run", "compose/native.toml", str(BUILD / "timeshare.elf"), "--", "Y", "100000"],
                            cwd=REPO, env={**os.environ, "HWEMU_RUN_DIR": str(rd)}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert read_line_within(proc, 60).startswith(b"Y: line 1 ")
        os.kill(json.loads((rd / "cluster.json").read_text())["nodes"]["os1"], signal.SIGKILL)
        assert proc.wait(timeout=60) == 137
        err = proc.stderr.read().decode()
        assert "os1" in err and "killed" in err and err.count("\n") == 1, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wc_output(text: bytes) -> bytes:
    """What guest/samples/wc.c prints for ``text`` (its counts, checksum, the text upper-cased)."""
    lines, words, in_word, total = text.count(b"\n"), 0, False, 0
    for c in text:
        space = c in b" \n\t"
        words += not space and not in_word
        in_word = not space
        total = ((total << 5 | total >> 27) & 0xFFFFFFFF) ^ c
    return (f"{lines} lines, {words} words, {len(text)} bytes, checksum 0x{total:08x}\n".encode()
            + text.upper())


@pytest.mark.integration
def test_bytes_typed_into_the_uart_tcp_port_reach_a_guest_read_on_the_native_cluster(guest_build, run_dir):
    """wc.elf without --stdin reads the console: what a TCP client of uart0
    types is what its read(0, ...) calls return, every byte once, in order."""
    import json
    import socket

    rd, pids = run_dir
    up = hwemu(rd, "up", "compose/native.toml", "--detach", "--json")
    pids |= recorded_pids(rd)
    assert up.returncode == 0, show(up)
    status = json.loads(hwemu(rd, "status", "--json").stdout)
    port = next(n for n in status["nodes"] if n["name"] == "uart0")["stats"]["tcp_port"]
    # wc stops reading once fewer than 37 bytes of its 8192-byte buffer are
    # left: exactly 8156 bytes typed make it stop with all of them, no EOF needed
    line = b"the quick brown fox\tjumps over 13 lazy dogs\n"
    text = (line * 200)[:8155] + b"\n"
    proc = subprocess.Popen([HWEMU, "run", "compose/native.toml", str(BUILD / "wc.elf")], cwd=REPO,
                            env={**os.environ, "HWEMU_RUN_DIR": str(rd)}, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as typist:
            for i in range(0, len(text), 1000):  # typed in pieces, as a person (or nc) would
                typist.sendall(text[i:i + 1000])
            out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out) == (0, wc_output(text)), (proc.returncode, out[:300], err[-500:])


@pytest.mark.integration
def test_hwemu_status_shows_the_cpu_halted_running_and_trapped(guest_build, tiny_run_dir):
    """The CPU's state machine through the CLI: halted with nothing to run,
    running a compute loop, trapped while its trap handler (os1, stopped
    with SIGSTOP) has not answered a syscall; in --json and in the table."""
    import json
    import signal

    rd, pids = tiny_run_dir
    env = {**os.environ, "HWEMU_RUN_DIR": str(rd)}

    def cpu_state() -> str:
        status = json.loads(hwemu(rd, "status", "--json").stdout)
        return next(n for n in status["nodes"] if n["name"] == "cpu0")["stats"]["cpu_state"]

    def wait_for(state: str, table: bool = True) -> None:
        deadline = time.monotonic() + 60
        while (now := cpu_state()) != state and not (state == "not halted" and now != "halted"):
            assert time.monotonic() < deadline, f"cpu0 still {now}, never {state}"
            time.sleep(0.05)
        if not table:
            return
        table = subprocess.run([HWEMU, "status"], cwd=REPO, env=env, capture_output=True, timeout=60).stdout.decode()
        row = next(ln for ln in table.splitlines() if ln.startswith("│ cpu0 "))
        assert f"running / {state} " in row, table

    def start(*program: str) -> subprocess.Popen:
        return subprocess.Popen([HWEMU, "run", "compose/native.toml", *program], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def interrupt(proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGINT)  # hwemu run kills its program (os_kill) and exits 130
        assert proc.wait(timeout=60) == 130, proc.stderr.read()

    up = hwemu(rd, "up", "compose/native.toml", "--detach", "--json")
    pids |= recorded_pids(rd)
    assert up.returncode == 0, show(up)
    os1 = json.loads((rd / "cluster.json").read_text())["nodes"]["os1"]
    wait_for("halted")
    procs = [start(str(BUILD / "bench.elf"), "--", "1000000")]  # seconds of compute, no trap
    try:
        wait_for("running")
        interrupt(procs[0])
        wait_for("halted")  # the OS has nothing left to run
        procs.append(start(str(BUILD / "sysloop.elf"), "--", "1000000"))  # a write() trap after another
        wait_for("not halted", table=False)  # it started
        os.kill(os1, signal.SIGSTOP)
        try:
            wait_for("trapped")
        finally:
            os.kill(os1, signal.SIGCONT)
        interrupt(procs[1])
        wait_for("halted")
    finally:
        os.kill(os1, signal.SIGCONT)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def read_line_within(proc: subprocess.Popen, seconds: float) -> bytes:
    """The first line a child prints, or fail after ``seconds``."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    got = b""
    deadline = time.monotonic() + seconds
    fd = proc.stdout.fileno()
    while not got.endswith(b"\n"):
        left = deadline - time.monotonic()
        assert left > 0, f"no complete line within {seconds} s (got {got!r})"
        if sel.select(left):
            chunk = os.read(fd, 1)
            assert chunk, f"the child closed stdout after {got!r}"
            got += chunk
    return got


class Client:
    """A party of the plane outside the topology that starts programs on os1
    and hears their proc_exit."""

    def __init__(self, orch, name: str = "tclient"):
        import protocol.hw  # noqa: F401
        from protocol.transport import Party

        self.party = Party(name, f"ipc://{orch.run_dir}/{name}.sock", dict(orch.directory), advertise=True,
                           auth=client_keyring(orch.run_dir, name))
        self.exits: dict[int, dict] = {}
        self.changed = trio.Event()

    async def _handle(self, msg) -> None:
        if msg.kind == "proc_exit":
            self.exits[msg.body["pid"]] = msg.body
            self.changed.set()
            self.changed = trio.Event()

    async def exec(self, name: str | bytes, argv: list[str]) -> int:
        elf = name if isinstance(name, bytes) else elf_of(name)
        reply = await self.party.request("os1", "os_exec", {"elf": elf, "argv": argv, "notify": True},
                                         timeout=30)
        return reply.body["data"]["pid"]

    async def wait_exits(self, pids: set[int], timeout: float = 120) -> dict[int, dict]:
        with trio.fail_after(timeout):
            while not pids <= set(self.exits):
                await self.changed.wait()
        return {p: self.exits[p] for p in pids}


@pytest.mark.integration
async def test_cluster_timeshares_two_programs_and_a_fault_kills_only_its_process(guest_build, sleeper, cluster):
    orch = await cluster(NATIVE)
    client = Client(orch)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client._handle)
            await _timeshare_and_segv(orch, client, sleeper)
            await _kernel_module_and_ps(orch, client)
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()


async def _timeshare_and_segv(orch, client: Client, sleeper: bytes) -> None:
    # A computes 12 times as long per line: it still runs when B starts, however fast the CPU
    a = await client.exec("timeshare", ["timeshare", "A", "6", "12"])
    z = await client.exec(sleeper, ["sleeper"])
    b = await client.exec("timeshare", ["timeshare", "B", "6"])
    s = await client.exec("segv", ["segv"])
    ps = (await client.party.request("os1", "os_ps")).body["data"]["procs"]
    assert {p["pid"] for p in ps} <= {a, z, b, s} and all(p["state"] in ("ready", "running", "blocked") for p in ps)
    exits = await client.wait_exits({a, z, b, s})
    assert {p: e["code"] for p, e in exits.items()} == {a: 0, z: 0, b: 0, s: 139}
    assert "killed" in exits[s]["reason"]
    logged = (await client.party.request("uart0", "uart_sync")).body["data"]["logged"]
    log = (orch.run_dir / "uart0.console.log").read_bytes()[:logged].decode()
    lines = log.splitlines()
    want = expected("timeshare").decode().splitlines()
    for tag in "AB":
        mine = [ln for ln in lines if ln.startswith(f"{tag}: ")]
        assert mine == [ln.replace("T: ", f"{tag}: ", 1) for ln in want], log
    first = {t: next(i for i, ln in enumerate(lines) if ln.startswith(f"{t}: ")) for t in "AB"}
    last = {t: max(i for i, ln in enumerate(lines) if ln.startswith(f"{t}: ")) for t in "AB"}
    assert first["A"] < last["B"] and first["B"] < last["A"], f"the two did not run interleaved:\n{log}"
    assert "storing to 0x00000ff0" in lines
    assert [ln for ln in lines if ln.startswith(("pid ", "clock_", "nanosleep"))] == sleeper_output(z).splitlines()
    segv_line = f"pid {s} (segv) killed: segmentation fault (store to an unmapped address) at 0x00000ff0"
    assert sum(segv_line in ln for ln in lines) == 1, log
    stats = (await orch.request("os1", "stats")).body["stats"]["kernel"]
    assert stats["procs"] == 0 and stats["free_frames"] == 512 and stats["preempts"] > 0


async def _kernel_module_and_ps(orch, client: Client) -> None:
    req = orch.party.request  # the kernel module and the drivers' modes are the orchestrator's (protocol/authz.py)
    pinned = (await req("os1", "mod_alloc_pin", {"n": 3})).body["data"]
    frames = from_runs(pinned["runs"])  # frames travel as [first, count] runs
    assert len(frames) == 3 and all(256 <= f < 768 for f in frames) and pinned["free"] == 509
    assert pinned["runs"] == to_runs(frames) and len(pinned["runs"]) == 1  # a fresh OS hands out consecutive frames
    with pytest.raises(RemoteError, match="out of memory"):
        await req("os1", "mod_alloc_pin", {"n": 10_000})
    back = (await req("os1", "mod_give_back", {"runs": to_runs(frames[:2])})).body["data"]
    assert back == {"runs": to_runs(frames[:2]), "free": 509}
    with pytest.raises(RemoteError, match="already owned"):
        await req("os1", "mod_add", {"frames": [frames[2]]})  # the former frame list is still understood
    with pytest.raises(RemoteError, match=r"bad_field \[body.runs\[1\]\]: runs .* overlap") as info:
        await req("os1", "mod_add", {"runs": [[frames[0], 2], [frames[1], 1]]})
    assert info.value.reason == "bad_field"
    added = (await req("os1", "mod_add", {"runs": to_runs(frames[:2])})).body["data"]
    assert added["free"] == 511
    # the OS still runs programs, with the pinned frame kept out of their way
    pid = await client.exec("hello", ["hello.elf", *sample_args("hello")])
    assert (await client.wait_exits({pid}))[pid]["code"] == 0
    mode = (await req("os1", "os_driver_mode", {"device": "uart", "mode": "virtual"})).body["data"]
    assert mode["mode"] == "virtual"
    assert (await req("os1", "os_driver_mode", {"device": "uart", "mode": "native"})).body["data"]["mode"] == "native"
    ps = (await req("os1", "os_ps")).body["data"]
    assert ps["procs"] == [] and ps["free_frames"] == 511
    assert {e["pid"]: e["code"] for e in ps["exited"]}[pid] == 0
