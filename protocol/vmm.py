"""Message kinds of the VMM and of the memory controller's administration
(DESIGN.md §4 VMM, §5 choreographies), registered with the schema.

The contract between the VMM node (``nodes/vmm``), the memory controller and
the orchestrator's choreographies (``orchestrator/choreographies``):

**Flows while the CPU is virtualized** (the orchestrator installs them with
lossless route changes; ``<os>`` is each managed OS instance):

====================  ======  ===========  ========================================
flow                  sender  receiver     kinds
====================  ======  ===========  ========================================
``trap:cpu0``         cpu0    vmm          ``trap`` (was → the OS)
``priv:<os>``         <os>    vmm          ``cpu_resume``, ``tlb_*``, ``cpu_preempt``,
                                           ``cpu_halt``, ``irq_mask`` (was → cpu0)
``irq:timer0``        timer0  vmm          ``tick`` (was → the OS)
``trap:vmm.<os>``     vmm     <os>         reflected ``trap`` (same body as the CPU's)
``priv:vmm``          vmm     cpu0         the VMM's own privileged operations
``irq:vmm.<os>``      vmm     <os>         virtual interrupts: ``tick``, ``uart_rx``
``io:<os>.uart``      <os>    vmm          (device virtualized, FIG. 5) ``uart_write``
``io:vmm.uart``       vmm     uart0        the VMM's native UART driver
``irq:uart0``         uart0   vmm          ``uart_rx`` (reflected on ``irq:vmm.<os>``)
``io:<os>.disk``      <os>    vmm          ``disk_read``/``disk_write``/``disk_flush``
``io:vmm.disk0``      vmm     disk0        the same, blocks translated to the OS's
                                           partition (the VMM is a whole-device issuer)
``irq:disk0``         disk0   vmm          ``disk_done`` (reflected on ``irq:vmm.<os>``)
``io:<os>.nic``       <os>    vmm          ``nic_bind``/``nic_send``/``nic_close``/``nic_rx_ack``,
                                           ``nic_rx_post`` (the OS's receive buffers)
``io:vmm.nic0``       vmm     nic0         the same, with ``os`` (the port's / buffers' owner)
``irq:nic0``          nic0    vmm          ``nic_done``, ``nic_rx`` (to the port's owner)
====================  ======  ===========  ========================================

Device commands keep the OS's own ids through the VMM, so a completion that
reaches the OS directly because a route changed under it (FIG. 5 / FIG. 6) is
still the OS's; one the VMM did not forward is the device's native owner's.

The OS does not change: it keeps emitting on ``priv:<os>`` and ``io:<os>.*``
and handles ``trap``/``tick``/``uart_rx`` from whoever sends them.

**ASIDs**: the VMM gives each OS an asid base (``vmm_attach_os``) and adds it
to every asid the OS uses (cpu_resume, tlb_write, tlb_flush), so TLB entries
of different instances never collide; the first OS gets base 0, so its
entries stay valid across interposition and devirtualization.

**Memory**: the CPU names the OS's space in ``cpu_resume`` (``space``); the
memory controller translates guest pages through that space's map, which the
VMM (or the orchestrator acting for it) replaces with ``mem_set_map`` when it
disables the OS's direct addressability and restores with ``mem_set_identity``.
"""

from __future__ import annotations

from protocol.messages import Field, register

_opt = lambda t, **kw: Field(t, required=False, **kw)  # noqa: E731

# -- VMM control (orchestrator → vmm; replies ok {data} or error) -------------------------
register("vmm_init", frames=Field("list", items="int"), host=_opt("str"))
# FIG. 4 last step: resource discovery. data: {"frames": n, "cpu": {...}, "memctl": {...}, "devices": [...]}
register("vmm_attach_os", os="str", asid_base="int", current=_opt("bool"))
# manage an OS instance; current=True: it is the one on the CPU right now (FIG. 3)
register("vmm_detach_os", os="str")
# stop managing an OS (it was shut down, or FIG. 7 is giving the CPU back)
register("vmm_cpu_release", os="str")
# FIG. 7 "VMM shutdown routine": reflect whatever trap the VMM holds, stop time-slicing,
# leave the CPU running (or trapped at) `os`'s context with its own asids. data: {"held": n}
register("vmm_device", device="str", node="str", mode="str", os=_opt("str"), state=_opt("dict"))
# take (mode "virtual") or give back (mode "native") a device of `os`: the VMM's native driver
# for `node` (state: what the OS's driver exported when it switched to virtual)
register("vmm_frames", runs=Field("list", items="list"), from_owner="str", to_owner="str", memctl=_opt("str"))
# ¶39: the VMM takes frames (to_owner "vmm") or hands frames it holds on (from_owner "vmm"),
# zeroed by the memory controller on each change of owner. data: {"frames": n, "held": n}
register("vmm_status")
# data: {"oses": {os: {"current", "vif", "asid_base", "traps", "ticks", ...}}, "resources": {...}}

# -- memory controller administration (orchestrator / vmm only) ---------------------------
# frames: "runs" [[first, count], ...] or, formerly, a list "frames" (protocol/frames.py)
_frames = dict(runs=_opt("list", items="list"), frames=_opt("list", items="int"))
register("mem_transfer", from_owner="str", to_owner="str", **_frames)
# frames change owner, zeroed first (¶39); from an OS they must be pinned by it (mem_pin)
register("mem_pin", owner=_opt("str"), **_frames)    # an OS pins its own frames;
register("mem_unpin", owner=_opt("str"), **_frames)  # orch/vmm name the owner
register("mem_set_map", space="str", map=Field("dict", items="int"))   # {str(gpn): frame}
register("mem_set_identity", space="str")
register("mem_create_space", space="str", frames=Field("list", items="int"))
register("mem_destroy_space", space="str")
register("mem_owners")   # data: {owner: [frames...]}, plus "invariants": "ok" or the violation
