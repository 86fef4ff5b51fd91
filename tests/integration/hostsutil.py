"""Helpers of the across-hosts tests (test_hosts.py, test_netns.py): a placed copy
of compose/native.toml and a free block of ports."""

from __future__ import annotations

import random
import socket
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NATIVE = ROOT / "compose" / "native.toml"


def free_base(addresses: list[str], count: int = 8) -> int:
    """A port base whose ``count`` ports are free on every address (other tests may run the same topology)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - count)
        try:
            for addr in addresses:
                for port in range(base, base + count):
                    with socket.socket() as s:
                        s.bind((addr, port))
        except OSError:
            continue
        return base
    raise RuntimeError(f"no {count} free ports on {addresses}")


def placed_native(path: Path, hosts: dict[str, dict], where: dict[str, str], orchestrator: str) -> Path:
    """compose/native.toml with ``[hosts]`` (name -> its table) and each node's ``host``."""
    text = NATIVE.read_text()
    for node, host in where.items():
        head = f"[nodes.{node}]\n"
        assert head in text, node
        text = text.replace(head, f'{head}host = "{host}"\n')
    tables = []
    for name, table in hosts.items():
        lines = [f"[hosts.{name}]"]
        for key, val in table.items():
            lines.append(f"{key} = {val!r}".replace("'", '"'))
        tables.append("\n".join(lines))
    path.write_text("\n\n".join(tables) + f'\n\n[orchestrator]\nhost = "{orchestrator}"\n\n' + text)
    return path
