"""Fuzzing a live cluster's inboxes (issue 14, part 6; docs/reliability.md).

100,000 generated and mutated messages (``tests/fuzzing.py``: bodies drawn
from the schema with a field broken, broken headers, forged sources,
forged flow messages, garbage, and byte-level mutations of valid frames) go
into the inbox of every node kind of a running ``compose/io.toml`` cluster
with a VMM beside it, while a guest program runs on the OS. Then: no node
exited or was restarted, every well-formed request got its reply or a typed
``error`` (a reason), every node still answers, and the guest printed
exactly what it prints on a quiet machine. The decoder itself is checked
against the same schema-driven shapes with hypothesis.
"""

from __future__ import annotations

import os
import time
import tomllib

import pytest
import trio
import zmq
from hypothesis import given, settings

from orchestrator.topology import parse
from protocol.auth import client_keyring
from protocol.errors import ProtocolError
from protocol.messages import decode
from protocol.transport import Party
from tests.fuzzing import SAFE, Fuzzer, frame_strategy
from tests.integration.test_native import REPO, Client, elf_of, expected

TOTAL = int(os.environ.get("HWEMU_FUZZ_TOTAL", 100_000))  # more for a longer campaign (at least 100,000 here)
ANSWERED = {"ping": "pong", "stats": "stats_reply"}  # SAFE kinds answered otherwise than with ok


def topology():
    spec = tomllib.loads((REPO / "compose" / "io.toml").read_text())
    spec["nodes"]["vmm"] = {"kind": "vmm", "options": {"cpu": "cpu0", "memctl": "memctl", "timer": "timer0",
                                                       "slice_ticks": 5, "uarts": {"uart0": "os1"}}}
    return parse(spec, "fuzz")


@given(frame_strategy(valid=True))
@settings(max_examples=150, deadline=None)
def test_a_schema_valid_frame_decodes_to_its_kind(case):
    kind, frame = case
    assert decode(frame).kind == kind


@given(frame_strategy(valid=False))
@settings(max_examples=150, deadline=None)
def test_a_frame_with_a_broken_field_is_refused_with_a_reason(case):
    _, frame = case
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.reason in ("bad_field", "missing_field")


async def _fuzz(orch, party: Party, nodes: list[str], total: int, seed: int) -> tuple[list, Fuzzer]:
    """Send ``total`` fuzz frames round-robin to ``nodes``; the requests sent, each with its reply slot."""
    fz = Fuzzer(seed, party.name, party.endpoint, party.make)
    for node in nodes:  # a corpus to mutate: valid frames of every kind
        for kind in fz.kinds:
            fz.corpus.append(fz.valid_frame(kind, node))
    requests = []
    for i in range(total):
        dst = nodes[i % len(nodes)]
        frames, req = fz.next(dst)
        slot = party._expect(req, 60.0) if req is not None else None
        sock = party._peer(dst).sock
        while True:
            try:
                if isinstance(frames, list):
                    sock.send_multipart(frames, zmq.NOBLOCK)
                else:  # sealed with the user's client key: the fuzz reaches what is behind the MAC
                    sock.send(party._auth.seal(dst, frames), zmq.NOBLOCK)
                break
            except zmq.Again:
                await trio.sleep(0.005)
        if req is not None:
            requests.append((req, slot))
        if i % 64 == 0:
            await trio.sleep(0)  # the replies are read meanwhile
        if i % 2000 == 1999:  # bounded in flight: each node has its requests answered so far
            with trio.move_on_after(60):
                for _, s in requests[-200:]:
                    await s[0].wait()
            late = [(r.dst, r.kind, r.flow, r.seq, len(requests) - k) for k, (r, s) in enumerate(requests[-200:])
                    if not s[0].is_set()]
            assert not late, f"unanswered after 60 s: {late[:10]}"
    return requests, fz


@pytest.mark.integration
async def test_a_hundred_thousand_fuzzed_messages_crash_nothing_and_a_guest_finishes_exactly(guest_build, cluster):
    orch = await cluster(topology())
    nodes = sorted(orch.supervisor.nodes)
    assert {orch.supervisor.nodes[n].spec.kind for n in nodes} >= {"memctl", "cpu", "uart", "timer", "disk", "nic",
                                                                    "os", "vmm"}
    pids = {n: orch.supervisor.nodes[n].pid for n in nodes}
    client = Client(orch)
    fuzz = Party("fuzz", f"ipc://{orch.run_dir}/fuzz.sock", dict(orch.directory), advertise=True,
                 auth=client_keyring(orch.run_dir, "fuzz"))
    unsolicited = []

    async def handle(msg):
        unsolicited.append(msg.kind)  # the nodes' complaints about malformed frames (rate-limited)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.party.serve, client._handle)
            await nursery.start(fuzz.serve, handle)
            reply = await client.party.request("os1", "os_exec", {"elf": elf_of("primes"), "argv": ["primes"],
                                                                  "notify": True}, timeout=120)
            guest = reply.body["data"]["pid"]
            t0 = time.monotonic()
            requests, fz = await _fuzz(orch, fuzz, nodes, TOTAL, seed=6)
            print(f"fuzz: {TOTAL} messages sent in {time.monotonic() - t0:.1f} s")
            with trio.fail_after(120):
                for _, slot in requests:
                    await slot[0].wait()
            print(f"fuzz: requests answered at {time.monotonic() - t0:.1f} s")
            exits = await client.wait_exits({guest}, timeout=240)
            print(f"fuzz: guest done at {time.monotonic() - t0:.1f} s")
            logged = (await client.party.request("uart0", "uart_sync", timeout=30)).body["data"]["logged"]
            for node in nodes:  # every node still answers
                assert (await fuzz.request(node, "ping", timeout=30)).kind == "pong"
            nursery.cancel_scope.cancel()
    finally:
        client.party.close()
        fuzz.close()
    sent = sum(fz.counts.values()) - fz.counts["skipped"]
    assert sent + fz.counts["skipped"] == TOTAL and sent >= 0.99 * TOTAL, fz.counts
    # every well-formed request: its reply, or an error with a reason
    missing = [(r.dst, r.kind, r.seq) for r, s in requests if s[1] is None]
    assert not missing, f"{len(missing)} of {len(requests)} unanswered: {missing[:10]}"
    for req, slot in requests:
        reply = slot[1]
        if reply.kind == "error":
            assert reply.body["reason"] and reply.body["detail"], reply
            if req.flow is not None:
                assert reply.body["reason"] == "foreign_flow", (req, reply)
        else:
            assert req.flow is None and reply.kind == ANSWERED.get(req.kind, "ok"), (req, reply)
    assert len(requests) > 0.05 * TOTAL and fz.counts["mutated"] > 0.2 * TOTAL, fz.counts
    assert {r.kind for r, _ in requests} == set(SAFE)
    # nothing exited, nothing was restarted, and the guest ran as on a quiet machine
    for n in nodes:
        np = orch.supervisor.nodes[n]
        assert (np.pid, np.restarts, np.proc.returncode) == (pids[n], 0, None), n
    assert exits[guest]["code"] == 0, exits
    assert (orch.run_dir / "uart0.console.log").read_bytes()[:logged] == expected("primes")
    bad = 0
    for n in nodes:  # (an await inside sum()'s generator would make it an async generator)
        bad += (await orch.request(n, "stats")).body["stats"]["bad_in"]
    assert bad > 0.5 * TOTAL
