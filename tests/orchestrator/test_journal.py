"""The choreography journal (orchestrator/journal.py) and the framework's
journaling, rollback and recovery (orchestrator/choreographies), without
processes: a fake orchestrator records what the steps do."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.choreographies import base as chor
from orchestrator.choreographies.base import Choreography, ChoreographyFailed, Step
from orchestrator.choreographies.state import VirtState
from orchestrator.journal import WHOLE, Journal


class FakeOrch:
    def __init__(self, path: Path):
        self.journal = Journal(path)
        self.virt = VirtState()
        self.log: list[str] = []


def recording(orch: FakeOrch, name: str, out: dict | None = None, fail: bool = False):
    async def do(run, ctx):
        orch.log.append(f"do {name}")
        if fail:
            raise chor.ChoreographyError(f"{name} refused")
        return dict(out or {})

    async def undo(run, ctx):
        orch.log.append(f"undo {name} {sorted(k for k in ctx if k.startswith('x'))}")

    return Step(name, do, undo, f"patent {name}")


def test_records_are_json_lines_each_complete(tmp_path):
    j = Journal(tmp_path / "j" / "journal.jsonl")
    j.record("c1", "fig4", WHOLE, "begin", {"host": "os1"})
    j.record("c1", "fig4", "alloc_pin", "done", {"frames": [1, 2]})
    lines = (tmp_path / "j" / "journal.jsonl").read_text().splitlines()
    assert [json.loads(line)["phase"] for line in lines] == ["begin", "done"]
    assert json.loads(lines[1])["data"] == {"frames": [1, 2]}
    with pytest.raises(ValueError):
        j.record("c1", "fig4", "x", "finished")


def test_begin_without_end_is_incomplete_with_its_done_steps_in_order(tmp_path):
    j = Journal(tmp_path / "journal.jsonl")
    j.record("a", "fig4", WHOLE, "begin", {"host": "os1", "n": 4})
    j.record("a", "fig4", "alloc_pin", "begin")
    j.record("a", "fig4", "alloc_pin", "done", {"frames": [7, 8]})
    j.record("a", "fig4", "to_vmm", "begin")
    j.record("a", "fig4", "to_vmm", "done")
    j.record("a", "fig4", "start_vmm", "begin")          # crashed here
    j.record("b", "fig3", WHOLE, "begin", {"os": "os1"})
    j.record("b", "fig3", "new_flows", "done")
    j.record("b", "fig3", WHOLE, "committed")
    j.record("c", "fig3", WHOLE, "begin", {"os": "os1"})
    j.record("c", "fig3", "attach", "done")
    j.record("c", "fig3", "attach", "undo")               # crashed while rolling back
    inc = j.incomplete()
    assert [(i.id, i.figure, i.params) for i in inc] == [("a", "fig4", {"host": "os1", "n": 4}),
                                                          ("c", "fig3", {"os": "os1"})]
    assert inc[0].done == [("alloc_pin", {"frames": [7, 8]}), ("to_vmm", {})]
    assert inc[1].done == []
    assert j.outcome("b") == "committed" and j.outcome("a") is None


def test_a_torn_last_line_is_ignored(tmp_path):
    path = tmp_path / "journal.jsonl"
    j = Journal(path)
    j.record("a", "fig4", WHOLE, "begin", {})
    j.record("a", "fig4", "alloc_pin", "done", {"frames": [1]})
    with open(path, "a") as f:
        f.write('{"id": "a", "figure": "fig4", "step": "to_vm')
    assert j.incomplete()[0].done == [("alloc_pin", {"frames": [1]})]


async def test_run_commits_and_reports_each_step_with_its_pause(tmp_path):
    orch = FakeOrch(tmp_path / "journal.jsonl")
    c = Choreography("figX", "test figure", [recording(orch, "one", {"x1": 1}),
                                             recording(orch, "two", {"pause_ms": 2.5})], params={"p": 1})
    report = await c.run(orch)
    assert report["outcome"] == "committed"
    assert [(s["name"], s["pause_ms"]) for s in report["steps"]] == [("one", 0.0), ("two", 2.5)]
    assert report["pause_ms"] == 2.5
    assert orch.journal.outcome(report["id"]) == "committed"
    assert orch.log == ["do one", "do two"]


async def test_a_failing_step_undoes_the_done_ones_in_reverse_and_says_rolled_back(tmp_path):
    orch = FakeOrch(tmp_path / "journal.jsonl")
    c = Choreography("figX", "test figure", [recording(orch, "one", {"x1": 1}), recording(orch, "two", {"x2": 2}),
                                             recording(orch, "three", fail=True), recording(orch, "four")])
    with pytest.raises(ChoreographyFailed) as info:
        await c.run(orch)
    assert "step 'three' failed: three refused" in str(info.value)
    assert orch.log == ["do one", "do two", "do three", "undo two ['x1', 'x2']", "undo one ['x1', 'x2']"]
    rep = info.value.report
    assert rep["outcome"] == "rolled_back" and rep["undone"] == ["two", "one"]
    assert orch.journal.outcome(rep["id"]) == "rolled_back"
    assert orch.journal.incomplete() == []


async def test_pause_over_budget_aborts_and_rolls_back(tmp_path):
    orch = FakeOrch(tmp_path / "journal.jsonl")
    c = Choreography("figX", "test figure", [recording(orch, "one"), recording(orch, "slow", {"pause_ms": 301.0}),
                                             recording(orch, "never")])
    with pytest.raises(ChoreographyFailed) as info:
        await c.run(orch)
    assert "pause budget exceeded after step 'slow': 301.0 ms > 300 ms" in str(info.value)
    assert orch.log == ["do one", "do slow", "undo slow []", "undo one []"]


async def test_recovery_rolls_back_an_incomplete_choreography_from_the_journal(tmp_path):
    orch = FakeOrch(tmp_path / "journal.jsonl")
    steps = [recording(orch, "one", {"x1": 1}), recording(orch, "two", {"x2": 2}), recording(orch, "three")]
    chor.BUILDERS["figT"] = lambda params: Choreography("figT", "t", steps, params=params)
    try:
        j = orch.journal
        j.record("t1", "figT", WHOLE, "begin", {"p": 1})
        j.record("t1", "figT", "one", "done", {"x1": 1})
        j.record("t1", "figT", "two", "done", {"x2": 2})
        j.record("t1", "figT", "three", "begin")          # the orchestrator died here
        out = await chor.recover(orch)
    finally:
        del chor.BUILDERS["figT"]
    assert out == [{"id": "t1", "figure": "figT", "undone": ["two", "one"], "undo_failures": []}]
    assert orch.log == ["undo two ['x1', 'x2']", "undo one ['x1', 'x2']"]
    assert j.outcome("t1") == "rolled_back" and j.incomplete() == []
    assert await chor.recover(orch) == []  # nothing twice


async def test_a_failing_undo_is_reported_and_the_others_still_run(tmp_path):
    orch = FakeOrch(tmp_path / "journal.jsonl")

    async def bad_undo(run, ctx):
        raise chor.ChoreographyError("node gone")

    one = recording(orch, "one")
    two = Step("two", recording(orch, "two").do, bad_undo)
    c = Choreography("figX", "test figure", [one, two, recording(orch, "three", fail=True)])
    with pytest.raises(ChoreographyFailed) as info:
        await c.run(orch)
    assert info.value.report["undo_failures"] == ["two: node gone"]
    assert "could not undo: two: node gone" in str(info.value)
    assert orch.log[-1] == "undo one []"


async def test_a_step_with_a_bug_is_rolled_back_too_and_named(tmp_path):
    orch = FakeOrch(tmp_path / "journal.jsonl")

    async def buggy(run, ctx):
        return ctx.get("missing") + 1

    c = Choreography("figX", "test figure", [recording(orch, "one"), Step("buggy", buggy)])
    with pytest.raises(ChoreographyFailed, match=r"step 'buggy' failed: TypeError: unsupported operand"):
        await c.run(orch)
    assert orch.log == ["do one", "undo one []"]
