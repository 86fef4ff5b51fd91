"""How long the kernel lets a node process run before a woken one may take
its CPU: the EEVDF time slice (Linux >= 6.12, ``sched_setattr`` with
``sched_runtime`` for SCHED_OTHER; no privilege needed).

A node that is woken by a message should run at once: a route change is a
chain of such wake-ups (the sender, the old receiver, the sender again),
and each one that waits for another process's slice adds that much to the
pause. A process that asks for a short slice is preferred when it wakes
(its deadline is near) and gives the CPU back sooner. The CPU node, which
computes for as long as its guest does, always keeps the kernel's default.

Measured on this 2-vCPU VM while a guest computed and route changes ran, a
1 ms sleep loop's oversleep: p99 1042 µs, worst 3.8 ms with the default
slice; p99 126 µs with a 100 µs slice. For a whole cluster it made no
difference this machine's noise let us see (interpose/devirtualize pauses,
guest syscall cost), and a sink consuming 20,000 msg/s, which a short
slice gets preempted more often, drained later in 2 pairs of runs of 2
(route-change pause p99 12.4 / 7.2 ms at 0 against 30.5 / 9.8 ms at 100).
So it is off by default: ``HWEMU_SLICE_US`` sets it (0, the default: the
kernel's slice; else 100 to 100000 µs).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct
import sys

DEFAULT_SLICE_US = 0  # the kernel's own (see above)
MAX_SLICE_US = 100_000  # the kernel's bounds: 0.1 to 100 ms
MIN_SLICE_US = 100
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "riscv64": 274, "ppc64le": 355, "s390x": 345}


def slice_from_env() -> int:
    """``HWEMU_SLICE_US`` as microseconds (0: the kernel's own).

    Raises:
        ValueError: not an integer, or neither 0 nor within 100..100000.
    """
    raw = os.environ.get("HWEMU_SLICE_US", "").strip()
    if not raw:
        return DEFAULT_SLICE_US
    try:
        us = int(raw)
    except ValueError:
        raise ValueError(f"HWEMU_SLICE_US must be an integer number of microseconds, got {raw!r}") from None
    if us != 0 and not MIN_SLICE_US <= us <= MAX_SLICE_US:
        raise ValueError(f"HWEMU_SLICE_US must be 0 or {MIN_SLICE_US}..{MAX_SLICE_US}, got {us}")
    return us


def set_slice(us: int) -> str | None:
    """Ask for a time slice of ``us`` µs for this process (0: the kernel's
    default, which undoes what a parent asked for: a child inherits it).
    Returns None if the kernel took it, else why not (an older kernel or
    another architecture: the node runs as before)."""
    nr = _SCHED_SETATTR.get(platform.machine())
    if nr is None:
        return f"no sched_setattr number known for {platform.machine()}"
    # struct sched_attr (SCHED_ATTR_SIZE_VER0): size, policy, flags, nice,
    # priority, runtime, deadline, period
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQ", 48, 0, 0, os.nice(0), 0, us * 1000, 0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(nr, 0, attr, 0) != 0:
        return f"sched_setattr: {os.strerror(ctypes.get_errno())}"
    return None


def short_slice(who: str, short: bool = True) -> None:
    """Give this process (``who`` names it in messages) the slice of
    ``HWEMU_SLICE_US`` if ``short``, else the kernel's default; a bad value
    ends it with exit 2, a kernel that does not take it is logged and changes
    nothing else."""
    try:
        us = slice_from_env() if short else 0
    except ValueError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        sys.exit(2)
    why = set_slice(us)
    if why is not None:
        logging.getLogger("hwemu.sched").info("%s: time slice left as it was (%s)", who, why)
