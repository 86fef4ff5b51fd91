"""The message floor of a guest operation, for bench/io.py and bench/native.py.

A guest operation waits for a chain of messages in sequence (its critical
path, counted on a real trace of the cluster by orchestrator/critpath.py);
none of them can be faster than a raw pyzmq message between two processes.
So its *floor* is ``hops × (raw pyzmq round trip / 2) + the device's own
time`` (a raw ``fdatasync``, the loopback UDP legs), both measured in the
same run, and ``figure ÷ floor`` says how far from it the path is.
"""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

import trio

from bench.rawzmq import RAW_ECHO, RawClient, python_script, stop
from orchestrator import critpath
from orchestrator.cli.trace import begin, end


def raw_rtt_s(tmp: str, n: int = 2000) -> float:
    """The median round trip (s) of raw pyzmq between two processes of their own (DEALER → ROUTER echo)."""
    ep = f"ipc://{tmp}/floor-raw-echo"
    echo = python_script(RAW_ECHO, ep, stdout=subprocess.PIPE)
    client = None
    try:
        echo.stdout.readline()
        client = RawClient(ep)
        return statistics.median(client.rtt(n, 200))
    finally:
        if client is not None:
            client.close()
        stop(echo)


def traced(run_dir: Path, path: Path, fn) -> critpath.Timeline:
    """Run ``fn()`` with every ring of the cluster of ``run_dir`` on; the trace's timeline."""
    trio.run(begin, run_dir, 1 << 18)
    try:
        fn()
    finally:
        trio.run(end, run_dir, path)
    return critpath.from_chrome(json.loads(path.read_text()))


def syscall_hops(tl: critpath.Timeline, nr: int, os: str = "os1") -> tuple[int, str]:
    """Hops of one cycle of a loop around syscall ``nr``: from one entry of it
    on ``os`` to the next (median over the cycles), and a typical path."""
    paths = critpath.cycles(tl, os, tl.marks(os, "syscall", "syscall enter", nr=nr))
    n = critpath.hop_count(paths)
    return n, critpath.describe(next(p for p in paths if len(p) == n))


def floor_line(name: str, figure: str, hops: int, floor: str, ratio: float, target: float | None = None) -> str:
    """One printed line: the figure, its hops, its floor and the ratio."""
    tail = f" (target ≤ {target})" if target else ""
    return f"  {name}: {figure}; {hops} hops on its critical path, floor {floor}, ratio {ratio}{tail}"
