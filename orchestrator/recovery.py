"""What the orchestrator does when the supervisor restarts a crashed node
(docs/recovery.md): the parts of recovery that only the party that saw the
process die can do. Everything else is done by the drivers of the restarted
node, as an OS resets a device after a reset.

- Before a crashed **CPU** runs again: every memory controller forgets the
  copies it cached (``mem_drop_initiator``) and says which frames held the
  only copy of their newest bytes; a VMM managing the CPU resets its virtual
  CPUs and says whose context was on it; each OS is told (``peer_restarted``
  with ``lost``, and ``on_cpu`` under the VMM) and stops, with a machine
  check, the process that was on the CPU and every process whose memory was
  among them. Only then is the new CPU
  started, so no process ever runs again on memory that silently went back
  in time.
- Once any restarted node is **ready**: every OS and the VMM get
  ``peer_restarted`` {node, kind, incarnation}; the drivers of that node
  reset it (timer period, NIC ports and receive buffers, disk commands in
  flight re-issued at once).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable

import trio

import protocol.recovery  # noqa: F401  (registers mem_drop_initiator / peer_restarted)
from orchestrator.supervisor import NodeProc
from protocol.constants import DEFAULT_CPU, DEFAULT_MEMCTL, DEFAULT_TIMER, VMM
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.frames import from_runs, to_runs
from protocol.routes import flow_sender

if TYPE_CHECKING:  # pragma: no cover
    from orchestrator.cluster import Orchestrator

log = logging.getLogger("hwemu.recovery")

NOTICE_TIMEOUT = 10.0
RESTART_WAIT = 10.0  # s a route change waits for a node the supervisor is restarting (killed meanwhile)
RUNNING_WAIT = 2.0  # s a CPU still running when the VMM died is given to trap, before its context is named
FAILURES = (RemoteError, RequestTimeout, ProtocolError)


def _running(orch: "Orchestrator", kinds: tuple[str, ...]) -> list[str]:
    return [n for n in orch.live_nodes() if orch.topology.nodes[n].kind in kinds]


async def before_respawn(orch: "Orchestrator", np: NodeProc) -> None:
    """A crashed node is about to be started again (nothing of it runs now)."""
    if np.spec.kind == "cpu":
        await cpu_lost(orch, np.spec.name)
    elif np.spec.kind == "vmm" and (orch.virt.attached or orch.virt.devices or orch.virt.vmm_loaded):
        await vmm_lost(orch)
    elif np.spec.kind == "os":
        # after any choreography that was talking to it has failed and rolled back (it fails at once:
        # Run.call), so what it reclaims is what the rollback left: a ¶39 return cut short by the
        # crash gave the frames it had moved back to the borrower after os_lost had booked them for
        # the next life, which then faulted on pages it did not own (chaos demo seed 84)
        async with orch.choreography_lock:
            await os_lost(orch, np.spec.name)


async def os_lost(orch: "Orchestrator", os_name: str) -> dict[str, Any]:
    """An OS died: its processes died with it, and its CPU stops running them
    (``cpu_reset``). Before it boots again, every frame it owned is reclaimed,
    zeroed: frames it had borrowed go back to their lender (and onto the
    lender's free list), its own partition is zeroed (the memory controller
    zeroes a frame whenever its owner changes: it goes to ``free`` and back),
    so nothing of a dead process is readable by the next life, and no frame
    is left outside every allocator. Other OS instances are not touched.
    """
    st = orch.virt
    opts = orch.topology.nodes[os_name].options
    memctl = opts.get("memctl", DEFAULT_MEMCTL)
    report: dict[str, Any] = {"node": os_name, "kind": "os", "returned": {}, "zeroed": 0}
    cpu = opts.get("cpu", DEFAULT_CPU)
    if orch.routes.table.get(f"trap:{cpu}") == os_name and cpu in orch.live_nodes():
        try:  # its process stops running, and no trap of it reaches the next life
            report["cpu"] = await _call(orch, cpu, "cpu_reset")
        except FAILURES as exc:
            log.error("%s was not reset after %s died: %s", cpu, os_name, exc)
    elif os_name in st.attached and VMM in orch.live_nodes():
        try:  # the CPU is the VMM's to share: it resets this OS's virtual CPU (and its part of the CPU)
            report["vmm"] = await _call(orch, VMM, "peer_restarted", {"node": os_name, "kind": "os"})
        except FAILURES as exc:
            log.error("the VMM did not reset the virtual CPU of the dead %s: %s", os_name, exc)
    if memctl not in orch.live_nodes():
        return report
    try:
        owned = set((await _call(orch, memctl, "mem_owners")).get(os_name, []))
        # (an OS booted on borrowed frames, ¶49, boots on them again: they stay its own)
        for loan in [ln for ln in st.loans if ln["to"] == os_name and os_name not in orch.boot_maps]:
            frames = sorted(owned.intersection(from_runs(loan["runs"])))
            if frames:
                runs = to_runs(frames)
                await _call(orch, memctl, "mem_pin", {"runs": runs, "owner": os_name})
                await _call(orch, memctl, "mem_transfer", {"runs": runs, "from_owner": os_name,
                                                           "to_owner": loan["from"]})
                await _call(orch, loan["from"], "mod_add", {"runs": runs})
                report["returned"][loan["from"]] = report["returned"].get(loan["from"], 0) + len(frames)
                owned.difference_update(frames)
            st.loans.remove(loan)
        # an identity space reaches its owner's frames whoever held them in between; a mapped one
        # (memory under the VMM, a boot on borrowed frames) would lose its map: left as it is
        if owned and os_name not in st.attached and os_name not in orch.boot_maps:
            runs = to_runs(sorted(owned))
            await _call(orch, memctl, "mem_pin", {"runs": runs, "owner": os_name})
            await _call(orch, memctl, "mem_transfer", {"runs": runs, "from_owner": os_name, "to_owner": "free"})
            await _call(orch, memctl, "mem_transfer", {"runs": runs, "from_owner": "free", "to_owner": os_name})
            report["zeroed"] = len(owned)
        # the next life boots on what it owns now, not on frames of its partition it gave the VMM or
        # lent to another OS (its programs would fault on them: "outside the partition")
        spec_map = opts.get("memory")
        intended = set(orch.boot_maps.get(os_name) or (range(spec_map[0], spec_map[0] + spec_map[1])
                                                        if spec_map else ()))
        if os_name not in orch.boot_maps and owned and intended and owned != intended:
            orch.restart_maps[os_name] = sorted(owned)
            report["boots_on"] = len(owned)
        else:
            orch.restart_maps.pop(os_name, None)
    except FAILURES as exc:
        log.error("the frames of the dead %s were not all reclaimed: %s", os_name, exc)
        report["error"] = str(exc)
    orch.save_state()
    log.warning("%s died: %s", os_name, report)
    orch.recovery_log.append(report)
    return report


async def _call(orch: "Orchestrator", node: str, kind: str, body: dict[str, Any] | None = None,
                timeout: float = NOTICE_TIMEOUT) -> Any:
    reply = await orch.party.request(node, kind, body or {}, timeout=timeout)
    return reply.body.get("data")


async def vmm_lost(orch: "Orchestrator") -> dict[str, Any]:
    """Emergency devirtualization: the VMM died while it managed OS instances.

    Its state (the virtual CPUs, what it held of each device) died with it;
    what the OS instances, the CPU, the devices and the memory controller
    hold did not. The OS on the CPU (the attached OS whose asid base the
    CPU's asid carries) gets everything back natively: its memory direct
    again, every flow routed as the topology routes it, its drivers native,
    and the CPU's context settled with it (its lost resume sent again, or the
    trap the VMM took with it raised again, never both: the trap's
    instruction count says whether the OS had handled it). Another OS under
    the VMM had its context in the VMM: it is stopped (its processes die, as
    on any OS crash), the frames lent to it go back to their lender, zeroed.
    The VMM's own frames go back to its host, zeroed; it comes back unloaded.
    """
    async with orch.choreography_lock:  # a choreography that was talking to it has failed by now
        try:
            return await _vmm_lost(orch)
        except FAILURES as exc:  # said, not raised: raised here, it took the orchestrator down with the VMM
            log.error("the emergency devirtualization after the VMM died is incomplete: %s", exc)
            report = {"node": VMM, "kind": "vmm", "error": str(exc)}
            orch.recovery_log.append(report)
            return report


async def _vmm_lost(orch: "Orchestrator") -> dict[str, Any]:
    st = orch.virt
    report: dict[str, Any] = {"node": "vmm", "kind": "vmm", "stopped": [], "native": None}
    spec_of = orch.topology.nodes
    attached = dict(st.attached)
    survivor = None
    if attached:
        cpu = spec_of[next(iter(attached))].options.get("cpu", DEFAULT_CPU)
        saved = None
        with trio.move_on_after(RUNNING_WAIT):  # running: it traps soon (to the dead VMM), and waits there
            while saved is None:
                try:
                    saved = await _call(orch, cpu, "cpu_save")
                except FAILURES:
                    await trio.sleep(0.05)
        base = (saved["asid"] & ~0xFFFF) if saved else 0  # (still running: taken for the first OS's)
        on_cpu = next((o for o, a in attached.items() if a["asid_base"] == base), sorted(attached)[0])
        # the OS on the CPU keeps it, unless it runs on memory borrowed from another (os2 of the demo,
        # booted on frames of os1): then its lender does. Kept by the borrower, the loan could never be
        # given back (there is no VMM to return it through) and the lender could not boot again on its
        # partition. The borrower's context on the CPU stops with it, the CPU forgetting it first; the
        # lender's current process had its registers in the dead VMM: it stops, as after a machine check
        lenders = sorted({ln["from"] for ln in st.loans if ln["to"] == on_cpu and ln["from"] in attached})
        survivor = lenders[0] if lenders else on_cpu
        if on_cpu != survivor:
            report["cpu_reset"] = await _call(orch, cpu, "cpu_reset")
        for os_name in sorted(attached):
            if os_name != survivor:
                await _stop_lost_os(orch, os_name, report)
    # the memory of the survivor direct again (its loans were to the stopped OS: returned above)
    for os_name, att in st.attached.items():
        if att.get("memory") == "vmm":
            memctl = spec_of[os_name].options.get("memctl", DEFAULT_MEMCTL)
            await _call(orch, memctl, "mem_set_identity", {"space": os_name})
    # every flow the VMM received goes where the topology routes it natively; a receiver or a sender
    # restarting meanwhile (killed too) is waited for: a receiver left out, its flows would stay on the dead
    # VMM; a sender not running yet misses the change and goes on sending to the VMM (a timer restarted
    # during it sent its ticks there for the rest of the run: demo seed 1088 of --faults kill)
    await restarts_done(orch, {x for f, n in orch.topology.routes.items() if orch.routes.table.get(f) == "vmm"
                               for x in (n, flow_sender(f))})
    native = {f: n for f, n in orch.topology.routes.items()
              if orch.routes.table.get(f) == "vmm" and n in orch.live_nodes()}
    if survivor is not None:  # the CPU and its timer are the survivor's, whichever OS the topology booted on them
        opts = spec_of[survivor].options
        cpu, timer = opts.get("cpu", DEFAULT_CPU), opts.get("timer", DEFAULT_TIMER)
        native.update({f"trap:{cpu}": survivor, f"irq:{timer}": survivor, f"priv:{survivor}": cpu})
        native = {f: n for f, n in native.items() if orch.routes.table.get(f) != n}
    if native:
        await orch.routes.change(native)
    report["routes"] = native
    # what was sent to the dead VMM and not acknowledged is given up by its senders (this change's, and
    # an interrupted choreography's that moved a flow away from it already): replayed to its next life it
    # is refused there while the flow's later messages reach the native receiver; moved to that receiver,
    # it may act twice (the VMM may have passed it on). Made up for below: a trap the CPU raises again, the
    # OS's resume settled, device commands re-issued and the console re-sent by the OS's drivers; a tick
    # or a datagram in flight is lost (docs/recovery.md). The VMM is not running yet: nothing of it
    # reached its next life before this
    report["abandoned"] = await _abandon_to(orch, VMM)
    for key, dev in sorted(st.devices.items()):
        if dev["os"] in orch.live_nodes():
            try:  # (a failure here must not take the orchestrator down: the OS's driver says why)
                await _call(orch, dev["os"], "os_driver_mode", {"device": dev["device"], "mode": "native"},
                            timeout=60.0)
            except FAILURES as exc:
                log.error("the %s driver of %s did not go native after the VMM died: %s", dev["device"],
                          dev["os"], exc)
                report.setdefault("errors", []).append(str(exc))
    served = {dev["os"] for dev in st.devices.values()} - {survivor}
    st.devices.clear()
    for os_name in sorted(served & set(orch.live_nodes())):  # (the survivor's drivers: with its CPU, below)
        try:
            done = await _call(orch, os_name, "peer_restarted", {"node": VMM, "kind": "vmm", "io": True})
            report.setdefault("io", {})[os_name] = done.get("io")
        except FAILURES as exc:
            log.error("%s did not make up for its I/O lost with the VMM: %s", os_name, exc)
            report.setdefault("errors", []).append(str(exc))
    if survivor is not None:
        report["native"] = survivor
        cpu = spec_of[survivor].options.get("cpu", DEFAULT_CPU)
        try:
            saved = await _call(orch, cpu, "cpu_save")
        except FAILURES:
            saved = {"cpu_state": "running"}
        # the VMM tagged this OS's asids with its asid base (0 for the first OS): natively they are its own,
        # and the stopped OS's translations carry the same untagged numbers: none may be hit again
        base = attached[survivor]["asid_base"]
        await _call(orch, cpu, "tlb_flush", {"ack": True})
        if isinstance(saved.get("asid"), int) and saved["asid"] >= base:
            saved["asid"] -= base
        notice = {"node": "vmm", "kind": "vmm", "cpu": saved}
        if "cpu_reset" in report:
            notice["context_lost"] = True
        done = await _call(orch, survivor, "peer_restarted", notice)
        report["cpu"], report["io"] = done.get("cpu"), {**report.get("io", {}), survivor: done.get("io")}
        if done.get("cpu") == "retrap":
            report["retrap"] = await _call(orch, cpu, "cpu_retrap", {"asid_base": base})
    st.attached.clear()
    if st.vmm_loaded and st.vmm_frames:
        host = st.vmm_host
        runs = to_runs(st.vmm_frames)
        memctl = spec_of[host].options.get("memctl", DEFAULT_MEMCTL) if host in spec_of else "memctl"
        await _call(orch, memctl, "mem_transfer", {"runs": runs, "from_owner": "vmm", "to_owner": host})
        if host in orch.live_nodes():  # else its next boot has them: they are in its partition again
            await _call(orch, host, "mod_add", {"runs": runs})
        report["frames_to_host"] = len(st.vmm_frames)
    st.vmm_loaded, st.vmm_host, st.vmm_frames = False, None, []
    orch.save_state()
    log.warning("the VMM died: emergency devirtualization: %s", report)
    orch.recovery_log.append(report)
    return report


async def restarts_done(orch: "Orchestrator", nodes: Iterable[str], timeout: float = RESTART_WAIT) -> None:
    """Wait, up to ``timeout``, until none of ``nodes`` is being restarted (crashed, or started and
    not ready yet): a route change names only running nodes, and one that misses it keeps the old routes."""
    sup = orch.supervisor.nodes
    with trio.move_on_after(timeout):
        while any(sup[n].state in ("crashed", "starting") for n in nodes if n in sup):
            await trio.sleep(0.05)


async def _abandon_to(orch: "Orchestrator", node: str) -> dict[str, dict[str, int]]:
    """Every running node gives up what it sent ``node`` and had not had acknowledged (``flow_abandon``)."""
    given_up: dict[str, dict[str, int]] = {}

    async def one(name: str) -> None:
        try:
            if data := await _call(orch, name, "flow_abandon", {"node": node}):
                given_up[name] = data
        except FAILURES as exc:  # dying itself: its next life sends nothing of this one's
            log.warning("%s did not give up its flows to the dead %s: %s", name, node, exc)

    async with trio.open_nursery() as nursery:
        for name in orch.live_nodes():
            if name != node:
                nursery.start_soon(one, name)
    return given_up


async def _stop_lost_os(orch: "Orchestrator", os_name: str, report: dict[str, Any]) -> None:
    """An OS whose CPU context died with the VMM: stop it; frames lent to it go home (zeroed)."""
    st = orch.virt
    await orch.stop_node(os_name)
    report["stopped"].append(os_name)
    memctl = orch.topology.nodes[os_name].options.get("memctl", DEFAULT_MEMCTL)
    loans = [ln for ln in st.loans if ln["to"] == os_name]
    owners = await _call(orch, memctl, "mem_owners") if loans else {}
    for loan in loans:
        lent = from_runs(loan["runs"])
        # each frame from where it is: the borrower, or the VMM, through which a return that the VMM's
        # death cut short was taking it (asked to pin them all, the borrower refused: bad_ownership)
        for holder in (os_name, VMM):
            held = sorted(set(owners.get(holder, ())).intersection(lent))
            if not held:
                continue
            runs = to_runs(held)
            if holder == os_name:
                await _call(orch, memctl, "mem_pin", {"runs": runs, "owner": os_name})
            await _call(orch, memctl, "mem_transfer", {"runs": runs, "from_owner": holder, "to_owner": loan["from"]})
            if loan["from"] in orch.live_nodes():
                await _call(orch, loan["from"], "mod_add", {"runs": runs})
        st.loans.remove(loan)
    st.attached.pop(os_name, None)
    for key in [k for k, d in st.devices.items() if d["os"] == os_name]:
        del st.devices[key]


async def cpu_lost(orch: "Orchestrator", cpu: str) -> dict[str, Any]:
    """The machine check of a dead CPU: drop its caches, have each OS stop what it lost.

    Returns:
        {"frames": frames whose newest bytes were lost, "killed": {os: [pid, ...]}}.
    """
    pages: dict[str, list[int]] = {}
    frames: list[int] = []
    for memctl in _running(orch, ("memctl",)):
        try:
            reply = await orch.party.request(memctl, "mem_drop_initiator", {"initiator": cpu},
                                             timeout=NOTICE_TIMEOUT)
        except FAILURES as exc:
            log.error("%s did not drop the caches of the dead %s: %s", memctl, cpu, exc)
            continue
        data = reply.body.get("data") or {}
        frames += data.get("frames", [])
        for space, gpns in (data.get("pages") or {}).items():
            pages.setdefault(space, []).extend(gpns)
    notice = {"node": cpu, "kind": "cpu", "lost": pages}
    # under the VMM first: it resets its virtual CPUs and says whose context was on the CPU (that
    # OS's current process lost its registers; the others' were saved in the VMM and live on)
    vmm: dict[str, Any] | None = None
    managed = [o for o in orch.virt.attached if orch.topology.nodes[o].options.get("cpu", DEFAULT_CPU) == cpu]
    for name in _running(orch, ("vmm",)) if managed else ():
        try:
            reply = await orch.party.request(name, "peer_restarted", notice, timeout=NOTICE_TIMEOUT)
            vmm = reply.body.get("data") or {}
        except FAILURES as exc:
            log.error("%s was not told that %s died: %s", name, cpu, exc)
    killed: dict[str, Any] = {}
    for os_name in _running(orch, ("os",)):
        body = dict(notice)
        if vmm is not None and os_name in managed:
            body["on_cpu"] = vmm.get("on_cpu") == os_name
        try:
            reply = await orch.party.request(os_name, "peer_restarted", body, timeout=NOTICE_TIMEOUT)
            killed[os_name] = (reply.body.get("data") or {}).get("killed", [])
        except FAILURES as exc:
            log.error("%s was not told that %s died: %s", os_name, cpu, exc)
    log.warning("%s died: %d frames lost their newest bytes; processes stopped: %s", cpu, len(frames), killed)
    report = {"node": cpu, "kind": "cpu", "lost_frames": len(frames), "killed": killed}
    if vmm is not None:
        report["vmm"] = vmm
    orch.recovery_log.append(report)
    return {"frames": frames, "killed": killed, **({"vmm": vmm} if vmm is not None else {})}


async def back(orch: "Orchestrator", np: NodeProc) -> None:
    """A restarted node is ready: its drivers (each OS, the VMM) reset it."""
    name = np.spec.name
    body = {"node": name, "kind": np.spec.kind}
    incarnation = orch.incarnations.get(name)
    if incarnation is not None:
        body["incarnation"] = incarnation
    for node in _running(orch, ("os", "vmm")):
        if node == name:
            continue
        try:
            await orch.party.request(node, "peer_restarted", body, timeout=NOTICE_TIMEOUT)
        except FAILURES as exc:
            log.warning("%s did not take the restart of %s: %s", node, name, exc)
