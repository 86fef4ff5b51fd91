"""The import graph of DESIGN.md §1, kept true by a test (STYLE.md, "the
house"): ``orchestrator → protocol ← nodes``.

- ``protocol/`` imports nothing of ours;
- a node kind (``nodes/<kind>``: any module or package under ``nodes/`` other
  than the shared runtime) imports only ``protocol``, the shared
  ``nodes.runtime`` / ``nodes.elf`` / ``nodes.recorder`` / ``nodes.options`` /
  ``nodes.errors`` and itself, never another node kind;
- the shared node modules import only ``protocol`` and each other;
- ``orchestrator/`` never imports ``nodes`` (it starts them as processes).

Every ``import x``, ``from x import y`` and relative import counts, wherever
it sits in the module (a function-local import is still an import).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"protocol", "nodes", "orchestrator", "hwemu", "tests", "guest", "bench", "compose", "scripts"}
SHARED_NODE_MODULES = {"runtime", "elf", "recorder", "options", "errors"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def is_module(dotted: str) -> bool:
    base = ROOT.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in ``path``; ``from p import m``
    counts as ``p.m`` when ``m`` is a module, else as ``p``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)] if node.level > 1 else anchor
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((node.lineno, sub if alias.name != "*" and is_module(sub) else base))
    return found


def ours(name: str) -> bool:
    return name.split(".")[0] in OURS


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def sources(top: str) -> list[Path]:
    return sorted(p for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def violations(top: str, allowed) -> list[str]:
    bad = []
    for path in sources(top):
        me = module_name(path)
        for line, name in imports(path):
            if ours(name) and not allowed(me, name):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {me} imports {name}")
    return bad


def node_kind(module: str) -> str | None:
    """``nodes.cpu.core`` → ``cpu``; None for the shared modules and ``nodes`` itself."""
    parts = module.split(".")
    if parts[0] != "nodes" or len(parts) < 2 or parts[1] in SHARED_NODE_MODULES:
        return None
    return parts[1]


def node_may_import(me: str, name: str) -> bool:
    if under(name, "protocol") or name == "nodes":
        return True
    if any(under(name, f"nodes.{shared}") for shared in SHARED_NODE_MODULES):
        return True
    kind = node_kind(me)
    return kind is not None and under(name, f"nodes.{kind}")


def test_protocol_imports_nothing_of_ours_but_itself():
    assert sources("protocol"), "no protocol modules found"
    assert violations("protocol", lambda me, name: under(name, "protocol")) == []


def test_a_node_kind_imports_only_protocol_the_shared_runtime_and_itself():
    assert sources("nodes"), "no node modules found"
    assert violations("nodes", node_may_import) == []


def test_the_orchestrator_never_imports_a_node():
    assert sources("orchestrator"), "no orchestrator modules found"
    assert violations("orchestrator", lambda me, name: not under(name, "nodes")) == []


# -- the checker itself sees every form of import ------------------------------------------

@pytest.fixture
def fake(tmp_path):
    """A throwaway tree with the same layout, checked by the same functions."""
    real = globals()["ROOT"]
    globals()["ROOT"] = tmp_path
    try:
        for pkg in ("protocol", "nodes", "nodes/cpu", "nodes/disk", "orchestrator"):
            (tmp_path / pkg).mkdir(parents=True, exist_ok=True)
            (tmp_path / pkg / "__init__.py").write_text("")
        for mod in ("protocol/messages.py", "nodes/runtime.py", "nodes/elf.py", "nodes/disk/io.py", "nodes/uart.py"):
            (tmp_path / mod).write_text("")
        yield tmp_path
    finally:
        globals()["ROOT"] = real


@pytest.mark.parametrize("source,expected", [
    ("import nodes.disk.io\n", ["nodes.disk.io"]),
    ("from nodes.disk import io\n", ["nodes.disk.io"]),
    ("from nodes import disk, runtime\n", ["nodes.disk", "nodes.runtime"]),
    ("from ..disk import io\n", ["nodes.disk.io"]),
    ("from .. import uart\n", ["nodes.uart"]),
    ("from . import tlb\n", ["nodes.cpu"]),  # not a module of the fake tree: the package
    ("from .core import x\n", ["nodes.cpu.core"]),
    ("def f():\n    import orchestrator\n", ["orchestrator"]),
    ("import os, trio\n", ["os", "trio"]),
])
def test_the_checker_resolves_every_form_of_import(fake, source, expected):
    path = fake / "nodes" / "cpu" / "core.py"
    path.write_text(source)
    assert [name for _, name in imports(path)] == expected


def test_the_checker_flags_one_node_kind_importing_another(fake):
    (fake / "nodes" / "cpu" / "core.py").write_text("from ..disk import io\nfrom nodes.runtime import Node\n"
                                                    "from . import tlb\nimport protocol.messages\n")
    (fake / "nodes" / "uart.py").write_text("from nodes import runtime, elf\n")
    assert violations("nodes", node_may_import) == ["nodes/cpu/core.py:1: nodes.cpu.core imports nodes.disk.io"]


def test_the_checker_flags_protocol_and_orchestrator_reaching_out(fake):
    (fake / "protocol" / "messages.py").write_text("import msgpack\nfrom nodes.runtime import Node\n")
    (fake / "orchestrator" / "__init__.py").write_text("def f():\n    from nodes import cpu\n")
    assert violations("protocol", lambda me, name: under(name, "protocol")) == [
        "protocol/messages.py:2: protocol.messages imports nodes.runtime"]
    assert violations("orchestrator", lambda me, name: not under(name, "nodes")) == [
        "orchestrator/__init__.py:2: orchestrator imports nodes.cpu"]


# -- no import cycles, inside a package or across ---------------------------------------

LAYERS = ("protocol", "nodes", "orchestrator", "hwemu")


def runtime_imports(path: Path) -> list[str]:
    """The modules of ours ``path`` imports when it runs: :func:`imports` without
    the ``if TYPE_CHECKING:`` blocks (annotations only, never executed)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {n.lineno for stmt in node.body for n in ast.walk(stmt) if hasattr(n, "lineno")}
    return sorted({name for line, name in imports(path) if line not in skip and ours(name) and is_module(name)})


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): set(runtime_imports(p)) - {module_name(p)} for top in LAYERS for p in sources(top)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycles():
    """Function-level imports count (one that dodges a cycle is still one); a
    package's ``__init__`` running before its modules is not a cycle."""
    assert cycles(import_graph()) == []


def test_the_cycle_checker_finds_a_cycle_through_a_function_level_import(fake):
    (fake / "orchestrator" / "a.py").write_text("from orchestrator import b\n")
    (fake / "orchestrator" / "b.py").write_text("def f():\n    from orchestrator.a import x\n")
    (fake / "orchestrator" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                "    from orchestrator import a\n")
    graph = import_graph()
    assert cycles(graph) == [["orchestrator.a", "orchestrator.b"]]
    assert graph["orchestrator.c"] == set()
