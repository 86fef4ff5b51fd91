"""The healthcheck of a node's container (``python3 -m orchestrator.health CONFIG``): its inbox
accepts a connection. Standard library only: it runs every few seconds in every container, and
must stay quick on a loaded host (a slow check that times out gets a healthy node killed)."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path


def health(conf: str) -> int:
    """0 if the inbox of the node that ``conf`` configures accepts a connection, else 1."""
    try:
        endpoint = json.loads(Path(conf).read_text())["endpoint"]
        if endpoint.startswith("ipc://"):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(3)
            s.connect(endpoint[6:])
        else:
            host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
            s = socket.create_connection((host.strip("[]"), int(port)), timeout=3)
        s.close()
        return 0
    except (OSError, ValueError, KeyError) as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python3 -m orchestrator.health CONFIG", file=sys.stderr)
        sys.exit(2)
    sys.exit(health(sys.argv[1]))
