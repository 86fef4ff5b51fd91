"""The disk: a block device over an image file (DESIGN.md §3, Devices).

Commands are queued and executed in order by one worker; data moves by DMA
through ``memctl``; a write is acknowledged (``disk_done``) only once durable.
:mod:`nodes.disk.node` holds the node and its message interface.
"""
