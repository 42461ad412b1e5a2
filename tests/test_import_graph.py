"""The import graph: library code never imports the CLIs' package, and the modules' imports form no
cycle — counting every import, the ones inside functions too (a lazy import only hides a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("cngpt_tf", "converters")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The project modules `path` imports, anywhere in the file, resolved to module names."""
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` imports the module pkg.mod when it exists
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] in PACKAGES)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")
             if "__pycache__" not in p.parts}
    return {name: {m for m in imports(path) if m in files and m != name} for name, path in files.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as a list of modules (first == last), or None. Package __init__ edges to their own
    submodules are ignored (importing pkg.mod imports pkg first: not a cycle of ours)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_library_module_imports_converters():
    offenders = {m: sorted(i for i in deps if i.startswith("converters"))
                 for m, deps in graph().items() if m.startswith("cngpt_tf")}
    assert not {m: d for m, d in offenders.items() if d}


def test_the_import_graph_has_no_cycle():
    assert find_cycle(graph()) is None


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"p": {"p.x"}, "p.x": set()}) is None


def test_imports_resolve_relative_and_absolute_forms():
    edges = graph()
    assert "cngpt_tf.export.output" in edges["cngpt_tf.export.convert"]  # from .output import ...
    assert "cngpt_tf.config" in edges["cngpt_tf.export.convert"]  # from ..config import ...
    assert "cngpt_tf.export.convert" in edges["converters.pt2tf"]  # from cngpt_tf.export.convert import ...
