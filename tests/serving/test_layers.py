"""The architecture of ``serving/`` as its imports show it: arrows point down, and nothing loops.

Layers, top to bottom: ``cli`` -> ``api``, ``batch`` -> ``detect`` (the one scene path), ``evaluate``,
``resolution`` -> ``engine``, ``merge``, ``outputs`` -> ``hbdnet``. Every import counts, function-local ones too
(they hide loops from Python, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``serving`` and ``hbdnet`` it imports anywhere in its body."""
    files = {_module(p): p for top in ("serving", "hbdnet") for p in (ROOT / top).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        if not name.startswith(package):
            continue
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    targets.add(full if full in files else node.module)
            elif isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def test_no_lower_layer_imports_a_higher_one():
    lower = ("serving.api", "serving.engine", "serving.merge", "serving.outputs", "serving.detect",
             "serving.model_ref", "serving.reporting", "serving.evaluate", "serving.resolution")
    higher = ("serving.cli", "serving.batch", "serving.testing")
    climbing = [f"{m} -> {t}" for m, targets in import_graph("serving").items() if m.startswith(lower)
                for t in targets if t.startswith(higher)]
    assert not climbing, climbing


def test_the_engine_merge_and_outputs_do_not_import_the_scene_path_or_the_service():
    below = ("serving.engine", "serving.merge", "serving.outputs")
    above = ("serving.detect", "serving.api", "serving.evaluate", "serving.model_ref", "serving.resolution")
    climbing = [f"{m} -> {t}" for m, targets in import_graph("serving").items() if m.startswith(below)
                for t in targets if t.startswith(above)]
    merge_on_engine = [f"{m} -> {t}" for m, targets in import_graph("serving.merge").items()
                       for t in targets if t.startswith("serving.engine")]
    assert not climbing and not merge_on_engine, climbing + merge_on_engine


def test_the_model_library_does_not_import_the_engine_or_the_cli():
    upward = [f"{m} -> {t}" for m, targets in import_graph("hbdnet").items() for t in targets
              if t.startswith("serving")]
    assert not upward, upward


def test_no_import_loops():
    graph = import_graph("serving")
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    loops: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, set())):
            if state.get(nxt) == 1:
                loops.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not loops, loops


def test_the_graph_sees_function_local_imports(tmp_path):
    """The check would miss the loops it is for if it read only top-level imports."""
    graph = import_graph("serving.cli")
    assert "serving.detect" in graph["serving.cli.detect"]  # imported inside run()
