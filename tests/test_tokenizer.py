"""The tiny tokenizer ships as a package file: frozen ids, no synthetic-data import, present in a wheel."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.resources import files

import pytest

from conftest import REPO
from ray_emer.model.tokenizer import TINY_TOKENIZER_ASSET, tiny_tokenizer, tiny_tokenizer_json

# Every tiny checkpoint's token ids come from this file: changing it is a deliberate act (regenerate with
# tools/make_tiny_tokenizer.py, then update this digest), never a side effect.
SHIPPED_SHA256 = "262b91a84ee7cdd456ebc6e974e6dae337494d144b4996334c88361171fc1f0e"

NO_SYNTHETIC = """
import importlib, pkgutil, sys
import ray_emer.model
from ray_emer.model.config import get_preset
from ray_emer.model.tokenizer import build_tokenizer, tiny_tokenizer
for m in pkgutil.iter_modules(ray_emer.model.__path__):
    importlib.import_module("ray_emer.model." + m.name)
assert len(tiny_tokenizer()) == 779
assert len(build_tokenizer(get_preset("tiny"))) == 783
print(ray_emer.__file__)
print("ray_emer.synthetic" in sys.modules)
"""


def _maker():
    spec = importlib.util.spec_from_file_location("make_tiny_tokenizer", REPO / "tools" / "make_tiny_tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_file_is_what_training_gives():
    """Regenerating from the synthetic corpus gives the shipped bytes: the file cannot drift silently."""
    shipped = (files("ray_emer") / TINY_TOKENIZER_ASSET).read_bytes()
    maker = _maker()
    assert maker.SHIPPED.read_bytes() == shipped
    assert maker.train_tiny_tokenizer_json().encode("utf-8") == shipped, (
        "training the tiny tokenizer no longer gives ray_emer/assets/tiny_tokenizer.json (did the synthetic "
        "corpus or the prompts change?); regenerating it changes every tiny checkpoint's token ids")
    assert maker.main(["--check"]) == 0


def test_tiny_tokenizer_reads_the_shipped_file_and_its_ids_are_frozen():
    shipped = (files("ray_emer") / TINY_TOKENIZER_ASSET).read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == SHIPPED_SHA256
    assert tiny_tokenizer_json().encode("utf-8") == shipped
    tok = tiny_tokenizer()
    assert len(tok) == 779 and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert tok("The character's emotional state is happy.")["input_ids"] == [313, 776, 328, 337, 339, 284, 459, 16]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tiny_tokenizer() is not tok  # fresh each call: callers add their own special tokens


@pytest.mark.integration
def test_model_package_never_imports_the_synthetic_generator():
    out = subprocess.run([sys.executable, "-c", NO_SYNTHETIC], capture_output=True, text=True, check=True,
                         cwd=REPO).stdout.split()
    assert out[-1] == "False"


@pytest.mark.integration
def test_a_built_wheel_carries_the_tokenizer(tmp_path):
    """A non-editable install (the wheel, unpacked) loads the tiny tokenizer from its own copy."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "ray_emer", src / "ray_emer", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True, cwd=tmp_path)
    (wheel,) = (tmp_path / "dist").glob("ray_emer-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "ray_emer/assets/tiny_tokenizer.json" in zf.namelist()
        zf.extractall(tmp_path / "site")
    shutil.rmtree(src)  # nothing but the unpacked wheel can provide the file
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = subprocess.run([sys.executable, "-c", NO_SYNTHETIC], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env=env).stdout.split()
    assert out[-2].startswith(str(tmp_path / "site")) and out[-1] == "False"
