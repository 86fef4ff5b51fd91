"""The choreographies of DESIGN.md §5 on real clusters: FIG. 4 (load the VMM
at runtime), ¶39 (borrow memory and give it back), refusals, a step failing
mid-way and a pause over budget rolled back, recovery of a choreography cut
short by a crash of the orchestrator.

The VMM here is ``tests.fixtures.stubvmm`` (it answers the VMM's control
kinds without virtualizing), so these tests are about what the choreographies
do to frames, routes and the journal. After every step the memory
controller's invariants hold and every frame still has exactly one owner.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from orchestrator.choreographies.base import ChoreographyError, ChoreographyFailed
from orchestrator.choreographies.fig5_devices import interpose_device
from orchestrator.cli.demo import timeshare_output
from orchestrator.cluster import Orchestrator, running
from orchestrator.flowaudit import with_gaps
from orchestrator.journal import WHOLE
from orchestrator.topology import parse
from protocol.auth import client_keyring
from protocol.errors import RemoteError
from protocol.frames import from_runs
from protocol.transport import Party
from tests.integration.procs import cluster_dir

pytestmark = pytest.mark.integration

NFRAMES = 1024
PAGE = 4096
OS1 = (256, 128)
OS2 = (512, 128)
SECRET = b"os1's secret: the launch codes".ljust(64, b"!")


def topology(fail_init: bool = False, lend_floor: int = 0) -> dict:
    def os_node(mem, floor=0):
        opts = {"memory": list(mem), "cpu": "cpu0", "memctl": "memctl", "uart": "uart0", "timer": "timer0",
                "tick_ms": 10}
        return {"kind": "os", "options": {**opts, "lend_floor": floor} if floor else opts}
    return {
        "cluster": {"name": "chor"},
        "nodes": {
            "memctl": {"kind": "memctl", "options": {"frames": NFRAMES, "partitions": {"os1": list(OS1),
                                                                                         "os2": list(OS2)}}},
            "cpu0": {"kind": "cpu"},
            "uart0": {"kind": "uart"},
            "timer0": {"kind": "timer"},
            "os1": os_node(OS1, lend_floor),
            "os2": os_node(OS2),
            "vmm": {"kind": "vmm", "module": "tests.fixtures.stubvmm", "autostart": False, "restart": "never",
                    "options": {"fail_init": fail_init}},
        },
        "routes": {"trap:cpu0": "os1", "priv:os1": "cpu0", "mem:cpu0": "memctl", "mem:os1": "memctl",
                   "io:os1.uart": "uart0", "io:os1.timer": "timer0", "irq:uart0": "os1", "irq:timer0": "os1",
                   "priv:os2": "cpu0", "mem:os2": "memctl", "io:os2.uart": "uart0"},
    }


async def owners(orch: Orchestrator) -> dict:
    reply = await orch.request("memctl", "mem_owners")
    return reply.body["data"]


async def check_conservation(orch: Orchestrator) -> dict:
    data = await owners(orch)
    assert data["invariants"] == "ok"
    frames = sorted(f for o, fs in data.items() if o != "invariants" for f in fs)
    assert frames == list(range(NFRAMES))  # each frame exactly one owner
    return data


def install_conservation_hook(orch: Orchestrator) -> list[str]:
    seen: list[str] = []

    async def hook(figure: str, step: str) -> None:
        await check_conservation(orch)
        seen.append(f"{figure}.{step}")

    orch.step_hook = hook
    return seen


async def free_frames(orch: Orchestrator, os_name: str) -> int:
    return (await orch.request(os_name, "os_ps")).body["data"]["free_frames"]


async def write_secret_everywhere(orch: Orchestrator, space: str) -> None:
    for f in (await owners(orch))[space]:
        await orch.request("memctl", "mem_write", {"space": space, "addr": f * PAGE, "data": SECRET})


async def read(orch: Orchestrator, space: str, frame: int) -> bytes:
    reply = await orch.request("memctl", "mem_read", {"space": space, "addr": frame * PAGE, "length": len(SECRET)})
    return reply.body["data"]


def node_state(orch: Orchestrator, name: str) -> str:
    return orch.supervisor.nodes[name].state


async def test_load_vmm_starts_the_deferred_node_in_frames_taken_from_the_host_and_unload_returns_them_zeroed(
        cluster):
    orch = await cluster(topology())
    assert node_state(orch, "vmm") == "stopped"  # autostart = false
    seen = install_conservation_hook(orch)
    await write_secret_everywhere(orch, "os1")
    free_before = await free_frames(orch, "os1")

    data = await orch.control("ctl_vmm_load", host="os1", frames=8)
    report = data["reports"][0]
    assert report["outcome"] == "committed"
    assert [s["name"] for s in report["steps"]] == ["alloc_pin", "module_lets_go", "to_vmm", "vmm_space", "start_vmm",
                                                    "vmm_init"]
    frames = from_runs(report["steps"][0]["data"]["runs"])
    assert len(frames) == 8 and all(OS1[0] <= f < OS1[0] + OS1[1] for f in frames)
    assert seen == ["fig4.alloc_pin", "fig4.module_lets_go", "fig4.to_vmm", "fig4.vmm_space",
                    "fig4.start_vmm", "fig4.vmm_init"]
    own = await check_conservation(orch)
    assert own["vmm"] == sorted(frames)
    assert not set(frames) & set(own["os1"])
    assert node_state(orch, "vmm") == "running"
    assert report["steps"][5]["data"]["discovered"] == {"frames": 8, "host": "os1"}
    assert await free_frames(orch, "os1") == free_before - 8
    for f in frames:  # os1 can no longer reach them; the VMM's space can, and they were zeroed
        with pytest.raises(Exception, match="mem_fault"):
            await read(orch, "os1", f)
        assert await read(orch, "vmm", f) == bytes(len(SECRET))
    status = await orch.control("ctl_status")
    assert status["virt"]["vmm"] == {"loaded": True, "host": "os1", "frames": 8}

    with pytest.raises(ChoreographyError, match="loaded already"):
        await orch.control("ctl_vmm_load", host="os1", frames=8)

    data = await orch.control("ctl_vmm_unload")
    assert data["reports"][0]["outcome"] == "committed"
    own = await check_conservation(orch)
    assert "vmm" not in own and set(frames) <= set(own["os1"])
    assert node_state(orch, "vmm") == "stopped"
    assert await free_frames(orch, "os1") == free_before
    for f in frames:  # the secret was there before the VMM had them: zeroed on the way
        assert await read(orch, "os1", f) == bytes(len(SECRET))
    journal = orch.journal.records()
    assert [r["phase"] for r in journal if r["step"] == WHOLE] == ["begin", "committed", "begin", "committed"]


async def test_borrowed_frames_reach_the_borrower_zeroed_and_come_back_on_return(cluster):
    orch = await cluster(topology())
    await orch.control("ctl_vmm_load", host="os1", frames=4)
    seen = install_conservation_hook(orch)
    await write_secret_everywhere(orch, "os1")
    free1, free2 = await free_frames(orch, "os1"), await free_frames(orch, "os2")

    report = (await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=16))["reports"][0]
    assert report["outcome"] == "committed" and report["partial"] is None
    lent = report["frames"]
    assert len(lent) == 16
    assert seen == ["p39_borrow.alloc_pin_from_os", "p39_borrow.module_lets_go", "p39_borrow.to_vmm",
                    "p39_borrow.to_os",
                    "p39_borrow.add_to_free_list"]
    own = await check_conservation(orch)
    assert set(lent) <= set(own["os2"]) and not set(lent) & set(own["os1"])
    for f in lent:
        assert await read(orch, "os2", f) == bytes(len(SECRET))  # not the secret: zeroed
    assert (await free_frames(orch, "os1"), await free_frames(orch, "os2")) == (free1 - 16, free2 + 16)
    assert (await orch.control("ctl_virt_status"))["loans"] == [
        {"id": report["id"], "from": "os1", "to": "os2", "runs": report["runs"], "count": len(lent)}]
    assert from_runs(report["runs"]) == lent
    # the VMM itself took them and handed them on (it holds none in between steps)
    vmm = (await orch.request("vmm", "vmm_status")).body["data"]
    assert (vmm["frames_taken"], vmm["frames_handed"], vmm["frames_held"]) == (16, 16, 0)
    steps = {s["name"]: s["data"] for s in report["steps"]}
    assert (steps["to_vmm"]["vmm_holds"], steps["to_os"]["vmm_holds"]) == (16, 0)

    # os2 writes into a lent frame; it must not follow the frame home
    await orch.request("memctl", "mem_write", {"space": "os2", "addr": lent[0] * PAGE, "data": b"os2 was here"})
    back = (await orch.control("ctl_memory_return", from_os="os1", to_os="os2"))["reports"]
    assert [r["outcome"] for r in back] == ["committed"]
    own = await check_conservation(orch)
    assert set(lent) <= set(own["os1"]) and not set(lent) & set(own["os2"])
    assert await read(orch, "os1", lent[0]) == bytes(len(SECRET))
    assert (await free_frames(orch, "os1"), await free_frames(orch, "os2")) == (free1, free2)
    assert (await orch.control("ctl_virt_status"))["loans"] == []
    vmm = (await orch.request("vmm", "vmm_status")).body["data"]
    assert (vmm["frames_taken"], vmm["frames_handed"], vmm["frames_held"]) == (32, 32, 0)


async def test_the_vmm_refuses_a_frames_request_it_is_neither_side_of_and_keeps_serving(cluster):
    orch = await cluster(topology())
    await orch.control("ctl_vmm_load", host="os1", frames=4)
    with pytest.raises(RemoteError) as info:
        await orch.request("vmm", "vmm_frames", {"runs": [[300, 2]], "from_owner": "os1", "to_owner": "os2"})
    assert info.value.reason == "bad_field" and "exactly one of from_owner/to_owner must be 'vmm'" in info.value.detail
    with pytest.raises(RemoteError) as info:  # frames os1 does not own: the memory controller refuses
        await orch.request("vmm", "vmm_frames", {"runs": [[5, 1]], "from_owner": "vmm", "to_owner": "os1"})
    assert "memctl" in str(info.value)
    vmm = (await orch.request("vmm", "vmm_status")).body["data"]
    assert (vmm["frames_taken"], vmm["frames_handed"]) == (0, 0)


async def test_a_lender_grants_in_full_then_in_part_down_to_its_floor_then_refuses_with_its_reason(cluster):
    orch = await cluster(topology(lend_floor=100))
    await orch.control("ctl_vmm_load", host="os1", frames=4)  # 124 free, 100 kept: 24 to lend
    kernel = (await orch.request("os1", "stats")).body["stats"]["kernel"]
    assert (kernel["lend_floor"], kernel["lendable"], kernel["free_frames"]) == (100, 24, 124)
    install_conservation_hook(orch)
    free2 = await free_frames(orch, "os2")

    full = (await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=16))["reports"][0]
    assert (full["outcome"], len(full["frames"]), full["partial"]) == ("committed", 16, None)
    assert (await free_frames(orch, "os1"), await free_frames(orch, "os2")) == (108, free2 + 16)
    await check_conservation(orch)

    part = (await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=16))["reports"][0]
    assert (part["outcome"], len(part["frames"])) == ("committed", 8)
    assert part["partial"] == {"asked": 16, "granted": 8, "why": "os1 keeps 100 frames free (its lending floor)"}
    assert (await free_frames(orch, "os1"), await free_frames(orch, "os2")) == (100, free2 + 24)
    own = await check_conservation(orch)
    assert set(full["frames"]) | set(part["frames"]) <= set(own["os2"])
    assert [ln["count"] for ln in (await orch.control("ctl_virt_status"))["loans"]] == [16, 8]

    before = await check_conservation(orch)
    with pytest.raises(ChoreographyFailed) as info:
        await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=5)
    assert str(info.value).endswith(
        "step 'alloc_pin_from_os' failed: os1 refused to allocate and pin 5 frames: it keeps 100 frames free "
        "(its lending floor) and has 100 free: 0 to lend, at least 1 of 5 asked")
    assert await check_conservation(orch) == before
    assert await free_frames(orch, "os1") == 100
    assert orch.journal.outcome(info.value.report["id"]) == "rolled_back"
    # all or nothing where a part is no use: the VMM is not loaded into fewer frames than it needs
    await orch.control("ctl_memory_return", from_os="os1", to_os="os2")
    assert (await free_frames(orch, "os1"), await free_frames(orch, "os2")) == (124, free2)
    await orch.control("ctl_vmm_unload")
    with pytest.raises(ChoreographyFailed, match=r"os1 refused to allocate and pin 29 frames: it keeps 100 frames "
                                                 r"free \(its lending floor\) and has 128 free: 28 to lend, "
                                                 r"at least 29 of 29 asked"):
        await orch.control("ctl_vmm_load", host="os1", frames=29)
    await check_conservation(orch)


async def test_refusals_say_why(cluster):
    orch = await cluster(topology())
    with pytest.raises(ChoreographyError, match="borrowing goes through the VMM, which is not loaded"):
        await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=1)
    with pytest.raises(ChoreographyError, match="'os9' is not an OS instance of this cluster"):
        await orch.control("ctl_vmm_load", host="os9", frames=4)
    await orch.control("ctl_vmm_load", host="os1", frames=4)
    with pytest.raises(ChoreographyError, match="no frames of os1 are lent to os2"):
        await orch.control("ctl_memory_return", from_os="os1", to_os="os2")
    # two OS instances under the VMM: the CPU cannot be given to one of them
    for name in ("os1", "os2"):
        orch.virt.attached[name] = {"asid_base": orch.virt.next_asid_base(), "cpu": "vmm", "memory": "vmm"}
    with pytest.raises(ChoreographyError, match=r"cannot devirtualize the CPU while 2 OS instances run under "
                                                r"the VMM \(os1, os2\)"):
        await orch.control("ctl_devirtualize", cpu=True)
    # memory cannot be devirtualized while borrowed frames are out
    await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=2)
    with pytest.raises(ChoreographyError, match="cannot devirtualize the memory of os2 while borrowed frames are out"):
        await orch.control("ctl_devirtualize", os="os2", memory=True)
    with pytest.raises(ChoreographyError, match="cannot unload the VMM while it manages"):
        await orch.control("ctl_vmm_unload")
    await check_conservation(orch)


async def test_a_step_failing_mid_way_rolls_back_to_the_state_before(cluster):
    orch = await cluster(topology(fail_init=True))
    seen = install_conservation_hook(orch)
    before = await check_conservation(orch)
    free_before = await free_frames(orch, "os1")
    with pytest.raises(ChoreographyFailed) as info:
        await orch.control("ctl_vmm_load", host="os1", frames=8)
    assert "step 'vmm_init' failed" in str(info.value) and "stub told to fail vmm_init" in str(info.value)
    assert info.value.report["undone"] == ["start_vmm", "vmm_space", "to_vmm", "module_lets_go", "alloc_pin"]
    assert seen == ["fig4.alloc_pin", "fig4.module_lets_go", "fig4.to_vmm", "fig4.vmm_space", "fig4.start_vmm"]
    after = await check_conservation(orch)
    assert after == before
    assert await free_frames(orch, "os1") == free_before
    assert node_state(orch, "vmm") == "stopped"
    assert not orch.virt.vmm_loaded
    cid = info.value.report["id"]
    phases = [(r["step"], r["phase"]) for r in orch.journal.history(cid)]
    assert phases[-6:] == [("start_vmm", "undo"), ("vmm_space", "undo"), ("to_vmm", "undo"),
                           ("module_lets_go", "undo"), ("alloc_pin", "undo"), (WHOLE, "rolled_back")]


async def test_a_pause_over_budget_rolls_the_device_interposition_back(cluster):
    orch = await cluster(topology())
    await orch.control("ctl_vmm_load", host="os1", frames=4)
    routes = dict(orch.routes.table.routes)
    with pytest.raises(ChoreographyFailed, match=r"pause budget exceeded after step 'redirect'"):
        await interpose_device(orch, "os1", "uart", budget_ms=0.0001)
    now = orch.routes.table.routes
    assert {f: now[f] for f in routes} == routes  # every old route as it was (new VMM flows may stay)
    driver = (await orch.request("os1", "stats")).body["stats"]["uart"]
    assert driver["mode"] == "native"
    assert orch.virt.devices == {}


async def test_an_orchestrator_restarted_after_a_crash_rolls_back_the_half_done_choreography(cluster, tmp_path):
    run_dir = tmp_path / "crash"
    async with running(parse(topology(), "crash"), run_dir) as orch:
        # FIG. 4 cut short after its third step: the frames are the VMM's, the journal says so
        runs = (await orch.request("os1", "mod_alloc_pin", {"n": 4})).body["data"]["runs"]  # pinned by os1
        frames = from_runs(runs)
        await orch.request("os1", "mod_give_back", {"runs": runs})
        await orch.request("memctl", "mem_transfer", {"runs": runs, "from_owner": "os1", "to_owner": "vmm"})
        j = orch.journal
        j.record("crashed", "fig4", WHOLE, "begin", {"host": "os1", "n": 4})
        j.record("crashed", "fig4", "alloc_pin", "done", {"runs": runs})
        j.record("crashed", "fig4", "module_lets_go", "done", {})
        j.record("crashed", "fig4", "to_vmm", "done", {})
        j.record("crashed", "fig4", "start_vmm", "begin")
        assert (await owners(orch))["vmm"] == frames

    again = await cluster(topology(), run_dir)
    assert [r["id"] for r in again.recovered] == ["crashed"]
    # memory came back (the controller keeps its state); the restarted OS already counts the
    # frames as its own, so the module's undos are refused, and reported
    assert again.recovered[0]["undone"] == ["to_vmm", "alloc_pin"]
    assert [f.split(":")[0] for f in again.recovered[0]["undo_failures"]] == ["module_lets_go"]
    assert again.journal.outcome("crashed") == "rolled_back"
    own = await check_conservation(again)
    assert "vmm" not in own and set(frames) <= set(own["os1"])


# ===================================================== with the real VMM (compose/vmm.toml)

REPO = Path(__file__).resolve().parents[2]
VMM_TOPOLOGY = REPO / "compose" / "vmm.toml"
BUILD = REPO / "guest" / "build" / "samples"


class Client:
    """A party outside the topology that starts programs on an OS and hears their proc_exit."""

    def __init__(self, orch: Orchestrator, name: str = "chclient"):
        self.orch = orch
        self.party = Party(name, f"ipc://{orch.run_dir}/{name}.sock", dict(orch.directory), advertise=True,
                           auth=client_keyring(orch.run_dir, name))
        self.exits: dict[tuple[str, int], dict] = {}
        self.changed = trio.Event()

    async def handle(self, msg) -> None:
        if msg.kind == "proc_exit":
            self.exits[(msg.src, msg.body["pid"])] = msg.body
            self.changed.set()
            self.changed = trio.Event()

    async def logged(self, uart: str) -> int:
        return (await self.party.request(uart, "uart_sync")).body["data"]["logged"]

    async def exec(self, os_name: str, elf: str, argv: list[str]) -> int:
        body = {"elf": (BUILD / f"{elf}.elf").read_bytes(), "argv": argv, "notify": True}
        return (await self.party.request(os_name, "os_exec", body, timeout=30)).body["data"]["pid"]

    async def wait_exit(self, os_name: str, pid: int, timeout: float = 120) -> dict:
        with trio.fail_after(timeout):
            while (os_name, pid) not in self.exits:
                await self.changed.wait()
        return self.exits[(os_name, pid)]

    async def console(self, uart: str, start: int) -> bytes:
        end = await self.logged(uart)
        return (self.orch.run_dir / f"{uart}.console.log").read_bytes()[start:end]

    async def run(self, os_name: str, uart: str, elf: str, argv: list[str]) -> tuple[int, bytes]:
        """Run a program to its end; (exit code, its console output)."""
        start = await self.logged(uart)
        pid = await self.exec(os_name, elf, argv)
        code = (await self.wait_exit(os_name, pid))["code"]
        return code, await self.console(uart, start)


@asynccontextmanager
async def serving(client: "Client"):
    """The client's inbox served for the body of the block; closed after, pass or fail."""
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client.handle)
            yield client
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()


async def vmm_stats(orch: Orchestrator) -> dict:
    return (await orch.request("vmm", "stats")).body["stats"]["vmm"]


async def wait_vmm(orch: Orchestrator, pred, timeout: float = 60) -> dict:
    with trio.fail_after(timeout):
        while True:
            s = await vmm_stats(orch)
            if pred(s):
                return s
            await trio.sleep(0.02)


async def test_interposed_and_devirtualized_by_the_choreographies_under_a_running_program_output_is_exact(
        guest_build, cluster):
    orch = await cluster(VMM_TOPOLOGY)
    install_conservation_hook(orch)
    lines = 40
    load = (await orch.control("ctl_vmm_load", host="os1", frames=8))["reports"][0]
    vmm_frames = from_runs(load["steps"][0]["data"]["runs"])
    image = await orch.request("memctl", "mem_read", {"space": "vmm", "addr": vmm_frames[0] * PAGE, "length": 10})
    assert image.body["data"] == b"HWEMU-VMM\0"  # FIG. 4: the VMM's image is in the frames os1 gave up

    async with serving(Client(orch)) as client:
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "T", str(lines)])

        interposed = (await orch.control("ctl_interpose", os="os1"))["reports"]  # everything: CPU and console
        assert [r["figure"] for r in interposed] == ["fig3", "fig5"]
        steps = {s["name"]: s for s in interposed[0]["steps"]}
        # one disabled window for the CPU's routes: traps, interrupts and privileged operations together
        assert steps["redirect_traps"]["pause_ms"] > 0
        assert [s for s in steps.values() if s["pause_ms"] > 0] == [steps["redirect_traps"]]
        routes = orch.routes.table.routes
        assert (routes["trap:cpu0"], routes["irq:timer0"], routes["priv:os1"], routes["io:os1.uart"],
                routes["irq:uart0"]) == ("vmm",) * 5
        status = (await orch.control("ctl_status"))["virt"]["resources"]
        assert (status["os1.cpu"], status["os1.memory"], status["os1.uart (uart0)"]) == ("vmm",) * 3
        s0 = await wait_vmm(orch, lambda s: s["traps_reflected"] > 0 and s["priv_forwarded"] > 0)

        await wait_vmm(orch, lambda s: s["traps_reflected"] > s0["traps_reflected"])
        back = (await orch.control("ctl_devirtualize", os="os1"))["reports"]
        assert [r["figure"] for r in back] == ["fig6", "fig7"]
        exit1 = await client.wait_exit("os1", pid)
        assert (exit1["code"], await client.console("uart0", start)) == (0, timeshare_output("T", lines))

    routes = orch.routes.table.routes
    assert (routes["trap:cpu0"], routes["irq:timer0"], routes["priv:os1"], routes["io:os1.uart"],
            routes["irq:uart0"]) == ("os1", "os1", "cpu0", "uart0", "os1")
    assert (await owners(orch))["vmm"] == vmm_frames
    for name in orch.live_nodes():  # no interrupt or I/O lost or duplicated across the changes
        stats = (await orch.request(name, "stats")).body["stats"]
        assert not with_gaps(stats["flows_in"]), name
    unloaded = (await orch.control("ctl_devirtualize", unload=True))["reports"]
    assert [r["figure"] for r in unloaded] == ["fig8_unload"]
    assert "vmm" not in await check_conservation(orch)


# ===================================================== the CLI, run as a user runs it

def hwemu(run_dir: Path, *args: str, timeout: float = 120):
    import os
    import subprocess
    import sys

    exe = str(Path(sys.executable).parent / "hwemu")
    return subprocess.run([exe, *args], cwd=REPO, env={**os.environ, "HWEMU_RUN_DIR": str(run_dir)},
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_json(out: str) -> dict:
    import json

    data, end = json.JSONDecoder().raw_decode(out)
    assert out[end:].strip() == ""
    return data


@pytest.fixture
def cli_run_dir(tmp_path):
    """A short run directory; `hwemu down` at the end, then SIGKILL by pid for anything of ours left."""
    with cluster_dir(tmp_path / "r", lambda rd: hwemu(rd, "down", timeout=60)) as (rd, _pids):
        yield rd


def test_cli_loads_interposes_lends_refuses_and_devirtualizes_with_steps_and_pauses(cli_run_dir):
    rd = cli_run_dir
    assert hwemu(rd, "up", "compose/vmm.toml", "--detach", "--json").returncode == 0

    load = hwemu(rd, "vmm", "load", "--host", "os1", "--frames", "8", "--json")
    assert load.returncode == 0, load.stderr
    rep = one_json(load.stdout)["reports"][0]
    assert (rep["figure"], rep["outcome"]) == ("fig4", "committed")
    assert all({"name", "ms", "pause_ms"} <= s.keys() for s in rep["steps"])

    over = hwemu(rd, "interpose", "--cpu", "--budget-ms", "0.001")
    assert over.returncode == 1
    assert "pause budget exceeded after step 'redirect_traps'" in over.stderr and "rolled back" in over.stderr
    inter = hwemu(rd, "interpose", "--cpu", "--memory", "--json")
    assert inter.returncode == 0, inter.stderr
    rep = one_json(inter.stdout)["reports"][0]
    assert rep["figure"] == "fig3" and rep["pause_ms"] > 0
    assert {s["name"]: s["pause_ms"] > 0 for s in rep["steps"]}["redirect_traps"]

    status = one_json(hwemu(rd, "status", "--json").stdout)["virt"]
    assert (status["resources"]["os1.cpu"], status["resources"]["os1.memory"]) == ("vmm", "vmm")
    assert status["resources"]["os1.uart (uart0)"] == "os1"
    human = hwemu(rd, "status")
    assert "controlled by" in human.stdout and "loaded in 8 frames of os1" in human.stdout

    lend = hwemu(rd, "memory", "borrow", "--from", "os1", "--to", "os2", "--frames", "4", "--json")
    assert lend.returncode == 0, lend.stderr
    assert len(one_json(lend.stdout)["reports"][0]["frames"]) == 4

    refused = hwemu(rd, "devirtualize", "--cpu")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "hwemu: cannot devirtualize the memory of os1 while borrowed frames are out (4 frames os1→os2): "
        "`hwemu memory return` them first"]

    assert hwemu(rd, "memory", "return", "--from", "os1", "--to", "os2").returncode == 0
    out = hwemu(rd, "devirtualize", "--unload", "--json")
    assert out.returncode == 0, out.stderr
    assert [r["figure"] for r in one_json(out.stdout)["reports"]] == ["fig7", "fig8_unload"]
    status = one_json(hwemu(rd, "status", "--json").stdout)["virt"]
    assert set(status["resources"].values()) == {"os1", "os2"} and not status["vmm"]["loaded"]

    bad = hwemu(rd, "memory", "borrow", "--from", "os1", "--to", "os2", "--frames", "0")
    assert bad.returncode == 2  # bad usage

    policy = hwemu(rd, "vmm", "policy", "--auto-devirtualize", "--json")
    assert (policy.returncode, one_json(policy.stdout)) == (0, {"auto_devirtualize": True})
    stop = hwemu(rd, "os", "stop", "os2", "--json")
    assert stop.returncode == 0, stop.stderr
    assert [r["figure"] for r in one_json(stop.stdout)["reports"]] == ["os_stop"]
    start = hwemu(rd, "os", "start", "os2", "--json")
    assert (start.returncode, one_json(start.stdout)) == (0, {"os": "os2", "started": True})


async def test_two_oses_under_the_vmm_refuse_cpu_devirtualization_and_partial_devirtualization_stays_exact(
        guest_build, cluster):
    orch = await cluster(VMM_TOPOLOGY)
    install_conservation_hook(orch)
    lines = 20
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    first = (await orch.control("ctl_interpose", os="os1"))["reports"]
    second = (await orch.control("ctl_interpose", os="os2"))["reports"]
    assert [r["figure"] for r in first + second] == ["fig3", "fig5", "fig3", "fig5"]
    assert {s["name"]: s["data"] for s in second[0]["steps"]}["attach"] == {"current": False}
    await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=4)  # os2's map grows to reach them

    async with serving(Client(orch)) as client:

        async def both(tag1: str, tag2: str) -> None:
            starts = {u: await client.logged(u) for u in ("uart0", "uart1")}
            p1 = await client.exec("os1", "timeshare", ["timeshare", tag1, str(lines)])
            p2 = await client.exec("os2", "timeshare", ["timeshare", tag2, str(lines)])
            e1, e2 = await client.wait_exit("os1", p1), await client.wait_exit("os2", p2)
            assert (e1["code"], await client.console("uart0", starts["uart0"])) == (
                0, timeshare_output(tag1, lines))
            assert (e2["code"], await client.console("uart1", starts["uart1"])) == (
                0, timeshare_output(tag2, lines))

        await both("A", "B")
        with pytest.raises(ChoreographyError, match=r"cannot devirtualize the CPU while 2 OS instances run "
                                                    r"under the VMM \(os1, os2\)"):
            await orch.control("ctl_devirtualize", cpu=True)
        with pytest.raises(ChoreographyError, match="while borrowed frames are out"):
            await orch.control("ctl_devirtualize")
        await orch.control("ctl_memory_return", from_os="os1", to_os="os2")
        # everything allowed: consoles and memory back, the CPU stays with the VMM
        partial = (await orch.control("ctl_devirtualize"))["reports"]
        assert sorted(r["figure"] for r in partial) == ["fig6", "fig6", "fig7_memory", "fig7_memory"]
        resources = (await orch.control("ctl_virt_status"))["resources"]
        assert (resources["os1.cpu"], resources["os2.cpu"]) == ("vmm", "vmm")
        assert (resources["os1.memory"], resources["os2.memory"], resources["os1.uart (uart0)"]) == (
            "os1", "os2", "os1")
        await both("C", "D")
    for name in orch.live_nodes():
        stats = (await orch.request(name, "stats")).body["stats"]
        assert not with_gaps(stats["flows_in"]), (name, stats["flows_in"])


async def test_with_the_policy_on_stopping_one_of_two_oses_devirtualizes_the_other_under_a_running_program(
        guest_build, cluster):
    orch = await cluster(VMM_TOPOLOGY)
    install_conservation_hook(orch)
    await orch.control("ctl_policy", auto_devirtualize=True)
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    await orch.control("ctl_interpose", os="os1", cpu=True)
    await orch.control("ctl_interpose", os="os2", cpu=True)
    lines = 30
    async with serving(Client(orch)) as client:
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "P", str(lines)])
        stopped = await orch.control("ctl_os_stop", os="os2")  # os2 is idle; os1's program runs on
        assert [r["figure"] for r in stopped["reports"]] == ["os_stop"]
        assert [r["figure"] for r in stopped["policy"]] == ["fig7"]  # one OS left: CPU given back
        assert node_state(orch, "os2") == "stopped"
        routes = orch.routes.table.routes
        assert (routes["trap:cpu0"], routes["irq:timer0"], routes["priv:os1"]) == ("os1", "os1", "cpu0")
        exit1 = await client.wait_exit("os1", pid)
        assert (exit1["code"], await client.console("uart0", start)) == (0, timeshare_output("P", lines))
    assert (await orch.control("ctl_virt_status"))["resources"]["os1.cpu"] == "os1"


async def test_a_cluster_restarted_on_the_same_run_dir_gives_every_os_its_partition_back(cluster, tmp_path):
    run_dir = tmp_path / "again"
    async with running(parse(topology(), "first"), run_dir) as orch:
        await orch.control("ctl_vmm_load", host="os1", frames=4)
        await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=3)
        own = await owners(orch)
        assert len(own["vmm"]) == 4 and len(own["os2"]) == OS2[1] + 3
    # the memory controller kept that; the OSes boot afresh with their partitions
    again = await cluster(topology(), run_dir)
    assert again.reset_memory == {"vmm->os1": 4, "os2->os1": 3}
    own = await check_conservation(again)
    assert "vmm" not in own
    assert own["os1"] == list(range(OS1[0], OS1[0] + OS1[1]))
    assert own["os2"] == list(range(OS2[0], OS2[0] + OS2[1]))


async def test_an_interposition_over_its_pause_budget_is_rolled_back_under_a_running_program(guest_build, cluster):
    from orchestrator.choreographies.fig3_interpose_cpu import interpose_cpu

    orch = await cluster(VMM_TOPOLOGY)
    install_conservation_hook(orch)
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    before = dict(orch.routes.table.routes)
    lines = 30
    async with serving(Client(orch)) as client:
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "R", str(lines)])
        with pytest.raises(ChoreographyFailed, match=r"pause budget exceeded after step 'redirect_traps'") as info:
            await interpose_cpu(orch, "os1", budget_ms=0.001)
        assert info.value.report["undone"] == ["redirect_traps", "attach", "new_flows"]
        now = orch.routes.table.routes
        assert {f: now[f] for f in before} == before  # traps, interrupts, privileged ops: the OS's again
        assert (await orch.request("vmm", "vmm_status")).body["data"]["oses"] == {}
        exit1 = await client.wait_exit("os1", pid)
        assert (exit1["code"], await client.console("uart0", start)) == (0, timeshare_output("R", lines))
    assert orch.virt.attached == {}
    assert orch.journal.outcome(info.value.report["id"]) == "rolled_back"
    for name in orch.live_nodes():
        stats = (await orch.request(name, "stats")).body["stats"]
        assert not with_gaps(stats["flows_in"]), (name, stats["flows_in"])


async def test_memctl_administration_is_refused_to_anyone_but_the_orchestrator_and_the_vmm(cluster):
    from protocol.errors import RemoteError
    from protocol.transport import Party

    orch = await cluster(topology())
    before = await check_conservation(orch)
    intruder = Party("intruder", f"ipc://{orch.run_dir}/intruder.sock", dict(orch.directory), advertise=True,
                     auth=client_keyring(orch.run_dir, "intruder"))  # the user's own client: authenticated

    async def ignore(msg):
        return None

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(intruder.serve, ignore)
            frames = before["os1"][:2]
            for kind, body in (("mem_transfer", {"frames": frames, "from_owner": "os1", "to_owner": "intruder"}),
                               ("mem_set_map", {"space": "os1", "map": {}}),
                               ("mem_set_identity", {"space": "os1"}),
                               ("mem_create_space", {"space": "evil", "frames": before["free"][:1]}),
                               ("mem_destroy_space", {"space": "os2"}),
                               ("mem_owners", {})):
                with pytest.raises(RemoteError, match="refused by rule 'admin': accepted only from the orchestrator "
                                                      "or the VMM") as info:
                    await intruder.request("memctl", kind, body, timeout=5)
                assert info.value.reason == "forbidden"
            with pytest.raises(RemoteError, match="refused by rule 'own_frames'"):  # another owner's frames
                await intruder.request("memctl", "mem_pin", {"frames": frames, "owner": "os1"}, timeout=5)
            with pytest.raises(RemoteError, match="cannot pin frames"):
                await intruder.request("memctl", "mem_pin", {"frames": frames}, timeout=5)
            nursery.cancel_scope.cancel()
    finally:
        intruder.close()
    assert await check_conservation(orch) == before
    # an OS pins its own frames (its kernel module does, in mod_alloc_pin); the orchestrator may then move them
    runs = (await orch.request("os1", "mod_alloc_pin", {"n": 2})).body["data"]["runs"]
    await orch.request("os1", "mod_give_back", {"runs": runs})
    await orch.request("memctl", "mem_transfer", {"runs": runs, "from_owner": "os1", "to_owner": "os2"})
    assert set(from_runs(runs)) <= set((await check_conservation(orch))["os2"])
    # runs that overlap are refused naming the run, and nothing moves
    before = await check_conservation(orch)
    first = before["os2"][0]
    with pytest.raises(RemoteError, match=r"bad_field \[body.runs\[1\]\]: runs .* overlap") as info:
        await orch.request("memctl", "mem_transfer", {"runs": [[first, 2], [first + 1, 1]],
                                                      "from_owner": "os2", "to_owner": "vmm"})
    assert info.value.reason == "bad_field"
    assert await check_conservation(orch) == before


def test_cli_reports_a_partial_grant_and_refuses_at_the_floor_in_one_line(cli_run_dir, tmp_path):
    rd = cli_run_dir
    topo = tmp_path / "floor.toml"
    text = VMM_TOPOLOGY.read_text()
    os1 = 'options = { memory = [256, 512], cpu = "cpu0"'
    assert os1 in text
    topo.write_text(text.replace(os1, 'options = { lend_floor = 496, memory = [256, 512], cpu = "cpu0"'))
    assert hwemu(rd, "up", str(topo), "--detach").returncode == 0
    assert hwemu(rd, "vmm", "load", "--host", "os1", "--frames", "8").returncode == 0  # 504 free: 8 to lend

    lend = hwemu(rd, "memory", "borrow", "--from", "os1", "--to", "os2", "--frames", "20", "--json")
    assert lend.returncode == 0, lend.stderr
    rep = one_json(lend.stdout)["reports"][0]
    assert (len(rep["frames"]), rep["partial"]) == (
        8, {"asked": 20, "granted": 8, "why": "os1 keeps 496 frames free (its lending floor)"})
    refused = hwemu(rd, "memory", "borrow", "--from", "os1", "--to", "os2", "--frames", "3")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.strip().splitlines() == [
        "hwemu: ¶39 borrow 3 frames of os1 for os2 failed and was rolled back: step 'alloc_pin_from_os' failed: "
        "os1 refused to allocate and pin 3 frames: it keeps 496 frames free (its lending floor) and has 496 free: "
        "0 to lend, at least 1 of 3 asked"]
    assert hwemu(rd, "memory", "return", "--from", "os1", "--to", "os2").returncode == 0
    human = hwemu(rd, "memory", "borrow", "--from", "os1", "--to", "os2", "--frames", "9")
    assert human.returncode == 0, human.stderr
    assert "partial grant: asked 9 frames, got 8: os1 keeps 496 frames free (its lending floor)" in human.stdout
    status = one_json(hwemu(rd, "status", "--json").stdout)
    assert [ln["count"] for ln in status["virt"]["loans"]] == [8]
    assert hwemu(rd, "memory", "return", "--from", "os1", "--to", "os2").returncode == 0

    running_already = hwemu(rd, "os", "boot", "os2", "--frames", "4")
    assert (running_already.returncode, running_already.stderr.strip().splitlines()) == (
        1, ["hwemu: os2 is running already: `hwemu os shutdown os2` first"])
    down = hwemu(rd, "os", "shutdown", "os2", "--json")
    assert down.returncode == 0, down.stderr
    assert [r["figure"] for r in one_json(down.stdout)["reports"]] == ["os_stop"]
    no_cpu = hwemu(rd, "os", "boot", "os2", "--frames", "4")
    assert (no_cpu.returncode, no_cpu.stderr.strip().splitlines()) == (
        1, ["hwemu: os2 would share cpu0 with os1, whose CPU is not virtualized: `hwemu interpose --cpu` first"])
    up = hwemu(rd, "os", "boot", "os2", "--json")
    assert (up.returncode, one_json(up.stdout)) == (0, {"os": "os2", "started": True, "reports": []})


def boot_topology() -> dict:
    """compose/vmm.toml with os2 deferred and without a partition: it has no memory until it is booted."""
    import tomllib

    data = tomllib.loads(VMM_TOPOLOGY.read_text())
    del data["nodes"]["memctl"]["options"]["partitions"]["os2"]
    del data["nodes"]["os2"]["options"]["memory"]
    data["nodes"]["os2"]["autostart"] = False
    return data


async def test_os2_booted_on_frames_borrowed_from_os1_runs_exactly_and_its_shutdown_returns_them(
        guest_build, cluster):
    orch = await cluster(boot_topology())
    seen = install_conservation_hook(orch)
    assert node_state(orch, "os2") == "stopped"
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    with pytest.raises(ChoreographyError, match=r"os2 would share cpu0 with os1, whose CPU is not virtualized: "
                                                r"`hwemu interpose --cpu` first"):
        await orch.control("ctl_os_boot", os="os2", frames=48)
    free1 = await free_frames(orch, "os1")
    lines = 60
    async with serving(Client(orch)) as client:
        start1 = await client.logged("uart0")
        pid1 = await client.exec("os1", "timeshare", ["timeshare", "H", str(lines)])
        await orch.control("ctl_interpose", os="os1", cpu=True)

        seen.clear()
        booted = await orch.control("ctl_os_boot", os="os2", frames=48)
        rep = booted["reports"][0]
        assert (rep["figure"], rep["outcome"], booted["started"]) == ("p49_boot", "committed", True)
        assert seen == [f"p49_boot.{s}" for s in ("alloc_pin", "module_lets_go", "to_vmm", "os_space", "to_os",
                                                  "boot", "new_flows", "attach", "redirect_traps",
                                                  "disable_direct_addressing", "resume_os")]
        lent = booted["frames"]
        assert len(lent) == 48 and all(256 <= f < 768 for f in lent)
        own = await check_conservation(orch)
        assert own["os2"] == sorted(lent) and not set(lent) & set(own["os1"])
        assert len(own["os1"]) == 512 - 8 - 48
        assert await free_frames(orch, "os2") == 48  # its boot memory map is exactly the borrowed frames
        assert orch.routes.table.routes["priv:os2"] == "vmm"
        resources = (await orch.control("ctl_virt_status"))["resources"]
        assert (resources["os2.cpu"], resources["os2.memory"]) == ("vmm", "vmm")
        with pytest.raises(ChoreographyError, match=r"the frames of os1 in os2 are the memory os2 booted on: "
                                                    r"`hwemu os shutdown os2` returns them"):
            await orch.control("ctl_memory_return", from_os="os1", to_os="os2")

        start2 = await client.logged("uart1")
        pid2 = await client.exec("os2", "timeshare", ["timeshare", "G", "20"])
        exit2 = await client.wait_exit("os2", pid2)
        assert (exit2["code"], await client.console("uart1", start2)) == (0, timeshare_output("G", 20))

        seen.clear()
        down = await orch.control("ctl_os_shutdown", os="os2")
        assert [(r["figure"], r["outcome"]) for r in down["reports"]] == [("p49_shutdown", "committed")]
        assert seen == [f"p49_shutdown.{s}" for s in ("vmm_detach_os", "stop_node", "forget_boot_map", "to_vmm",
                                                      "to_host", "add_to_free_list")]
        assert node_state(orch, "os2") == "stopped"
        own = await check_conservation(orch)
        assert not own.get("os2") and set(lent) <= set(own["os1"]) and len(own["os1"]) == 512 - 8
        assert (await orch.control("ctl_virt_status"))["loans"] == []

        exit1 = await client.wait_exit("os1", pid1)
        assert (exit1["code"], await client.console("uart0", start1)) == (0, timeshare_output("H", lines))
        assert await free_frames(orch, "os1") == free1  # the lent frames are on its free list again
    assert [r["figure"] for r in (await orch.control("ctl_devirtualize", unload=True))["reports"]] == ["fig7",
                                                                                                       "fig8_unload"]
    assert "vmm" not in await check_conservation(orch)


async def memctl_space(orch: Orchestrator, space: str) -> str:
    return (await orch.request("memctl", "stats")).body["stats"]["spaces"][space]


async def test_interposing_the_cpu_keeps_direct_addressing_and_memory_is_virtualized_on_its_own_or_implies_the_cpu(
        guest_build, cluster):
    orch = await cluster(VMM_TOPOLOGY)
    install_conservation_hook(orch)
    await orch.control("ctl_vmm_load", host="os1", frames=8)
    lines = 60
    async with serving(Client(orch)) as client:
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "M", str(lines)])

        cpu_only = (await orch.control("ctl_interpose", os="os1", cpu=True))["reports"]
        assert [(r["figure"], [s["name"] for s in r["steps"]]) for r in cpu_only] == [
            ("fig3", ["new_flows", "attach", "redirect_traps", "resume_os"])]
        resources = (await orch.control("ctl_virt_status"))["resources"]
        assert (resources["os1.cpu"], resources["os1.memory"]) == ("vmm", "os1")
        assert await memctl_space(orch, "os1") == "identity"
        assert orch.routes.table.routes["priv:os1"] == "vmm"

        mem = (await orch.control("ctl_interpose", os="os1", memory=True))["reports"]
        assert [(r["figure"], [s["name"] for s in r["steps"]]) for r in mem] == [
            ("fig3_memory", ["disable_direct_addressing"])]
        assert (await orch.control("ctl_virt_status"))["resources"]["os1.memory"] == "vmm"
        assert await memctl_space(orch, "os1") == "504 pages mapped"
        with pytest.raises(ChoreographyError, match="the memory of os1 is virtualized already"):
            await orch.control("ctl_interpose", os="os1", memory=True)

        await orch.control("ctl_devirtualize", os="os1", memory=True)
        assert await memctl_space(orch, "os1") == "identity"
        back = (await orch.control("ctl_devirtualize", os="os1"))["reports"]
        assert [r["figure"] for r in back] == ["fig7"]
        assert {s["name"]: s["data"] for s in back[0]["steps"]}["direct_addressing_on"] == {"identity": "already"}

        # --memory with the CPU native: FIG. 3 whole (the CPU first, then 308)
        implied = (await orch.control("ctl_interpose", os="os1", memory=True))["reports"]
        assert [(r["figure"], [s["name"] for s in r["steps"]]) for r in implied] == [
            ("fig3", ["new_flows", "attach", "redirect_traps", "disable_direct_addressing", "resume_os"])]
        resources = (await orch.control("ctl_virt_status"))["resources"]
        assert (resources["os1.cpu"], resources["os1.memory"], resources["os1.uart (uart0)"]) == (
            "vmm", "vmm", "os1")
        assert [r["figure"] for r in (await orch.control("ctl_devirtualize", os="os1"))["reports"]] == ["fig7"]
        assert await memctl_space(orch, "os1") == "identity"

        exit1 = await client.wait_exit("os1", pid)
        assert (exit1["code"], await client.console("uart0", start)) == (0, timeshare_output("M", lines))
    for name in orch.live_nodes():
        stats = (await orch.request(name, "stats")).body["stats"]
        assert not with_gaps(stats["flows_in"]), (name, stats["flows_in"])


async def test_fig2b_the_vmm_at_boot_hides_its_frames_and_os2s_partition_from_os1_and_is_devirtualized_later(
        guest_build, cluster):
    orch = await cluster(REPO / "compose" / "vmmboot.toml")
    status = await orch.control("ctl_status")
    virt = status["virt"]
    assert virt["vmm"] == {"loaded": True, "host": "os1", "frames": 64}
    assert {r: virt["resources"][r] for r in ("os1.cpu", "os1.memory", "os2.cpu", "os2.memory",
                                               "os1.uart (uart0)")} == {
        "os1.cpu": "vmm", "os1.memory": "vmm", "os2.cpu": "vmm", "os2.memory": "vmm", "os1.uart (uart0)": "os1"}
    routes = status["routes"]["routes"]
    assert (routes["trap:cpu0"], routes["irq:timer0"], routes["priv:os1"], routes["priv:os2"],
            routes["trap:vmm.os1"], routes["priv:vmm"]) == ("vmm", "vmm", "vmm", "vmm", "os1", "cpu0")
    own = await check_conservation(orch)
    assert (own["vmm"], own["os1"], own["os2"]) == (list(range(64)), list(range(64, 768)), list(range(768, 1024)))
    kernel = (await orch.request("os1", "stats")).body["stats"]["kernel"]
    assert (kernel["owned_frames"], kernel["free_frames"]) == (704, 704)  # its map: neither the VMM nor os2
    for frame in (0, 63, 768, 1023):
        with pytest.raises(Exception, match="mem_fault"):
            await read(orch, "os1", frame)
    assert (await orch.request("vmm", "vmm_status")).body["data"]["oses"].keys() == {"os1", "os2"}
    assert orch.journal.records() == []  # boot, not a runtime change

    lines = 20
    async with serving(Client(orch)) as client:
        starts = {u: await client.logged(u) for u in ("uart0", "uart1")}
        p1 = await client.exec("os1", "timeshare", ["timeshare", "A", str(lines)])
        p2 = await client.exec("os2", "timeshare", ["timeshare", "B", str(lines)])
        e1, e2 = await client.wait_exit("os1", p1), await client.wait_exit("os2", p2)
        assert (e1["code"], await client.console("uart0", starts["uart0"])) == (0, timeshare_output("A", lines))
        assert (e2["code"], await client.console("uart1", starts["uart1"])) == (0, timeshare_output("B", lines))
        assert (await vmm_stats(orch))["traps_reflected"] > 0

        install_conservation_hook(orch)
        with pytest.raises(ChoreographyError, match="cannot devirtualize the CPU while 2 OS instances"):
            await orch.control("ctl_devirtualize", cpu=True)
        assert [r["figure"] for r in (await orch.control("ctl_os_shutdown", os="os2"))["reports"]] == ["os_stop"]
        # booted again on 16 frames borrowed from os1, then on the firmware's own map once they are back
        lent = (await orch.control("ctl_os_boot", os="os2", frames=16))["frames"]
        assert await free_frames(orch, "os2") == 16
        assert [r["figure"] for r in (await orch.control("ctl_os_shutdown", os="os2"))["reports"]] == ["p49_shutdown"]
        assert set(lent) <= set((await check_conservation(orch))["os1"])
        assert (await orch.control("ctl_os_boot", os="os2"))["started"] and await free_frames(orch, "os2") == 256
        assert [r["figure"] for r in (await orch.control("ctl_os_shutdown", os="os2"))["reports"]] == ["os_stop"]
        back = (await orch.control("ctl_devirtualize", unload=True))["reports"]
        assert [r["figure"] for r in back] == ["fig7", "fig8_unload"]
        routes = orch.routes.table.routes
        assert (routes["trap:cpu0"], routes["irq:timer0"], routes["priv:os1"]) == ("os1", "os1", "cpu0")
        own = await check_conservation(orch)
        assert "vmm" not in own and own["os1"] == list(range(768))  # the VMM's frames are os1's now
        start = await client.logged("uart0")
        pid = await client.exec("os1", "timeshare", ["timeshare", "N", str(lines)])
        exit1 = await client.wait_exit("os1", pid)
        assert (exit1["code"], await client.console("uart0", start)) == (0, timeshare_output("N", lines))
    for name in orch.live_nodes():
        stats = (await orch.request(name, "stats")).body["stats"]
        assert not with_gaps(stats["flows_in"]), (name, stats["flows_in"])
