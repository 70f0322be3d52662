"""ARCHITECTURE.md rule 2: Ray only at the edges. Parsed imports, not grep."""

import ast
from pathlib import Path

import pytest

from conftest import REPO

PLAIN_PACKAGES = ("media", "model", "eval", "train/loop.py", "train/run.py", "config.py", "errors.py", "storage.py",
                  "schema.py", "synthetic.py")
RAY_ALLOWED = {"data/pipeline.py", "data/label_job.py", "train/trainer.py", "serve", "cli.py", "tracking.py"}


def _imports(path: Path, depth: int = 1) -> set[str]:
    """Imported module names, cut to their first ``depth`` dotted parts."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {".".join(a.name.split(".")[:depth]) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(".".join(node.module.split(".")[:depth]))
    return names


def test_ray_stays_at_the_edges():
    root = REPO / "ray_emer"
    offenders = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if any(rel == a or rel.startswith(a + "/") for a in RAY_ALLOWED):
            continue
        if "ray" in _imports(path):
            offenders.append(rel)
    assert not offenders, f"modules outside the Ray edges import ray: {offenders}"


def test_vllm_has_one_home_and_inference_never_imports_training():
    root = REPO / "ray_emer"
    vllm = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py") if "vllm" in _imports(p))
    assert vllm == ["infer/vllm_engine.py"]
    for path in list((root / "infer").rglob("*.py")) + list((root / "serve").rglob("*.py")):
        assert "ray_emer.train" not in _imports(path, depth=2), path  # they use the processor, not train/


@pytest.mark.integration  # a subprocess
def test_package_imports_have_no_side_effects():
    import subprocess
    import sys

    code = "import sys, ray_emer, ray_emer.cli, ray_emer.media, ray_emer.storage; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
