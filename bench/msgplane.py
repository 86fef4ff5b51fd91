"""Message-plane benchmark (issue #3): our transport against raw pyzmq, side by side, in one run.

Prints
- round trip: a raw pyzmq DEALER process against a raw ROUTER echo process
  vs our node-to-node request/reply (node ``src`` pings node ``echo``: two
  real `Node` processes), and beside it a client party inside the bench's
  own process, the alternative adapter design (a poller thread feeding a
  trio channel), and the floor: a bare trio loop on the same sockets (no
  framing, validation or dispatch), which no trio adapter can beat; and a
  second raw pair that polls (a non-blocking receive in a loop for the
  polling window, then a blocking poll), as our inbox does: raw pyzmq's
  blocking ``recv`` sleeps and wakes through the kernel, so against it alone
  ours would look faster than raw. ``latency_ratio_vs_fastest_raw`` divides
  ours by the faster of the two raw pairs in each turn;
- one-way throughput: a raw DEALER process → a raw ROUTER process vs a real
  node emitting on a flow to a real node (which decodes, validates and
  sequence-checks every message);
- the pause of a route change — the longest a sender was paused, on its own
  clock — while the flow streams at 20k msg/s, and with the flow idle; beside
  the changes, a raw pyzmq round trip between two processes every 5 ms (a
  change's floor: its drain is such a round trip between nodes).

Raw and ours take turns, so that a drift of the shared host's speed hits
both sides alike, in ABBA order: the round trips in 30 turns of 250 each
(both client processes kept running between turns), the throughput in 10
turns of 40,000 messages. Each ratio is the median of the turns' ratios
(ours ÷ the raw turn beside it); the figures in µs and msg/s pool them.

With ``--trace`` it then measures the cost of tracing (every node's event
ring on: each message sent and received, each flow delivery recorded): node
round trips and throughput with the rings on and off, taking turns in the
same ABBA order, and prints the ratios (on ÷ off).

With ``--mac`` it measures instead what the MAC of every frame costs
(protocol/auth.py): the same node-to-node round trips and throughput on two
clusters side by side, one signing and checking every frame and one
without, taking turns in ABBA order; and the cost of sealing and opening one
frame in this process. The streamer sends its flow in batches (one frame and
one MAC for a burst: docs/security.md) on both clusters alike; the share of
the flow that came in batches, and their mean size, are printed too.

With ``--transport tcp+curve`` it measures the plane across hosts instead
(docs/hosts.md): the echo cluster placed on two loopback hosts (``src`` on
127.0.0.1, ``echo`` and the sinks on 127.0.0.2), so every node-to-node message
travels over tcp with CURVE (and its MAC), against raw pyzmq processes over tcp
with CURVE using the same key pairs (``src``'s as client, ``echo``'s and
``sink_a``'s as servers), taking turns in ABBA order: round trip and one-way
throughput as ratios; beside the round trip, as over ipc, raw pyzmq polling as
our inbox does and the bare trio loop (the floor), both over tcp with CURVE.

    .venv/bin/python bench/msgplane.py [--json] [--quick] [--trace | --mac | --transport tcp+curve]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trio
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import nodes.streamer.node  # noqa: E402,F401  (registers datum/stream_start)
from bench.rawzmq import RAW_CLIENT, RAW_ECHO, RawClient, RawProbe, abba_first, python_script, stop  # noqa: E402
from bench.report import printed_as_json  # noqa: E402
from orchestrator.cluster import running  # noqa: E402
from orchestrator.topology import parse  # noqa: E402
from protocol import auth, curve  # noqa: E402
from protocol.transport import Party, spin_from_env  # noqa: E402

PAYLOAD = b"x" * 64


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


# -- raw pyzmq (see bench/rawzmq.py for the echo and the client) ----------------

RAW_SINK = """
import sys, zmq, time
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.setsockopt(zmq.RCVHWM, 20000); s.bind(sys.argv[1])
n = int(sys.argv[2])
print("ready", flush=True)
s.recv_multipart()
t = last = time.perf_counter(); count = 1
while count < n and s.poll(5000):  # a silent sender for 5 s ends the count
    ident, frame = s.recv_multipart()
    if frame == b"end":
        break
    count += 1
    last = time.perf_counter()
print((count - 1) / (last - t), flush=True)
"""

RAW_SENDER = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.setsockopt(zmq.SNDHWM, 20000); s.connect(sys.argv[1])
n = int(sys.argv[2]); frame = b"x" * 64
input()
for _ in range(n):
    s.send(frame)
s.send(b"end")
s.close(linger=-1)
"""


# The floor of any trio adapter: the same DEALER/ROUTER pair driven from trio
# as our transport drives it (a receive that finds nothing polls, yielding to
# trio each time, for the polling window, then sleeps on the FD), with no
# framing, validation or dispatch. What this loses to raw pyzmq is trio's and
# the host's, not ours: no node of ours can be faster.
TRIO_RECV = """
import sys, time, trio, zmq
def trio_recv(s, spin):
    fd, clock, again = s.getsockopt(zmq.FD), time.perf_counter, zmq.Again
    async def recv():
        end = clock() + spin
        while True:
            try:
                return s.recv(zmq.NOBLOCK)  # the first part (a message's parts arrive together)
            except again:
                pass
            if clock() < end:
                await trio.lowlevel.checkpoint()
            elif not s.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                await trio.lowlevel.wait_readable(fd)
    return recv
"""

TRIO_ECHO = TRIO_RECV + """
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(sys.argv[1])
recv = trio_recv(s, float(sys.argv[2]))
async def serve():
    while True:
        ident = await recv()
        frame = s.recv(zmq.NOBLOCK)
        if frame == b"quit":
            return
        s.send(ident, zmq.SNDMORE)
        s.send(frame)
print("ready", flush=True)
trio.run(serve)
"""

TRIO_CLIENT = TRIO_RECV + """
import json
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(sys.argv[1])
recv = trio_recv(s, float(sys.argv[2]))
frame, clock = b"x" * 64, time.perf_counter
async def batch(n, warmup):
    for _ in range(warmup):
        s.send(frame); await recv()
    out = []
    for _ in range(n):
        t = clock(); s.send(frame); await recv(); out.append(clock() - t)
    return out
for line in sys.stdin:  # as RAW_CLIENT: one batch a line, the socket kept between them
    print(json.dumps(trio.run(batch, *map(int, line.split()))), flush=True)
"""


# raw pyzmq without trio that receives as our inbox does: non-blocking
# receives in a loop for the polling window (HWEMU_SPIN_US), then a blocking
# poll; the same process layout as RAW_ECHO / RAW_CLIENT
RAW_POLL = """
import sys, time, zmq
def poll_recv(s, spin):
    clock, again, nb = time.perf_counter, zmq.Again, zmq.NOBLOCK
    def recv():
        end = clock() + spin
        while True:
            try:
                return s.recv_multipart(nb)
            except again:
                pass
            if clock() >= end:
                s.poll()
    return recv
"""

RAW_POLL_ECHO = RAW_POLL + """
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(sys.argv[1])
recv = poll_recv(s, float(sys.argv[2]))
print("ready", flush=True)
while True:
    ident, frame = recv()
    if frame == b"quit":
        break
    s.send_multipart([ident, frame])
"""

RAW_POLL_CLIENT = RAW_POLL + """
import json
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(sys.argv[1])
recv = poll_recv(s, float(sys.argv[2]))
frame, clock = b"x" * 64, time.perf_counter
for line in sys.stdin:
    n, warmup = map(int, line.split())
    for _ in range(warmup):
        s.send(frame); recv()
    out = []
    for _ in range(n):
        t = clock(); s.send(frame); recv(); out.append(clock() - t)
    print(json.dumps(out), flush=True)
"""


def raw_throughput(tmp: str, n: int, *, ep: str | None = None, prelude: str = "", sink_env: dict | None = None,
                   sender_env: dict | None = None) -> float:
    """One-way msg/s from a raw DEALER process to a raw ROUTER process (at ``ep``, by default an
    ipc socket in ``tmp``; ``prelude`` and the environments: CURVE for ``--transport tcp+curve``)."""
    ep = ep or f"ipc://{tmp}/raw-sink"
    sink = python_script(prelude + RAW_SINK, ep, str(n), stdout=subprocess.PIPE, env=sink_env)
    sender = None
    try:
        sink.stdout.readline()
        sender = python_script(prelude + RAW_SENDER, ep, str(n), stdin=subprocess.PIPE, env=sender_env)
        time.sleep(0.2)  # let the sender connect (and a CURVE handshake end) before the clock starts
        sender.stdin.write("\n")
        sender.stdin.flush()
        rate = float(sink.stdout.readline())
        sender.wait(timeout=60)
        return rate
    finally:
        stop(sender, sink)


# -- ours ---------------------------------------------------------------------------

class ThreadInboxParty(Party):
    """The alternative adapter: a thread owns the inbox socket, blocks in recv
    and hands frames to trio through a memory channel."""

    def __init__(self, *args, **kw):
        super().__init__(*args, spin=0, **kw)  # the socket is the thread's: no task of trio's may poll it

    async def serve(self, handler, *, task_status=trio.TASK_STATUS_IGNORED):
        send, self._chan = trio.open_memory_channel(10000)
        self._stash = None
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        sock = self._inbox

        def pump():
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            while not stop.is_set():
                if poller.poll(50):
                    frames = sock.recv_multipart()
                    try:
                        trio.from_thread.run(send.send, frames, trio_token=token)
                    except trio.RunFinishedError:
                        return

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        try:
            await super().serve(handler, task_status=task_status)
        finally:
            stop.set()
            thread.join()

    def _recv_now(self):
        if self._stash is not None:
            frames, self._stash = self._stash, None
            return frames
        try:
            return self._chan.receive_nowait()
        except trio.WouldBlock:
            return None

    async def _wait_inbox(self):
        self._stash = await self._chan.receive()


def echo_topology():
    def node(role):
        return {"kind": "streamer", "options": {"role": role}}
    return parse({"nodes": {"echo": node("sink"), "src": node("streamer"), "sink_a": node("sink"),
                            "sink_b": node("sink")},
                  "routes": {"data:src": "sink_a"}}, "bench")


async def our_rtt(orch, tmp: str, n: int, cls=Party) -> list[float]:
    directory = dict(orch.directory)
    me = cls("bench", f"ipc://{tmp}/bench-{cls.__name__}", directory,
             auth=auth.client_keyring(orch.run_dir, "bench"))
    # the node learns our endpoint from reply_to
    me._advertise = True
    out = []

    async def ignore(msg):
        return None

    async with trio.open_nursery() as nursery:
        await nursery.start(me.serve, ignore)
        for _ in range(200):
            await me.request("echo", "ping")
        for _ in range(n):
            t = time.perf_counter()
            await me.request("echo", "ping")
            out.append(time.perf_counter() - t)
        nursery.cancel_scope.cancel()
    me.close()
    return out


async def node_rtt(orch, n: int, warmup: int) -> list[float]:
    """Round trips between two node processes: ``src`` pings ``echo``."""
    reply = await orch.request("src", "ping_probe", {"peer": "echo", "count": n, "warmup": warmup}, timeout=120)
    return reply.body["data"]["rtt"]


async def turns(measure_raw, measure_ours, n: int) -> tuple[list, list]:
    """Raw and ours measured ``n`` times each, taking turns in ABBA order
    (:func:`rawzmq.abba_first`): each pair of turns, a fraction of a second
    apart, sees one state of the shared host. What each returned, in order."""
    raws, ours = [], []
    for i in range(n):
        if abba_first(i):
            raws.append(await measure_raw())
            ours.append(await measure_ours())
        else:
            ours.append(await measure_ours())
            raws.append(await measure_raw())
    return raws, ours


async def our_throughput(orch, n: int) -> float:
    """A real node emits n messages on a flow to a real node, which decodes,
    validates, sequence-checks and consumes each; timed until a route change
    has drained the receiver (so every message was consumed)."""
    t = time.perf_counter()
    await orch.request("src", "stream_start", {"count": n, "flow": "data:src"}, timeout=300)
    current = orch.routes.table.get("data:src")
    report = await orch.routes.change({"data:src": "sink_b" if current == "sink_a" else "sink_a"})
    elapsed = time.perf_counter() - t
    assert report.last["data:src"] >= n
    return n / elapsed


SLEEP = 0.005


async def route_pauses(orch, flips: int, rate: int, probe_ep: str) -> tuple[list[float], list[float]]:
    """The pauses of ``flips`` route changes of the flow while it streams at
    ``rate`` msg/s (0: idle), and beside them, on the same host, raw pyzmq
    round trips between two processes of their own, one every 5 ms: the
    floor of a change's drain, which is such a round trip between nodes."""
    pauses = []
    target = "sink_b"
    probe = RawProbe(probe_ep)
    try:
        async with trio.open_nursery() as nursery:
            if rate:
                async def stream():
                    await orch.request("src", "stream_start", {"count": 10**7, "flow": "data:src", "rate": rate},
                                       timeout=600)
                nursery.start_soon(stream)
                await trio.sleep(0.2)
            for _ in range(flips):
                report = await orch.routes.change({"data:src": target})
                pauses.append(report.pause_ms)
                target = "sink_a" if target == "sink_b" else "sink_b"
                await trio.sleep(SLEEP)
            if rate:
                await orch.request("src", "stream_stop")
        return pauses, await trio.to_thread.run_sync(probe.stop)
    finally:
        probe.close()


BENCH_NODES = ("echo", "src", "sink_a", "sink_b")


async def tracing(orch, on: bool) -> None:
    """Every node's trace ring on (a fresh one) or off."""
    for node in BENCH_NODES:
        await orch.request(node, "trace_start" if on else "trace_stop", {"size": 1 << 16} if on else {})


async def trace_cost(orch, n_rtt: int, n_tp: int, rtt_turns: int, tp_turns: int) -> dict:
    """Round trips and throughput with tracing off and on, taking turns:
    the per-turn ratios on ÷ off."""
    async def measured(fn, on: bool):
        await tracing(orch, on)
        try:
            return await fn()
        finally:
            if on:
                await tracing(orch, False)

    batch = n_rtt // rtt_turns
    rtt = functools.partial(node_rtt, orch, batch, 20)
    offs, ons = await turns(functools.partial(measured, rtt, False), functools.partial(measured, rtt, True),
                            rtt_turns)
    out = {"trace_rtt_ratio": [statistics.median(b) / statistics.median(a) for a, b in zip(offs, ons)],
           "trace_rtt_on": [t for b in ons for t in b], "trace_rtt_off": [t for a in offs for t in a]}
    tp = functools.partial(our_throughput, orch, n_tp // tp_turns)
    offs, ons = await turns(functools.partial(measured, tp, False), functools.partial(measured, tp, True), tp_turns)
    out["trace_tp_ratio"] = [b / a for a, b in zip(offs, ons)]
    return out


async def bench(tmp: str, n_rtt: int, n_tp: int, flips: int, rtt_turns: int, tp_turns: int,
                trace: bool = False) -> dict:
    """Every figure on one cluster, raw and ours taking turns (a drift of the
    shared host's speed hits both sides alike)."""
    res = {k: [] for k in ("raw_rtt", "rtt", "floor_rtt", "poll_rtt", "rtt_client", "rtt_thread", "raw_tp", "tp",
                           "lat_ratio", "fastest_ratio", "floor_ratio", "tp_ratio")}
    echo_ep, floor_ep, poll_ep = f"ipc://{tmp}/raw-echo", f"ipc://{tmp}/trio-echo", f"ipc://{tmp}/raw-poll-echo"
    spin = str(spin_from_env())
    echoes, clients = [], []  # raw pyzmq's, the floor's, then raw pyzmq polling
    try:
        echoes.append(python_script(RAW_ECHO, echo_ep, stdout=subprocess.PIPE))
        echoes.append(python_script(TRIO_ECHO, floor_ep, spin, stdout=subprocess.PIPE))
        echoes.append(python_script(RAW_POLL_ECHO, poll_ep, spin, stdout=subprocess.PIPE))
        for echo in echoes:
            echo.stdout.readline()
        clients.append(RawClient(echo_ep))
        clients.append(RawClient(floor_ep, TRIO_CLIENT, spin))
        clients.append(RawClient(poll_ep, RAW_POLL_CLIENT, spin))
        async with running(echo_topology(), Path(tmp) / "cl") as orch:
            await node_rtt(orch, 10, 200)  # every side warm before the first turn
            for client in clients:
                await trio.to_thread.run_sync(client.rtt, 10, 200)
            # round trips: turns of n_rtt // rtt_turns, each after a short warm-up;
            # the floor's batch follows raw's in each turn
            batch = n_rtt // rtt_turns

            async def raw_and_floor():
                return [await trio.to_thread.run_sync(c.rtt, batch, 20) for c in clients]

            raws, ours = await turns(raw_and_floor, functools.partial(node_rtt, orch, batch, 20), rtt_turns)
            res["raw_rtt"] = [t for r, _, _ in raws for t in r]
            res["floor_rtt"] = [t for _, f, _ in raws for t in f]
            res["poll_rtt"] = [t for _, _, p in raws for t in p]
            res["rtt"] = [t for o in ours for t in o]
            res["lat_ratio"] = [statistics.median(o) / statistics.median(r) for (r, _, _), o in zip(raws, ours)]
            res["fastest_ratio"] = [statistics.median(o) / min(statistics.median(r), statistics.median(p))
                                    for (r, _, p), o in zip(raws, ours)]
            res["floor_ratio"] = [statistics.median(f) / statistics.median(r) for r, f, _ in raws]
            for _ in range(5):
                res["rtt_client"] += await our_rtt(orch, tmp, n_rtt // 5)
                res["rtt_thread"] += await our_rtt(orch, tmp, n_rtt // 5, ThreadInboxParty)
            batch = n_tp // tp_turns
            raw_tp = functools.partial(trio.to_thread.run_sync, raw_throughput, tmp, batch)
            res["raw_tp"], res["tp"] = await turns(raw_tp, functools.partial(our_throughput, orch, batch), tp_turns)
            res["tp_ratio"] = [o / r for r, o in zip(res["raw_tp"], res["tp"])]
            # the flow has history now: each change drains its old receiver, idle or not
            res["pause_load"], res["probe_load"] = await route_pauses(orch, flips, 20000, f"ipc://{tmp}/probe-load")
            res["pause_idle"], res["probe_idle"] = await route_pauses(orch, flips, 0, f"ipc://{tmp}/probe-idle")
            if trace:
                res.update(await trace_cost(orch, n_rtt, n_tp, rtt_turns, tp_turns))
    finally:
        for client in clients:
            client.close()
        stop(*echoes)
    return res


async def mac_turns(tmp: str, n_rtt: int, n_tp: int, rtt_turns: int, tp_turns: int) -> dict:
    """Round trips and throughput on a cluster that signs every frame and on one that does not,
    up side by side, taking turns in ABBA order."""
    res: dict = {}
    async with running(echo_topology(), Path(tmp) / "plain", sign=False) as plain, \
            running(echo_topology(), Path(tmp) / "signed") as signed:
        for orch in (plain, signed):
            await node_rtt(orch, 10, 200)
        batch = n_rtt // rtt_turns
        res["rtt_plain"], res["rtt_mac"] = await turns(functools.partial(node_rtt, plain, batch, 20),
                                                       functools.partial(node_rtt, signed, batch, 20), rtt_turns)
        batch = n_tp // tp_turns
        res["tp_plain"], res["tp_mac"] = await turns(functools.partial(our_throughput, plain, batch),
                                                     functools.partial(our_throughput, signed, batch), tp_turns)
        res["rtt"], res["tp"] = (res["rtt_plain"], res["rtt_mac"]), (res["tp_plain"], res["tp_mac"])
        stats = (await signed.request("sink_a", "stats")).body["stats"]
        res["auth_failed"] = stats["auth_failed"]
        res["batches"] = [(await orch.request(sink, "stats")).body["stats"] for orch in (plain, signed)
                          for sink in ("sink_a", "sink_b")]
    return res


def seal_open_us(size: int, n: int = 20000) -> tuple[float, float]:
    """µs to seal and to open one frame of ``size`` bytes (protocol/auth.py), in this process."""
    key = b"k" * 32
    a = auth.Keyring("a", {"b": key}, {})
    b = auth.Keyring("b", {}, {"a": key})
    frame = b"x" * size
    sealed = [a.seal("b", frame) for _ in range(n)]
    t = time.perf_counter()
    for _ in range(n):
        a.seal("b", frame)
    t_seal = (time.perf_counter() - t) / n
    t = time.perf_counter()
    for f in sealed:
        b.open("a", f)
    return round(t_seal * 1e6, 2), round((time.perf_counter() - t) / n * 1e6, 2)


# raw pyzmq with CURVE: every socket the script makes takes the key pair (and the
# server's key, or the server role) that HWB_CURVE gives, before its bind or connect
CURVE_PRELUDE = """
import json, os, zmq
_c = json.loads(os.environ["HWB_CURVE"])
_socket = zmq.Context.socket
def _curved(self, kind, **kw):
    s = _socket(self, kind, **kw)
    s.curve_publickey, s.curve_secretkey = _c["public"].encode(), _c["secret"].encode()
    if _c.get("serverkey"):
        s.curve_serverkey = _c["serverkey"].encode()
    else:
        s.curve_server = True
    return s
zmq.Context.socket = _curved
"""


def curve_env(ident: curve.CurveIdentity, server: curve.CurveIdentity | None = None) -> dict:
    """The environment of a raw process with ``ident``'s keys (a client of ``server``, else a server)."""
    keys = {"public": ident.public.decode(), "secret": ident.secret.decode()}
    if server is not None:
        keys["serverkey"] = server.public.decode()
    return {**os.environ, "HWB_CURVE": json.dumps(keys)}


class CurveRawClient(RawClient):
    """:class:`RawClient` over tcp with CURVE (``script``: raw pyzmq's client by default, with
    :data:`CURVE_PRELUDE` before it)."""

    def __init__(self, ep: str, env: dict, script: str = CURVE_PRELUDE + RAW_CLIENT, *args: str):
        self.proc = python_script(script, ep, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)


def placed_echo_topology(base: int):
    """:func:`echo_topology` on two loopback hosts: ``src`` (and the orchestrator) on a, the rest on b."""
    def node(role, host):
        return {"kind": "streamer", "options": {"role": role}, "host": host}
    return parse({"hosts": {"a": {"address": "127.0.0.1", "port_base": base},
                            "b": {"address": "127.0.0.2", "port_base": base}},
                  "nodes": {"echo": node("sink", "b"), "src": node("streamer", "a"), "sink_a": node("sink", "b"),
                            "sink_b": node("sink", "b")},
                  "routes": {"data:src": "sink_a"}}, "bench")


def free_port(addr: str) -> int:
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]


async def curve_turns(tmp: str, n_rtt: int, n_tp: int, rtt_turns: int, tp_turns: int) -> dict:
    res: dict = {}
    base = free_port("127.0.0.2") // 10 * 10
    base = base - 10 if base + 6 > 65535 else base
    spin = str(spin_from_env())
    async with running(placed_echo_topology(base), Path(tmp) / "cl") as orch, \
            running(echo_topology(), Path(tmp) / "one") as one:
        ids = {n: curve.load_identity(orch.run_dir, n) for n in ("src", "echo", "sink_a")}
        server, client_env = curve_env(ids["echo"]), curve_env(ids["src"], ids["echo"])
        # over tcp+CURVE with the same keys: raw pyzmq blocking in recv, the bare trio loop (the floor
        # of any trio adapter) and raw pyzmq polling as our inbox does, each an echo and a client process
        pairs = ((RAW_ECHO, RAW_CLIENT, ()), (TRIO_ECHO, TRIO_CLIENT, (spin,)),
                 (RAW_POLL_ECHO, RAW_POLL_CLIENT, (spin,)))
        echoes, clients = [], []
        try:
            for echo_script, client_script, args in pairs:
                ep = f"tcp://127.0.0.2:{free_port('127.0.0.2')}"
                echoes.append(python_script(CURVE_PRELUDE + echo_script, ep, *args, stdout=subprocess.PIPE,
                                            env=server))
                echoes[-1].stdout.readline()
                clients.append(CurveRawClient(ep, client_env, CURVE_PRELUDE + client_script, *args))
            await node_rtt(orch, 10, 200)
            await node_rtt(one, 10, 200)
            for client in clients:
                await trio.to_thread.run_sync(client.rtt, 10, 200)
            batch = n_rtt // rtt_turns

            async def raws():
                return [await trio.to_thread.run_sync(c.rtt, batch, 20) for c in clients]

            async def ours_both():  # across hosts, then the same cluster on one host (ipc) beside it
                return await node_rtt(orch, batch, 20), await node_rtt(one, batch, 20)

            raw_turns, both = await turns(raws, ours_both, rtt_turns)
            res["rtt_raw"], res["rtt_floor"], res["rtt_poll"] = ([r[i] for r in raw_turns] for i in range(3))
            res["rtt_ours"], res["rtt_ipc"] = [b[0] for b in both], [b[1] for b in both]
            batch = n_tp // tp_turns
            sink_ep = f"tcp://127.0.0.2:{free_port('127.0.0.2')}"
            raw_tp = functools.partial(trio.to_thread.run_sync, functools.partial(
                raw_throughput, tmp, batch, ep=sink_ep, prelude=CURVE_PRELUDE, sink_env=curve_env(ids["sink_a"]),
                sender_env=curve_env(ids["src"], ids["sink_a"])))
            async def tp_both():  # across hosts, then on one host (ipc) beside it
                return await our_throughput(orch, batch), await our_throughput(one, batch)

            res["tp_raw"], both = await turns(raw_tp, tp_both, tp_turns)
            res["tp_ours"], res["tp_ipc"] = [b[0] for b in both], [b[1] for b in both]
            res["rtt"], res["tp"] = (res["rtt_raw"], res["rtt_ours"]), (res["tp_raw"], res["tp_ours"])
            stats = {n: (await orch.request(n, "stats")).body["stats"] for n in ("echo", "sink_a")}
            res["refused"] = sum(s.get("wrong_key", 0) + s.get("curve_refused", 0) for s in stats.values())
            res["endpoints"] = {n: orch.directory[n] for n in ("src", "echo", "sink_a")}
        finally:
            for client in clients:
                client.close()
            stop(*echoes)
    return res


def side_by_side(args, measure) -> tuple[dict, list[float], list[float]]:
    """``measure(tmp, n_rtt, n_tp, rtt_turns, tp_turns)`` run with this run's sizes; its
    result with the per-turn ratios of its second side to its first (round trip, throughput)."""
    n_rtt, n_tp, rtt_turns, tp_turns = (400, 20000, 4, 2) if args.quick else (6000, 200000, 30, 10)
    with tempfile.TemporaryDirectory(prefix="hwb") as tmp:
        r = trio.run(measure, tmp, n_rtt, n_tp, rtt_turns, tp_turns)
    (rtt_a, rtt_b), (tp_a, tp_b) = r["rtt"], r["tp"]
    return (r, [statistics.median(b) / statistics.median(a) for a, b in zip(rtt_a, rtt_b)],
            [b / a for a, b in zip(tp_a, tp_b)])


def pooled(turns: list[list[float]]) -> list[float]:
    return [t for turn in turns for t in turn]


def curve_main(args) -> None:
    r, lat, tp = side_by_side(args, curve_turns)
    result = {
        "transport": "tcp+curve", "endpoints": r["endpoints"],
        "raw_rtt_p50_us": round(statistics.median(pooled(r["rtt_raw"])) * 1e6, 1),
        "our_rtt_p50_us": round(statistics.median(pooled(r["rtt_ours"])) * 1e6, 1),
        "latency_ratio": round(statistics.median(lat), 3), "latency_ratios": [round(x, 3) for x in lat],
        "poll_rtt_p50_us": round(statistics.median(pooled(r["rtt_poll"])) * 1e6, 1),
        "floor_rtt_p50_us": round(statistics.median(pooled(r["rtt_floor"])) * 1e6, 1),
        "latency_ratio_vs_fastest_raw": round(statistics.median(
            [statistics.median(o) / min(statistics.median(a), statistics.median(b))
             for o, a, b in zip(r["rtt_ours"], r["rtt_raw"], r["rtt_poll"])]), 3),
        "floor_ratio_vs_fastest_raw": round(statistics.median(
            [statistics.median(f) / min(statistics.median(a), statistics.median(b))
             for f, a, b in zip(r["rtt_floor"], r["rtt_raw"], r["rtt_poll"])]), 3),
        "ipc_rtt_p50_us": round(statistics.median(pooled(r["rtt_ipc"])) * 1e6, 1),
        "tcp_curve_over_ipc_ratio": round(statistics.median(
            [statistics.median(t) / statistics.median(i) for t, i in zip(r["rtt_ours"], r["rtt_ipc"])]), 3),
        "raw_msgs_per_s": round(statistics.median(r["tp_raw"])),
        "our_msgs_per_s": round(statistics.median(r["tp_ours"])),
        "throughput_ratio": round(statistics.median(tp), 3), "throughput_ratios": [round(x, 3) for x in tp],
        "ipc_msgs_per_s": round(statistics.median(r["tp_ipc"])),
        "tcp_curve_over_ipc_throughput_ratio": round(statistics.median(
            [t / i for t, i in zip(r["tp_ours"], r["tp_ipc"])]), 3),
        "refused": r["refused"],
    }
    if printed_as_json(result, args):
        return
    print(f"tcp + CURVE across two loopback hosts: {result['endpoints']}")
    print(f"{'':34}{'raw pyzmq':>12}{'hwemu':>12}{'ratio':>8}   (target)")
    print(f"{'round trip p50, node to node (µs)':34}{result['raw_rtt_p50_us']:>12}{result['our_rtt_p50_us']:>12}"
          f"{result['latency_ratio']:>8}   (≤ 1.3)")
    print(f"{'  raw pyzmq polling as we do (µs)':34}{result['poll_rtt_p50_us']:>12}{'':12}"
          f"{result['latency_ratio_vs_fastest_raw']:>8}   (ours ÷ the faster raw)")
    print(f"{'  the floor: bare trio loop (µs)':34}{result['floor_rtt_p50_us']:>12}{'':12}"
          f"{result['floor_ratio_vs_fastest_raw']:>8}   (floor ÷ the faster raw)")
    print(f"{'one-way throughput (msg/s)':34}{result['raw_msgs_per_s']:>12}{result['our_msgs_per_s']:>12}"
          f"{result['throughput_ratio']:>8}   (≥ 0.7)")
    print(f"ratio per turn: round trip {result['latency_ratios']}, throughput {result['throughput_ratios']}")
    print(f"beside it, the same cluster on one host (ipc): round trip p50 {result['ipc_rtt_p50_us']} µs; "
          f"tcp+CURVE ÷ ipc {result['tcp_curve_over_ipc_ratio']}; throughput {result['ipc_msgs_per_s']} msg/s, "
          f"tcp+CURVE ÷ ipc {result['tcp_curve_over_ipc_throughput_ratio']}")


def mac_main(args) -> None:
    r, lat, tp = side_by_side(args, mac_turns)
    (seal64, open64), (seal4k, open4k) = seal_open_us(100), seal_open_us(4096 + 100)
    result = {
        "rtt_p50_us_plain": round(statistics.median(pooled(r["rtt_plain"])) * 1e6, 1),
        "rtt_p50_us_mac": round(statistics.median(pooled(r["rtt_mac"])) * 1e6, 1),
        "rtt_ratio": round(statistics.median(lat), 3), "rtt_ratios": [round(x, 3) for x in lat],
        "msgs_per_s_plain": round(statistics.median(r["tp_plain"])),
        "msgs_per_s_mac": round(statistics.median(r["tp_mac"])),
        "throughput_ratio": round(statistics.median(tp), 3), "throughput_ratios": [round(x, 3) for x in tp],
        "seal_us_100B": seal64, "open_us_100B": open64, "seal_us_4KiB": seal4k, "open_us_4KiB": open4k,
        "auth_failed": r["auth_failed"],
        # of the flow's messages, how many came in batches (a burst under one MAC), and how many in each
        "batched_share": round(sum(b["batched_in"] for b in r["batches"]) / sum(b["msgs_in"] for b in r["batches"]), 3),
        "msgs_per_batch": round(sum(b["batched_in"] for b in r["batches"]) / max(1, sum(b["batches_in"]
                                                                                      for b in r["batches"])), 1),
    }
    if printed_as_json(result, args):
        return
    print(f"{'':34}{'no MAC':>12}{'MAC':>12}{'ratio':>8}   (target)")
    print(f"{'round trip p50, node to node (µs)':34}{result['rtt_p50_us_plain']:>12}{result['rtt_p50_us_mac']:>12}"
          f"{result['rtt_ratio']:>8}   (≤ 1.10)")
    print(f"{'one-way throughput (msg/s)':34}{result['msgs_per_s_plain']:>12}{result['msgs_per_s_mac']:>12}"
          f"{result['throughput_ratio']:>8}   (≥ 0.90)")
    print(f"one frame: seal {seal64} µs / open {open64} µs (100 B), seal {seal4k} / open {open4k} µs (4 KiB page)")
    print(f"ratio per turn: round trip {result['rtt_ratios']}, throughput {result['throughput_ratios']}")
    print(f"the flow's messages that came in batches: {result['batched_share']:.0%}, "
          f"{result['msgs_per_batch']} a batch")


def main() -> None:
    # SIGTERM unwinds like Ctrl-C, so the clusters this script started are stopped
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    ap.add_argument("--trace", action="store_true", help="also measure the cost of tracing (rings on ÷ off)")
    ap.add_argument("--mac", action="store_true", help="measure the cost of the MACs instead (signed vs unsigned)")
    ap.add_argument("--transport", choices=("ipc", "tcp+curve"), default="ipc",
                    help="tcp+curve: the plane across two loopback hosts vs raw pyzmq over tcp with CURVE")
    args = ap.parse_args()
    if args.transport == "tcp+curve":
        curve_main(args)
        return
    if args.mac:
        mac_main(args)
        return
    n_rtt, n_tp, flips, rtt_turns, tp_turns = (500, 20000, 50, 2, 2) if args.quick else (7500, 400000, 300, 30, 10)
    with tempfile.TemporaryDirectory(prefix="hwb") as tmp:
        ours = trio.run(bench, tmp, n_rtt, n_tp, flips, rtt_turns, tp_turns, args.trace)
    raw = ours["raw_rtt"]
    raw_tp, our_tp = statistics.median(ours["raw_tp"]), statistics.median(ours["tp"])
    def us(v):
        return round(v * 1e6, 1)
    result = {
        "raw_rtt_p50_us": us(statistics.median(raw)), "raw_rtt_p99_us": us(pct(raw, 99)),
        "our_rtt_p50_us": us(statistics.median(ours["rtt"])), "our_rtt_p99_us": us(pct(ours["rtt"], 99)),
        "thread_rtt_p50_us": us(statistics.median(ours["rtt_thread"])),
        "thread_rtt_p99_us": us(pct(ours["rtt_thread"], 99)),
        "client_rtt_p50_us": us(statistics.median(ours["rtt_client"])),
        "latency_ratio": round(statistics.median(ours["lat_ratio"]), 3),
        "latency_ratios": [round(r, 3) for r in ours["lat_ratio"]],
        "raw_poll_rtt_p50_us": us(statistics.median(ours["poll_rtt"])),
        "raw_poll_rtt_p99_us": us(pct(ours["poll_rtt"], 99)),
        "latency_ratio_vs_fastest_raw": round(statistics.median(ours["fastest_ratio"]), 3),
        "latency_ratios_vs_fastest_raw": [round(r, 3) for r in ours["fastest_ratio"]],
        "thread_latency_ratio": round(statistics.median(ours["rtt_thread"]) / statistics.median(raw), 3),
        "floor_rtt_p50_us": us(statistics.median(ours["floor_rtt"])),
        "floor_latency_ratio": round(statistics.median(ours["floor_ratio"]), 3),
        "floor_latency_ratios": [round(r, 3) for r in ours["floor_ratio"]],
        "raw_msgs_per_s": round(raw_tp), "our_msgs_per_s": round(our_tp),
        "throughput_ratio": round(statistics.median(ours["tp_ratio"]), 3),
        "throughput_ratios": [round(r, 3) for r in ours["tp_ratio"]],
        "route_pause_p50_ms": round(statistics.median(ours["pause_load"]), 3),
        "route_pause_p99_ms": round(pct(ours["pause_load"], 99), 3),
        "route_pause_idle_p50_ms": round(statistics.median(ours["pause_idle"]), 3),
        "route_pause_idle_p99_ms": round(pct(ours["pause_idle"], 99), 3),
        "raw_rtt_beside_load_p50_ms": round(statistics.median(ours["probe_load"]) * 1e3, 3),
        "raw_rtt_beside_load_p99_ms": round(pct(ours["probe_load"], 99) * 1e3, 3),
        "raw_rtt_beside_idle_p50_ms": round(statistics.median(ours["probe_idle"]) * 1e3, 3),
        "raw_rtt_beside_idle_p99_ms": round(pct(ours["probe_idle"], 99) * 1e3, 3),
    }
    if args.trace:
        result.update({
            "trace_off_rtt_p50_us": us(statistics.median(ours["trace_rtt_off"])),
            "trace_on_rtt_p50_us": us(statistics.median(ours["trace_rtt_on"])),
            "trace_latency_ratio": round(statistics.median(ours["trace_rtt_ratio"]), 3),
            "trace_latency_ratios": [round(r, 3) for r in ours["trace_rtt_ratio"]],
            "trace_throughput_ratio": round(statistics.median(ours["trace_tp_ratio"]), 3),
            "trace_throughput_ratios": [round(r, 3) for r in ours["trace_tp_ratio"]],
        })
    if printed_as_json(result, args):
        return
    rows = [
        ("round trip p50 (µs)", result["raw_rtt_p50_us"], result["our_rtt_p50_us"], result["latency_ratio"]),
        ("round trip p99 (µs)", result["raw_rtt_p99_us"], result["our_rtt_p99_us"], ""),
        ("  raw polling pair p50 (µs)", result["raw_poll_rtt_p50_us"], result["our_rtt_p50_us"],
         round(result["our_rtt_p50_us"] / result["raw_poll_rtt_p50_us"], 3)),
        ("  vs the faster raw, per turn", "", "", result["latency_ratio_vs_fastest_raw"]),
        ("  a client in the bench p50 (µs)", result["raw_rtt_p50_us"], result["client_rtt_p50_us"],
         round(result["client_rtt_p50_us"] / result["raw_rtt_p50_us"], 3)),
        ("  alt: poller thread p50 (µs)", result["raw_rtt_p50_us"], result["thread_rtt_p50_us"],
         result["thread_latency_ratio"]),
        ("  floor: bare trio loop p50 (µs)", result["raw_rtt_p50_us"], result["floor_rtt_p50_us"],
         result["floor_latency_ratio"]),
        ("one-way throughput (msg/s)", result["raw_msgs_per_s"], result["our_msgs_per_s"], result["throughput_ratio"]),
    ]
    print(f"{'':32}{'raw pyzmq':>12}{'hwemu':>12}{'ratio':>8}")
    for name, a, b, r in rows:
        print(f"{name:32}{a:>12}{b:>12}{r:>8}")
    print(f"route change pause, flow at 20k msg/s: p50 {result['route_pause_p50_ms']} ms, "
          f"p99 {result['route_pause_p99_ms']} ms")
    print(f"route change pause, flow idle:        p50 {result['route_pause_idle_p50_ms']} ms, "
          f"p99 {result['route_pause_idle_p99_ms']} ms")
    print(f"  beside them, a raw pyzmq round trip between two processes every 5 ms: at 20k msg/s p50 "
          f"{result['raw_rtt_beside_load_p50_ms']} / p99 {result['raw_rtt_beside_load_p99_ms']} ms, idle "
          f"{result['raw_rtt_beside_idle_p50_ms']} / {result['raw_rtt_beside_idle_p99_ms']} ms")
    print(f"ratio per turn: round trip {result['latency_ratios']}, throughput {result['throughput_ratios']}")
    print(f"floor ratio per turn: {result['floor_latency_ratios']}")
    print(f"ratio to the faster raw pair (blocking or polling) per turn: {result['latency_ratios_vs_fastest_raw']} "
          f"(target ≤ 1.3)")
    if args.trace:
        print(f"tracing on ÷ off: round trip p50 {result['trace_on_rtt_p50_us']} / {result['trace_off_rtt_p50_us']} µs "
              f"= {result['trace_latency_ratio']} (per turn {result['trace_latency_ratios']}), throughput "
              f"{result['trace_throughput_ratio']} (per turn {result['trace_throughput_ratios']})")


if __name__ == "__main__":
    main()
