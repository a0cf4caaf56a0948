"""The package's import graph: layers point down, no cycles, integrations side by side.

Read from the source (every ``import`` / ``from`` statement, function-level ones included), so a
lazy import inside a function counts as much as one at the top of a file; imports under
``if TYPE_CHECKING:`` (annotations only) are not edges.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import tritonlm

ROOT = Path(tritonlm.__file__).resolve().parent
# a package may import only itself, the ones listed, and the top-level modules (errors, config, ...)
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    "constraints": set(),
    "model": {"kernels"},
    "runtime": {"kernels", "model", "constraints"},
    "server": {"runtime", "model", "constraints"},
    "dspy_adapter": {"runtime", "model", "constraints"},
    "providers": {"runtime", "model", "constraints"},
}


def _module_name(path: Path) -> str:
    parts = ("tritonlm", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(inner)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
            for stmt in block.body
            for inner in ast.walk(stmt)
        }
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else None


def test_no_upward_or_sideways_import() -> None:
    bad = []
    for source, targets in _imports().items():
        src_pkg = _package(source)
        for target in targets:
            dst_pkg = _package(target)
            if src_pkg in ALLOWED and dst_pkg in ALLOWED and dst_pkg != src_pkg and dst_pkg not in ALLOWED[src_pkg]:
                bad.append(f"{source} -> {target}")
    assert not bad, bad


def test_no_import_cycle_between_modules() -> None:
    graph = _imports()
    # a package's __init__ importing its own submodules is how packages re-export: not a cycle
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in list(edges):
        if module not in state:
            visit(module, [])
    assert not cycles, cycles
