"""The shape of train/: imports point one way (no module imports one that imports it back, not even inside a
function), the two engines share stage.py and never import each other, modules stay small, and no test's fault
injection lives in library code. Parsed imports, not grep."""

from __future__ import annotations

import ast

from conftest import REPO

TRAIN = REPO / "ray_emer" / "train"


def _train_imports() -> dict[str, set[str]]:
    """train module -> the train modules it imports anywhere in its body (module level or in a function)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(TRAIN.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "ray_emer.train":
                names = [f"ray_emer.train.{a.name}" for a in node.names]  # from ray_emer.train import stage
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] if node.level == 0 else []
            else:
                continue
            deps |= {n.split(".")[2] for n in names if n.startswith("ray_emer.train.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), list(graph.get(start, ()))
    while todo:
        mod = todo.pop()
        if mod not in seen:
            seen.add(mod)
            todo.extend(graph.get(mod, ()))
    return seen


def test_train_imports_have_no_cycles_and_the_engines_share_stage():
    graph = _train_imports()
    cycles = sorted(m for m in graph if m in _reaches(graph, m))
    assert not cycles, f"train modules that import themselves back: {cycles} ({graph})"
    assert "trainer" not in _reaches(graph, "local") and "local" not in _reaches(graph, "trainer"), graph
    assert "stage" in graph["local"] and "stage" in graph["trainer"], graph
    assert "run" not in _reaches(graph, "trainer") and "run" not in _reaches(graph, "local"), graph


def test_train_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in TRAIN.glob("*.py")}
    assert max(sizes.values()) <= 350, sizes


def test_no_fault_injection_in_library_code():
    """Crashes and waits for tests come in through the ``on_step`` hook the test passes, not from train/."""
    for path in TRAIN.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("_exit", "sleep", "abort", "kill"):
                raise AssertionError(f"{path.name}:{node.lineno} calls {ast.unparse(node)}")
