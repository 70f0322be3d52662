"""The shape of the library (docs/architecture.md), checked on parsed imports, not grep: Ray only at the edges,
vLLM in one module, imports pointing down (no circles, eval never above infer), small modules."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

ROOT = REPO / "ray_emer"
# exactly the modules that import ray: the cluster helpers, the Ray Data jobs, the Ray Train wiring, serve
RAY_MODULES = {"cluster.py", "data/label_job.py", "data/pipeline.py", "serve/app.py", "serve/run.py",
               "train/trainer.py"}
MAX_LINES = 350


def _imports(path: Path, depth: int = 1) -> set[str]:
    """Imported module names anywhere in the file, cut to their first ``depth`` dotted parts."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {".".join(a.name.split(".")[:depth]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(".".join(node.module.split(".")[:depth]))
    return names


def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """Project modules a file imports when it is imported (module level, also inside top-level if/try; not
    ``if TYPE_CHECKING``); ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a module."""
    out: set[str] = set()

    def visit(body):
        for node in body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body + node.orelse + getattr(node, "finalbody", []) +
                      [s for h in getattr(node, "handlers", []) for s in h.body])
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module in modules:
                    out.add(node.module)
                out.update(f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules)

    visit(ast.parse(path.read_text()).body)
    return out


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ROOT.rglob("*.py")}
    return {m: _top_level_imports(p, set(files)) - {m} for m, p in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, as the path that closes it (depth-first search, colours)."""
    colour, stack, found = {m: 0 for m in graph}, [], []

    def visit(m):
        colour[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if colour[n] == 1:
                found.append(stack[stack.index(n):] + [n])
            elif colour[n] == 0:
                visit(n)
        stack.pop()
        colour[m] = 2

    for m in sorted(graph):
        if colour[m] == 0:
            visit(m)
    return found


def test_ray_stays_at_the_edges():
    importers = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if "ray" in _imports(p)}
    assert importers == RAY_MODULES, f"modules importing ray: {sorted(importers)}; allowed: {sorted(RAY_MODULES)}"


def test_vllm_has_one_home_and_inference_never_imports_training():
    vllm = sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if "vllm" in _imports(p))
    assert vllm == ["infer/vllm_engine.py"]
    for path in list((ROOT / "infer").rglob("*.py")) + list((ROOT / "serve").rglob("*.py")):
        assert "ray_emer.train" not in _imports(path, depth=2), path  # they use the processor, not train/


def test_no_import_circles_and_eval_sits_below_infer():
    graph = _graph()
    assert not _cycles(graph), f"import circles: {_cycles(graph)}"
    upward = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "eval").rglob("*.py")
                    if "ray_emer.infer" in _imports(p, depth=2))
    assert not upward, f"eval modules importing infer (at any level): {upward}"
    below_features = [m for m in graph if m.startswith(("ray_emer.features", "ray_emer.media", "ray_emer.model"))
                      and any(n.startswith(("ray_emer.data", "ray_emer.serve", "ray_emer.train")) for n in graph[m])]
    assert not below_features, f"featurizer/media/model modules importing the jobs above them: {below_features}"


def test_the_circle_finder_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_library_modules_stay_small():
    big = {p.relative_to(ROOT).as_posix(): n for p in ROOT.rglob("*.py")
           if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not big, f"library files over {MAX_LINES} lines: {big}"


@pytest.mark.integration  # a subprocess
def test_package_imports_have_no_side_effects():
    import subprocess
    import sys

    code = "import sys, ray_emer, ray_emer.cli, ray_emer.media, ray_emer.storage; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
