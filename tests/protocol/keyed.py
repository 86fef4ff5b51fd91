"""Two real parties with keys of one cluster, for the MAC tests (test_auth, test_auth_batch)."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import trio

from protocol import auth
from protocol.messages import Message
from protocol.transport import Party

MASTER = bytes(range(32))


def keyring(name: str, peers: list[str]) -> auth.Keyring:
    """``name``'s keys among ``peers`` (node names of one cluster, master secret MASTER)."""
    return auth.keyring_from_config(name, auth.node_auth(MASTER, name, peers))


@asynccontextmanager
async def alice_and_bob(tmp_path: Path, on_bob: Callable[[Party, Message], Awaitable[None]]
                        ) -> AsyncIterator[tuple[Party, Party, trio.Nursery]]:
    """alice and bob serving (bob's messages go to ``on_bob(bob, msg)``), in their nursery;
    closed, with their sockets, on exit."""
    directory = {"alice": f"ipc://{tmp_path}/alice", "bob": f"ipc://{tmp_path}/bob"}
    with Party("alice", directory["alice"], directory, auth=keyring("alice", list(directory))) as alice, \
            Party("bob", directory["bob"], directory, auth=keyring("bob", list(directory))) as bob:
        async with trio.open_nursery() as nursery:
            await nursery.start(alice.serve, lambda m: trio.lowlevel.checkpoint())
            await nursery.start(bob.serve, lambda m: on_bob(bob, m))
            yield alice, bob, nursery
            nursery.cancel_scope.cancel()
