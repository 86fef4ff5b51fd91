"""`python -m nodes.streamer --config FILE` (started by the launcher)."""

from nodes.runtime import main
from nodes.streamer.node import StreamerOrSink

main(StreamerOrSink)
