"""The node layer's errors (the message plane's are in :mod:`protocol.errors`).

- :class:`Refused`: a device command or I/O request that completes with an
  error status (``-errno``) and a reason: the disk's and the NIC's
  completions, the VMM's shared devices, the OS's drivers. An expected
  outcome, answered to whoever asked, never logged as a bug.
- :class:`OptionError`: a node option its kind does not take; a node that
  raises it at start-up prints one line (naming node, option and value) and
  exits 2 (:func:`nodes.runtime.main`), never a traceback.
"""

from __future__ import annotations

from typing import Any


class Refused(Exception):
    """A command refused or failed with ``errno``: completes with ``status`` = ``-errno``.

    Attributes:
        errno: the positive error number (``errno.EIO`` ...).
        status: ``-errno``, what a completion carries.
        reason: the human sentence.
    """

    def __init__(self, err: int, reason: str = ""):
        super().__init__(reason)
        self.errno = err
        self.status = -err
        self.reason = reason


class OptionError(ValueError):
    """A node option with a value its kind does not take.

    Attributes:
        node: the node's name. option: the option's key. value: what was given.
        detail: the option, what was expected and the value (``str()`` adds the node).
    """

    def __init__(self, kind: str, node: str, option: str, value: Any, expected: str):
        self.node = node
        self.option = option
        self.value = value
        self.detail = f"option {option!r}: expected {expected}, got {value!r}"
        super().__init__(f"{kind} {node}: {self.detail}")
