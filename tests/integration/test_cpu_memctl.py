"""The CPU and memory controller nodes in real clusters (DESIGN.md §3): a test
OS (``tests.fixtures.trapper``, named ``os1``) loads guest programs into its
partition through memctl, handles the CPU's traps (TLB misses, system calls)
and copies user buffers with uncached reads, which make memctl recall the
pages the CPU holds modified. Also: isolation of OS spaces, and a memctl
killed with SIGKILL comes back (supervisor) with memory intact."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio

import tests.fixtures.trapper  # noqa: F401  (registers the testos_* kinds in this process)
from hwemu.testing import node_stats as stats
from protocol.errors import RemoteError
from tests.integration.procs import sigkill_until_restarted

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "guest" / "build" / "samples"
SAMPLES = ROOT / "guest" / "samples"
# primes' calloc'ed sieve below 2000: composite[i] = 1
SIEVE = bytes(0 if i < 2 or all(i % d for d in range(2, int(i ** 0.5) + 1)) else 1 for i in range(2000))


def topology(tmp_path: Path, quantum: int = 20000) -> dict:
    return {"cluster": {"name": "cpumem"},
            "nodes": {"memctl": {"kind": "memctl",
                                 "options": {"frames": 1024, "path": str(tmp_path / "mem"),
                                             "partitions": {"os1": [256, 256]}}},
                      "cpu0": {"kind": "cpu", "options": {"quantum": quantum}},
                      "os1": {"kind": "testos", "module": "tests.fixtures.trapper",
                              "options": {"first_gpn": 256, "count": 256}}},
            "routes": {"trap:cpu0": "os1", "priv:os1": "cpu0", "mem:cpu0": "memctl", "mem:os1": "memctl"}}


async def run_program(orch, name: str, argv: list[str], timeout: float = 60.0) -> dict:
    elf = (BUILD / f"{name}.elf").read_bytes()
    await orch.request("os1", "testos_load", {"elf": elf, "argv": argv}, timeout=20)
    return await run_until_exit(orch, timeout)


def expected(name: str) -> bytes:
    return (SAMPLES / f"{name}.expected").read_bytes()


def args(name: str) -> list[str]:
    path = SAMPLES / f"{name}.args"
    return path.read_text().splitlines() if path.exists() else []


async def test_hello_and_primes_run_on_the_cpu_node_through_the_test_os(cluster, tmp_path, guest_build):
    orch = await cluster(topology(tmp_path))
    assert (await stats(orch, "cpu0"))["cpu_state"] == "halted"
    for name in ("hello", "primes"):
        result = await run_program(orch, name, [f"{name}.elf", *args(name)])
        assert result["fault"] is None
        assert (result["output"], result["exit_code"]) == (expected(name), 0), name
        assert result["tlb_misses"] > 0
    cpu = await stats(orch, "cpu0")
    assert cpu["cpu_state"] == "halted"
    assert cpu["page_misses"] > 0 and cpu["instret"] > 0 and cpu["traps"] > 0
    # write() copied buffers the CPU held modified: memctl recalled them
    assert cpu["recalls"] > 0
    mem = await stats(orch, "memctl")
    # (snapshots: the bytes of a page the CPU writes, for an uncached read; it keeps its copy)
    assert mem["recalls"] > 0 and mem["snapshots"] > 0 and mem["uncached_reads"] > 0
    assert mem["recovering"] is False
    assert mem["spaces"] == {"os1": "identity"}


async def test_an_os_may_only_name_its_own_space_but_other_initiators_name_any(cluster, tmp_path):
    orch = await cluster(topology(tmp_path))
    refused = (await orch.request("os1", "testos_acquire", {"space": "os2", "gpn": 300})).body["data"]
    # refused by the rules table (protocol/authz.py) before the controller looks at it
    assert refused["reason"] == "forbidden"
    assert "mem_acquire from os1 (testos) refused by rule 'memory'" in refused["detail"]
    own = (await orch.request("os1", "testos_acquire", {"space": "os1", "gpn": 300})).body["data"]
    assert own == {"frame": 300}
    # a page outside the partition is a fault of the controller itself
    outside = (await orch.request("os1", "testos_acquire", {"space": "os1", "gpn": 10})).body["data"]
    assert outside["reason"] == "mem_fault"
    # the orchestrator is not an OS: it names the space
    await orch.request("memctl", "mem_write", {"space": "os1", "addr": 300 * 4096 + 8, "data": b"abc"})
    got = await orch.request("memctl", "mem_read", {"space": "os1", "addr": 300 * 4096 + 8, "length": 3})
    assert got.body["data"] == b"abc"
    with pytest.raises(RemoteError) as err:
        await orch.request("memctl", "mem_read", {"space": "nope", "addr": 0, "length": 1})
    assert err.value.reason == "mem_fault"
    info = (await orch.request("memctl", "mem_info")).body["data"]
    assert info["refused"] == 0 and info["nframes"] == 1024  # the table refused it before the controller saw it
    assert (await stats(orch, "memctl"))["forbidden_by"] == {"memory": 1}


async def test_memctl_killed_with_sigkill_is_restarted_with_memory_intact(cluster, tmp_path, guest_build):
    orch = await cluster(topology(tmp_path))
    # primes leaves its sieve (a calloc'ed heap array) modified in the CPU's cache:
    # only memctl's recovery can bring those bytes back to memory
    result = await run_program(orch, "primes", ["primes.elf"])
    assert (result["output"], result["exit_code"]) == (expected("primes"), 0)
    heap = result["heap_gpns"]
    assert heap
    cpu = await stats(orch, "cpu0")
    assert cpu["pages"] > 0 and cpu["modified"] > 0
    pattern = bytes(range(256)) * 32  # two pages, written uncached
    await orch.request("memctl", "mem_write", {"space": "os1", "addr": 500 * 4096, "data": pattern})

    async def recovered() -> dict | None:
        mem = await stats(orch, "memctl")
        return mem if mem["recovering"] is False else None

    assert orch.supervisor.nodes["memctl"].restarts == 0
    mem = await sigkill_until_restarted(orch, "memctl", recovered)
    assert mem["recoveries"] == 1 and mem["dropped_initiators"] == 0
    got = await orch.request("memctl", "mem_read", {"space": "os1", "addr": 500 * 4096, "length": len(pattern)})
    assert got.body["data"] == pattern
    # the sieve the CPU held modified was written back during recovery
    heap_bytes = b"".join([(await orch.request("memctl", "mem_read", {"space": "os1", "addr": g * 4096,
                                                                     "length": 4096})).body["data"] for g in heap])
    assert SIEVE in heap_bytes
    assert mem["writebacks"] >= 1
    assert mem["spaces"] == {"os1": "identity"} and mem["frames"]["os1"] == 256
    # the CPU wrote back and dropped what it held; the directory is empty again
    cpu = await stats(orch, "cpu0")
    assert (cpu["pages"], cpu["modified"]) == (0, 0)
    assert mem["cached"] == {}
    # and the machine still runs programs
    result = await run_program(orch, "hello", ["hello.elf", *args("hello")])
    assert (result["output"], result["exit_code"]) == (expected("hello"), 0)


async def held_at_brk(orch, name: str, argv: list[str]) -> None:
    """Load ``name`` with the test OS holding the CPU trapped at its first brk."""
    await orch.request("os1", "testos_hold")
    await orch.request("os1", "testos_load", {"elf": (BUILD / f"{name}.elf").read_bytes(), "argv": argv},
                       timeout=20)
    with trio.fail_after(30):
        while not (await orch.request("os1", "testos_result")).body["data"]["held"]:
            await trio.sleep(0.02)
    assert (await stats(orch, "cpu0"))["cpu_state"] == "trapped"


async def emit(orch, kind: str, body: dict | None = None) -> None:
    await orch.request("os1", "testos_emit", {"kind": kind, "body": body or {}})


async def wait_cpu(orch, pred, timeout: float = 10.0) -> dict:
    with trio.fail_after(timeout):
        while True:
            s = await stats(orch, "cpu0")
            if pred(s):
                return s
            await trio.sleep(0.02)


async def test_a_preempt_while_trapped_is_taken_as_an_interrupt_trap_after_the_resume(cluster, tmp_path,
                                                                                      guest_build):
    orch = await cluster(topology(tmp_path))
    await held_at_brk(orch, "primes", ["primes.elf"])
    await emit(orch, "cpu_preempt")
    await wait_cpu(orch, lambda s: s["preempt_pending"])
    await orch.request("os1", "testos_release")
    result = await run_until_exit(orch)
    assert (result["output"], result["exit_code"]) == (expected("primes"), 0)
    assert len(result["interrupts"]) == 1
    s = await stats(orch, "cpu0")
    assert (s["preempts"], s["preempt_pending"], s["cpu_state"]) == (1, False, "halted")


async def test_a_masked_preempt_stays_pending(cluster, tmp_path, guest_build):
    orch = await cluster(topology(tmp_path))
    await held_at_brk(orch, "primes", ["primes.elf"])
    await emit(orch, "irq_mask", {"masked": True})
    await emit(orch, "cpu_preempt")
    await wait_cpu(orch, lambda s: s["preempt_pending"] and s["masked"])
    await orch.request("os1", "testos_release")
    result = await run_until_exit(orch)
    assert (result["output"], result["exit_code"], result["interrupts"]) == (expected("primes"), 0, [])
    s = await stats(orch, "cpu0")
    assert (s["preempts"], s["preempt_pending"]) == (0, True)


async def run_until_exit(orch, timeout: float = 60.0) -> dict:
    with trio.fail_after(timeout):
        while True:
            result = (await orch.request("os1", "testos_result")).body["data"]
            if result["exit_code"] is not None or result["fault"] is not None:
                return result
            await trio.sleep(0.02)


async def test_a_new_address_space_writes_back_and_drops_every_cached_page_first(cluster, tmp_path, guest_build):
    orch = await cluster(topology(tmp_path))
    result = await run_program(orch, "primes", ["primes.elf"])
    assert (result["output"], result["exit_code"]) == (expected("primes"), 0)
    assert (await stats(orch, "cpu0"))["modified"] > 0
    # another space, a flushed TLB and pc 0: the CPU releases everything, then
    # traps at once on the instruction fetch (nothing is mapped), and the test OS halts it.
    # The switch comes from the orchestrator, as a VMM's would: an OS may not run the
    # CPU in another OS's space (protocol/authz.py, rule priv_route)
    await orch.request("cpu0", "cpu_resume", {"space": "os2", "pc": 0, "asid": 2, "flush_tlb": True, "ack": True})
    with trio.fail_after(10):
        while (result := (await orch.request("os1", "testos_result")).body["data"])["fault"] is None:
            await trio.sleep(0.02)
    assert result["fault"].startswith("cause 12 tval 0x0 ")
    cpu = await wait_cpu(orch, lambda s: s["cpu_state"] == "halted")
    assert (cpu["space"], cpu["pages"], cpu["modified"]) == ("os2", 0, 0)
    mem = await stats(orch, "memctl")
    assert mem["cached"] == {}
    heap_bytes = b"".join([(await orch.request("memctl", "mem_read", {"space": "os1", "addr": g * 4096,
                                                                     "length": 4096})).body["data"]
                           for g in result["heap_gpns"]])
    assert SIEVE in heap_bytes


async def test_a_program_running_across_a_memctl_restart_completes_correctly(cluster, tmp_path, guest_build):
    orch = await cluster(topology(tmp_path))
    await held_at_brk(orch, "primes", ["primes.elf"])  # the heap is not touched yet: misses will follow
    proc = orch.supervisor.nodes["memctl"]
    os.kill(proc.pid, signal.SIGKILL)
    await orch.request("os1", "testos_release")
    result = await run_until_exit(orch)
    assert (result["output"], result["exit_code"]) == (expected("primes"), 0)
    assert proc.restarts == 1


async def test_a_computing_cpu_answers_between_slices_not_only_between_quanta(cluster, tmp_path, guest_build):
    """With a quantum of 10^9 instructions (longer than the whole program) the
    CPU still answers while its guest computes: between two slices it looks at
    the inbox and yields when a message came. Each answer shows the guest
    further on, and the program's result is unchanged."""
    topo = topology(tmp_path, quantum=10**9)
    topo["nodes"]["cpu0"]["options"]["slice"] = 1000
    orch = await cluster(topo)
    n = 2_000_000  # 24 million instructions in one loop without a trap
    elf = (BUILD / "aluloop.elf").read_bytes()
    await orch.request("os1", "testos_load", {"elf": elf, "argv": ["aluloop.elf", str(n)]}, timeout=20)
    seen: list[int] = []
    with trio.fail_after(120):
        while True:
            s = await orch.request("cpu0", "stats", timeout=5)  # a whole quantum would take minutes
            s = s.body["stats"]
            if s["cpu_state"] == "running":
                seen.append(s["instret"])
            result = (await orch.request("os1", "testos_result")).body["data"]
            if result["exit_code"] is not None or result["fault"] is not None:
                break
    assert result["fault"] is None and result["exit_code"] == 0
    assert result["output"].splitlines()[0] == (
        f"aluloop: {n} iterations x 12 + 7 = {12 * n + 7} instructions in aluloop()").encode()
    assert seen == sorted(seen) and len(set(seen)) >= 10, seen
