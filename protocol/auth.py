"""Message authentication: every frame carries a MAC of its sender (docs/security.md).

A frame on the wire is the msgpack message (:mod:`protocol.messages`), or
a batch of them (:func:`protocol.messages.encode_batch`: one MAC for a
burst), followed by a 32-byte trailer::

    frame = message || person || tag
    person = <QQ: the sender's incarnation, the link's counter>
    tag = blake2b(person || message, key=k(src→dst), digest_size=16)

**Keys.** The orchestrator holds the cluster's *master secret* ``M``
(``<run dir>/keys/master.key``, 0600). Every directed link has its own
key, ``k(A→B) = HMAC-SHA256(M, "link\\0A\\0B")``, and a node is handed, in
its config, only the keys of its own links (those it sends on and those it
receives on). So a node can sign as itself to anyone, and can verify what is
sent to it, but cannot make a frame that a third node would take for
another node's: that needs a key only the other two hold.

Parties outside the topology (the CLI, a test's client, ``hwemu run``) are
*clients*: each node ``N`` holds ``c(N) = HMAC-SHA256(M, "client\\0N")``
and derives the link keys of any client ``X`` from it
(``HMAC-SHA256(c(N), "c2n\\0X")`` one way, ``"n2c\\0X"`` the other).
The client file ``<run dir>/keys/client.json`` (0600) lists ``c(N)`` for
every node: whoever can read it (the user who started the cluster) can talk
to the cluster as a client; a node holds only its own ``c(N)``, so it
cannot act as a client towards another node.

**Replays.** The MAC binds the link (its key is per direction and per pair),
the sender's incarnation (:attr:`protocol.transport.Party.incarnation`,
larger after a restart) and a counter the sender increments for every frame
it sends on that link. A receiver keeps, per sender, the newest incarnation it
verified, the highest counter, and which of the counters below it did not
come yet (:data:`WINDOW` below the highest): a
frame of an older incarnation, a counter below the window or one seen
already is refused. A frame is checked before it is parsed; one that fails
is dropped and counted (``auth_failed``), never answered.

blake2b is keyed natively (RFC 7693, no HMAC construction needed), and a
keyed state is made once per link and copied for each frame, which skips the
key's own compression: half the cost of keying it anew (about 0.5 µs for a
100-byte message on a quiet host; ``bench/msgplane.py --mac`` prints the
whole plane's cost with and without).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import struct
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

TAG = 16  # bytes of MAC
TRAILER = 16 + TAG  # person (incarnation, counter) + tag
WINDOW = 1024  # counters below the highest seen that may still arrive (reordered under a full queue)
_PERSON = struct.Struct("<QQ")
_blake2b = hashlib.blake2b
_compare = hmac.compare_digest
KEY_DIR = "keys"
MASTER = "master.key"
CLIENT = "client.json"


class AuthError(Exception):
    """A frame that cannot be taken as its claimed sender's; ``reason`` says why."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def _kdf(key: bytes, *parts: str) -> bytes:
    return hmac.digest(key, "\0".join(parts).encode(), "sha256")


def link_key(master: bytes, src: str, dst: str) -> bytes:
    """``k(src→dst)``, the key of the directed link between two topology nodes."""
    return _kdf(master, "link", src, dst)


def client_secret(master: bytes, node: str) -> bytes:
    """``c(node)``: what ``node`` derives its clients' link keys from."""
    return _kdf(master, "client", node)


def client_keys(secret: bytes, client: str) -> tuple[bytes, bytes]:
    """The (client → node, node → client) link keys of ``client`` from the node's ``c(node)``."""
    return _kdf(secret, "c2n", client), _kdf(secret, "n2c", client)


def keyed(key: bytes) -> Any:
    """A blake2b state keyed with ``key``, to be copied for each frame."""
    return _blake2b(key=key, digest_size=TAG)


class Keyring:
    """One party's keys and its replay windows.

    Args:
        name: the party's name.
        send: peer → key of the link to it.
        recv: peer → key of the link from it.
        derive: for a peer in neither map, its (send, recv) keys, or None if
            it may not talk to this party (a node derives its clients' keys).
    """

    def __init__(self, name: str, send: Mapping[str, bytes], recv: Mapping[str, bytes],
                 derive: Callable[[str], tuple[bytes, bytes] | None] | None = None):
        self.name = name
        # peer -> a keyed blake2b state of the link (copied for each frame)
        self._send = {p: keyed(k) for p, k in send.items()}
        self._recv = {p: keyed(k) for p, k in recv.items()}
        self._derive = derive
        self._counters: dict[str, int] = {}  # peer -> the last counter sent on the link to it
        self.incarnation = 0  # set by the Party that uses it
        # its CURVE identity across hosts (protocol/curve.py: a CurveIdentity or its config), or None
        self.curve: Any = None
        # sender -> [incarnation, highest counter, the counters below it not seen yet (within WINDOW)]
        self._seen: dict[str, list] = {}

    def _keys(self, peer: str) -> tuple[Any, Any]:
        pair = self._derive(peer) if self._derive is not None else None
        if pair is None:
            return None, None
        states = keyed(pair[0]), keyed(pair[1])
        if len(self._send) < 4096:  # clients come and go: keep the cache bounded
            self._send[peer], self._recv[peer] = states
        return states

    def _send_state(self, dst: str) -> Any:
        state = self._send.get(dst)
        return state if state is not None else self._keys(dst)[0]

    def _recv_state(self, src: str) -> Any:
        state = self._recv.get(src)
        return state if state is not None else self._keys(src)[1]

    def seal(self, dst: str, frame: bytes) -> bytes:
        """``frame`` with its trailer for ``dst``.

        Raises:
            AuthError: no key for a link to ``dst``.
        """
        state = self._send.get(dst) or self._send_state(dst)
        if state is None:
            raise AuthError("no_key", f"{self.name} has no key for a link to {dst!r}")
        ctr = self._counters[dst] = self._counters.get(dst, 0) + 1
        person = _PERSON.pack(self.incarnation, ctr)
        h = state.copy()  # a copy of the link's keyed state: the key's compression is done once
        h.update(person)
        h.update(frame)
        return b"".join((frame, person, h.digest()))

    def open(self, src: str, frame: bytes) -> bytes:
        """The message of a sealed ``frame`` from ``src``, once its MAC and freshness are checked.

        Raises:
            AuthError: no key for ``src`` (``unknown_sender``), too short or a
                wrong MAC (``bad_mac``), an older incarnation of ``src``
                (``old_incarnation``) or a counter seen or below the window
                (``replay``).
        """
        state = self._recv.get(src) or self._recv_state(src)
        if state is None:
            raise AuthError("unknown_sender", f"{self.name} has no key for {src!r}")
        if len(frame) < TRAILER:
            raise AuthError("bad_mac", f"a frame of {len(frame)} bytes has no room for a MAC")
        body = frame[:-TRAILER]
        person = frame[-TRAILER:-TAG]
        h = state.copy()
        h.update(person)
        h.update(body)
        if not _compare(h.digest(), frame[-TAG:]):
            raise AuthError("bad_mac", f"the MAC of a frame claimed from {src!r} does not verify")
        inc, ctr = _PERSON.unpack(person)
        seen = self._seen.get(src)
        if seen is not None and inc == seen[0] and ctr == seen[1] + 1:
            seen[1] = ctr  # the next on the link, in order: the usual case
            return body
        return self._fresh(src, seen, inc, ctr, body)

    def _fresh(self, src: str, seen: list | None, inc: int, ctr: int, body: bytes) -> bytes:
        """The replay check of a frame that is not the link's next in order (a
        sender's first, a restarted sender's, one that overtook others, a replay)."""
        if seen is None or inc > seen[0]:  # first frame of this sender's life (a restart has a larger one)
            self._seen[src] = [inc, ctr, set(range(max(1, ctr - WINDOW + 1), ctr))]
            return body
        if inc < seen[0]:
            raise AuthError("old_incarnation", f"a frame of {src}'s incarnation {inc}, older than {seen[0]}")
        top, missing = seen[1], seen[2]
        if ctr > top:  # ahead: the ones skipped may still come (overtaken), within the window
            if ctr - top > WINDOW:
                missing.clear()
            else:
                missing.update(range(top + 1, ctr))
            seen[1] = ctr
            if len(missing) > WINDOW:
                seen[2] = {c for c in missing if c > ctr - WINDOW}
            return body
        if ctr <= top - WINDOW or ctr not in missing:
            raise AuthError("replay", f"{src}'s counter {ctr} was seen already or is too old (highest {top})")
        missing.discard(ctr)
        return body


# -- keys on disk ------------------------------------------------------------------------


def check_private(path: Path) -> None:
    """Refuse a run directory (or key file) that another account can read or write.

    Raises:
        PermissionError: one line naming the path, its mode and the fix.
    """
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})")
    if st.st_mode & 0o077:
        fix = "chmod 700" if stat.S_ISDIR(st.st_mode) else "chmod 600"
        raise PermissionError(f"{path} is open to other accounts (mode {stat.S_IMODE(st.st_mode):o}); "
                              f"`{fix} {path}` or use another run directory")


def make_private_dir(path: Path) -> None:
    """Create ``path`` (0700) or check that an existing one is private (:func:`check_private`)."""
    path = Path(path)
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        os.chmod(path, 0o700)  # against a umask that kept bits off, never on: still set it exactly
    check_private(path)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new 0600 file at ``path`` (atomically replaced)."""
    tmp = Path(f"{path}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def master_secret(run_dir: Path) -> bytes:
    """The run directory's master secret, made (32 random bytes, 0600) if there is none.

    A restarted orchestrator reads the same one, so the nodes it re-attaches
    to keep their keys.

    Raises:
        PermissionError: the run directory or the key is open to other accounts.
    """
    keys = Path(run_dir) / KEY_DIR
    make_private_dir(keys)
    path = keys / MASTER
    if not path.exists():
        write_private(path, secrets.token_bytes(32).hex().encode())
    check_private(path)
    return bytes.fromhex(path.read_text().strip())


def node_auth(master: bytes, name: str, peers: Iterable[str]) -> dict:
    """What a node's config carries under ``auth``: its link keys (hex) and its client secret."""
    peers = [p for p in peers if p != name]
    return {"send": {p: link_key(master, name, p).hex() for p in peers},
            "recv": {p: link_key(master, p, name).hex() for p in peers},
            "client": client_secret(master, name).hex()}


def keyring_from_config(name: str, auth: Mapping) -> Keyring:
    """A node's keyring from its config's ``auth`` (:func:`node_auth`).

    Raises:
        ValueError: a malformed key.
    """
    secret = bytes.fromhex(auth["client"])
    ring = Keyring(name, {p: bytes.fromhex(k) for p, k in auth["send"].items()},
                   {p: bytes.fromhex(k) for p, k in auth["recv"].items()},
                   lambda peer: client_keys(secret, peer)[::-1])
    ring.curve = auth.get("curve")  # the same identity on tcp between hosts (protocol/curve.py)
    return ring


def orchestrator_keyring(master: bytes, name: str, nodes: Iterable[str]) -> Keyring:
    """The orchestrator's keyring: every link of the topology's nodes derived from ``master``,
    anyone else a client."""
    nodes = frozenset(nodes)
    secret = client_secret(master, name)

    def derive(peer: str) -> tuple[bytes, bytes]:
        if peer in nodes:
            return link_key(master, name, peer), link_key(master, peer, name)
        return client_keys(secret, peer)[::-1]

    return Keyring(name, {}, {}, derive)


def write_client_file(run_dir: Path, master: bytes, nodes: Iterable[str]) -> None:
    """``<run dir>/keys/client.json`` (0600): ``c(node)`` of every node, for the user's clients."""
    data = {n: client_secret(master, n).hex() for n in nodes}
    write_private(Path(run_dir) / KEY_DIR / CLIENT, json.dumps(data).encode())


def client_keyring(run_dir: Path, name: str) -> Keyring:
    """The keyring of a client party named ``name`` (the CLI, a test's client) of the cluster
    in ``run_dir``.

    Raises:
        PermissionError: the key file is open to other accounts, or not ours to read.
        FileNotFoundError: no cluster was started in ``run_dir``.
    """
    path = Path(run_dir) / KEY_DIR / CLIENT
    check_private(path)
    secrets_by_node = {n: bytes.fromhex(k) for n, k in json.loads(path.read_text()).items()}
    send, recv = {}, {}
    for node, secret in secrets_by_node.items():
        send[node], recv[node] = client_keys(secret, name)
    return Keyring(name, send, recv)
