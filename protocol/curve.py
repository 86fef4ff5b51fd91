"""CURVE on every ``tcp://`` endpoint: who is at the other end of a connection (docs/hosts.md).

Beside the per-frame MACs of :mod:`protocol.auth` (which say who *sent* a
frame, over any transport), a placed cluster (``[hosts]``, parties on
several hosts) encrypts and authenticates every tcp connection with ZeroMQ's
CURVE (CurveZMQ: Curve25519 keys, a handshake per connection, every frame
encrypted with per-connection nonces, so a frame captured on the wire cannot
be replayed into another connection nor into the same one).

**Keys.** ``hwemu keys init`` (or the orchestrator at start, if there are
none) makes, in ``<run dir>/keys/curve/``:

- ``<name>.key`` (0600) for every party: the orchestrator, each node, and
  ``*client`` (the user's CLI calls and tools: one key pair, like the
  ``client.json`` of protocol/auth.py);
- ``public.json``: name -> public key, the set of authorised keys.

A node is handed, in its config, its own key pair and the public keys of
the others (never another's secret).

**Identity.** A node's name is one identity for both mechanisms: the MAC key
of its links and its CURVE key pair. A party that serves a tcp endpoint runs
a ZAP handler (:class:`ZapHandler`, the ZeroMQ authentication protocol, RFC
27) that accepts a connection only if its client key is in the authorised
set and gives it the key's owner as its ZMQ ``User-Id``. The transport then
refuses every message of that connection whose sender (routing id, then
``src``, checked as before) is not that owner, and counts it
(``wrong_key``). A client with no key, or a key not in the set, completes no
handshake: nothing it sends reaches the inbox (``curve_refused`` counts
the handshakes refused).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import zmq
from zmq.utils import z85

from protocol.auth import KEY_DIR, check_private, make_private_dir, write_private
from protocol.messages import register

log = logging.getLogger("hwemu.curve")

CURVE_DIR = "curve"
PUBLIC = "public.json"
CLIENT = "*client"  # the identity of the user's clients (not a node name: '*' is not allowed in one)
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
# the authority (the orchestrator) tells every party that a node now runs on another host;
# the transport takes it (Party.moved) before any handler, from the authority only
MOVED = "peer_moved"
register(MOVED, node="str", endpoint="str")


@dataclass
class CurveIdentity:
    """One party's CURVE keys (z85 text) and the authorised public keys.

    Args:
        name: the party.
        public, secret: its key pair.
        peers: name -> public key of every authorised party (itself and ``*client`` included).
        bind: the ``tcp://`` endpoint it serves (with CURVE), None if it serves none.
        authority: who may tell it that a peer moved (the orchestrator).
    """

    name: str
    public: bytes
    secret: bytes
    peers: dict[str, bytes]
    bind: str | None = None
    authority: str | None = None
    owners: dict[bytes, str] = field(init=False)

    def __post_init__(self) -> None:
        # the ZAP handler gets the raw 32-byte key: index by it
        self.owners = {z85.decode(k): n for n, k in self.peers.items()}

    def to_config(self) -> dict:
        """What a node's config carries under ``auth.curve``."""
        return {"public": self.public.decode(), "secret": self.secret.decode(),
                "peers": {n: k.decode() for n, k in self.peers.items()}, "bind": self.bind,
                "authority": self.authority}

    @classmethod
    def from_config(cls, name: str, cfg: Mapping) -> "CurveIdentity":
        """The inverse of :meth:`to_config`.

        Raises:
            ValueError: a key that is not 40 characters of z85.
        """
        keys = {n: _key(k) for n, k in cfg["peers"].items()}
        return cls(name, _key(cfg["public"]), _key(cfg["secret"]), keys, cfg.get("bind"), cfg.get("authority"))

    def serve(self, sock: zmq.Socket) -> None:
        """Make the next ``bind`` of ``sock`` a CURVE server with this party's key."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def client(self, sock: zmq.Socket, server: str) -> None:
        """Make ``sock`` a CURVE client of ``server``'s endpoint (before its ``connect``).

        Raises:
            KeyError: ``server`` has no authorised key.
        """
        sock.curve_serverkey = self.peers[server]
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret


def _key(text: str | bytes) -> bytes:
    key = text.encode() if isinstance(text, str) else text
    if len(key) != 40:
        raise ValueError(f"a CURVE key is 40 characters of z85, got {len(key)}")
    z85.decode(key)  # raises ValueError on a character outside z85
    return key


# -- the ZAP handler -----------------------------------------------------------------------


class ZapHandler:
    """Answers the ZAP requests of one ZeroMQ context, in a thread of its own
    (a handshake never waits for the party's trio loop, which may be computing).

    Only CURVE requests with an authorised key pass; the reply's User-Id is the
    key's owner. Any other mechanism is accepted as is: ZeroMQ asks only for
    sockets with a mechanism or a ZAP domain, which our ipc sockets have not.
    """

    def __init__(self, ctx: zmq.Context):
        self.ctx = ctx
        self.owners: dict[bytes, str] = {}
        self.refused = 0
        self.accepted = 0
        self._counters: list[dict] = []  # the parties' counters that show curve_refused
        self._rep = ctx.socket(zmq.REP)
        self._rep.linger = 0
        self._rep.bind(ZAP_ENDPOINT)  # before any CURVE bind: a handshake without a handler fails
        self._stop_addr = f"inproc://hwemu-zap-stop-{id(self)}"
        self._stop = ctx.socket(zmq.PAIR)
        self._stop.linger = 0
        self._stop.bind(self._stop_addr)
        self._thread = threading.Thread(target=self._run, name="zap", daemon=True)
        self._thread.start()

    def allow(self, owners: Mapping[bytes, str]) -> None:
        self.owners = {**self.owners, **owners}

    def count_into(self, counters: dict) -> None:
        """Count every refused handshake in ``counters["curve_refused"]`` too (a party's
        counters: only this thread writes that key)."""
        self._counters.append(counters)

    def _run(self) -> None:
        stop = self.ctx.socket(zmq.PAIR)
        stop.connect(self._stop_addr)
        poller = zmq.Poller()
        poller.register(self._rep, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        try:
            while True:
                ready = dict(poller.poll())
                if stop in ready:
                    return
                if self._rep in ready:
                    self._rep.send_multipart(self._answer(self._rep.recv_multipart()))
        finally:
            stop.close(linger=0)
            self._rep.close(linger=0)

    def _answer(self, req: list[bytes]) -> list[bytes]:
        if len(req) < 6:
            return [b"1.0", b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, address, _identity, mechanism = req[:6]
        if mechanism != b"CURVE":
            return [version, request_id, b"200", b"OK", b"", b""]
        owner = self.owners.get(req[6]) if len(req) > 6 else None
        if owner is None:
            self.refused += 1
            for counters in self._counters:
                counters["curve_refused"] = counters.get("curve_refused", 0) + 1
            if self.refused & (self.refused - 1) == 0:  # 1, 2, 4 ...: a flood logs little
                log.warning("refused a CURVE handshake from %s: unknown key (%d so far)",
                            address.decode(errors="replace"), self.refused)
            return [version, request_id, b"400", b"unknown key", b"", b""]
        self.accepted += 1
        return [version, request_id, b"200", b"OK", owner.encode(), b""]

    def close(self) -> None:
        self._stop.send(b"")
        self._thread.join(timeout=2)
        self._stop.close(linger=0)


_handlers: dict[int, ZapHandler] = {}
_lock = threading.Lock()


def zap_handler(ctx: zmq.Context, ident: CurveIdentity) -> ZapHandler:
    """The ZAP handler of ``ctx`` (started at the first call), with ``ident``'s peers allowed."""
    with _lock:
        handler = _handlers.get(id(ctx))
        if handler is None or handler.ctx is not ctx:
            handler = _handlers[id(ctx)] = ZapHandler(ctx)
    handler.allow(ident.owners)
    return handler


def stop_zap(ctx: zmq.Context) -> None:
    """Stop ``ctx``'s ZAP handler (before the context is terminated)."""
    with _lock:
        handler = _handlers.pop(id(ctx), None)
    if handler is not None:
        handler.close()


# -- keys on disk ------------------------------------------------------------------------


def key_dir(run_dir: Path) -> Path:
    return Path(run_dir) / KEY_DIR / CURVE_DIR


def init_keys(run_dir: Path, names: Iterable[str], *, replace: bool = False) -> dict[str, bytes]:
    """Make a key pair for every party of ``names`` and ``*client`` that has none
    (every one if ``replace``), and write the authorised set. Returns name -> public key.

    Raises:
        PermissionError: the run directory or a key is open to other accounts.
    """
    make_private_dir(Path(run_dir))
    d = key_dir(run_dir)
    make_private_dir(d.parent)
    make_private_dir(d)
    public: dict[str, bytes] = {}
    for name in [*names, CLIENT]:
        path = d / f"{name}.key"
        if replace or not path.exists():
            pub, sec = zmq.curve_keypair()
            write_private(path, json.dumps({"public": pub.decode(), "secret": sec.decode()}).encode())
        public[name] = _key(json.loads(path.read_text())["public"])
    write_private(d / PUBLIC, json.dumps({n: k.decode() for n, k in public.items()}, indent=1).encode())
    return public


def have_keys(run_dir: Path, names: Iterable[str]) -> bool:
    d = key_dir(run_dir)
    return (d / PUBLIC).exists() and all((d / f"{n}.key").exists() for n in [*names, CLIENT])


def load_identity(run_dir: Path, name: str, *, bind: str | None = None,
                  authority: str | None = None) -> CurveIdentity:
    """``name``'s key pair and the authorised set, from ``<run dir>/keys/curve``.

    Raises:
        PermissionError: a key file open to other accounts or not ours.
        FileNotFoundError: no keys (``hwemu keys init``).
        ValueError: a malformed key file.
    """
    d = key_dir(run_dir)
    path = d / f"{name}.key"
    check_private(path)
    try:
        pair = json.loads(path.read_text())
        peers = {n: _key(k) for n, k in json.loads((d / PUBLIC).read_text()).items()}
        ident = CurveIdentity(name, _key(pair["public"]), _key(pair["secret"]), peers, bind, authority)
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a CURVE key file ({exc})") from None
    if peers.get(name) != ident.public:
        raise ValueError(f"{path}: its public key is not {name}'s in {d / PUBLIC} (run `hwemu keys init` again)")
    return ident


def ipc_private(path: str) -> None:
    """Make an ``ipc://`` socket file private (0600): only its owner may connect."""
    try:
        os.chmod(path, 0o600)
    except FileNotFoundError:
        pass
