"""Message kinds of crash recovery (docs/recovery.md), registered with the schema.

- ``mem_drop_initiator`` {initiator} (orchestrator → memctl): the initiator
  (a CPU) died; forget every copy it cached. Reply ``ok`` {data: {frames,
  pages}}: the frames whose newest bytes died with it (held modified, or
  lost earlier when a recall to it timed out), and the same as guest pages
  per address space ``{space: [gpn, ...]}``, so the OS that owns them can
  stop the processes whose memory they were.
- ``peer_restarted`` {node, kind, incarnation, lost?} (orchestrator → each
  OS and the VMM): ``node`` came back as a new incarnation (its
  ``Party.incarnation``); a driver of it resets the device. For a CPU it is
  sent before the new CPU runs, with ``lost`` (the ``pages`` above), and
  answered ``ok`` once the OS has acted on it (the machine check). For the
  VMM (emergency devirtualization), sent to the OS that gets the CPU back,
  with ``cpu`` (the CPU's ``cpu_save``): the OS answers ``ok`` {data: {cpu:
  "resumed" | "retrap" | ...}}: it re-sent the resume the VMM lost, or it
  never saw the trap the CPU waits in (then the orchestrator sends
  ``cpu_retrap``), and its drivers make up for what the VMM held of their
  traffic (``data.io``: commands re-issued, console re-sent). Another OS
  whose disk or NIC the VMM drove gets it with ``io`` (true) instead of ``cpu``.
  Before it, every node was told ``flow_abandon`` {node: "vmm"} (protocol/messages.py).
  ``context_lost`` (true): the CPU ran another OS's context (reset since), and
  this OS's current process had its registers in the VMM: it is stopped.
  Under the VMM, a CPU's ``peer_restarted`` with ``lost`` goes to the VMM
  first: it resets its virtual CPUs (the context that was on the CPU died,
  the ones it had saved did not) and answers ``ok`` {data: {on_cpu: the OS
  whose context died, or None}}; each OS is then told ``on_cpu`` (false: its
  current process's registers were saved in the VMM, only its lost pages
  count).
- ``cpu_retrap`` {asid_base?} (orchestrator → CPU): a trapped CPU emits its
  pending trap again on ``trap:<cpu>`` (its receiver died with it), its asid
  without the base the dead VMM had added. Reply ``ok``
  {data: {retrapped, cpu_state}}.
"""

from __future__ import annotations

from protocol.messages import Field, register

_opt = lambda t, **kw: Field(t, required=False, **kw)  # noqa: E731

register("mem_drop_initiator", initiator="str")
register("peer_restarted", node="str", kind="str", incarnation=_opt("int"), lost=_opt("dict"), cpu=_opt("dict"),
         on_cpu=_opt("bool"), io=_opt("bool"), context_lost=_opt("bool"))
register("cpu_retrap", asid_base=_opt("int"))
register("cpu_reset")
