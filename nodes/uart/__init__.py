"""The UART: the machine's console device (DESIGN.md §3, Devices).

Bytes the OS writes go to a log file and to every TCP client on loopback
(``nc 127.0.0.1 PORT``); bytes a client types come back as ``uart_rx``
interrupts on ``irq:<name>``. :mod:`nodes.uart.node` holds the node and its
message interface.
"""
