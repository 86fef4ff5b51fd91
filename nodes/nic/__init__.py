"""The NIC: guest UDP sockets bridged to host UDP sockets on loopback
(DESIGN.md §3, Devices). :mod:`nodes.nic.node` holds the node and its message
interface.
"""
