"""The ``cluster`` pytest fixture: start real hwemu clusters in a test
(a pytest plugin, registered as ``hwemu`` through the ``pytest11`` entry point).

    async def test_mine(cluster):
        orch = await cluster("compose/native.toml")      # or a dict / Topology
        reply = await orch.request("cpu0", "ping")

Every cluster gets its own directory under the test's ``tmp_path`` (ipc
endpoints, configs, logs); every process it started is stopped by pid when
the test ends, pass or fail. Needs pytest-trio (``trio_mode = true``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest
import trio

from orchestrator.cluster import Orchestrator
from orchestrator.topology import Topology, load, parse


def _topology(spec: str | Path | dict | Topology) -> Topology:
    if isinstance(spec, Topology):
        return spec
    if isinstance(spec, dict):
        return parse(spec, "<test topology>")
    return load(spec)


@pytest.fixture
async def cluster(tmp_path: Path) -> Any:
    """An async factory ``await cluster(topology) -> Orchestrator``; all stopped at teardown."""
    started: list[Orchestrator] = []
    async with trio.open_nursery() as nursery:

        async def start(spec: str | Path | dict | Topology, run_dir: Path | None = None) -> Orchestrator:
            orch = Orchestrator(_topology(spec), run_dir or tmp_path / f"c{len(started)}")
            started.append(orch)
            await orch.start(nursery)
            return orch

        try:
            yield start
        finally:
            with trio.CancelScope(shield=True):
                for orch in started:
                    await orch.shutdown()
            nursery.cancel_scope.cancel()


Factory = Callable[..., Awaitable[Orchestrator]]
