"""The VMM node on real clusters (DESIGN.md §4 "VMM", protocol/vmm.py).

The tests interpose the VMM themselves with lossless route changes, in the
order of FIG. 3 (traps and interrupts to the VMM, then privileged operations)
and take it out again in the order of FIG. 7, while guest programs run; the
journaled choreographies that do this for users live in the orchestrator.
What is asserted: the guest's console output is byte-identical to what it is
natively (transparency), its exit status is 0, the VMM really reflected traps
and forwarded privileged operations, and no flow of any node saw a gap or a
duplicate across all the route changes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from orchestrator.cli.demo import timeshare_output
from orchestrator.flowaudit import with_gaps
from tests.integration.test_choreographies import Client, serving, vmm_stats, wait_vmm

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guest"
SAMPLES = GUEST / "samples"
VMM_TOPOLOGY = REPO / "compose" / "vmm.toml"

pytestmark = pytest.mark.integration


def test_timeshare_model_matches_the_expected_file() -> None:
    assert timeshare_output("T", 6) == (SAMPLES / "timeshare.expected").read_bytes()


# ======================================================= the VMM node, in-process

class Recorder:
    """A VmmNode whose emissions and replies are recorded instead of sent."""

    def __init__(self, tmp_path: Path, slice_ticks: int = 2):
        from nodes.runtime import NodeConfig
        from nodes.vmm.node import VmmNode
        from protocol.messages import Message

        self.Message = Message
        routes = {"priv:vmm": "cpu0", "trap:vmm.os1": "os1", "trap:vmm.os2": "os2",
                  "irq:vmm.os1": "os1", "irq:vmm.os2": "os2"}
        cfg = NodeConfig(name="vmm", kind="vmm", endpoint=f"ipc://{tmp_path}/vmm.sock", directory={},
                         routes={"epoch": 1, "routes": routes}, orchestrator=None,
                         options={"slice_ticks": slice_ticks})
        self.node = VmmNode(cfg)
        self.out: list[tuple[str, str, dict]] = []
        self.replies: list[tuple[str, dict]] = []
        self.seq = 0

        async def emit(flow, kind, body):
            self.out.append((flow, kind, body))
            return len(self.out)

        async def reply(to, kind="ok", body=None):
            self.replies.append((kind, body or {}))

        async def request(dst, kind, body=None, **kw):
            return Message("ok", dst, "vmm", 1, {"stats": {"cpu_state": "running"}})

        self.node.emit = emit
        self.node.party.reply = reply
        self.node.party.request = request

    async def send(self, kind: str, body: dict | None = None, flow: str | None = None, src: str = "orch") -> list:
        self.seq += 1
        msg = self.Message(kind, src, "vmm", self.seq, body or {}, flow=flow, fseq=self.seq if flow else None)
        mark = len(self.out)
        await self.node.handler(kind)(msg)
        return self.out[mark:]

    def close(self) -> None:
        self.node.party.close()


def trap_body(cause: int, asid: int, pc: int = 0x1000) -> dict:
    return {"cause": cause, "tval": 0, "pc": pc, "regs": [asid] * 32, "asid": asid, "instret": 1}


async def test_vmm_answers_acked_operations_and_cpu_save_from_each_oss_virtual_cpu_in_process(tmp_path) -> None:
    r = Recorder(tmp_path)
    try:
        await r.send("vmm_attach_os", {"os": "os1", "asid_base": 0, "current": True})
        await r.send("vmm_attach_os", {"os": "os2", "asid_base": 0x10000})
        # os2, off the CPU: its resume's TLB entries go to the real TLB under its asid base at once;
        # the context is only saved, and the VMM (not the CPU) answers the ack
        out = await r.send("cpu_resume", {"regs": [7] * 32, "pc": 0x100, "asid": 3, "space": "os2",
                                          "tlb": [[3, 5, 800, "rx"]], "ack": True}, flow="priv:os2", src="os2")
        assert out == [("priv:vmm", "tlb_write", {"asid": 0x10003, "vpn": 5, "ppn": 800, "perms": "rx"})]
        assert r.replies[-1] == ("ok", {"data": {"virtual": True, "cpu_state": "runnable", "tlb_written": 1}})
        # os1, on the CPU: forwarded with its entries and without the ack (the CPU's answer would reach the VMM)
        out = await r.send("cpu_resume", {"pc": 4, "asid": 2, "tlb": [[2, 9, 300, "rw"]], "ack": True},
                           flow="priv:os1", src="os1")
        assert out == [("priv:vmm", "cpu_resume", {"pc": 4, "asid": 2, "tlb": [[2, 9, 300, "rw"]]})]
        assert r.replies[-1] == ("ok", {"data": {"virtual": True, "cpu_state": "running", "tlb_written": 1}})
        # a malformed entry is refused (the CPU's own check, protocol.hw.tlb_entry) and nothing is sent
        from protocol.errors import ProtocolError
        with pytest.raises(ProtocolError, match=r"TLB perms must be a subset of 'rwx', got 'rwz'") as bad:
            await r.send("cpu_resume", {"pc": 4, "tlb": [[2, 9, 300, "rwz"]]}, flow="priv:os2", src="os2")
        assert bad.value.field == "body.tlb[0]"
        assert await r.send("irq_mask", {"masked": True, "ack": True}, flow="priv:os2", src="os2") == []
        assert r.replies[-1] == ("ok", {"data": {"virtual": True, "masked": True}})
        # cpu_save: os2's saved context (its own asid), os1's from the real CPU (asked on priv:vmm)
        await r.send("cpu_save", {}, flow="priv:os2", src="os2")
        assert r.replies[-1] == ("ok", {"data": {"regs": [7] * 32, "pc": 0x100, "asid": 3, "space": "os2",
                                                 "cpu_state": "switched_out", "instret": None, "virtual": True}})
        asked = []
        real = {"regs": [1] * 32, "pc": 8, "asid": 2, "space": "os1", "cpu_state": "trapped", "instret": 99}

        async def request_msg(msg, *, timeout=5.0, frame=None):  # how a request on a flow leaves (runtime.py)
            asked.append((msg.dst, msg.kind, msg.flow))
            return r.Message("ok", msg.dst, "vmm", 1, {"data": real})

        r.node.party.request_msg = request_msg
        await r.send("cpu_save", {}, flow="priv:os1", src="os1")
        assert asked == [("cpu0", "cpu_save", "priv:vmm")]
        assert r.replies[-1] == ("ok", {"data": {**real, "virtual": True}})
    finally:
        r.close()


async def test_vmm_reflects_forwards_emulates_and_switches_in_process(tmp_path) -> None:
    r = Recorder(tmp_path, slice_ticks=2)
    try:
        await r.send("vmm_attach_os", {"os": "os1", "asid_base": 0, "current": True})
        await r.send("vmm_attach_os", {"os": "os2", "asid_base": 0x10000})
        # a trap of os1's process (asid 2): reflected to os1 as is
        assert await r.send("trap", trap_body(8, 2), flow="trap:cpu0", src="cpu0") == [
            ("trap:vmm.os1", "trap", trap_body(8, 2))]
        out = await r.send("cpu_resume", {"regs": [0] * 32, "pc": 4, "asid": 2, "space": "os1"},
                           flow="priv:os1", src="os1")
        assert out == [("priv:vmm", "cpu_resume", {"regs": [0] * 32, "pc": 4, "asid": 2, "space": "os1"})]
        # os2, off the CPU: its TLB entries go in under its asid base; its resume is only saved
        assert await r.send("tlb_write", {"asid": 3, "vpn": 5, "ppn": 800, "perms": "rw"},
                            flow="priv:os2", src="os2") == [
            ("priv:vmm", "tlb_write", {"asid": 0x10003, "vpn": 5, "ppn": 800, "perms": "rw"})]
        assert await r.send("cpu_resume", {"regs": [7] * 32, "pc": 0x100, "asid": 3, "space": "os2"},
                            flow="priv:os2", src="os2") == []
        assert await r.send("irq_mask", {"masked": True}, flow="priv:os2", src="os2") == []
        # ticks: to os1 now, queued for os2 (masked); the second ends os1's slice
        assert await r.send("tick", {"n": 1, "time_ns": 10}, flow="irq:timer0", src="timer0") == [
            ("irq:vmm.os1", "tick", {"n": 1, "time_ns": 10})]
        assert await r.send("tick", {"n": 2, "time_ns": 20}, flow="irq:timer0", src="timer0") == [
            ("irq:vmm.os1", "tick", {"n": 2, "time_ns": 20}), ("priv:vmm", "cpu_preempt", {})]
        # the interrupt trap the VMM caused is kept: os1's context saved, os2's resumed (masked)
        assert await r.send("trap", trap_body(0x80000005, 2, pc=0x2000), flow="trap:cpu0", src="cpu0") == [
            ("priv:vmm", "irq_mask", {"masked": True}),
            ("priv:vmm", "cpu_resume", {"space": "os2", "regs": [7] * 32, "pc": 0x100, "asid": 0x10003})]
        # os1 asks for a preemption while off the CPU: noted, not sent
        assert await r.send("cpu_preempt", {}, flow="priv:os1", src="os1") == []
        # os2 unmasks: forwarded, then its two held ticks in order
        assert await r.send("irq_mask", {"masked": False}, flow="priv:os2", src="os2") == [
            ("irq:vmm.os2", "tick", {"n": 1, "time_ns": 10}), ("irq:vmm.os2", "tick", {"n": 2, "time_ns": 20}),
            ("priv:vmm", "irq_mask", {"masked": False})]
        # os2's trap goes back to it with its own asid
        assert await r.send("trap", trap_body(8, 0x10003), flow="trap:cpu0", src="cpu0") == [
            ("trap:vmm.os2", "trap", {**trap_body(8, 0x10003), "asid": 3})]
        # a flush of "all" by os2 flushes only os2's asids
        assert await r.send("tlb_flush", {"asid": None}, flow="priv:os2", src="os2") == [
            ("priv:vmm", "tlb_flush", {"asid": 0x10003, "vpn": None})]
        # os2 goes idle in its handler: os1 gets the CPU back where it was, then its preemption
        assert await r.send("cpu_halt", {}, flow="priv:os2", src="os2") == [
            ("priv:vmm", "irq_mask", {"masked": False}),
            ("priv:vmm", "cpu_resume", {"space": "os1", "regs": [2] * 32, "pc": 0x2000, "asid": 2}),
            ("priv:vmm", "cpu_preempt", {})]
        # that interrupt trap is os1's own: reflected
        assert await r.send("trap", trap_body(0x80000005, 2, pc=0x2000), flow="trap:cpu0", src="cpu0") == [
            ("trap:vmm.os1", "trap", trap_body(0x80000005, 2, pc=0x2000))]
        await r.send("vmm_cpu_release", {"os": "os1"})
        assert r.replies[-1][0] == "error" and r.replies[-1][1]["reason"] == "more_than_one_os"
        await r.send("vmm_detach_os", {"os": "os2"})  # idle: fine
        await r.send("vmm_cpu_release", {"os": "os1"})
        assert r.replies[-1] == ("ok", {"data": {"held": 0, "current": "os1", "own_preempt_pending": False}})
        status = r.node.stats()["vmm"]
        assert (status["traps_kept"], status["slices"], status["traps_reflected"]) == (1, 1, 3)
        assert status["oses"]["os1"]["switched_in"] == 1
    finally:
        r.close()


async def test_vmm_drops_a_trap_raised_under_a_resume_older_than_its_last_in_process(tmp_path) -> None:
    """A trap names the resume whose context raised it (``after``); one raised before the VMM's last
    resume or halt reached the CPU is stale: that newer resume replaces the context. Seen in the chaos
    campaign (seed 183, demo): after cpu0's death, os1 resumed a process its machine check stopped a
    moment later, then a new one; the new CPU ran the first briefly and trapped; the VMM kept that
    trap as os1's context, resumed it later, and os1, not knowing its address space, resumed nothing."""
    r = Recorder(tmp_path, slice_ticks=2)
    try:
        await r.send("vmm_attach_os", {"os": "os1", "asid_base": 0, "current": True})
        stale = {"regs": [1] * 32, "pc": 4, "asid": 1, "space": "os1"}
        assert await r.send("cpu_resume", stale, flow="priv:os1", src="os1") == [("priv:vmm", "cpu_resume", stale)]
        stale_fseq = len(r.out)  # what the Recorder's emit returned for it
        fresh = {"regs": [0] * 32, "pc": 8, "asid": 3, "space": "os1"}
        assert await r.send("cpu_resume", fresh, flow="priv:os1", src="os1") == [("priv:vmm", "cpu_resume", fresh)]
        fresh_fseq = len(r.out)
        # the CPU ran the stale context before the fresh resume reached it: that trap is dropped
        assert await r.send("trap", {**trap_body(0x80000005, 1), "after": ["priv:vmm", stale_fseq]},
                            flow="trap:cpu0", src="cpu0") == []
        # the fresh context's trap is reflected as ever
        body = {**trap_body(8, 3), "after": ["priv:vmm", fresh_fseq]}
        assert await r.send("trap", body, flow="trap:cpu0", src="cpu0") == [("trap:vmm.os1", "trap", body)]
        # a trap naming a resume of another flow (an OS's own, natively) is not judged
        body = {**trap_body(8, 3), "after": ["priv:os1", 1]}
        await r.send("cpu_resume", {}, flow="priv:os1", src="os1")
        assert await r.send("trap", body, flow="trap:cpu0", src="cpu0") == [("trap:vmm.os1", "trap", body)]
        assert r.node.stats()["vmm"]["stale_traps"] == 1
    finally:
        r.close()


async def vmm(orch, kind: str, body: dict | None = None) -> dict:
    return (await orch.request("vmm", kind, body or {})).body.get("data") or {}


async def assert_nothing_lost(orch) -> None:
    """Every node's every incoming flow: no gap, no duplicate."""
    for name in orch.live_nodes():
        stats = (await orch.request(name, "stats")).body["stats"]
        bad = with_gaps(stats["flows_in"])
        assert not bad, f"{name}: {bad}"


async def interpose(orch, oses: list[str]) -> None:
    """FIG. 3 by hand: the VMM's own flows, then traps and interrupts, then privileged operations."""
    own = {"priv:vmm": "cpu0"}
    for o in oses:
        own.update({f"trap:vmm.{o}": o, f"irq:vmm.{o}": o})
    await orch.routes.change(own)
    await orch.routes.change({"trap:cpu0": "vmm", "irq:timer0": "vmm"})
    await orch.routes.change({f"priv:{o}": "vmm" for o in oses})


async def devirtualize(orch, os_name: str) -> tuple[dict, int]:
    """FIG. 7 by hand: the VMM's shutdown routine, traps and interrupts to the OS, then
    privileged operations. Returns the release's data and the last trap fseq the VMM got."""
    held = await vmm(orch, "vmm_cpu_release", {"os": os_name})
    report = await orch.routes.change({"trap:cpu0": os_name, "irq:timer0": os_name})
    await orch.routes.change({f"priv:{os_name}": "cpu0"})
    await vmm(orch, "vmm_detach_os", {"os": os_name})
    return held, report.last["trap:cpu0"]


async def trap_consumed(orch, node: str) -> int:
    stats = (await orch.request(node, "stats")).body["stats"]
    return stats["flows_in"].get("trap:cpu0", {}).get("consumed", 0)


async def attach_both(orch, interposed: bool = True) -> None:
    """os1 (its context on the CPU) and os2 managed by the VMM, os2's asids above
    os1's; ``interposed``: and FIG. 3 by hand for both (the VMM time-slices them)."""
    await vmm(orch, "vmm_attach_os", {"os": "os1", "asid_base": 0, "current": True})
    await vmm(orch, "vmm_attach_os", {"os": "os2", "asid_base": 0x10000})
    if interposed:
        await interpose(orch, ["os1", "os2"])


async def start_timeshares(client: Client, lines_a: int, lines_b: int) -> tuple[dict[str, int], int, int]:
    """timeshare A on os1 (console uart0) and B on os2 (uart1): where each console
    stood before, and the two pids."""
    starts = {u: await client.logged(u) for u in ("uart0", "uart1")}
    p1 = await client.exec("os1", "timeshare", ["timeshare", "A", str(lines_a)])
    p2 = await client.exec("os2", "timeshare", ["timeshare", "B", str(lines_b)])
    return starts, p1, p2


async def timeshare_exact(client: Client, os_name: str, pid: int, uart: str, start: int, letter: str,
                          lines: int) -> bytes:
    """Wait for timeshare ``pid`` on ``os_name`` to exit 0 having printed exactly its
    ``lines`` lines of ``letter`` on ``uart`` since ``start``; that output."""
    exit_ = await client.wait_exit(os_name, pid)
    out = await client.console(uart, start)
    assert (exit_["code"], out) == (0, timeshare_output(letter, lines))
    return out


async def with_client(orch, body) -> None:
    async with serving(Client(orch, "vclient")) as client:
        await body(client)


async def test_vmm_init_discovers_the_machine(cluster) -> None:
    orch = await cluster(VMM_TOPOLOGY)
    data = await vmm(orch, "vmm_init", {"frames": [0, 1, 2, 3], "host": "local"})
    assert data["frames"] == 4
    assert data["cpu"]["name"] == "cpu0" and "cpu_state" in data["cpu"]
    assert data["memctl"]["name"] == "memctl"
    assert {"cpu0", "memctl", "uart0", "uart1", "timer0", "os1", "os2"} <= set(data["devices"])
    # frames 0-3 belong to no space "vmm" yet (the orchestrator transfers them): said so, not hidden
    assert data["image"]["written"] > 0 or "skipped" in data["image"]


async def test_vmm_cpu_release_refuses_while_two_oses_are_attached(cluster) -> None:
    from protocol.errors import RemoteError

    orch = await cluster(VMM_TOPOLOGY)
    await attach_both(orch, interposed=False)
    with pytest.raises(RemoteError) as info:
        await vmm(orch, "vmm_cpu_release", {"os": "os1"})
    assert info.value.reason == "more_than_one_os"
    status = await vmm(orch, "vmm_status")
    assert set(status["oses"]) == {"os1", "os2"} and status["oses"]["os2"]["asid_base"] == 0x10000


async def test_vmm_interposed_under_a_running_program_is_transparent(guest_build, cluster) -> None:
    orch = await cluster(VMM_TOPOLOGY)
    lines = 40
    want = timeshare_output("T", lines)

    async def body(client: Client) -> None:
        # 1. interpose while the program runs natively; it finishes under the VMM
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "T", str(lines)])
        await vmm(orch, "vmm_attach_os", {"os": "os1", "asid_base": 0, "current": True})
        await interpose(orch, ["os1"])
        s = await wait_vmm(orch, lambda s: s["traps_reflected"] > 0 and s["priv_forwarded"] > 0)
        exit1 = await client.wait_exit("os1", pid)
        assert (exit1["code"], await client.console("uart0", start)) == (0, want)

        # 2. fully virtualized: samples print exactly what they print natively
        for name in ("primes", "timeshare"):
            code, out = await client.run("os1", "uart0", name, [name])
            assert (code, out) == (0, (SAMPLES / f"{name}.expected").read_bytes()), name

        # 3. devirtualize while a program runs under the VMM; it finishes natively
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "T", str(lines)])
        s0 = await vmm_stats(orch)
        before = await wait_vmm(orch, lambda s: s["traps_reflected"] > s0["traps_reflected"])
        held, last_to_vmm = await devirtualize(orch, "os1")
        assert held["held"] == 0  # one OS, never switched out: the VMM held nothing
        # the program goes on natively: cpu0's traps reach os1 again, straight
        with trio.fail_after(60):
            while await trap_consumed(orch, "os1") <= last_to_vmm:
                await trio.sleep(0.02)
        exit2 = await client.wait_exit("os1", pid)
        assert (exit2["code"], await client.console("uart0", start)) == (0, want)

        s = await vmm_stats(orch)
        assert s["traps_reflected"] >= before["traps_reflected"] > 0
        assert s["priv_forwarded"] > 0 and s["virtual_ticks"] > 0
        assert s["oses"] == {} and s["stray_traps"] == 0
        routes = orch.routes.table.routes
        assert (routes["trap:cpu0"], routes["priv:os1"], routes["irq:timer0"]) == ("os1", "cpu0", "os1")
        # natively again, and still exact
        code, out = await client.run("os1", "uart0", "primes", ["primes"])
        assert (code, out) == (0, (SAMPLES / "primes.expected").read_bytes())
        await assert_nothing_lost(orch)

    await with_client(orch, body)


async def test_vmm_time_slices_two_oses_and_both_outputs_are_exact(guest_build, cluster) -> None:
    orch = await cluster(VMM_TOPOLOGY)
    lines = 40

    async def body(client: Client) -> None:
        await attach_both(orch)
        starts, p1, p2 = await start_timeshares(client, lines, lines)
        await timeshare_exact(client, "os1", p1, "uart0", starts["uart0"], "A", lines)
        await timeshare_exact(client, "os2", p2, "uart1", starts["uart1"], "B", lines)
        s = await vmm_stats(orch)
        assert s["slices"] > 0 and s["traps_kept"] > 0, s
        assert s["oses"]["os1"]["switched_in"] > 0 and s["oses"]["os2"]["switched_in"] > 0, s
        assert s["oses"]["os1"]["traps"] > 0 and s["oses"]["os2"]["traps"] > 0, s
        assert s["stray_traps"] == 0
        # both idle now: the CPU is halted and nobody is on it
        s = await wait_vmm(orch, lambda s: s["current"] is None)
        # each OS again alone, one after the other, exact
        code, out = await client.run("os2", "uart1", "primes", ["primes"])
        assert (code, out) == (0, (SAMPLES / "primes.expected").read_bytes())
        code, out = await client.run("os1", "uart0", "timeshare", ["timeshare"])
        assert (code, out) == (0, (SAMPLES / "timeshare.expected").read_bytes())
        for o in ("os1", "os2"):
            k = (await orch.request(o, "stats")).body["stats"]["kernel"]
            assert k["procs"] == 0 and k["stray_traps"] == 0, (o, k)
        await assert_nothing_lost(orch)

    await with_client(orch, body)


async def virtualize_console(orch, os_name: str, node: str) -> None:
    """FIG. 5 by hand for an OS's UART: the VMM's driver flow, the OS's driver to virtual,
    the VMM takes the device, then commands and interrupts to the VMM (one change)."""
    await orch.routes.change({f"io:vmm.{node}": node})
    await orch.request(os_name, "os_driver_mode", {"device": "uart", "mode": "virtual"})
    await vmm(orch, "vmm_device", {"device": "uart", "node": node, "mode": "virtual", "os": os_name})
    await orch.routes.change({f"io:{os_name}.uart": "vmm", f"irq:{node}": "vmm"})


async def native_console(orch, os_name: str, node: str) -> None:
    """FIG. 6 by hand: routes back to the device and the OS, the VMM lets go, driver to native."""
    await orch.routes.change({f"io:{os_name}.uart": node, f"irq:{node}": os_name})
    await vmm(orch, "vmm_device", {"device": "uart", "node": node, "mode": "native", "os": os_name})
    await orch.request(os_name, "os_driver_mode", {"device": "uart", "mode": "native"})


async def test_vmm_drives_both_consoles_of_time_sliced_oses_byte_for_byte(guest_build, cluster) -> None:
    orch = await cluster(VMM_TOPOLOGY)
    lines = 30

    async def body(client: Client) -> None:
        await attach_both(orch)
        await virtualize_console(orch, "os1", "uart0")
        await virtualize_console(orch, "os2", "uart1")
        starts, p1, p2 = await start_timeshares(client, lines, lines)

        # a byte typed on os2's console reaches os2 (uart1 -> vmm -> irq:vmm.os2), not os1
        port = (await orch.request("uart1", "stats")).body["stats"]["tcp_port"]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        try:
            await stream.send_all(b"typed\n")
            await wait_vmm(orch, lambda s: s["oses"]["os2"]["uart_rx"] >= 1)
        finally:
            await stream.aclose()

        out1 = await timeshare_exact(client, "os1", p1, "uart0", starts["uart0"], "A", lines)
        out2 = await timeshare_exact(client, "os2", p2, "uart1", starts["uart1"], "B", lines)
        s = await vmm_stats(orch)
        assert s["uart_bytes"] == len(out1) + len(out2), "every console byte went through the VMM's driver"
        assert s["oses"]["os1"]["uart_rx"] == 0 and s["uart_rx"] >= 1
        assert s["slices"] > 0

        # FIG. 6: os1's console back to it; the VMM's driver sees no more of its bytes
        await native_console(orch, "os1", "uart0")
        code, out = await client.run("os1", "uart0", "primes", ["primes"])
        assert (code, out) == (0, (SAMPLES / "primes.expected").read_bytes())
        assert (await vmm_stats(orch))["uart_bytes"] == s["uart_bytes"]
        await assert_nothing_lost(orch)

    await with_client(orch, body)


async def test_vmm_from_two_oses_back_to_one_native_os_under_a_running_program(guest_build, cluster) -> None:
    """The whole cycle: two time-sliced OSes, one finishes and is detached (a busy one is
    refused), then FIG. 7 while the other's program runs; it finishes natively, exact."""
    from protocol.errors import RemoteError

    orch = await cluster(VMM_TOPOLOGY)

    async def body(client: Client) -> None:
        await attach_both(orch)
        starts, p1, p2 = await start_timeshares(client, 80, 8)
        await wait_vmm(orch, lambda s: s["oses"]["os2"]["switched_in"] > 0)
        with pytest.raises(RemoteError) as info:  # os1 still has work: not detachable
            await vmm(orch, "vmm_detach_os", {"os": "os1"})
        assert info.value.reason == "os_busy"
        await timeshare_exact(client, "os2", p2, "uart1", starts["uart1"], "B", 8)
        await wait_vmm(orch, lambda s: not s["oses"]["os2"]["runnable"])
        await vmm(orch, "vmm_detach_os", {"os": "os2"})
        assert ("os1", p1) not in client.exits, "os1's program ended before FIG. 7 could run under it"

        held, last_to_vmm = await devirtualize(orch, "os1")
        with trio.fail_after(60):
            while await trap_consumed(orch, "os1") <= last_to_vmm:
                await trio.sleep(0.02)
        await timeshare_exact(client, "os1", p1, "uart0", starts["uart0"], "A", 80)
        s = await vmm_stats(orch)
        assert s["slices"] > 0 and s["oses"] == {} and s["stray_traps"] == 0
        code, out = await client.run("os1", "uart0", "primes", ["primes"])
        assert (code, out) == (0, (SAMPLES / "primes.expected").read_bytes())
        await assert_nothing_lost(orch)

    await with_client(orch, body)
