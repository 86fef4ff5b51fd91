"""Talking to a running orchestrator from the CLI (the control plane).

The CLI joins the message plane as ``cli-<pid>-<n>`` (a fresh name per call:
a peer's link to an earlier call's inbox at the same path could swallow the
reply while it reconnects) with its own inbox in the run directory and
advertises it (``reply_to``), since it is not in the topology.
It signs as a *client* with the keys of ``<run dir>/keys/client.json``
(0600, protocol/auth.py): only the account that started the cluster can
read them, so only it can control the cluster.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import trio

from orchestrator.daemon import read_state
from orchestrator.errors import NotAllowed, NotRunning
from protocol import curve
from protocol.auth import Keyring, client_keyring
from protocol.constants import ORCHESTRATOR
from protocol.errors import RemoteError, RequestTimeout
from protocol.messages import Message
from protocol.transport import Party

_calls = itertools.count(1)


def client_auth(run_dir: Path, me: str) -> Keyring:
    """The keys of client ``me`` of the cluster in ``run_dir``.

    Raises:
        NotAllowed: the key file cannot be read, or is open to other accounts.
    """
    try:
        ring = client_keyring(run_dir, me)
        if curve.key_dir(run_dir).exists():  # a cluster across hosts: its tcp endpoints want the client's CURVE key
            ring.curve = curve.load_identity(run_dir, curve.CLIENT)
        return ring
    except (OSError, ValueError) as exc:
        raise NotAllowed(f"cannot control the cluster in {run_dir}: its client key: {exc}") from None


def default_run_dir() -> Path:
    """``$HWEMU_RUN_DIR``, else ``./.hwemu``."""
    return Path(os.environ.get("HWEMU_RUN_DIR") or Path.cwd() / ".hwemu").resolve()


async def call(run_dir: Path, kind: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Any:
    """Send one control request to the orchestrator and return its ``data``.

    Raises:
        NotRunning: no cluster in ``run_dir``.
        RemoteError: the orchestrator refused (its reason is in the message).
        RequestTimeout: it did not answer.
    """
    state = read_state(run_dir)
    if state is None:
        raise NotRunning(f"no cluster is running in {run_dir} (start one with `hwemu up TOPOLOGY`)")
    me = f"cli-{os.getpid()}-{next(_calls)}"
    party = Party(me, f"ipc://{run_dir}/{me}.sock", {ORCHESTRATOR: state["endpoint"]}, advertise=True,
                  auth=client_auth(run_dir, me))
    reply = await request_once(party, ORCHESTRATOR, kind, body or {}, timeout)
    return reply.body.get("data")


async def request_once(party: Party, dst: str, kind: str, body: dict[str, Any], timeout: float) -> Message:
    """One request from ``party``, a short-lived client outside the topology: it
    serves its inbox just long enough for the reply, and is closed after.

    Raises:
        RemoteError: ``dst`` refused (raised as itself, not in an ExceptionGroup).
        RequestTimeout: it did not answer.
    """
    refused: Exception | None = None
    try:
        async with trio.open_nursery() as nursery:
            async def ignore(msg: Message) -> None:
                return None

            await nursery.start(party.serve, ignore)
            try:
                reply = await party.request(dst, kind, body, timeout=timeout)
            except (RemoteError, RequestTimeout) as exc:
                refused = exc  # raised outside the nursery, so not wrapped in an ExceptionGroup
            finally:
                nursery.cancel_scope.cancel()
        if refused is not None:
            raise refused
        return reply
    finally:
        party.close()


__all__ = ["call", "client_auth", "default_run_dir", "request_once", "NotAllowed", "NotRunning", "RemoteError",
           "RequestTimeout"]
