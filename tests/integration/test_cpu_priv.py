"""Privileged operations on ``priv:<os>`` are answered (issue #4, DESIGN.md §3):
``cpu_save`` returns the context of a trapped CPU and is refused while it
runs; any operation with ``ack`` is answered once it took effect; a
``cpu_resume`` can carry TLB entries, which then need no TLB-miss trap; a
malformed entry is refused naming the field, and the CPU keeps running its
program. Real cluster: memctl, cpu0 and the test OS of test_cpu_memctl."""

from __future__ import annotations

import pytest
import trio

from tests.fixtures.trapper import SYS_BRK
from tests.integration.test_cpu_memctl import (
    BUILD,
    args,
    expected,
    held_at_brk,
    run_program,
    run_until_exit,
    stats,
    topology,
)

pytestmark = pytest.mark.integration


async def priv(orch, kind: str, body: dict | None = None) -> dict:
    return (await orch.request("os1", "testos_priv", {"kind": kind, "body": body or {}})).body["data"]


async def test_cpu_save_returns_the_trapped_context_and_acked_operations_are_answered(cluster, tmp_path, guest_build):
    orch = await cluster(topology(tmp_path))
    await held_at_brk(orch, "primes", ["primes.elf"])
    saved = await priv(orch, "cpu_save")
    assert (saved["cpu_state"], saved["space"], saved["asid"]) == ("trapped", "os1", 1)
    assert len(saved["regs"]) == 32 and saved["regs"][0] == 0
    assert saved["regs"][17] == SYS_BRK  # a7: the system call the CPU trapped on
    assert saved["instret"] == (await stats(orch, "cpu0"))["instret"] > 0
    assert await priv(orch, "irq_mask", {"masked": True, "ack": True}) == {"masked": True}
    assert (await stats(orch, "cpu0"))["masked"] is True
    assert await priv(orch, "irq_mask", {"masked": False, "ack": True}) == {"masked": False}
    assert await priv(orch, "tlb_flush", {"asid": 7, "ack": True}) == {}
    await orch.request("os1", "testos_release")
    result = await run_until_exit(orch)
    assert (result["output"], result["exit_code"]) == (expected("primes"), 0)
    assert (await priv(orch, "cpu_save"))["cpu_state"] == "halted"


async def test_cpu_save_is_refused_while_the_cpu_runs(cluster, tmp_path, guest_build):
    orch = await cluster(topology(tmp_path))
    await orch.request("os1", "testos_load", {"elf": (BUILD / "aluloop.elf").read_bytes(), "argv": ["aluloop.elf"]},
                       timeout=20)
    with trio.fail_after(30):
        while "error" not in (answer := await priv(orch, "cpu_save")):  # trapped on a TLB miss: not yet
            await trio.sleep(0.005)
    assert answer["error"] == "cpu_running" and "cpu0 is running" in answer["detail"]
    result = await run_until_exit(orch)
    assert (result["output"], result["exit_code"]) == (expected("aluloop"), 0)


async def test_a_resume_carrying_tlb_entries_saves_their_miss_traps_and_a_bad_entry_is_refused(cluster, tmp_path,
                                                                                               guest_build):
    orch = await cluster(topology(tmp_path))
    baseline = await run_program(orch, "primes", ["primes.elf", *args("primes")])
    assert (baseline["output"], baseline["exit_code"]) == (expected("primes"), 0)

    await held_at_brk(orch, "primes", ["primes.elf", *args("primes")])
    bad = await priv(orch, "cpu_resume", {"tlb": [[1, 5, 300, "rwz"]], "ack": True})
    assert (bad["error"], (await stats(orch, "cpu0"))["cpu_state"]) == ("bad_field", "trapped")
    bad = await priv(orch, "cpu_resume", {"tlb": [[1, -5, 300, "r"]], "ack": True})
    assert bad["error"] == "bad_field" and "body.tlb[0]" in bad["detail"]
    # on to the second brk, the one that grows the heap (the first only asks where it ends)
    await orch.request("os1", "testos_hold")
    await orch.request("os1", "testos_release")
    with trio.fail_after(30):
        while not (held := (await orch.request("os1", "testos_result")).body["data"])["held"]:
            await trio.sleep(0.02)
    before = held["tlb_misses"]
    released = (await orch.request("os1", "testos_release", {"tlb": True})).body["data"]
    assert released["released"] and released["entries"] > 0
    assert released["answer"] == {"cpu_state": "running", "tlb_written": released["entries"]}
    result = await run_until_exit(orch)
    assert (result["output"], result["exit_code"]) == (expected("primes"), 0)
    # every page the program touches after growing its heap was in the TLB already: no miss trap after
    assert result["tlb_misses"] == before < baseline["tlb_misses"]
