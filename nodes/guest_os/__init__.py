"""The OS instance (DESIGN.md §4): a small kernel in Python that boots from
its memory map, loads ELF programs into processes, schedules them on the CPU
with timer ticks and serves Linux RV32 syscalls; dual-mode drivers and a
kernel module. :class:`nodes.guest_os.node.OsNode` is the node."""
