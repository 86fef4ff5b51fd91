"""`hwemu compose export`: a topology as a Compose (stack) file for Docker Swarm."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestrator import swarm
from orchestrator.cli.common import command, console, fail, new_app
from orchestrator.topology import TopologyError, load

EXAMPLES = ["hwemu compose export compose/native.toml", "hwemu compose export compose/demo.toml -o demo.stack.yml",
            "hwemu compose export compose/native.toml --check -o compose/native.stack.yml"]
app = new_app("Compose (Docker Swarm stack) files of topologies (docs/swarm.md).", EXAMPLES)


def stack_path(topology: Path) -> Path:
    """Where a shipped topology's stack file is kept: ``compose/native.toml`` -> ``compose/native.stack.yml``."""
    return topology.with_name(topology.stem + ".stack.yml")


@command(app, "export", EXAMPLES)
def export(
    topology: Annotated[Path, typer.Argument(metavar="TOPOLOGY", help="Topology file (compose/*.toml).")],
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Write it here [default: stdout].")]
    = None,
    check: Annotated[bool, typer.Option("--check", help="Write nothing: exit 1 if --output differs from what "
                                                          "would be written.")] = False,
) -> None:
    """Write the Compose file (version 3) of a topology: one service per node on the image of
    `hwemu image build`, its config and keys as a secret, a healthcheck, the topology's restart
    policy, placement on the Swarm nodes labelled with its host, the host network."""
    try:
        topo = load(topology)
    except TopologyError as exc:
        fail(str(exc), code=2)
    text = swarm.export(topo, topology.as_posix())
    if check:
        if output is None:
            fail("--check needs --output FILE", code=2)
        try:
            same = output.read_text() == text
        except OSError as exc:
            fail(f"cannot read {output}: {exc.strerror or exc}")
        if not same:
            fail(f"{output} is not what `hwemu compose export {topology.as_posix()}` writes: run it with -o {output}")
        return
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text)
    except OSError as exc:
        fail(f"cannot write {output}: {exc.strerror or exc}")
    console.print(f"wrote {output} ({len(topo.nodes)} services)")
