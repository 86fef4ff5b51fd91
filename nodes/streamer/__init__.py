"""The streamer: a sender of numbered messages and its sinks, for route-change
demos, tests and benchmarks. :mod:`nodes.streamer.node` holds the node.
"""
