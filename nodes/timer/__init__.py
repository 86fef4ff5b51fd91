"""The timer: periodic tick, one-shot alarms and the wall clock (DESIGN.md §3,
Devices). :mod:`nodes.timer.node` holds the node and its message interface.
"""
