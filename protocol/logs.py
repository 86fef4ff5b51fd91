"""Logging of every hwemu process (orchestrator, nodes, CLI): one format, one
level from ``HWEMU_LOG``.

``HWEMU_LOG`` is a level name (``DEBUG``, ``INFO``, ``WARNING``, ``ERROR``;
any case); the default is ``INFO``, so a node's log says when it started,
where it listens and when it stopped. A bad value is refused in one line by
the CLI (exit 2) before any process starts.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT = "INFO"


def level_from_env() -> int:
    """The level ``HWEMU_LOG`` names.

    Raises:
        ValueError: not one of :data:`LEVELS` (the message names the variable and the choices).
    """
    raw = os.environ.get("HWEMU_LOG", DEFAULT)
    name = raw.strip().upper()
    if name not in LEVELS:
        raise ValueError(f"HWEMU_LOG={raw!r}: expected one of {', '.join(LEVELS)} (default {DEFAULT})")
    return getattr(logging, name)


def configure(who: str) -> None:
    """Log to stderr (the process's log file) at ``HWEMU_LOG``'s level; a bad
    value ends the process with one line and exit status 2."""
    try:
        level = level_from_env()
    except ValueError as exc:
        print(f"{who}: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(level=level, format=f"%(asctime)s {who} %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
