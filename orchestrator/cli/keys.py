"""``hwemu keys``: the CURVE key pairs of a cluster across hosts, and ``hwemu move``
(docs/hosts.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from orchestrator.cli.cluster import _call
from orchestrator.cli.common import Json, RunDir, emit_json, examples_text, fail, new_app, run_dir_of
from orchestrator.topology import TopologyError, load
from protocol import curve

INIT_EXAMPLES = ["hwemu keys init compose/native.toml", "hwemu keys init placed.toml --run-dir /srv/hw --rotate"]
SHOW_EXAMPLES = ["hwemu keys show", "hwemu keys show --json"]
MOVE_EXAMPLES = ["hwemu move timer0 b", "hwemu move cpu0 a --json"]

app = new_app("CURVE key pairs of the cluster's parties (tcp between hosts).", [INIT_EXAMPLES[0], SHOW_EXAMPLES[1]])


@app.command("init", epilog=examples_text(INIT_EXAMPLES))
def init(
    topology: Annotated[Path, typer.Argument(help="The topology whose parties get keys.")],
    run_dir: RunDir = None,
    rotate: Annotated[bool, typer.Option(help="Make new key pairs for every party (the old ones stop working).")]
    = False,
    json_out: Json = False,
) -> None:
    """Make one key pair per party (orchestrator, every node, the user's clients) in
    <run dir>/keys/curve/ (0600), and the authorised public keys (public.json).
    Keys already there are kept unless --rotate."""
    rd = run_dir_of(run_dir)
    try:
        topo = load(topology)
    except TopologyError as exc:
        fail(str(exc), code=2)
    try:
        public = curve.init_keys(rd, topo.placement().order, replace=rotate)
    except OSError as exc:
        fail(str(exc), code=2 if isinstance(exc, PermissionError) else 1)
    data = {"dir": str(curve.key_dir(rd)), "public": {n: k.decode() for n, k in public.items()}}
    if json_out:
        emit_json(data)
        return
    print(f"{len(public)} key pairs in {data['dir']} (secret keys 0600; authorised set: public.json)")
    for name, key in data["public"].items():
        print(f"  {name:12} {key}")


@app.command("show", epilog=examples_text(SHOW_EXAMPLES))
def show(run_dir: RunDir = None,
         json_out: Json = False) -> None:
    """The authorised public keys of the run directory's cluster."""
    path = curve.key_dir(run_dir_of(run_dir)) / curve.PUBLIC
    try:
        public = json.loads(path.read_text())
    except OSError as exc:
        fail(f"no CURVE keys at {path}: {exc.strerror} (run `hwemu keys init TOPOLOGY`)")
    if json_out:
        emit_json(public)
        return
    for name, key in public.items():
        print(f"{name:12} {key}")


def move(
    node: Annotated[str, typer.Argument(help="The node to move.")],
    host: Annotated[str, typer.Argument(help="The host (a [hosts.NAME] of the topology) to restart it on.")],
    run_dir: RunDir = None,
    json_out: Json = False,
) -> None:
    """Restart a node on another host: its peers are told its new endpoint, it is
    killed where it runs and restarted there (recovered as after a crash)."""
    data = _call(run_dir_of(run_dir), "ctl_node_move", {"node": node, "host": host}, timeout=60.0)
    if json_out:
        emit_json(data)
        return
    if not data["moved"]:
        print(f"{node} already runs on {host}")
    else:
        print(f"{node} moved from {data['from']} to {data['to']}: pid {data['pid']}, reached at {data['endpoint']}")
