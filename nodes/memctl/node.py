"""The memory controller node: the message wrapper around :class:`MemoryController`
(DESIGN.md §3, "Memory controller").

Options:

- ``frames`` (int): total 4 KiB frames of physical memory;
- ``path``: folder of the memory file and metadata snapshot (default
  ``<run_dir>/<name>.mem``; created if missing);
- ``partitions`` ({os: [first_frame, count]}): the firmware's memory map;
  each becomes an identity address space at first boot (after a restart the
  snapshot has them already and they are not recreated).

Requests: ``mem_acquire`` → ``mem_grant``; ``mem_release`` (no reply);
``mem_read`` → ``mem_data``; ``mem_write`` → ``ok``; ``mem_batch`` {space, ops:
[[addr, length] | [addr, bytes], ...]} → ``ok`` {data: {reads}} (several
reads and writes in order, their recalls at once); ``mem_info`` → ``ok``
{data: controller stats}. Errors of the controller become ``error`` replies
with the error's ``reason`` (``mem_fault``, ``bad_address``, ``recovering``...).

A node named like an OS address space may only name its own space; other
initiators (CPUs, the VMM, devices) name the space in the body.

Administration (``protocol/vmm.py``; DESIGN.md §5): ``mem_transfer``,
``mem_set_map``, ``mem_set_identity``, ``mem_create_space``,
``mem_destroy_space``, ``mem_owners`` are accepted only from the orchestrator
(``orch``) and the VMM (``vmm``); ``mem_pin`` / ``mem_unpin`` also from an OS
for its own frames (from ``orch``/``vmm`` for the frames' ``owner``, named in
the body or else the frames' current owner). Each answers ``ok`` {data} or
``error`` (``forbidden``, or the controller's reason). ``mem_transfer``,
``mem_pin`` and ``mem_unpin`` name their frames as ``runs`` [[first, count], ...]
(a loan is a few runs, not thousands of numbers) or as a ``frames`` list
(protocol/frames.py).

Recovery after a restart (the directory of cached copies is soft state and
was lost): every known initiator is asked ``mem_recall`` {frame: -1, mode:
"invalidate"} — "write back and drop everything you hold". A CPU answers by
sending ``mem_release`` with data for each modified page and without for each
clean one, then replying ``mem_recalled`` (the releases arrive first on the
same connection, so they are applied before the reply). An initiator that
does not answer (down, or holds nothing and does not know the request) is
dropped. Then :meth:`MemoryController.finish_recovery`. Until then requests
other than ``mem_release`` get ``error`` ``recovering``; a CPU retries.
Plain ``drop_initiator`` was not enough: a CPU keeps its cache across a
memctl restart, and its modified pages would silently diverge from memory.

A CPU that dies (docs/recovery.md): ``mem_drop_initiator`` {initiator} (from
the orchestrator, before the new CPU starts) forgets its copies and answers
``ok`` {data: {frames, pages}}: every frame whose newest bytes died with it
(held modified; also those dropped earlier because a recall to it timed out,
which are remembered until then), and the same as guest pages per space, so
the OS can stop the processes whose memory went back in time (a machine
check) instead of letting them run on it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import trio

import protocol.hw  # registers the mem_* kinds
import protocol.recovery  # registers mem_drop_initiator
import protocol.vmm  # noqa: F401  (registers the mem_* administration kinds)
from nodes.options import Option, integer, mapping, optional, pair, string
from nodes.runtime import Node, handles, spawned
from protocol import authz
from protocol.constants import ORCHESTRATOR, VMM
from protocol.errors import ProtocolError, RemoteError, RequestTimeout
from protocol.frames import body_frames, check_runs, from_runs, to_runs
from protocol.messages import Message

from .directory import DistinctFrames, MemoryController, is_os
from .errors import MemctlError

log = logging.getLogger("hwemu.memctl")

RECALL_ALL = -1  # mem_recall frame meaning "every frame you hold" (recovery)
RECALL_TIMEOUT = 2.0
ADMINS = frozenset({ORCHESTRATOR, VMM})  # by name, when the node runs without keys (else: protocol/authz.py)


def _frames(body: dict[str, Any]) -> list[int]:
    """The frames a request names (runs or a list); from runs, known distinct, in increasing order."""
    if "runs" in body and "frames" not in body:
        return DistinctFrames(from_runs(sorted(check_runs(body["runs"]))))
    return body_frames(body)  # the former list (or the error naming both)


class MemctlNode(Node):
    kind = "memctl"
    OPTIONS = {
        "frames": Option(integer(min=1)),
        "path": Option(optional(string()), None),
        "partitions": Option(optional(mapping(pair(integer(min=0), "first_frame, count"))), None),
    }

    def __init__(self, cfg):
        super().__init__(cfg)
        opts = self.options
        self.nframes = opts["frames"]
        self.path = Path(opts["path"] or Path(cfg.run_dir) / f"{self.name}.mem")
        self.partitions = {os_name: (rng[0], rng[1]) for os_name, rng in (opts["partitions"] or {}).items()}
        # opened here, before the inbox serves anything: a restarted controller's first requests (a
        # CPU asks again at once) get `recovering`, not a handler failing on a controller not yet
        # there (the CPU took that answer for a fault: a store "to a read-only page" killed kvstore)
        self.path.mkdir(parents=True, exist_ok=True)
        self.mc: MemoryController | None = MemoryController.open(self.path, self.nframes, self._recall)
        self.os_spaces: set[str] = set(self.partitions)
        self.counts = {"recall_timeouts": 0, "dropped_initiators": 0, "lost_frames": 0,
                       "recoveries": 0, "refused": 0}
        self.lost: dict[str, set[int]] = {}
        """initiator -> frames whose newest bytes died with it, until ``mem_drop_initiator`` reports them"""

    # -- life cycle ---------------------------------------------------------------

    async def setup(self) -> None:
        self.mc.recorder = self.recorder
        if self.recorder.on:  # a history's owner model starts from what this life found, then follows each change
            self.recorder("frame", "owners", owners=self.mc.owners(), nframes=self.mc.store.nframes)
        if not self.mc.recovering:
            known = set(self.mc.stats()["spaces"])
            for os_name, (first, count) in self.partitions.items():
                if os_name not in known:
                    await self.mc.create_space(os_name, range(first, first + count))
        self.os_spaces = set(self.partitions) | {s for s in self.mc.stats()["spaces"] if is_os(s)}

    async def work(self, nursery: trio.Nursery) -> None:
        if self.mc.recovering:
            nursery.start_soon(self._recover)

    async def teardown(self) -> None:
        if self.mc is not None:
            self.mc.close()

    async def _recover(self) -> None:
        """Have every known initiator write back and drop all its copies, then serve."""
        async def flush(initiator: str) -> None:
            try:
                await self.party.request(initiator, "mem_recall", {"frame": RECALL_ALL, "mode": "invalidate"},
                                         timeout=RECALL_TIMEOUT)
            except (RequestTimeout, RemoteError, ProtocolError):  # unknown_node is a ProtocolError
                self.counts["dropped_initiators"] += 1
                self._drop(initiator)

        async with trio.open_nursery() as n:
            for initiator in sorted(self.mc.known_initiators):
                if initiator in self.party.directory:
                    n.start_soon(flush, initiator)
        self.mc.finish_recovery()
        self.counts["recoveries"] += 1

    # -- the recall callback ----------------------------------------------------------

    async def _recall(self, holder: str, frame: int, mode: str) -> bytes | None:
        try:
            reply = await self.party.request(holder, "mem_recall", {"frame": frame, "mode": mode},
                                             timeout=RECALL_TIMEOUT)
        except (RequestTimeout, RemoteError) as exc:
            # A holder that cannot answer loses its copies (its newest bytes too).
            self.counts["recall_timeouts"] += isinstance(exc, RequestTimeout)
            self.counts["dropped_initiators"] += 1
            self._drop(holder)
            return None
        return reply.body.get("data")

    def _drop(self, initiator: str) -> list[int]:
        """Forget ``initiator``'s copies; the modified ones are remembered as lost
        until the orchestrator asks (``mem_drop_initiator``), so no loss goes unreported."""
        lost = self.mc.drop_initiator(initiator)
        self.counts["lost_frames"] += len(lost)
        if lost:
            self.lost.setdefault(initiator, set()).update(lost)
            log.warning("%s: modified copies of %d frames died with %s: %s", self.name, len(lost), initiator,
                        to_runs(lost))
        return lost

    async def on_mem_drop_initiator(self, msg: Message) -> None:
        """A CPU died (the orchestrator saw its process exit): its cached copies are
        gone. Reply with every frame whose newest bytes went with it, as guest
        pages per space, so the OS can stop the processes that used them."""
        self._admin(msg)
        initiator = msg.body["initiator"]
        self._drop(initiator)
        frames = sorted(self.lost.pop(initiator, ()))
        await self.party.reply(msg, "ok", {"data": {"frames": frames, "pages": self.mc.guest_pages(frames)}})

    # -- requests ---------------------------------------------------------------------

    def _space(self, msg: Message) -> str:
        """The space a request may name: an OS only its own."""
        space = msg.body["space"]
        if msg.src in self.os_spaces and space != msg.src:
            self.counts["refused"] += 1
            raise ProtocolError("mem_fault", f"{msg.src} is an OS instance and may only access its own "
                                             f"address space {msg.src!r}, not {space!r}", "body.space")
        return space

    @staticmethod
    def _error(exc: MemctlError, ref: str) -> dict[str, Any]:
        return {"reason": exc.reason, "detail": str(exc), "ref": ref}

    @spawned
    async def on_mem_acquire(self, msg: Message) -> None:
        b = msg.body
        space = self._space(msg)
        try:
            grant = await self.mc.acquire(msg.src, space, b["gpn"], b["write"])
        except MemctlError as exc:
            await self.party.reply(msg, "error", self._error(exc, msg.kind))
            return
        if self.recorder.on:  # who may read which frame: a checker compares it with the frame's owner
            self.recorder("frame", "grant", space=space, frame=grant.frame, initiator=msg.src, write=b["write"])
        await self.party.reply(msg, "mem_grant", {"frame": grant.frame, "gpn": b["gpn"],
                                                  "data": grant.data if grant.data is not None else b"",
                                                  "writable": grant.writable})

    async def on_mem_release(self, msg: Message) -> None:
        try:
            self.mc.release(msg.src, msg.body["frame"], msg.body.get("data"))
        except MemctlError as exc:
            # No reply is expected: count it and tell the sender, without crashing.
            await self.party.send(msg.src, "error", self._error(exc, msg.kind))

    @spawned
    async def on_mem_read(self, msg: Message) -> None:
        space = self._space(msg)
        try:
            data = await self.mc.read(msg.src, space, msg.body["addr"], msg.body["length"])
        except MemctlError as exc:
            await self.party.reply(msg, "error", self._error(exc, msg.kind))
            return
        await self.party.reply(msg, "mem_data", {"data": data})

    @spawned
    async def on_mem_write(self, msg: Message) -> None:
        space = self._space(msg)
        try:
            await self.mc.write(msg.src, space, msg.body["addr"], msg.body["data"])
        except MemctlError as exc:
            await self.party.reply(msg, "error", self._error(exc, msg.kind))
            return
        await self.party.reply(msg, "ok", {"data": {"written": len(msg.body["data"])}})

    @spawned
    async def on_mem_batch(self, msg: Message) -> None:
        space = self._space(msg)
        try:
            got = await self.mc.access(msg.src, space, [tuple(op) for op in msg.body["ops"]])
        except MemctlError as exc:
            await self.party.reply(msg, "error", self._error(exc, msg.kind))
            return
        await self.party.reply(msg, "ok", {"data": {"reads": [d for d in got if d is not None]}})

    async def on_mem_info(self, msg: Message) -> None:
        await self.party.reply(msg, "ok", {"data": self.stats()})

    # -- administration (orchestrator / VMM) -------------------------------------------

    def _by_admin(self, msg: Message) -> bool:
        """The orchestrator or the VMM: the rules table's ``admin`` (by node kind), or by name without keys."""
        return authz.ADMIN.allows(msg, self._authz) if self._authz is not None else msg.src in ADMINS

    def _admin(self, msg: Message) -> None:
        if not self._by_admin(msg):
            self.counts["refused"] += 1
            raise ProtocolError("forbidden", f"{msg.kind} is accepted only from {', '.join(sorted(ADMINS))}, "
                                             f"not from {msg.src!r}", "src")

    async def _answer(self, msg: Message, fn) -> None:
        try:
            data = await fn()
        except MemctlError as exc:
            await self.party.reply(msg, "error", self._error(exc, msg.kind))
            return
        await self.party.reply(msg, "ok", {"data": data if data is not None else {}})

    def _pin_owner(self, msg: Message, frames: list[int]) -> str:
        """Whose ``frames`` a pin names: an OS only its own; the orchestrator/VMM any owner's."""
        if self._by_admin(msg):
            owner = msg.body.get("owner")
            if owner is None:
                found = {self.mc.owner_of(f) for f in frames}
                if len(found) > 1:
                    raise ProtocolError("bad_field", f"frames {frames} have several owners {sorted(found)}: "
                                                     "name the owner", "body.owner")
                owner = found.pop() if found else msg.src
            return owner
        if msg.body.get("owner") not in (None, msg.src):
            self.counts["refused"] += 1
            raise ProtocolError("forbidden", f"{msg.src} may pin only its own frames, not {msg.body['owner']!r}'s",
                                "body.owner")
        return msg.src  # the controller checks that it owns them

    @spawned
    async def on_mem_transfer(self, msg: Message) -> None:
        self._admin(msg)
        b = msg.body
        frames = _frames(b)

        async def go():
            await self.mc.transfer(frames, b["from_owner"], b["to_owner"])
            return {"frames": len(frames), "to_owner": b["to_owner"]}
        await self._answer(msg, go)

    @spawned
    @handles("mem_pin", "mem_unpin")
    async def _pinning(self, msg: Message) -> None:
        """``mem_pin`` / ``mem_unpin`` frames of the owner the sender may name; how many it has pinned after."""
        frames = _frames(msg.body)
        owner = self._pin_owner(msg, frames)

        async def go():
            (self.mc.pin_frames if msg.kind == "mem_pin" else self.mc.unpin)(owner, frames)
            return {"owner": owner, "pinned": len(self.mc.pinned(owner))}
        await self._answer(msg, go)

    @spawned
    async def on_mem_set_map(self, msg: Message) -> None:
        self._admin(msg)
        try:
            mapping = {int(g): f for g, f in msg.body["map"].items()}
        except ValueError:
            raise ProtocolError("bad_field", "map keys must be guest page numbers (decimal strings)",
                                "body.map") from None

        async def go():
            await self.mc.set_map(msg.body["space"], mapping)
            return {"space": msg.body["space"], "pages": len(mapping)}
        await self._answer(msg, go)

    @spawned
    async def on_mem_set_identity(self, msg: Message) -> None:
        self._admin(msg)

        async def go():
            await self.mc.set_identity(msg.body["space"])
            return {"space": msg.body["space"]}
        await self._answer(msg, go)

    @spawned
    async def on_mem_create_space(self, msg: Message) -> None:
        self._admin(msg)

        async def go():
            await self.mc.create_space(msg.body["space"], msg.body["frames"])
            if is_os(msg.body["space"]):  # the VMM's own space does not restrict it to itself
                self.os_spaces.add(msg.body["space"])
            return {"space": msg.body["space"], "frames": len(msg.body["frames"])}
        await self._answer(msg, go)

    @spawned
    async def on_mem_destroy_space(self, msg: Message) -> None:
        self._admin(msg)

        async def go():
            await self.mc.destroy_space(msg.body["space"])
            return {"space": msg.body["space"]}
        await self._answer(msg, go)

    async def on_mem_owners(self, msg: Message) -> None:
        self._admin(msg)
        data: dict[str, Any] = dict(self.mc.owners())
        try:
            self.mc.check_invariants()
            data["invariants"] = "ok"
        except MemctlError as exc:
            data["invariants"] = str(exc)
        await self.party.reply(msg, "ok", {"data": data})

    def stats(self) -> dict[str, Any]:
        s = super().stats()
        s.update(self.counts)
        if self.mc is not None:
            s.update(self.mc.stats())
        return s
