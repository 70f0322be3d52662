"""The GPU benchmark suite's code paths at small shapes on CPU (so it cannot rot while no GPU is around)."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.mark.timeout(300)
def test_every_section_of_the_suite_runs_small_and_writes_numbers(ray_local, tmp_path):
    suite = runpy.run_path(str(SUITE))
    result = suite["run_suite"](small=True, work=str(tmp_path / "work"))
    assert result["shape"]["small"] and result["shape"]["preset"] == "tiny"
    sections = result["sections"]
    assert list(sections) == ["extraction", "training", "labelling", "serving"]
    for name, sec in sections.items():
        assert sec["error"] is None, (name, sec["error"])
    ext, tr, lab, srv = (sections[k] for k in ("extraction", "training", "labelling", "serving"))
    assert ext["clips"] == ext["ok"] == 16 and ext["clips_per_s"] > 0 and ext["encoder_only_clips_per_s"] > 0
    assert tr["samples_per_s"] > 0 and tr["tokens_per_s"] > 0 and tr["lora"] and tr["padding_share"] <= 0.05
    assert tr["model_flops_per_s"] == pytest.approx(4 * tr["llm_params"] * tr["tokens_per_s"], rel=0.01)
    assert lab["engine"] == "hf" and lab["clips"] == lab["ok"] == 8 and lab["generated_tokens_per_s"] > 0
    assert srv["requests"] == 5 and 0 < srv["p50_s"] <= srv["p95_s"]
    json.dumps(result)  # one JSON


def test_a_failing_section_keeps_the_others(tmp_path, monkeypatch):
    suite = runpy.run_path(str(SUITE))

    def broken(*a, **k):
        raise RuntimeError("out of memory, say")

    suite["RUNNERS"]["training"] = broken
    result = suite["run_suite"](["training", "serving"], small=True, work=str(tmp_path))
    assert result["sections"]["training"]["error"] == "RuntimeError: out of memory, say"
    assert result["sections"]["serving"]["error"] is None and result["sections"]["serving"]["p50_s"] > 0


def test_mfu_uses_the_gpu_peak_table():
    suite = runpy.run_path(str(SUITE))
    assert suite["peak_flops"]("NVIDIA H100 80GB HBM3") == 989e12
    assert suite["peak_flops"]("NVIDIA A100-SXM4-80GB") == 312e12 and suite["peak_flops"]("cpu") is None
