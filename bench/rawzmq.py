"""What the benchmarks measure ours against, and how they take turns.

- raw pyzmq processes (an echo, a client timing batches of round trips, a
  probe timing one round trip every few milliseconds): every raw party is a
  process of its own, as every node of ours is, so no side shares an
  interpreter with the bench's cluster;
- :func:`abba_first`, the order in which two measurements take turns.
"""

from __future__ import annotations

import json
import subprocess
import sys

RAW_ECHO = """
import sys, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.ROUTER); s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    ident, frame = s.recv_multipart()
    if frame == b"quit":
        break
    s.send_multipart([ident, frame])
"""

RAW_CLIENT = """
import json, sys, time, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(sys.argv[1])
frame, clock = b"x" * 64, time.perf_counter
for line in sys.stdin:  # one batch of round trips a line: its count, then the warm-up
    n, warmup = map(int, line.split())
    for _ in range(warmup):
        s.send(frame); s.recv()
    out = []
    for _ in range(n):
        t = clock(); s.send(frame); s.recv(); out.append(clock() - t)
    print(json.dumps(out), flush=True)
"""

# one round trip every GAP seconds until a line comes on stdin, then all of
# them as one JSON line: how long a wake-up chain across two processes takes
# while something else loads the host, at a rate that adds no load itself
RAW_PROBE = """
import json, select, sys, time, zmq
ctx = zmq.Context(); s = ctx.socket(zmq.DEALER); s.connect(sys.argv[1])
gap, frame, clock, out = float(sys.argv[2]), b"x" * 64, time.perf_counter, []
print("ready", flush=True)
while not select.select([sys.stdin], [], [], gap)[0]:
    t = clock(); s.send(frame); s.recv(); out.append(clock() - t)
print(json.dumps(out), flush=True)
"""


def python_script(script: str, *args: str, **kw) -> subprocess.Popen:
    """``script`` run by this interpreter as a process of its own."""
    return subprocess.Popen([sys.executable, "-c", script, *args], text=True, **kw)


def stop(*procs: subprocess.Popen | None) -> None:
    """Kill each process that still runs (None: one that never started) and reap it."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


class RawClient:
    """A client process that times batches of round trips to the echo
    process at ``ep`` on request, so that raw and ours can take turns batch
    by batch (``script``: the client, by default raw pyzmq's)."""

    def __init__(self, ep: str, script: str = RAW_CLIENT, *args: str):
        self.proc = python_script(script, ep, *args, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def rtt(self, n: int, warmup: int) -> list[float]:
        self.proc.stdin.write(f"{n} {warmup}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the raw client exited ({self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        stop(self.proc)


class RawProbe:
    """A raw pyzmq echo and a :data:`RAW_PROBE` client timing one round trip
    to it every ``gap`` seconds, from start until :meth:`stop`."""

    def __init__(self, ep: str, gap: float = 0.005):
        self.echo = python_script(RAW_ECHO, ep, stdout=subprocess.PIPE)
        self.client = None
        try:
            self.echo.stdout.readline()
            self.client = python_script(RAW_PROBE, ep, str(gap), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.client.stdout.readline()
        except BaseException:
            self.close()
            raise

    def stop(self) -> list[float]:
        """The round trips timed so far (seconds); the probe ends."""
        out, _ = self.client.communicate("stop\n", timeout=30)
        return json.loads(out)

    def close(self) -> None:
        stop(self.client, self.echo)


def abba_first(i: int) -> bool:
    """Whether side A goes first in the ``i``-th pair of turns of two
    measurements: A B, B A, B A, A B, then again (neither side always goes
    first, so a drift of the shared host's speed hits both alike)."""
    return i % 4 in (0, 3)
