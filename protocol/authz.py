"""Who may send what: the one table of request kinds and their rules (docs/security.md).

Every receiver reads :data:`RULES` (``nodes/runtime.py`` before any handler,
the orchestrator for its own inbox), and so do the tests
(``tests/protocol/test_authz.py`` generates its matrix from it). A sender is
already authenticated (:mod:`protocol.auth`): these rules say what it may
*ask*, from what the receiver knows:

- the route table in force at the receiver (a flow's sender is the first
  part of its subject, :func:`protocol.routes.flow_sender`; its receiver is
  what the table names),
- the node kinds of the topology (handed to every node with its keys), and
- the name of the orchestrator. A party neither a node nor the orchestrator
  is a *client*: the user's CLI or a test's client, which holds the user's
  client key.

The orchestrator may send anything: it holds the master secret every key is
derived from, so no rule could hold it back, and it is the authority that
changes routes, starts and stops nodes and moves frames.

A refusal is an ``error`` reply with reason ``forbidden`` whose detail
names the rule (:func:`refusal`); receivers count them (``forbidden`` in
their stats, per rule in ``forbidden_by``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from protocol.messages import Message
from protocol.routes import RouteTable

CLIENT = "client"  # the kind of a party outside the topology
ORCH = "orchestrator"  # the kind of the orchestrator


@dataclass
class Context:
    """What a receiver judges a request by (it replaces ``routes`` as its table changes).

    Attributes:
        me: the receiver's name.
        routes: its route table in force.
        kinds: node name → kind, for every node of the topology.
        orchestrator: the orchestrator's name.
        transition: during a route change, the table on the other side of it
            (the new one before the node's own switch, the old one after):
            until the change ends, what either table routes is accepted, so
            no sender is refused for switching before or after this node.
    """

    me: str
    routes: RouteTable
    kinds: Mapping[str, str]
    orchestrator: str = "orch"
    transition: RouteTable | None = None

    def tables(self) -> tuple[RouteTable, ...]:
        """The tables a request is judged by."""
        return (self.routes,) if self.transition is None else (self.routes, self.transition)

    def routed_here(self, flow: str) -> bool:
        return any(t.get(flow) == self.me for t in self.tables())

    def kind_of(self, name: str) -> str:
        """``name``'s node kind; :data:`ORCH` for the orchestrator, :data:`CLIENT` for anyone else."""
        if name == self.orchestrator:
            return ORCH
        return self.kinds.get(name, CLIENT)


def _flow_sender(flow: str) -> str | None:
    try:
        return flow.split(":", 1)[1].split(".", 1)[0]
    except IndexError:
        return None


def _on_my_flow(msg: Message, ctx: Context, cls: str | None = None) -> bool:
    """``msg`` travels on a flow its sender emits and the receiver's table routes here."""
    flow = msg.flow
    return (flow is not None and (cls is None or flow.startswith(cls + ":"))
            and _flow_sender(flow) == msg.src and ctx.routed_here(flow))


def _sends_io_here(msg: Message, ctx: Context) -> bool:
    """The sender issues an ``io:`` flow this receiver's table routes here (the
    message's own flow if it has one: a direct request, like a receive-buffer
    post after a restart, counts by the sender's flows)."""
    if msg.flow is not None:
        return _on_my_flow(msg, ctx, "io")
    prefix = f"io:{msg.src}."
    return any(f.startswith(prefix) and n == ctx.me for t in ctx.tables() for f, n in t.routes.items())


def _memory(msg: Message, ctx: Context) -> bool:
    """A memory space is read or written by the OS that owns it (the space
    bears its name), the VMM, the CPU (it runs what the ``priv:`` owner told
    it to), or a device doing DMA for that OS: a device an ``io:<space>.*``
    flow is routed to, or one the VMM drives (``io:vmm.*``), on behalf of the
    OS instances it manages."""
    space = msg.body.get("space")
    src = msg.src
    if space == src or ctx.kind_of(src) in ("vmm", "cpu"):
        return True
    for flow, node in (fn for t in ctx.tables() for fn in t.routes.items()):
        if node == src and (flow.startswith(f"io:{space}.") or flow.startswith("io:vmm.")):
            return True
    return False


def _priv(msg: Message, ctx: Context) -> bool:
    """Whoever ``priv:`` routes here, on that flow; and the space a
    ``cpu_resume`` runs the CPU in is the sender's own (the CPU reads and
    writes whatever space it runs), unless the sender is the VMM, which runs
    each OS it manages in that OS's space."""
    space = msg.body.get("space")
    return (_on_my_flow(msg, ctx, "priv")
            and (space is None or space == msg.src or ctx.kind_of(msg.src) == "vmm"))


def _own_frames(msg: Message, ctx: Context) -> bool:
    """An OS pins or unpins its own frames (the controller checks it owns
    them); the VMM names any owner."""
    return ctx.kind_of(msg.src) == "vmm" or msg.body.get("owner") in (None, msg.src)


def _flows_of_sender(field: str) -> Callable[[Message, Context], bool]:
    def check(msg: Message, ctx: Context) -> bool:
        flows = msg.body.get(field)
        return isinstance(flows, dict) and all(_flow_sender(f) == msg.src for f in flows)
    return check


@dataclass(frozen=True)
class Rule:
    """One rule: its name (what a refusal names), what it says, and its check
    (the orchestrator passes every rule before the check is asked)."""

    name: str
    text: str
    check: Callable[[Message, Context], bool]

    def allows(self, msg: Message, ctx: Context) -> bool:
        return msg.src == ctx.orchestrator or self.check(msg, ctx)


ANY = Rule("any", "any authenticated party", lambda msg, ctx: True)
NODE = Rule("node", "a node of the topology", lambda msg, ctx: ctx.kind_of(msg.src) not in (CLIENT, ORCH))
USER = Rule("user", "the user's clients (the CLI)", lambda msg, ctx: ctx.kind_of(msg.src) == CLIENT)
ORCH_ONLY = Rule("orchestrator", "the orchestrator only", lambda msg, ctx: False)
ADMIN = Rule("admin", "the orchestrator or the VMM", lambda msg, ctx: ctx.kind_of(msg.src) == "vmm")
MEMCTL = Rule("memctl", "the memory controller", lambda msg, ctx: ctx.kind_of(msg.src) == "memctl")
MEMORY = Rule("memory", "the space's own OS, the VMM, the CPU, or a device an io: flow of that OS "
                        "(or of the VMM) is routed to", _memory)
OWN_FRAMES = Rule("own_frames", "an OS for its own frames, or the VMM", _own_frames)
PRIV = Rule("priv_route", "the sender of a priv: flow the receiver's route table routes here, on that flow "
                         "(an OS naming no memory space but its own)", _priv)
IO = Rule("io_route", "the sender of an io: flow the receiver's route table routes here",
          _sends_io_here)
FLOW = Rule("flow_route", "the sender of the flow it travels on, routed here by the receiver's table",
            lambda msg, ctx: _on_my_flow(msg, ctx))
DRAIN = Rule("flow_sender", "the sender of every flow it names", _flows_of_sender("upto"))
NEXT = Rule("flow_sender", "the sender of every flow it names", _flows_of_sender("next"))

RULES: dict[str, Rule] = {
    # every party
    **dict.fromkeys(("ping", "pong", "ok", "error", "stats", "stats_reply", "mem_info", "uart_sync", "timer_now",
                     "disk_info", "os_ps", "vmm_status", "proc_exit"), ANY),
    # the orchestrator's inbox
    **dict.fromkeys(("ready", "heartbeat"), NODE),
    **dict.fromkeys(("ctl_status", "ctl_route_show", "ctl_route_set", "ctl_down", "ctl_request", "ctl_vmm_load",
                     "ctl_vmm_unload", "ctl_interpose", "ctl_devirtualize", "ctl_memory_borrow", "ctl_memory_return",
                     "ctl_virt_status", "ctl_policy", "ctl_os_boot", "ctl_os_shutdown", "ctl_os_start", "ctl_os_stop",
                     "ctl_fault_add", "ctl_fault_list", "ctl_fault_clear", "ctl_trace_start", "ctl_trace_stop",
                     "ctl_trace_save", "ctl_node_move"), USER),
    # life cycle, routes, faults: the orchestrator's
    **dict.fromkeys(("shutdown", "route_pause", "route_install", "route_resume", "route_switch", "fault_set",
                     "fault_clear", "cpu_run", "trace_start", "trace_stop", "trace_dump"), ORCH_ONLY),
    # recovery after a crash (orchestrator/recovery.py)
    **dict.fromkeys(("peer_restarted", "cpu_reset", "cpu_retrap", "mem_drop_initiator", "flow_abandon"), ORCH_ONLY),
    "route_drain": DRAIN,  # a flow's sender asks its old receiver, in-band
    "route_next": NEXT,
    "flow_ack": NODE,  # a flow's receiver acknowledges it (the sender checks it is that flow's receiver)
    # memory
    **dict.fromkeys(("mem_read", "mem_write", "mem_batch", "mem_acquire"), MEMORY),
    **dict.fromkeys(("mem_release", "mem_recalled"), NODE),  # the controller checks the frame's holder
    **dict.fromkeys(("mem_pin", "mem_unpin"), OWN_FRAMES),
    **dict.fromkeys(("mem_transfer", "mem_set_map", "mem_set_identity", "mem_create_space", "mem_destroy_space",
                     "mem_owners", "mem_space"), ADMIN),
    **dict.fromkeys(("mem_recall", "mem_grant", "mem_data"), MEMCTL),
    # the CPU (and the VMM when priv:<os> is routed to it)
    **dict.fromkeys(("cpu_resume", "cpu_save", "tlb_write", "tlb_flush", "cpu_preempt", "cpu_halt", "irq_mask"),
                    PRIV),
    # devices (and the VMM when io:<os>.* is routed to it)
    **dict.fromkeys(("uart_write", "timer_set", "timer_alarm", "disk_read", "disk_write", "disk_flush", "nic_bind",
                     "nic_send", "nic_close", "nic_rx_ack", "nic_rx_post"), IO),
    "nic_forward": USER,  # a host port into the guest: the user's (`hwemu run --forward`)
    # interrupts and traps, to whoever the route names
    **dict.fromkeys(("trap", "tick", "alarm", "uart_rx", "disk_done", "nic_done", "nic_rx"), FLOW),
    # the OS
    **dict.fromkeys(("os_exec", "os_kill"), USER),
    **dict.fromkeys(("os_driver_mode", "mod_alloc_pin", "mod_add", "mod_give_back"), ORCH_ONLY),
    # the streamer (nodes/streamer: a demo and bench node kind holding no guest state), open as its
    # test-fixture ancestor was: its data travel on flows the runtime numbers and checks anyway
    **dict.fromkeys(("stream_start", "stream_stop", "ping_probe", "datum", "datum_req", "sink_report"), ANY),
    # the VMM's control
    **dict.fromkeys(("vmm_init", "vmm_attach_os", "vmm_detach_os", "vmm_cpu_release", "vmm_device", "vmm_frames"),
                    ORCH_ONLY),
}
"""request kind → the rule its sender must pass. A kind not named here (a
test fixture's own) is open to any authenticated party (:data:`ANY`)."""


CHECKED: dict[str, Rule] = {k: r for k, r in RULES.items() if r is not ANY}
"""The kinds whose rule is more than "authenticated": what a receiver's hot
path looks up (a data-plane message of a kind open to all costs one miss)."""


def rule_for(kind: str) -> Rule:
    return RULES.get(kind, ANY)


def allowed(msg: Message, ctx: Context) -> bool:
    """True if ``msg``'s sender may send it to ``ctx.me``."""
    return rule_for(msg.kind).allows(msg, ctx)


def refusal(msg: Message, ctx: Context) -> str:
    """The detail of a ``forbidden`` error: the rule, what it says, who asked."""
    rule = rule_for(msg.kind)
    return (f"{msg.kind} from {msg.src} ({ctx.kind_of(msg.src)}) refused by rule {rule.name!r}: "
            f"accepted only from {rule.text}")


def context_from_config(me: str, routes: RouteTable, auth: Mapping[str, Any] | None,
                        orchestrator: str | None) -> Context | None:
    """A node's context from its config, or None when it runs without keys
    (then nothing says who sent what, and no rule is checked)."""
    if not auth:
        return None
    return Context(me, routes, dict(auth.get("kinds", {})), orchestrator or "orch")
