"""The network samples (guest/samples/udpecho.c, guest/samples/kvstore.c)
under qemu-riscv32, the reference, talking UDP over the host's loopback.

Each server is started on a free port, the test waits for its ready line on
stdout (a deadline guards against a hang; nothing is timed), then plays a
*conversation* -- a list of (request datagram, exact reply datagram) -- with
:func:`converse`. The conversations and :func:`converse` only need the
server's UDP address, so the same exchanges can be replayed against the same
ELF files running on hwemu's cluster::

    from tests.guest.test_network_samples import converse, echo_conversation
    converse(("127.0.0.1", host_port), echo_conversation())

kvstore's are played in order on one disk, the server restarted (same disk)
between them: kv_fill_conversation() on an empty disk (ready line
"kvstore ready: 0 keys"), kv_restart_conversation(), then
kv_after_restart_conversation(); each ends with QUIT.

kvstore's persistence is checked across a clean QUIT and across a SIGKILL
right after the last acknowledged SET: every "OK" must survive a restart on
the same file. Every process started here is killed by pid in a ``finally``.
"""

from __future__ import annotations

import os
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GUEST = REPO / "guest"
BUILD = GUEST / "build" / "samples"
UDPECHO = BUILD / "udpecho.elf"
KVSTORE = BUILD / "kvstore.elf"

# Guards against a hung server or a lost datagram, not performance checks.
READY_DEADLINE_S = 60.0
EXIT_DEADLINE_S = 60.0
RECV_TIMEOUT_S = 10.0

Conversation = Sequence[tuple[bytes, bytes]]

# kvstore's limits and disk layout (see the comment at the top of kvstore.c)
KEY_MAX, VALUE_MAX, MAX_KEYS, BLOCK = 60, 440, 256, 512
REQUEST_MAX = 1024
MAGIC = b"HWEMUKV1"


# ---- the reusable client ---------------------------------------------------

def converse(address: tuple[str, int], conversation: Conversation,
             *, recv_timeout_s: float = RECV_TIMEOUT_S) -> None:
    """Plays `conversation` against the UDP server at `address`: sends each
    request as one datagram, waits (at most `recv_timeout_s`) for one reply
    datagram from `address`, and asserts it equals the expected reply exactly.
    Sends exactly len(conversation) datagrams from one fresh socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(recv_timeout_s)
        for i, (request, expected) in enumerate(conversation):
            sock.sendto(request, address)
            try:
                reply, sender = sock.recvfrom(65536)
            except TimeoutError:
                pytest.fail(f"exchange {i}: no reply to {_show(request)} within "
                            f"{recv_timeout_s}s", pytrace=False)
            assert sender == address, f"exchange {i}: reply from {sender}, not {address}"
            assert reply == expected, (
                f"exchange {i}: {_show(request)} got {_show(reply)}, expected {_show(expected)}")


def _show(data: bytes) -> str:
    return repr(data) if len(data) <= 80 else f"{data[:60]!r}... ({len(data)} bytes)"


# ---- the conversations -----------------------------------------------------

def echo_conversation(largest: int = 65507) -> list[tuple[bytes, bytes]]:
    """Datagrams udpecho must echo byte for byte, the last `largest` bytes
    long (by default the largest UDP payload over IPv4), then "quit" -> "bye".
    The server then reports len(...) - 1 datagrams served."""
    echoed = [b"hello", b"", bytes(range(256)), b"quit\n", b"QUIT", b"quitquit",
              b" quit", b"x" * largest]
    return [(d, d) for d in echoed] + [(b"quit", b"bye")]


def kv_values() -> dict[bytes, bytes]:
    """Keys and values the kvstore conversations store: the limits, spaces,
    an empty value and every byte value."""
    return {
        b"alpha": b"1",
        b"greeting": b"hello, world  with  spaces",
        b"empty": b"",
        b"binary": bytes(range(256))[:VALUE_MAX],
        b"k" * KEY_MAX: b"v" * VALUE_MAX,
        b"~!@#$%^&*()_+{}|:<>?": b"punctuation key",
    }


def kv_fill_conversation() -> list[tuple[bytes, bytes]]:
    """An empty store: SETs (one overwritten), GETs, COUNT, then QUIT."""
    values = kv_values()
    return [
        (b"COUNT", b"COUNT 0"),
        (b"GET alpha", b"NOTFOUND"),
        (b"SET alpha 0", b"OK"),
        *[(b"SET %s %s" % kv, b"OK") for kv in values.items()],   # alpha: 0 -> 1
        *[(b"GET " + k, b"VALUE " + v) for k, v in values.items()],
        (b"COUNT", b"COUNT %d" % len(values)),
        (b"QUIT", b"BYE"),
    ]


def kv_restart_conversation() -> list[tuple[bytes, bytes]]:
    """After kv_fill_conversation and a restart: everything is there; then
    DEL, NOTFOUND, a reused free record, and every malformed request."""
    values = kv_values()
    n = len(values)
    return [
        (b"COUNT", b"COUNT %d" % n),
        *[(b"GET " + k, b"VALUE " + v) for k, v in values.items()],
        (b"DEL alpha", b"OK"),
        (b"DEL alpha", b"NOTFOUND"),
        (b"GET alpha", b"NOTFOUND"),
        (b"DEL nosuchkey", b"NOTFOUND"),
        (b"COUNT", b"COUNT %d" % (n - 1)),
        (b"SET beta 2", b"OK"),                  # takes alpha's free record
        (b"GET beta", b"VALUE 2"),
        (b"GET greeting\n", b"VALUE " + values[b"greeting"]),   # one "\n" is ignored
        (b"GET greeting\r\n", b"VALUE " + values[b"greeting"]),
        (b"COUNT", b"COUNT %d" % n),
        *kv_error_exchanges(),
        (b"COUNT", b"COUNT %d" % n),
        (b"QUIT", b"BYE"),
    ]


def kv_after_restart_conversation() -> list[tuple[bytes, bytes]]:
    """After kv_restart_conversation and another restart."""
    values = kv_values()
    del values[b"alpha"]
    values[b"beta"] = b"2"
    return [
        (b"COUNT", b"COUNT %d" % len(values)),
        (b"GET alpha", b"NOTFOUND"),
        *[(b"GET " + k, b"VALUE " + v) for k, v in values.items()],
        (b"QUIT", b"BYE"),
    ]


def kv_error_exchanges() -> list[tuple[bytes, bytes]]:
    """Malformed requests and their ERR replies; none changes the store."""
    return [
        (b"", b"ERR empty request"),
        (b"\n", b"ERR empty request"),
        (b"PUT a b", b"ERR unknown command"),
        (b"set a b", b"ERR unknown command"),
        (b"GETX a", b"ERR unknown command"),
        (b"SET", b"ERR usage: SET key value"),
        (b"SET a", b"ERR usage: SET key value"),
        (b"SET  a b", b"ERR usage: SET key value"),
        (b"GET", b"ERR usage: GET key"),
        (b"GET ", b"ERR usage: GET key"),
        (b"GET a b", b"ERR usage: GET key"),
        (b"DEL", b"ERR usage: DEL key"),
        (b"DEL a b", b"ERR usage: DEL key"),
        (b"COUNT 1", b"ERR usage: COUNT"),
        (b"QUIT now", b"ERR usage: QUIT"),
        (b"SET " + b"k" * (KEY_MAX + 1) + b" v", b"ERR key too long"),
        (b"GET " + b"k" * (KEY_MAX + 1), b"ERR key too long"),
        (b"SET a\x01b v", b"ERR bad key"),
        (b"GET caf\xc3\xa9", b"ERR bad key"),
        (b"SET k " + b"v" * (VALUE_MAX + 1), b"ERR value too long"),
        (b"GET " + b"k" * REQUEST_MAX, b"ERR request too long"),
        (b"x" * 2000, b"ERR request too long"),
    ]


# ---- running the servers under qemu-riscv32 --------------------------------

@pytest.fixture(scope="module")
def network_samples() -> None:
    """guest/build/samples/{udpecho,kvstore}.elf, built by `make -C guest`."""
    for tool in ("make", "riscv64-unknown-elf-gcc", "qemu-riscv32"):
        assert shutil.which(tool), f"{tool} missing: run ./scripts/setup.sh"
    built = subprocess.run(["make", "-C", str(GUEST)], check=False, capture_output=True, text=True)
    assert built.returncode == 0, f"make -C guest failed:\n{built.stderr[-4000:]}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


class Server:
    """One guest server under qemu-riscv32, stdout captured, stderr in a file."""

    def __init__(self, elf: Path, args: Sequence[str], stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self.stdout = b""
        self._stderr = stderr_path.open("wb")
        self.proc = subprocess.Popen(["qemu-riscv32", str(elf), *args],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self._stderr)
        os.set_blocking(self.proc.stdout.fileno(), False)

    def _read_until(self, done, deadline_s: float) -> None:
        deadline = time.monotonic() + deadline_s
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not done():
                left = deadline - time.monotonic()
                assert left > 0, (f"deadline passed; stdout so far {self.stdout!r}, "
                                  f"stderr {self.stderr_path.read_bytes()[-1500:]!r}")
                if sel.select(left):
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                    if not chunk:
                        return
                    self.stdout += chunk

    def wait_ready(self) -> bytes:
        """Waits for the first stdout line and returns it (without "\\n")."""
        self._read_until(lambda: b"\n" in self.stdout, READY_DEADLINE_S)
        assert b"\n" in self.stdout, (
            f"exited ({self.proc.poll()}) before its ready line; stdout {self.stdout!r}, "
            f"stderr {self.stderr_path.read_bytes()[-1500:]!r}")
        return self.stdout.split(b"\n", 1)[0]

    def wait_exit(self) -> tuple[int, bytes]:
        """Reads stdout to EOF, waits for the exit; returns (code, stdout)."""
        self._read_until(lambda: False, EXIT_DEADLINE_S)
        return self.proc.wait(timeout=EXIT_DEADLINE_S), self.stdout

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=EXIT_DEADLINE_S)

    def close(self) -> None:
        try:
            self.kill9()
        finally:
            self.proc.stdout.close()
            self._stderr.close()


def run_session(elf: Path, args: Sequence[str], ready: bytes, conversation: Conversation,
                address: tuple[str, int], tmp_path: Path, final_line: bytes) -> None:
    """Starts `elf`, checks its ready line, plays `conversation` (which ends
    the server), and checks it exits 0 having printed exactly the two lines."""
    server = Server(elf, args, tmp_path / f"{elf.stem}.stderr")
    try:
        assert server.wait_ready() == ready
        converse(address, conversation)
        code, out = server.wait_exit()
        assert (code, out) == (0, ready + b"\n" + final_line + b"\n"), server.stderr_path.read_bytes()
    finally:
        server.close()


def kv_session(disk: Path, conversation: Conversation, tmp_path: Path, *,
               keys: tuple[int, int]) -> None:
    """One kvstore run on `disk` playing `conversation`, which ends with QUIT;
    `keys`: how many keys the store holds at the start and at the end."""
    port = free_udp_port()
    run_session(KVSTORE, [str(disk), str(port)], b"kvstore ready: %d keys" % keys[0],
                conversation, ("127.0.0.1", port), tmp_path,
                b"kvstore stopped: %d keys" % keys[1])


# ---- udpecho ---------------------------------------------------------------

def test_udpecho_echoes_every_datagram_exactly_and_quits_on_quit(network_samples, tmp_path):
    port = free_udp_port()
    conversation = echo_conversation()
    run_session(UDPECHO, [str(port)], b"udpecho listening on %d" % port, conversation,
                ("127.0.0.1", port), tmp_path,
                b"udpecho served %d datagrams" % (len(conversation) - 1))


def test_udpecho_serves_two_clients_by_their_own_addresses(network_samples, tmp_path):
    port = free_udp_port()
    address = ("127.0.0.1", port)
    server = Server(UDPECHO, [str(port)], tmp_path / "udpecho.stderr")
    try:
        assert server.wait_ready() == b"udpecho listening on %d" % port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, \
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
            for sock in (a, b):
                sock.settimeout(RECV_TIMEOUT_S)
            a.sendto(b"from a", address)
            b.sendto(b"from b", address)
            assert b.recvfrom(100) == (b"from b", address)
            assert a.recvfrom(100) == (b"from a", address)
        converse(address, [(b"quit", b"bye")])
        assert server.wait_exit() == (0, b"udpecho listening on %d\nudpecho served 2 datagrams\n" % port)
    finally:
        server.close()


@pytest.mark.parametrize("port", ["0", "65536", "x", "7000x", ""])
def test_udpecho_refuses_a_bad_port(network_samples, tmp_path, port):
    server = Server(UDPECHO, [port], tmp_path / "udpecho.stderr")
    try:
        assert server.wait_exit() == (2, b"udpecho: bad port '%s' (want 1..65535)\n" % port.encode())
    finally:
        server.close()


# ---- kvstore ---------------------------------------------------------------

def test_kvstore_keeps_every_value_across_restarts(network_samples, tmp_path):
    disk = tmp_path / "kv.img"                 # does not exist: created with O_CREAT
    n = len(kv_values())
    kv_session(disk, kv_fill_conversation(), tmp_path, keys=(0, n))
    kv_session(disk, kv_restart_conversation(), tmp_path, keys=(n, n))
    kv_session(disk, kv_after_restart_conversation(), tmp_path, keys=(n, n))


def test_kvstore_disk_layout(network_samples, tmp_path):
    """The on-disk format documented in kvstore.c: one 512-byte header block,
    then one 512-byte record per key, a deleted record zeroed and reused."""
    disk = tmp_path / "kv.img"
    kv_session(disk, [(b"SET a 1", b"OK"), (b"SET bb two", b"OK"), (b"SET c 3", b"OK"),
                      (b"DEL a", b"OK"), (b"SET bb 2", b"OK"), (b"QUIT", b"BYE")], tmp_path,
               keys=(0, 2))
    image = disk.read_bytes()
    assert len(image) == 4 * BLOCK
    assert image[:BLOCK] == MAGIC + struct.pack("<II", 3, BLOCK) + bytes(BLOCK - 16)
    assert image[BLOCK:2 * BLOCK] == bytes(BLOCK)           # a: deleted

    def record(key: bytes, value: bytes) -> bytes:
        head = struct.pack("<IHH", 1, len(key), len(value))
        return head + key.ljust(KEY_MAX, b"\0") + value.ljust(VALUE_MAX, b"\0") + bytes(4)

    assert image[2 * BLOCK:3 * BLOCK] == record(b"bb", b"2")
    assert image[3 * BLOCK:] == record(b"c", b"3")


def test_kvstore_loses_no_acknowledged_set_when_killed(network_samples, tmp_path):
    disk = tmp_path / "kv.img"
    values = {b"key%02d" % i: b"value %d " % i * (i % 7 + 1) for i in range(24)}
    values[b"key03"] = b"overwritten"          # an acknowledged overwrite counts too
    sets = [(b"SET key03 first", b"OK"), *[(b"SET %s %s" % kv, b"OK") for kv in values.items()]]
    port = free_udp_port()
    server = Server(KVSTORE, [str(disk), str(port)], tmp_path / "kvstore.stderr")
    try:
        assert server.wait_ready() == b"kvstore ready: 0 keys"
        converse(("127.0.0.1", port), sets)
        server.kill9()                         # right after the last OK
        assert server.proc.returncode == -signal.SIGKILL
    finally:
        server.close()
    kv_session(disk, [*[(b"GET " + k, b"VALUE " + v) for k, v in values.items()],
                      (b"COUNT", b"COUNT %d" % len(values)), (b"QUIT", b"BYE")],
               tmp_path, keys=(len(values), len(values)))


def test_kvstore_uses_a_preexisting_zeroed_disk_image_without_growing_it(network_samples, tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(64 * BLOCK))        # a fresh disk image: all zeros
    kv_session(disk, [(b"SET a 1", b"OK"), (b"SET b 2", b"OK"), (b"QUIT", b"BYE")], tmp_path,
               keys=(0, 2))
    kv_session(disk, [(b"GET a", b"VALUE 1"), (b"GET b", b"VALUE 2"), (b"QUIT", b"BYE")], tmp_path,
               keys=(2, 2))
    assert disk.stat().st_size == 64 * BLOCK


def test_kvstore_fills_up_at_256_keys_and_a_delete_makes_room(network_samples, tmp_path):
    disk = tmp_path / "kv.img"
    fill = [(b"SET k%d %d" % (i, i), b"OK") for i in range(MAX_KEYS)]
    kv_session(disk, [*fill, (b"SET one-more x", b"ERR full"), (b"COUNT", b"COUNT %d" % MAX_KEYS),
                         (b"SET k7 seven", b"OK"),        # overwriting needs no new record
                         (b"DEL k100", b"OK"), (b"SET one-more x", b"OK"),
                         (b"SET two-more x", b"ERR full"), (b"QUIT", b"BYE")], tmp_path,
               keys=(0, MAX_KEYS))
    kv_session(disk, [(b"GET k7", b"VALUE seven"), (b"GET k100", b"NOTFOUND"),
                      (b"GET one-more", b"VALUE x"), (b"GET k255", b"VALUE 255"),
                      (b"QUIT", b"BYE")], tmp_path, keys=(MAX_KEYS, MAX_KEYS))
    assert disk.stat().st_size == (1 + MAX_KEYS) * BLOCK


def test_kvstore_refuses_a_file_that_is_not_a_store(network_samples, tmp_path):
    disk = tmp_path / "notes.txt"
    disk.write_bytes(b"my precious notes\n" * 100)
    port = free_udp_port()
    server = Server(KVSTORE, [str(disk), str(port)], tmp_path / "kvstore.stderr")
    try:
        assert server.wait_exit() == (1, b"kvstore: %s is not a kvstore (bad magic)\n" % bytes(disk))
    finally:
        server.close()
    assert disk.read_bytes() == b"my precious notes\n" * 100


@pytest.mark.parametrize("args, reply", [
    ([], b"usage: kvstore <disk device or file> <udp port>\n"),
    (["kv.img"], b"usage: kvstore <disk device or file> <udp port>\n"),
    (["kv.img", "0"], b"kvstore: bad port '0' (want 1..65535)\n"),
    (["kv.img", "70000"], b"kvstore: bad port '70000' (want 1..65535)\n"),
])
def test_kvstore_refuses_bad_arguments(network_samples, tmp_path, args, reply):
    server = Server(KVSTORE, args, tmp_path / "kvstore.stderr")
    try:
        assert server.wait_exit() == (2, reply)
    finally:
        server.close()
