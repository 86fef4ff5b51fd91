"""The exception that unwinds an instruction that stopped (a trap, a halt):
shared by the interpreter (core.py) and the translated regions
(translate.py), which the core builds, so neither imports the other for it."""


class Fault(Exception):
    """Internal: unwinds an instruction that stopped; `Core.stop` says why."""
