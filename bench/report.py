"""How a bench hands over what it measured: with ``--json``, one JSON object
on stdout and nothing else (what scripts and docs/benchmarks.md read);
without, the lines a person reads, which each bench prints itself."""

from __future__ import annotations

import argparse
import json
from typing import Any


def printed_as_json(result: dict[str, Any], args: argparse.Namespace) -> bool:
    """With ``--json`` print ``result`` as the one JSON object on stdout and
    return True: the caller then prints nothing more.

    Usage: ``if printed_as_json(result, args): return`` before the human lines.
    """
    if args.json:
        print(json.dumps(result))
    return bool(args.json)
