"""The node's event recorder (``Node.recorder``): :class:`protocol.recorder.Recorder`.

It lives in ``protocol`` because the transport records every message a party
sends and receives, and the orchestrator records its choreography steps with
the same class (neither may import ``nodes``); a node kind imports it from
here or from there, it is one class.
"""

from protocol.recorder import Recorder

__all__ = ["Recorder"]
