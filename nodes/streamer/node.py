"""The ``streamer`` node kind: a sender and its receivers, the smallest
cluster that shows a route change (``compose/flip.toml``), used by the
route-change tests and ``bench/msgplane.py`` (started as
``python -m nodes.streamer --config ...``; ``options.role`` picks the part).

- ``streamer``: on ``stream_start`` {count, flow, rate} emits ``count``
  sequenced ``datum`` messages on ``flow`` (without ``count``: until
  ``stream_stop``) at ``rate`` per second (or as fast as the plane takes
  them, in batches: ``emit(..., more=True)``), then answers how many it sent. With ``requests`` each is a
  ``datum_req`` request on the flow (``emit_request``), answered by the sink
  before the next goes out, as a driver's privileged operations are. It is the *sender* of ``data:<its name>``.
- ``sink``: consumes ``datum`` messages, recording each ``fseq`` and the route
  epoch it came with; answers ``sink_report`` with everything it consumed (in
  consumption order).
- either role answers ``ping_probe`` {peer, count} by timing that many
  ping round trips to ``peer`` (node to node, for ``bench/msgplane.py``).

Either role can be made to misbehave on chosen message kinds, for the
failure paths of a route change: ``options.refuse`` lists kinds it answers
with an ``error`` (reason ``refused``), ``options.ignore`` kinds it never
answers (as a hung node). A sink with ``options.stall_s`` stops reading its
inbox that long at its first datum (a receiver behind, its link full).
"""

from __future__ import annotations

import time

import trio

from nodes.options import Option, list_of, number, one_of, string
from nodes.runtime import Node, spawned
from protocol.errors import ProtocolError
from protocol.messages import Field, Message, register

register("stream_start", count=Field("int", required=False), flow="str", rate=Field("int", required=False),
         requests=Field("bool", required=False))
register("datum", n="int")
register("datum_req", n="int")
register("sink_report")
register("stream_stop")
register("ping_probe", peer="str", count="int", warmup=Field("int", required=False))


class StreamerOrSink(Node):
    kind = "streamer"
    OPTIONS = {
        "role": Option(one_of("streamer", "sink"), "sink"),
        "stall_s": Option(number(min=0), 0),  # a sink that stops reading at its first datum, this long
        "refuse": Option(list_of(string()), []),
        "ignore": Option(list_of(string()), []),
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        self.role = self.options["role"]
        self.consumed: list[int] = []
        self.epochs: list[int] = []  # the route epoch of each consumed message
        self.stopping = False
        self.stall = float(self.options["stall_s"])
        for kind in self.options["refuse"]:
            self._handlers[kind] = self._refuse
        for kind in self.options["ignore"]:
            self._handlers[kind] = self._ignore

    async def _refuse(self, msg: Message) -> None:
        raise ProtocolError("refused", f"{self.name} refuses {msg.kind} (options.refuse)")

    async def _ignore(self, msg: Message) -> None:
        return None

    @spawned
    async def on_stream_start(self, msg: Message) -> None:
        flow = msg.body["flow"]
        rate = msg.body.get("rate", 0)  # messages per second, 0 = as fast as possible
        count = msg.body.get("count")
        start = trio.current_time()
        self.stopping = False
        sent = 0
        while (count is None or sent < count) and not self.stopping:
            sent += 1
            paced = rate and sent % 10 == 0
            if msg.body.get("requests"):
                await self.emit_request(flow, "datum_req", {"n": sent})
            else:
                # a burst: one batch and one MAC for many (more follow, but for the last and
                # the one before a pause for the rate)
                await self.emit(flow, "datum", {"n": sent}, more=not paced and sent != count)
            if paced:  # paced in steps of 10 (0.5 ms at 20k/s), not bursts
                await trio.sleep_until(start + sent / rate)
        await self.party.reply(msg, "ok", {"data": {"sent": sent}})

    @spawned
    async def on_ping_probe(self, msg: Message) -> None:
        """Time ``count`` ping round trips from this node to ``peer`` (after
        ``warmup`` untimed ones); answers the round trips in seconds."""
        peer, count = msg.body["peer"], msg.body["count"]
        if not 0 < count <= 100_000:
            raise ProtocolError("bad_field", f"count must be 1..100000, got {count}", "body.count")
        for _ in range(msg.body.get("warmup", 200)):
            await self.party.request(peer, "ping")
        samples = []
        clock = time.perf_counter
        for _ in range(count):
            t = clock()
            await self.party.request(peer, "ping")
            samples.append(clock() - t)
        await self.party.reply(msg, "ok", {"data": {"rtt": samples}})

    async def on_stream_stop(self, msg: Message) -> None:
        self.stopping = True
        await self.party.reply(msg, "ok")

    async def on_datum(self, msg: Message) -> None:
        if self.stall:  # its inbox is not read meanwhile: the sender's link fills up
            stall, self.stall = self.stall, 0
            await trio.sleep(stall)
        self.consumed.append(msg.fseq)
        self.epochs.append(msg.epoch)

    async def on_datum_req(self, msg: Message) -> None:
        await self.on_datum(msg)
        await self.party.reply(msg, "ok")

    async def on_sink_report(self, msg: Message) -> None:
        inflows = {f: {"gaps": i.gaps, "dups": i.dups} for f, i in self.in_flows.items()}
        await self.party.reply(msg, "ok", {"data": {"consumed": self.consumed, "epochs": self.epochs,
                                                     "flows": inflows}})
