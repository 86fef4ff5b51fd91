"""Issue 15 on a running cluster: every message authenticated to its sender,
every request authorized by who owns what (protocol/auth.py, protocol/authz.py).

- The attack of the issue, played by a separate process
  (tests/fixtures/evil.py) against every node kind and the orchestrator: a
  made-up name, then a real node's name without its key, then replays of
  frames the nodes and the orchestrator really sent. Nothing is read,
  nothing changes, every attempt is dropped and counted, and the program
  that runs meanwhile prints exactly what it prints alone.
- The rules table as a matrix sent to the running receivers: a request of
  every probed kind, from a node of every kind (stopped topology nodes,
  whose keys the test holds, stand for a compromised node of that kind), an
  OS, and a client, to every running node and the orchestrator, is refused
  exactly when the table refuses it, and every refusal is counted.
- Two OS instances: os2 cannot read or write a byte of os1's frames, before,
  during and after a borrow and its return, whatever it sends; the lent
  frames reach it zeroed and the lender cannot reach them while they are
  lent.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest
import trio

import protocol.hw  # noqa: F401  (registers the kinds the probes send)
import protocol.vmm  # noqa: F401
import tests.fixtures.probeos  # noqa: F401  (registers probe_send)
from orchestrator.cli.demo import timeshare_output
from protocol import auth, authz
from protocol.errors import RemoteError, RequestTimeout
from protocol.messages import Message, encode
from protocol.transport import Party
from tests.integration.test_choreographies import SECRET, check_conservation, write_secret_everywhere
from tests.integration.test_choreographies import topology as two_os_topology

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "guest" / "build" / "samples"
PAGE = 4096
IDENTITY_KINDS = ("cpu", "memctl", "uart", "timer", "disk", "nic", "os", "vmm")


def security_topology() -> dict:
    """compose/demo.toml (every node kind), its OS instances able to send anything as
    themselves (tests/fixtures/probeos.py), and a stopped node of every kind whose keys
    stand for a compromised node of that kind."""
    data = tomllib.loads((REPO / "compose" / "demo.toml").read_text())
    for name in ("os1", "os2"):
        data["nodes"][name]["module"] = "tests.fixtures.probeos"
    for kind in IDENTITY_KINDS:
        data["nodes"][f"x_{kind}"] = {"kind": kind, "autostart": False, "restart": "never"}
    return data


async def ignore(msg: Message) -> None:
    return None


class Client:
    """The user's client: runs a program on os1 and hears its exit."""

    def __init__(self, orch, name: str = "secclient"):
        self.party = Party(name, f"ipc://{orch.run_dir}/{name}.sock", dict(orch.directory), advertise=True,
                           auth=auth.client_keyring(orch.run_dir, name))
        self.exits: dict[int, dict] = {}
        self.changed = trio.Event()

    async def handle(self, msg: Message) -> None:
        if msg.kind == "proc_exit":
            self.exits[msg.body["pid"]] = msg.body
            self.changed.set()
            self.changed = trio.Event()

    async def wait_exit(self, pid: int, timeout: float = 180) -> dict:
        with trio.fail_after(timeout):
            while pid not in self.exits:
                await self.changed.wait()
        return self.exits[pid]


async def auth_failed(orch, names: list[str]) -> dict[str, int]:
    out = {}
    for name in names:
        if name == "orch":
            out[name] = orch.party.counters["auth_failed"]
        else:
            out[name] = (await orch.request(name, "stats")).body["stats"]["auth_failed"]
    return out


def attacks(kind: str, evil_inbox: str) -> list[tuple[str, dict]]:
    """What the attacker asks a node of ``kind``: the issue's requests, and the like for each kind."""
    os1_page = 256 * PAGE
    per_kind = {
        "memctl": [("mem_read", {"space": "os1", "addr": os1_page, "length": PAGE}),
                   ("mem_write", {"space": "os1", "addr": os1_page, "data": b"pwned"}),
                   ("mem_transfer", {"frames": [300], "from_owner": "os1", "to_owner": "evil"}),
                   ("mem_owners", {})],
        "cpu": [("cpu_save", {}), ("cpu_resume", {"pc": 0x10000, "regs": [0] * 32}), ("cpu_halt", {})],
        "os": [("os_exec", {"elf": (BUILD / "hello.elf").read_bytes(), "argv": ["hello"]}),
               ("os_kill", {"pid": 1}), ("mod_alloc_pin", {"n": 4})],
        "uart": [("uart_write", {"data": b"pwned\n"}), ("uart_sync", {})],
        "timer": [("timer_set", {"period_ms": 1.0})],
        "disk": [("disk_write", {"id": 1, "block": 0, "count": 1, "space": "os1", "addr": os1_page})],
        "nic": [("nic_send", {"id": 1, "src_port": 7000, "dst_host": "127.0.0.1", "dst_port": 9, "data": b"x"})],
        "vmm": [("vmm_attach_os", {"os": "os1", "asid_base": 0}), ("vmm_status", {})],
        authz.ORCH: [("ctl_down", {}), ("ctl_status", {}),
                     ("ctl_request", {"node": "memctl", "kind": "mem_read",
                                      "body": {"space": "os1", "addr": os1_page, "length": PAGE}})],
    }
    return per_kind[kind] + [("stats", {}), ("shutdown", {}), ("route_install", {"epoch": 99, "routes": {}})]


def forged(identity: str, dst: str, kind: str, body: dict, seq: int, reply_to: str, key: bytes | None) -> str:
    frame = encode(Message(kind, identity, dst, seq, body, reply_to=reply_to))
    if key is not None:  # a real node's name, signed with a key that is not its own, from a far-off life
        ring = auth.Keyring(identity, {dst: key}, {})
        ring.incarnation = time.time_ns() + 10**15
        frame = ring.seal(dst, frame)
    return frame.hex()


async def test_a_foreign_process_a_stolen_name_and_a_replay_are_refused_by_every_node_and_counted(
        guest_build, cluster, tmp_path):
    orch = await cluster(security_topology())
    targets = [*sorted(orch.live_nodes()), "orch"]
    kinds = {n: s.kind for n, s in orch.topology.nodes.items()}
    assert {kinds[n] for n in targets if n != "orch"} >= {"memctl", "cpu", "uart", "timer", "disk", "nic", "os",
                                                          "vmm"}
    # what the orchestrator really sends and receives, to replay it
    sent: dict[str, list[bytes]] = {}
    received: list[list[bytes]] = []
    real_seal, real_recv = orch.party._seal, orch.party._recv_now

    def seal(msg: Message, frame: bytes) -> bytes:
        out = real_seal(msg, frame)
        sent.setdefault(msg.dst, []).append(out)
        return out

    def recv() -> list[bytes] | None:
        got = real_recv()
        if got is not None:
            received.append(got)
        return got

    orch.party._seal, orch.party._recv_now = seal, recv
    for name in targets[:-1]:
        await orch.request(name, "stats")  # delivered, so each is a frame seen already
    owners_before = (await orch.request("memctl", "mem_owners")).body["data"]
    pids = {n: orch.supervisor.nodes[n].pid for n in targets[:-1]}
    failed_before = await auth_failed(orch, targets)
    console = orch.run_dir / "uart0.console.log"
    console_before = console.read_bytes() if console.exists() else b""

    evil_inbox = f"ipc://{tmp_path}/evil.sock"
    plan: list[dict] = []
    expected: dict[str, int] = {t: 0 for t in targets}
    seq = 0
    for target in targets:
        endpoint = orch.directory[target]
        stolen = ["orch", "cpu0" if target == "os1" else "os1"] if target != "orch" else ["os1", "memctl"]
        for kind, body in attacks(authz.ORCH if target == "orch" else kinds[target], evil_inbox):
            for identity, key in (("evil", None), *((s, os.urandom(32)) for s in stolen)):
                seq += 1
                plan.append({"endpoint": endpoint, "identity": identity,
                             "frame": forged(identity, target, kind, body, seq, evil_inbox, key)})
                expected[target] += 1
        if target != "orch":  # replayed: what the orchestrator sent this node (seen already)
            for f in sent[target][:2]:
                plan.append({"endpoint": endpoint, "identity": "orch", "frame": f.hex()})
                expected[target] += 1
    # replayed to the orchestrator: what the nodes sent it; and one of them to memctl (another link)
    for ident, f in [d for d in received if len(d) == 2][:20]:
        plan.append({"endpoint": orch.directory["orch"], "identity": ident.split(b"#")[0].decode(), "frame": f.hex()})
        expected["orch"] += 1
    from_node = next(d for d in received if len(d) == 2 and not d[0].startswith(b"memctl#"))
    plan.append({"endpoint": orch.directory["memctl"], "identity": from_node[0].split(b"#")[0].decode(),
                 "frame": from_node[1].hex()})
    expected["memctl"] += 1

    client = Client(orch)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client.handle)
            body = {"elf": (BUILD / "timeshare.elf").read_bytes(), "argv": ["timeshare", "A", "6"], "notify": True}
            pid = (await client.party.request("os1", "os_exec", body, timeout=30)).body["data"]["pid"]
            # the attack, while the program runs: a process of its own
            proc = await trio.run_process([sys.executable, str(REPO / "tests" / "fixtures" / "evil.py"),
                                           evil_inbox, "3"], stdin=json.dumps(plan).encode(),
                                          capture_stdout=True, capture_stderr=True)
            result = json.loads(proc.stdout)
            exit_ = await client.wait_exit(pid)
            synced = (await client.party.request("uart0", "uart_sync")).body["data"]["logged"]
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()

    assert result == {"sent": len(plan), "received": []}  # nothing answered, nothing read
    with trio.fail_after(30):  # every attempt dropped and counted, at the node it was sent to
        while True:
            failed = await auth_failed(orch, targets)
            if all(failed[t] - failed_before[t] >= expected[t] for t in targets):
                break
            await trio.sleep(0.1)
    await trio.sleep(0.5)
    failed = await auth_failed(orch, targets)
    assert {t: failed[t] - failed_before[t] for t in targets} == expected
    # nothing changed: frames, routes, processes, the console; the program's output is exact
    assert (await orch.request("memctl", "mem_owners")).body["data"] == owners_before
    assert {n: orch.supervisor.nodes[n].pid for n in targets[:-1]} == pids
    assert all(orch.supervisor.nodes[n].restarts == 0 for n in targets[:-1])
    assert orch.state == "running"
    for name in targets[:-1]:
        stats = (await orch.request(name, "stats")).body["stats"]
        assert stats["epoch"] == orch.routes.table.epoch == 1, name
        assert stats["forbidden"] == 0, name  # nothing got as far as the rules
    log = console.read_bytes()[:synced]
    assert log.startswith(console_before) and b"pwned" not in log
    assert exit_["code"] == 0
    assert [ln for ln in log[len(console_before):].splitlines(keepends=True) if ln.startswith(b"A: ")] == \
        timeshare_output("A", 6).splitlines(keepends=True)
    cpu = (await orch.request("cpu0", "stats")).body["stats"]
    assert cpu["auth_failed"] == expected["cpu0"]


# ============================================================ the rules table, sent to the receivers

HUGE = 1 << 40
PROBES: list[tuple[str, dict, str | None]] = [
    # (kind, body, flow: "own" = the sender's own priv: flow) ; accepted bodies fail harmlessly
    ("mem_read", {"space": "os1", "addr": HUGE, "length": 1}, None),
    ("mem_read", {"space": "os2", "addr": HUGE, "length": 1}, None),
    ("mem_write", {"space": "os1", "addr": HUGE, "data": b"\0"}, None),
    ("mem_acquire", {"space": "os1", "gpn": 1 << 28, "write": False}, None),
    ("mem_owners", {}, None),
    ("mem_transfer", {"frames": [1 << 30], "from_owner": "os1", "to_owner": "os2"}, None),
    ("mem_set_identity", {"space": "nosuch"}, None),
    ("mem_pin", {"frames": [1 << 30], "owner": "os1"}, None),
    ("route_install", {"epoch": 0, "routes": {}}, None),
    ("shutdown", {}, None),
    ("cpu_save", {}, None),
    ("cpu_resume", {"pc": 0x10000, "regs": [0] * 32}, None),
    ("tlb_flush", {"asid": 4000, "ack": True}, "own"),
    ("os_kill", {"pid": 99999}, None),
    ("os_driver_mode", {"device": "nosuch", "mode": "native"}, None),
    ("vmm_detach_os", {"os": "nosuch"}, None),
    ("ctl_status", {}, None),
    ("disk_flush", {"id": 77}, None),
    ("uart_write", {"data": b"pwned\n"}, None),
    ("trap", {"cause": 8, "tval": 0, "pc": 0, "regs": [0] * 32, "asid": 0, "instret": 0}, None),
    ("mem_recall", {"frame": 1 << 30, "mode": "invalidate"}, None),
    ("timer_now", {}, None),
]
# kinds a receiver does not answer (or whose answer is not the point) when it takes them:
# sent only where the table refuses them
UNANSWERED = {"uart_write", "trap", "mem_recall", "tlb_flush"}


async def test_each_receiver_refuses_exactly_what_the_rules_table_refuses_and_counts_it(cluster):
    orch = await cluster(security_topology())
    kinds = {n: s.kind for n, s in orch.topology.nodes.items()}
    targets = [*sorted(orch.live_nodes()), "orch"]
    senders = [f"x_{k}" for k in IDENTITY_KINDS] + ["os2", "cli-matrix"]  # os2 is not booted: its keys are free
    assert not set(senders) & set(targets)

    def ctx(target: str) -> authz.Context:
        return authz.Context(target, orch.routes.table, kinds, "orch")

    before = {t: await forbidden(orch, t) for t in targets}
    refusals = {t: 0 for t in targets}
    mismatches: list[tuple] = []
    outcomes = {"answered": 0, "forbidden": 0, "unknown": 0, "silent": 0}

    async def play(sender: str) -> None:
        keys = (auth.client_keyring(orch.run_dir, sender) if sender.startswith("cli-") else
                auth.keyring_from_config(sender, orch._node_config(orch.topology.nodes[sender])["auth"]))
        endpoint = orch.directory.get(sender, f"ipc://{orch.run_dir}/{sender}.sock")
        party = Party(sender, endpoint, dict(orch.directory), advertise=sender not in orch.directory, auth=keys)
        unknown: dict[str, trio.Event] = {}

        async def complaints(msg: Message) -> None:
            # a kind the receiver's process does not know is refused before any rule (its
            # schema), with an unsolicited error: no request of that kind reaches it
            if msg.kind == "error" and msg.body.get("reason") == "unknown_kind" and msg.src in unknown:
                unknown[msg.src].set()

        async def ask(target: str, kind: str, body: dict, hdr: dict) -> str:
            outcome = "silent"
            unknown[target] = trio.Event()
            async with trio.open_nursery() as n:
                async def request():
                    nonlocal outcome
                    try:
                        await party.request(target, kind, body, timeout=20, **hdr)
                        outcome = "answered"
                    except RemoteError as exc:
                        outcome = "forbidden" if exc.reason == "forbidden" else "answered"
                        if exc.reason == "forbidden":
                            assert "refused by rule" in exc.detail
                    except RequestTimeout:
                        pass
                    n.cancel_scope.cancel()

                async def not_known():
                    nonlocal outcome
                    await unknown[target].wait()
                    outcome = "unknown"
                    n.cancel_scope.cancel()
                n.start_soon(request)
                n.start_soon(not_known)
            return outcome

        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(party.serve, complaints)
                for target in targets:
                    for kind, body, flow in PROBES:
                        flow = f"priv:{sender}" if flow == "own" else None
                        msg = Message(kind, sender, target, 0, body, flow=flow, fseq=1 if flow else None)
                        allowed = authz.allowed(msg, ctx(target))
                        if allowed and kind in UNANSWERED:
                            continue
                        outcome = await ask(target, kind, body, {"flow": flow, "fseq": 1} if flow else {})
                        outcomes[outcome] += 1
                        if outcome == "forbidden":
                            refusals[target] += 1
                        if outcome == "silent" or (outcome != "unknown" and (outcome == "forbidden") == allowed):
                            mismatches.append((sender, target, kind, allowed, outcome))
                nursery.cancel_scope.cancel()
        finally:
            party.close()

    async with trio.open_nursery() as nursery:
        for sender in senders:
            nursery.start_soon(play, sender)
    assert mismatches == []
    # the table refuses most of these (on the order of 1,700 of 2,200), and takes some from each
    assert outcomes["forbidden"] > outcomes["answered"] + outcomes["unknown"] and outcomes["answered"], outcomes
    assert {t: await forbidden(orch, t) - before[t] for t in targets} == refusals


async def forbidden(orch, name: str) -> int:
    if name == "orch":
        return (await orch.ctl_status())["orchestrator"]["forbidden"]
    return (await orch.request(name, "stats")).body["stats"]["forbidden"]


# ============================================================ two OS instances and a loan

async def probe(orch, os_name: str, dst: str, kind: str, body: dict, flow: str | None = None) -> dict:
    """What ``os_name`` gets when it sends ``kind`` to ``dst`` as itself (tests/fixtures/probeos.py)."""
    req = {"dst": dst, "kind": kind, "body": body, **({"flow": flow} if flow else {})}
    return (await orch.request(os_name, "probe_send", req, timeout=30)).body["data"]


async def refused_everything(orch, frames: list[int], lent: list[int] = ()) -> int:
    """os2 asks for each of os1's ``frames`` every way it can; all refused. Returns the refusals
    the rules table made (the controller's own ownership check makes the rest)."""
    n = 0
    for f in frames:
        addr = f * PAGE
        for kind, body in (("mem_read", {"space": "os1", "addr": addr, "length": PAGE}),
                           ("mem_write", {"space": "os1", "addr": addr, "data": b"os2 was here"}),
                           ("mem_acquire", {"space": "os1", "gpn": f, "write": True}),
                           ("mem_pin", {"frames": [f], "owner": "os1"}),
                           ("mem_transfer", {"frames": [f], "from_owner": "os1", "to_owner": "os2"}),
                           ("mem_set_map", {"space": "os2", "map": {str(f): f}}),
                           ("mem_create_space", {"space": "os2b", "frames": [f]})):
            got = await probe(orch, "os2", "memctl", kind, body)
            assert got.get("error") == "forbidden", (kind, f, got)
            n += 1
        # through its own space: not its frame
        for kind, body in (("mem_read", {"space": "os2", "addr": addr, "length": PAGE}),
                           ("mem_write", {"space": "os2", "addr": addr, "data": b"os2 was here"})):
            got = await probe(orch, "os2", "memctl", kind, body)
            assert got.get("error") == "mem_fault", (kind, f, got)
        # the CPU run in os1's space, on os2's own privileged flow
        got = await probe(orch, "os2", "cpu0", "cpu_resume", {"space": "os1", "pc": addr, "ack": True},
                          flow="priv:os2")
        assert got.get("error") == "forbidden", got
        n += 1
    return n


async def test_os2_reaches_no_byte_of_os1_before_during_and_after_a_loan(cluster):
    topo = two_os_topology()
    for name in ("os1", "os2"):
        topo["nodes"][name]["module"] = "tests.fixtures.probeos"
    orch = await cluster(topo)
    await orch.control("ctl_vmm_load", host="os1", frames=4)
    await write_secret_everywhere(orch, "os1")
    own = await check_conservation(orch)
    os1 = own["os1"]
    sample = [os1[0], os1[len(os1) // 2], os1[-1]]
    refusals = await refused_everything(orch, sample)

    report = (await orch.control("ctl_memory_borrow", from_os="os1", to_os="os2", frames=16))["reports"][0]
    assert report["outcome"] == "committed"
    lent = report["frames"]
    own = await check_conservation(orch)
    assert set(lent) <= set(own["os2"])
    for f in lent:
        # the borrower reads its new frame: zeroed, never the lender's secret
        got = await probe(orch, "os2", "memctl", "mem_read", {"space": "os2", "addr": f * PAGE, "length": PAGE})
        assert got["body"]["data"] == bytes(PAGE), f
        # the lender cannot reach it while it is lent, through its space or by naming os2's
        got = await probe(orch, "os1", "memctl", "mem_read", {"space": "os1", "addr": f * PAGE, "length": 8})
        assert got.get("error") == "mem_fault", got
        got = await probe(orch, "os1", "memctl", "mem_read", {"space": "os2", "addr": f * PAGE, "length": 8})
        assert got.get("error") == "forbidden", got
        refusals += 1
    still = [f for f in own["os1"] if f not in lent]
    refusals += await refused_everything(orch, [still[0], still[-1]])
    got = await probe(orch, "os2", "memctl", "mem_write", {"space": "os2", "addr": lent[0] * PAGE,
                                                          "data": b"os2's own secret"})
    assert got["kind"] == "ok"

    back = (await orch.control("ctl_memory_return", from_os="os1", to_os="os2"))["reports"]
    assert [r["outcome"] for r in back] == ["committed"]
    own = await check_conservation(orch)
    assert set(lent) <= set(own["os1"])
    refusals += await refused_everything(orch, lent[:3] + sample)
    for f in lent:  # home again, zeroed: nothing of os2 followed them
        got = await probe(orch, "os1", "memctl", "mem_read", {"space": "os1", "addr": f * PAGE, "length": PAGE})
        assert got["body"]["data"] == bytes(PAGE), f
    stats = (await orch.request("memctl", "stats")).body["stats"]
    cpu = (await orch.request("cpu0", "stats")).body["stats"]
    assert stats["forbidden"] + cpu["forbidden"] == refusals
    assert set(stats["forbidden_by"]) <= {"memory", "admin", "own_frames"}
    assert set(cpu["forbidden_by"]) == {"priv_route"}
    # the secret is still os1's, in a frame it kept, where it was written
    got = await probe(orch, "os1", "memctl", "mem_read", {"space": "os1", "addr": still[0] * PAGE,
                                                         "length": len(SECRET)})
    assert got["body"]["data"] == SECRET


# ============================================================ the run directory and another account

HWEMU = str(Path(sys.executable).parent / "hwemu")
NOBODY = 65534  # another local account


def test_hwemu_up_refuses_a_run_directory_open_to_other_accounts(tmp_path):
    rd = tmp_path / "open"
    rd.mkdir()
    rd.chmod(0o755)
    up = subprocess.run([HWEMU, "up", str(REPO / "compose" / "flip.toml"), "--detach", "--run-dir", str(rd)],
                        cwd=REPO, capture_output=True, timeout=60)
    assert up.returncode == 2
    err = up.stderr.decode()
    assert len(err.strip().splitlines()) == 1 and "is open to other accounts (mode 755)" in err and "chmod 700" in err
    assert sorted(p.name for p in rd.iterdir()) == []  # nothing started, nothing written


async def test_another_account_can_neither_control_nor_reach_the_cluster(cluster):
    parent = Path(tempfile.mkdtemp(prefix="hws"))
    try:
        parent.chmod(0o755)  # others may walk up to the run directory: only its own mode keeps them out
        orch = await cluster(REPO / "compose" / "flip.toml", run_dir=parent / "r")
        rd = orch.run_dir
        modes = {p.relative_to(rd).as_posix(): stat.S_IMODE(p.stat().st_mode)
                 for p in [rd, rd / "keys", *(rd / "keys").iterdir(), *(rd / "conf").glob("*.json")]}
        assert modes["."] == modes["keys"] == 0o700
        assert {m for p, m in modes.items() if p not in (".", "keys")} == {0o600}
        assert set(modes) >= {"keys/master.key", "keys/client.json", "conf/src.json"}
        if os.getuid() != 0:
            return  # another account is not ours to become: the modes above are what keeps it out
        # another account (nobody): it cannot list the run directory, read the client key the CLI
        # signs with, or reach a socket (connecting needs to enter the directory)
        before = orch.party.counters["auth_failed"]
        checks = {"ls": f"ls {rd}", "key": f"cat {rd}/keys/client.json", "config": f"cat {rd}/conf/src.json",
                  "socket": f"test -e {orch.directory['orch'][len('ipc://'):]}"}
        for what, cmd in checks.items():
            other = await trio.to_thread.run_sync(lambda cmd=cmd: subprocess.run(
                ["/bin/sh", "-c", cmd], user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", capture_output=True,
                timeout=60))
            assert other.returncode != 0 and other.stdout == b"", (what, other)
            if what != "socket":
                assert b"Permission denied" in other.stderr, (what, other)
        assert orch.party.counters["auth_failed"] == before and orch.state == "running"
        assert (await orch.request("sink_a", "ping")).kind == "pong"
    finally:
        shutil.rmtree(parent, ignore_errors=True)
