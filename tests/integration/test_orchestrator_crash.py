"""A real ``kill -9`` of the orchestrator daemon in the middle of FIG. 3
(DESIGN.md §2 and §5): the nodes keep running without it, a restarted
orchestrator on the same run directory re-attaches to them (same pids) and
rolls the half-done interposition back from the journal, on the live nodes.

The daemon is stopped at a chosen step deterministically: with
``HWEMU_HOLD_AFTER_STEP`` / ``HWEMU_HOLD_FILE`` it creates the file once the
step is journaled and waits; the test waits for the file, then kills it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from orchestrator.cli.demo import timeshare_output
from orchestrator.client import call
from orchestrator.topology import load
from protocol.auth import client_keyring
from protocol.transport import Party
from tests.integration import test_cli
from tests.integration.procs import alive, recorded_pids

pytestmark = pytest.mark.integration
run_dir = test_cli.run_dir  # the fixture (`hwemu down`, then SIGKILL by pid): the tests take it as a parameter

REPO = Path(__file__).resolve().parents[2]
HWEMU = str(Path(sys.executable).parent / "hwemu")
TOPOLOGY = REPO / "compose" / "vmm.toml"
BUILD = REPO / "guest" / "build" / "samples"
NFRAMES = 1024


async def hwemu(run_dir: Path, *args: str, env: dict | None = None):
    return await trio.run_process([HWEMU, *args], cwd=REPO, check=False, capture_stdout=True, capture_stderr=True,
                                  env={**os.environ, "HWEMU_RUN_DIR": str(run_dir), **(env or {})},
                                  stdin=b"")


async def status(run_dir: Path) -> dict:
    return await call(run_dir, "ctl_status", {}, timeout=30)


async def owners(run_dir: Path) -> dict:
    reply = await call(run_dir, "ctl_request", {"node": "memctl", "kind": "mem_owners", "body": {}}, timeout=30)
    data = reply["body"]["data"]
    assert data["invariants"] == "ok"
    assert sorted(f for o, fs in data.items() if o != "invariants" for f in fs) == list(range(NFRAMES))
    return data


async def wait_for(pred, what: str, timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)  # polling a file or a pid: the event we wait for, not a settle time


async def up_with_a_hold(rd: Path, hold: Path, pids: set) -> dict:
    """`hwemu up` with the daemon told to hold after FIG. 3's route change, the VMM loaded; the status."""
    env = {"HWEMU_HOLD_AFTER_STEP": "fig3.redirect_traps", "HWEMU_HOLD_FILE": str(hold)}
    up = await hwemu(rd, "up", str(TOPOLOGY), "--detach", env=env)
    pids |= recorded_pids(rd)
    assert up.returncode == 0, up.stderr
    assert (await hwemu(rd, "vmm", "load", "--host", "os1", "--frames", "8")).returncode == 0
    before = await status(rd)
    pids |= {n["pid"] for n in before["nodes"] if n["alive"]}
    return before


async def kill_the_daemon_mid_fig3(rd: Path, hold: Path, daemon: int) -> str:
    """Start `hwemu interpose`, wait until the daemon holds after redirect_traps, SIGKILL it; the journal id."""
    interposing = await trio.lowlevel.open_process(
        [HWEMU, "interpose", "--cpu", "--memory"], cwd=REPO, env={**os.environ, "HWEMU_RUN_DIR": str(rd)},
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_for(hold.exists, "the daemon to reach the held step")
        fig3 = [r for r in journal(rd) if r["figure"] == "fig3"]
        assert [r["step"] for r in fig3 if r["phase"] == "done"] == ["new_flows", "attach", "redirect_traps"]
        os.kill(daemon, signal.SIGKILL)
        await wait_for(lambda: not alive(daemon), "the daemon to die")
    finally:
        interposing.kill()  # its request died with the daemon
        await interposing.wait()
    return fig3[0]["id"]


def journal(rd: Path) -> list[dict]:
    return [json.loads(ln) for ln in (rd / "journal.jsonl").read_text().splitlines()]


async def test_kill_9_mid_interposition_a_restarted_orchestrator_reattaches_and_rolls_it_back_output_exact(
        guest_build, run_dir, tmp_path):
    rd, pids = run_dir
    hold = tmp_path / "held"
    before = await up_with_a_hold(rd, hold, pids)
    node_pids = {n["name"]: n["pid"] for n in before["nodes"] if n["alive"]}
    assert sorted(node_pids) == ["cpu0", "memctl", "os1", "os2", "timer0", "uart0", "uart1", "vmm"]
    daemon = before["orchestrator"]["pid"]
    routes_before = before["routes"]["routes"]
    own_before = await owners(rd)

    client = Party("crashclient", f"ipc://{rd}/crashclient.sock", load(TOPOLOGY).directory(rd), advertise=True,
                   auth=client_keyring(rd, "crashclient"))
    exits: dict[int, dict] = {}
    got = trio.Event()

    async def handle(msg) -> None:
        if msg.kind == "proc_exit":
            exits[msg.body["pid"]] = msg.body
            got.set()

    lines = 60
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.serve, handle)
            start = (await client.request("uart0", "uart_sync")).body["data"]["logged"]
            body = {"elf": (BUILD / "timeshare.elf").read_bytes(), "argv": ["timeshare", "K", str(lines)],
                    "notify": True}
            pid = (await client.request("os1", "os_exec", body, timeout=30)).body["data"]["pid"]

            cid = await kill_the_daemon_mid_fig3(rd, hold, daemon)

            # the cluster runs on without its orchestrator, on the routes it left: traps to the VMM
            assert all(alive(p) for p in node_pids.values())
            again = await hwemu(rd, "up", str(TOPOLOGY), "--detach")
            pids |= recorded_pids(rd)
            assert again.returncode == 0, again.stderr
            after = await status(rd)
            assert after["orchestrator"]["pid"] != daemon
            assert {n["name"]: n["pid"] for n in after["nodes"] if n["alive"]} == node_pids  # re-attached
            assert [(r["step"], r["phase"]) for r in journal(rd) if r["id"] == cid][-4:] == [
                ("redirect_traps", "undo"), ("attach", "undo"), ("new_flows", "undo"), ("*", "rolled_back")]
            routes = after["routes"]["routes"]
            assert {f: routes[f] for f in routes_before} == routes_before  # traps and interrupts to os1 again
            assert after["routes"]["epoch"] > before["routes"]["epoch"]
            virt = after["virt"]
            assert virt["vmm"] == {"loaded": True, "host": "os1", "frames": 8}  # kept across the restart
            assert (virt["resources"]["os1.cpu"], virt["resources"]["os1.memory"]) == ("os1", "os1")
            vmm = await call(rd, "ctl_request", {"node": "vmm", "kind": "vmm_status", "body": {}}, timeout=30)
            assert vmm["body"]["data"]["oses"] == {}  # the rollback detached os1 from the live VMM
            assert await owners(rd) == own_before

            with trio.fail_after(120):
                while pid not in exits:
                    await got.wait()
                    got = trio.Event()
            end = (await client.request("uart0", "uart_sync")).body["data"]["logged"]
            output = (rd / "uart0.console.log").read_bytes()[start:end]
            assert (exits[pid]["code"], output) == (0, timeshare_output("K", lines))

            # the machine is whole: the same interposition now commits
            inter = await hwemu(rd, "interpose", "--cpu", "--memory", "--json")
            assert inter.returncode == 0, inter.stderr
            assert json.loads(inter.stdout)["reports"][0]["outcome"] == "committed"
            assert (await status(rd))["virt"]["resources"]["os1.cpu"] == "vmm"
            nursery.cancel_scope.cancel()
    finally:
        client.close()


async def test_kill_9_mid_interposition_with_a_node_gone_too_the_restarted_orchestrator_boots_afresh_native(
        run_dir, tmp_path):
    rd, pids = run_dir
    hold = tmp_path / "held"
    before = await up_with_a_hold(rd, hold, pids)
    old = {n["name"]: n["pid"] for n in before["nodes"] if n["alive"]}
    cid = await kill_the_daemon_mid_fig3(rd, hold, before["orchestrator"]["pid"])
    os.kill(old["uart1"], signal.SIGKILL)  # the cluster did not survive whole: no re-attaching
    await wait_for(lambda: not alive(old["uart1"]), "uart1 to die")

    again = await hwemu(rd, "up", str(TOPOLOGY), "--detach")
    pids |= recorded_pids(rd)
    assert again.returncode == 0, again.stderr
    assert not [name for name, pid in old.items() if alive(pid)]  # the survivors were stopped, by pid
    after = await status(rd)
    new = {n["name"]: n["pid"] for n in after["nodes"] if n["alive"]}
    assert sorted(new) == sorted(old) and not set(new.values()) & set(old.values())
    assert journal(rd)[-1]["id"] == cid and journal(rd)[-1]["phase"] == "rolled_back"
    routes = after["routes"]["routes"]
    assert {f: routes[f] for f in before["routes"]["routes"]} == before["routes"]["routes"]
    virt = after["virt"]
    assert not virt["vmm"]["loaded"] and set(virt["resources"].values()) == {"os1", "os2"}
    own = await owners(rd)  # the firmware's map: the VMM's frames went home to os1
    assert "vmm" not in own and own["os1"] == list(range(256, 768))
