"""Names and sizes every layer agrees on, in one place: the page size, the
names the protocol gives the orchestrator and the VMM, and the device node
names an OS or VMM talks to when its options name none (the topology's
names win: these are only the defaults of ``compose/*.toml``).
"""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT  # a guest page, a memory frame, a receive buffer

ORCHESTRATOR = "orch"  # the orchestrator's party name
VMM = "vmm"  # the VMM's node name, and the owner / address space of the frames it holds

# the nodes an OS (or the VMM) uses unless its options say otherwise
DEFAULT_CPU = "cpu0"
DEFAULT_TIMER = "timer0"
DEFAULT_UART = "uart0"
DEFAULT_MEMCTL = "memctl"
