"""Draw docs/architecture.svg from the code: the pipeline and the imports between rooms.

    PYTHONPATH=. .venv/bin/python docs/gen_architecture.py

The import graph is the one ``tests/test_imports.py`` walks (``ast`` over every module
under ``structgen/``, nothing imported), folded into rooms: a package (``schema/``,
``constrain/``, ``backends/``, ``backends/local/``, ``warmup/``, ``batch/``, ``tools/``) is one
room, each top-level module another. Rooms are laid out in layers by how far down they sit (a
room is drawn above every room it imports), so data flows down the picture. The strip on
top is the pipeline ``Engine`` runs, each step named with the room that does it; an arrow
in the graph is an import, from the importer to the imported. Rerun after moving code
(the picture is committed; the SVG is written reproducibly, so an unchanged tree gives an
unchanged file).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import networkx as nx
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_imports import imports  # noqa: E402 (one walk of the imports, shared)

OUT = ROOT / "docs" / "architecture.svg"
PACKAGES = ("backends.local", "schema", "constrain", "backends", "warmup", "batch", "tools",
            "server")
# (step, the room that does it) in the order Engine.arun / Engine.astream run them
PIPELINE = [("compile", "schema"), ("cache lookup", "cache"), ("route", "router"),
            ("generate", "backends"), ("finalize", "repair"), ("store", "cache"),
            ("record", "metrics")]
PIPELINE_ROOMS = {room for _, room in PIPELINE} | {"engine", "validate", "streaming"}
# imported by nearly every room: their arrows would hide the rest (drawn as boxes only)
FOUNDATION = ("errors", "types", "config")
SPACING = 2.2  # between room centres in a row


def room(module: str) -> str:
    """``structgen.backends.local.decoder`` → ``backends.local``; ``structgen.engine`` →
    ``engine``."""
    name = module.removeprefix("structgen").lstrip(".") or "__init__"
    for package in PACKAGES:
        if name == package or name.startswith(package + "."):
            return package
    return name


def rooms_graph() -> nx.DiGraph:
    modules, _ = imports()
    graph: nx.DiGraph = nx.DiGraph()
    for module in modules:
        graph.add_node(room(module))
    for a, b in modules.edges:
        ra, rb = room(a), room(b)
        if ra != rb:
            graph.add_edge(ra, rb)
    graph.remove_node("__init__")  # the public names: it imports the whole API
    return graph


def layers(graph: nx.DiGraph) -> list[list[str]]:
    """Rows from the top: each room sits one row above the lowest room it imports."""
    dag = nx.condensation(graph)  # rooms that import each other share a row
    depth: dict[int, int] = {}
    for node in reversed(list(nx.topological_sort(dag))):
        depth[node] = 1 + max((depth[s] for s in dag.successors(node)), default=-1)
    rows: dict[int, list[str]] = {}
    for node, d in depth.items():
        rows.setdefault(d, []).extend(dag.nodes[node]["members"])
    return [sorted(rows[d]) for d in sorted(rows, reverse=True)]


def draw(graph: nx.DiGraph, path: Path) -> None:
    rows = layers(graph)
    total = max(max(len(r) for r in rows) * SPACING, len(PIPELINE) * 1.9)
    pos: dict[str, tuple[float, float]] = {}
    for y, row in enumerate(rows):
        for x, name in enumerate(row):
            pos[name] = ((x + 0.5) * total / len(row), -y * 1.1)
    fig, ax = plt.subplots(figsize=(total + 0.6, len(rows) * 1.1 + 2.6))
    ax.set_xlim(-0.3, total + 0.3)
    ax.set_ylim(-(len(rows) - 1) * 1.1 - 0.6, 2.4)
    ax.axis("off")

    # the pipeline strip
    step_w = total / len(PIPELINE)
    for i, (step, owner) in enumerate(PIPELINE):
        cx = (i + 0.5) * step_w
        ax.add_patch(FancyBboxPatch((cx - step_w * 0.4, 1.45), step_w * 0.8, 0.6,
                                    boxstyle="round,pad=0.02", fc="#fde9c9", ec="#b07a1e"))
        ax.text(cx, 1.84, step, ha="center", va="center", fontsize=11, weight="bold")
        ax.text(cx, 1.6, owner + "/" if owner in PACKAGES else owner + ".py", ha="center",
                va="center", fontsize=9, family="monospace")
        if i:
            ax.add_patch(FancyArrowPatch((cx - step_w * 0.6, 1.75), (cx - step_w * 0.4, 1.75),
                                         arrowstyle="-|>", mutation_scale=12, color="#b07a1e"))
    ax.text(0, 2.25, "Engine.arun / Engine.astream: one request, left to right",
            fontsize=11, style="italic")
    ax.text(0, 0.7, "imports between rooms (arrow: importer → imported; data flows down; "
            f"arrows into {', '.join(n + '.py' for n in FOUNDATION)} left out: every room "
            "imports them)", fontsize=10, style="italic")

    for a, b in sorted(graph.edges):
        if b in FOUNDATION:
            continue
        ax.add_patch(FancyArrowPatch(pos[a], pos[b], arrowstyle="-|>", mutation_scale=10,
                                     shrinkA=14, shrinkB=14, lw=0.8, color="#52658a",
                                     connectionstyle="arc3,rad=0.05", alpha=0.75))
    for name, (x, y) in sorted(pos.items()):
        label = name.replace(".", "/") + "/" if name in PACKAGES else name + ".py"
        engine = name == "engine"
        fc = "#f6c27a" if engine else "#dbe8f7" if name in PIPELINE_ROOMS else "#eeeeee"
        ax.add_patch(FancyBboxPatch((x - 0.85, y - 0.2), 1.7, 0.4,
                                    boxstyle="round,pad=0.02", fc=fc, ec="#445",
                                    lw=1.4 if engine else 0.8, zorder=3))
        ax.text(x, y, label, ha="center", va="center", fontsize=10, family="monospace",
                zorder=4)
    plt.rcParams["svg.hashsalt"] = "structgen"  # stable ids: the same tree, the same file
    fig.savefig(path, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)


def main() -> None:
    plt.rcParams["svg.fonttype"] = "none"  # text stays text (searchable, small)
    draw(rooms_graph(), OUT)
    print(f"wrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
