"""Tracing on real clusters (orchestrator/tracing.py, protocol/recorder.py):
`hwemu run --trace`, `hwemu trace start|stop|save` with `hwemu status --watch`,
a ring read out in pages, and the trace read back by Perfetto's own protobuf
definitions (the ``perfetto`` package), a reader that is not ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import trio
from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace

from orchestrator import tracing
from orchestrator.topology import parse
from tests.integration.procs import alive, recorded_pids

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
HWEMU = str(Path(sys.executable).parent / "hwemu")
HELLO = REPO / "guest" / "build" / "samples" / "hello.elf"


def hwemu(run_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([HWEMU, *args, "--run-dir", str(run_dir)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env=dict(os.environ))


def read_proto(path: Path) -> tuple[dict[int, str], list]:
    """The track names and the track events of a Perfetto protobuf trace."""
    trace = Trace.FromString(path.read_bytes())
    tracks = {p.track_descriptor.uuid: p.track_descriptor.name for p in trace.packet if p.HasField("track_descriptor")}
    return tracks, [p for p in trace.packet if p.HasField("track_event")]


def test_run_with_trace_has_a_track_per_node_an_arrow_per_message_and_the_guest_on_it(guest_build, tmp_path):
    out = tmp_path / "hello.json"
    done = hwemu(tmp_path / "r", "run", "compose/native.toml", str(HELLO), "--trace", str(out), "--", "a", "b")
    assert done.returncode == 0, done.stderr
    assert 'argv[1] = "a"' in done.stdout  # the program's output is still the only thing on stdout
    trace = json.loads(out.read_text())
    events = trace["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {"orch (orchestrator)", "cpu0 (cpu)", "memctl (memctl)", "os1 (os)", "timer0 (timer)",
                     "uart0 (uart)"}
    ph = Counter(e["ph"] for e in events)
    assert ph["s"] == ph["f"] > 10  # every arrow has both ends
    starts = {e["id"]: e for e in events if e["ph"] == "s"}
    ends = {e["id"]: e for e in events if e["ph"] == "f"}
    assert starts.keys() == ends.keys()
    assert all(ends[i]["ts"] >= starts[i]["ts"] for i in starts)  # one clock: a message arrives after it left
    pids = {e["pid"]: e["args"]["name"].split()[0] for e in events if e["ph"] == "M" and e["name"] == "process_name"}
    cats = Counter((pids[e["pid"]], e.get("cat")) for e in events if e["ph"] == "i")
    assert cats[("cpu0", "trap")] > 0 and cats[("os1", "syscall")] > 0 and cats[("os1", "irq")] > 0
    counters = [e for e in events if e["ph"] == "C" and pids[e["pid"]] == "cpu0"]
    assert counters and all(e["name"] in ("instructions retired", "MIPS") for e in counters)
    retired = [e["args"]["instret"] for e in counters if e["name"] == "instructions retired"]
    assert retired == sorted(retired) and retired[-1] > 0


def test_trace_start_stop_save_over_a_route_change_and_status_watch(tmp_path):
    rd = tmp_path / "r"
    pids: set[int] = set()
    try:
        up = hwemu(rd, "up", "compose/flip.toml", "--detach")
        pids |= recorded_pids(rd)
        assert up.returncode == 0, up.stderr
        assert hwemu(rd, "trace", "start", "--size", "50000").returncode == 0
        streamed = hwemu(rd, "route", "set", "data:src", "sink_b", "--json")
        assert streamed.returncode == 0, streamed.stderr
        change = json.loads(streamed.stdout)
        watched = hwemu(rd, "status", "--watch", "--count", "3", "--interval", "0.3")
        assert watched.returncode == 0, watched.stderr
        # piped, each refresh is printed after the other: three views, every node in each
        frames = watched.stdout.split("cluster flip")
        assert len(frames) == 4, watched.stdout
        for frame in frames[1:]:
            for want in ("sink_a", "sink_b", "src", "msgs in/s", "active faults"):
                assert want in frame, frame
        assert hwemu(rd, "trace", "stop").returncode == 0
        saved = hwemu(rd, "trace", "save", str(tmp_path / "flip.pftrace"), "--json")
        assert saved.returncode == 0, saved.stderr
        assert json.loads(saved.stdout)["nodes"] == ["orch", "sink_a", "sink_b", "src"]
        bad = hwemu(rd, "trace", "start", "--size", "0")
        assert bad.returncode == 2 and "Traceback" not in bad.stderr
        tracks, events = read_proto(tmp_path / "flip.pftrace")
        changes = [e for e in events if e.track_event.name == "route change data:src"]
        assert len(changes) == 1
        ann = {a.name: a for a in changes[0].track_event.debug_annotations}
        assert ann["epoch"].int_value == change["epoch"]
        assert abs(ann["pause_ms"].double_value - change["pause_ms"]) < 0.01
        # the sender's own view: a pause, then the switch and the resume (its slice) on its route track
        src_route = [u for u, n in tracks.items() if n == "route" and (u >> 32) == next(
            v >> 32 for v, m in tracks.items() if m == "src (streamer)")]
        on_src = [e.track_event.name for e in events if e.track_event.track_uuid in src_route]
        assert "route pause data:src" in on_src and "route switch data:src" in on_src
    finally:
        pids |= recorded_pids(rd)
        hwemu(rd, "down", timeout=60)
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)


async def test_a_ring_bigger_than_a_message_is_read_out_in_pages(cluster):
    node = {"kind": "testnode", "module": "tests.fixtures.streamer"}
    orch = await cluster(parse({"nodes": {"src": {**node, "options": {"role": "streamer"}},
                                          "sink": {**node, "options": {"role": "sink"}}},
                                "routes": {"data:src": "sink"}}, "pages"))
    await orch.ctl_trace_start(size=200_000)
    await orch.request("src", "stream_start", {"count": 20_000, "flow": "data:src"}, timeout=120)
    with trio.fail_after(60):  # the sink has consumed every datum
        while (await orch.request("sink", "stats")).body["stats"]["flows_in"].get("data:src", {}).get(
                "consumed") != 20_000:
            await trio.sleep(0.05)
    await orch.ctl_trace_stop()
    pages = []

    async def request(node: str, kind: str, body: dict):
        data = (await orch.request(node, kind, body, timeout=10)).body["data"]
        pages.append((node, body["offset"], len(data["events"]), data["total"]))
        return data

    dumps, notes = await tracing.collect(request, ["sink"])
    assert notes == []
    sink_pages = [p for p in pages if p[0] == "sink"]
    assert len(sink_pages) > 1  # 40,000 events (a receive and a delivery per datum) do not fit one page
    assert sum(n for _, _, n, _ in sink_pages) == sink_pages[0][3] == len(dumps["sink"]["events"])
    delivered = [f["fseq"] for _, cat, name, f in dumps["sink"]["events"] if (cat, name) == ("flow", "deliver")]
    assert delivered == list(range(1, 20_001))


async def test_a_node_restarted_while_a_trace_is_on_traces_its_new_life(cluster):
    """Killed and restarted by its supervisor while a trace is on, a node's new life starts its ring
    too (orchestrator/tracing.py ``node_ready``): the trace of a fault run has its track after the
    restart (the chaos runs of a killed CPU had none, and the hang that followed it was guessed at)."""
    node = {"kind": "testnode", "module": "tests.fixtures.streamer"}
    orch = await cluster(parse({"nodes": {"src": {**node, "options": {"role": "streamer"}},
                                          "sink": {**node, "options": {"role": "sink"}}},
                                "routes": {"data:src": "sink"}}, "restarted"))
    await orch.ctl_trace_start(size=10_000)
    first = orch.supervisor.nodes["sink"].pid
    os.kill(first, 9)
    with trio.fail_after(60):  # the supervisor restarted it and it said ready
        while not (orch.supervisor.nodes["sink"].pid not in (None, first)
                   and orch.supervisor.nodes["sink"].state == "running"):
            await trio.sleep(0.05)
        while not (await orch.request("sink", "stats")).body["stats"]["tracing"]:  # its ring is on
            await trio.sleep(0.05)
    await orch.request("src", "stream_start", {"count": 50, "flow": "data:src"}, timeout=60)
    with trio.fail_after(60):
        while (await orch.request("sink", "stats")).body["stats"]["flows_in"].get("data:src", {}).get(
                "consumed", 0) < 50:
            await trio.sleep(0.05)
    await orch.ctl_trace_stop()

    async def request(name: str, kind: str, body: dict):
        return (await orch.request(name, kind, body, timeout=10)).body["data"]

    dumps, notes = await tracing.collect(request, ["sink"])
    assert notes == []
    assert dumps["sink"]["pid"] == orch.supervisor.nodes["sink"].pid != first
    delivered = [f["fseq"] for _, cat, name, f in dumps["sink"]["events"] if (cat, name) == ("flow", "deliver")]
    assert len(delivered) >= 50
