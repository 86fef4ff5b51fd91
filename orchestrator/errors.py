"""The orchestrator layer's errors, in one place (the message plane's are in
:mod:`protocol.errors`, the nodes' in ``nodes/errors.py``).

Every class here is an *expected* outcome: a refusal or a failure the
orchestrator reports as an ``error`` reply whose ``reason`` is the class's
snake_case :attr:`OrchestratorError.reason`, or the CLI as one line. Anything
else that escapes a control request (a ``KeyError``, a ``RuntimeError`` ...)
is a bug: it is logged with its traceback and answered ``internal_error``.
"""

from __future__ import annotations

from typing import Any

from protocol.errors import ProtocolError


class OrchestratorError(Exception):
    """A refusal or failure the orchestrator reports (``reason`` in its ``error`` reply)."""

    reason = "failed"


class NoSuchNode(OrchestratorError):
    """A request names a node the topology does not have."""

    reason = "no_such_node"


class StartError(OrchestratorError):
    """A node did not come up. ``str()`` has its log's tail; ``summary`` is one line
    with the cause (the last line it logged: its one-line error, or a traceback's last)."""

    reason = "start_failed"

    def __init__(self, summary: str, tail: str):
        super().__init__(f"{summary}\n{tail}" if tail else summary)
        self.summary = summary


class RouteChangeError(OrchestratorError):
    """A route change failed.

    Attributes:
        committed: always False now: a failed change is rolled back, the old
            routes are in force (the message says if a sender could not be
            switched back).
    """

    reason = "route_change_failed"

    def __init__(self, message: str, committed: bool = False):
        super().__init__(message)
        self.committed = committed


class ChoreographyError(OrchestratorError):
    """A choreography refused before any step (a precondition) or a step's own failure."""

    reason = "refused"


class ChoreographyFailed(OrchestratorError):
    """A step failed and the completed steps were undone; the report says which."""

    reason = "rolled_back"

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


class TopologyError(OrchestratorError):
    """A topology file that cannot be used; the message names file and key."""

    reason = "bad_topology"

    def __init__(self, source: str, key: str | None, problem: str):
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + problem)


class HistoryError(OrchestratorError):
    """The history cannot be read at all (no such file, no history files)."""

    reason = "bad_history"


class FaultError(ProtocolError):
    """A fault spec the manager refuses (reason ``bad_fault``)."""

    def __init__(self, detail: str, field: str | None = None):
        super().__init__("bad_fault", detail, field)


# -- the client side (the CLI and tests talking to a cluster) ---------------------------

class NotRunning(OrchestratorError):
    """No cluster runs in the run directory."""

    reason = "not_running"


class NotAllowed(NotRunning):
    """This account cannot read the cluster's client keys (it did not start it)."""

    reason = "not_allowed"


class Lost(OrchestratorError):
    """The cluster stopped answering while a command was following it (``hwemu run``, ``status --watch``)."""

    reason = "cluster_lost"


class ForwardRefused(OrchestratorError):
    """The NIC refused a ``--forward`` port map of ``hwemu run``."""

    reason = "forward_refused"
