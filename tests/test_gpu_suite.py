"""The GPU benchmark suite's code paths at small shapes on CPU (so it cannot rot while no GPU is around)."""

from __future__ import annotations

import json
import runpy
import time
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite() -> dict:
    return runpy.run_path(str(SUITE))


def positive(section: dict, *keys: str) -> None:
    for k in keys:
        assert isinstance(section[k], (int, float)) and section[k] > 0, (k, section[k])


def tiny_flops_per_token() -> int:
    """4 FLOPs per frozen matmul weight + 6 per LoRA weight, counted here from the parameter names."""
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.config import get_preset

    named = dict(AffectGPT.build(get_preset("tiny"), seed=0).llm.named_parameters())
    lora = sum(p.numel() for n, p in named.items() if "lora_" in n)
    base = sum(p.numel() for n, p in named.items() if "lora_" not in n and "embed_tokens" not in n)
    return 4 * base + 6 * lora


@pytest.mark.timeout(300)
def test_every_section_runs_small_in_process_and_writes_numbers(suite, ray_local, tmp_path):
    t0 = time.perf_counter()
    result = suite["run_suite"](small=True, work=str(tmp_path / "work"), isolate=False)
    print(f"small suite in {time.perf_counter() - t0:.1f} s")
    assert result["device"] == "cpu" and result["mode"] == "small" and not result["isolated"]
    assert {"torch", "started"} <= set(result)
    sections = result["sections"]
    assert list(sections) == ["extraction", "training", "labelling", "serving"]
    for name, sec in sections.items():
        assert sec["error"] is None, (name, sec["error"])
        assert sec["shape"]["preset"] == "tiny", name
    ext, tr, lab, srv = (sections[k] for k in ("extraction", "training", "labelling", "serving"))
    assert ext["clips"] == ext["ok"] == ext["shape"]["clips"] == 16 and ext["shape"]["frame_size"] == 32
    positive(ext, "clips_per_s", "first_shard_s", "clips_per_s_after_first_shard", "encoder_only_clips_per_s")
    assert ext["gpus"] == 0 and ext["clips_per_s_per_gpu"] is None and ext["gpu_util_mean"] is None
    positive(tr, "samples_per_s", "tokens_per_s", "step_s", "model_flops_per_s", "tokens_per_step")
    assert tr["shape"]["trainable"]["llm"] == "lora" and tr["shape"]["fsdp"].endswith("gloo")
    assert tr["shape"]["fsdp_units"] == tr["shape"]["llm_layers"] + 1  # each decoder block + the root
    assert tr["shape"]["dtype"] == "float32" and tr["padding_share"] <= 0.05
    assert tr["flops_per_token"] == tiny_flops_per_token()
    assert tr["model_flops_per_s"] == pytest.approx(tr["flops_per_token"] * tr["tokens_per_s"], rel=0.01)
    assert tr["mfu"] is None and tr["peak_memory_gb"] is None  # no GPU: no peak to divide by, no CUDA memory
    assert lab["engine"] == "hf" and lab["clips"] == lab["ok"] == 8 and lab["shape"]["rows"] == "extraction features"
    positive(lab, "clips_per_s", "generated_tokens_per_s")
    assert srv["engine"] == "hf" and "in process" in srv["path"] and srv["requests"] == 5
    positive(srv, "p50_s", "p95_s", "mean_decode_s", "mean_encode_s", "mean_generate_s")
    assert srv["p50_s"] <= srv["p95_s"] <= srv["max_s"]
    json.dumps(result)  # one JSON


def test_a_failing_section_keeps_its_shape_and_the_other_sections(suite, tmp_path, monkeypatch):
    def broken(sh, work, rec, opts):
        rec["shape"] = {"preset": sh.preset}
        raise RuntimeError("out of memory, say")

    monkeypatch.setitem(suite["RUNNERS"], "training", broken)
    result = suite["run_suite"](["training", "labelling"], small=True, work=str(tmp_path), isolate=False)
    tr, lab = result["sections"]["training"], result["sections"]["labelling"]
    assert tr["error"] == "RuntimeError: out of memory, say" and tr["shape"] == {"preset": "tiny"}
    assert lab["error"] is None and lab["clips"] == lab["ok"] == 8 and lab["clips_per_s"] > 0
    assert lab["shape"]["rows"] == "random features, real text lengths"  # no extraction ran


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_isolated_sections_run_in_their_own_process_and_a_hung_one_is_killed(suite, tmp_path):
    result = suite["run_suite"](["training"], small=True, work=str(tmp_path), isolate=True)
    tr = result["sections"]["training"]
    assert result["isolated"] and tr["error"] is None and tr["process_s"] >= tr["wall_s"] > 0
    positive(tr, "samples_per_s", "tokens_per_s")
    t0 = time.perf_counter()
    hung = suite["run_isolated"]("labelling", suite["shape"](True), str(tmp_path), {"engine": "hf"}, 1.0)
    assert time.perf_counter() - t0 < 30
    assert hung["error"] == "timed out after 1 s (the section's process was killed)"


def test_cli_prints_the_path_then_the_json_as_the_last_line(suite, tmp_path, capsys):
    out = tmp_path / "result.json"
    suite["main"](["--small", "--sections", "training", "--isolate", "no", "--out", str(out), "--json"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2] == str(out) and json.loads(lines[-1]) == json.loads(out.read_text())
    assert list(json.loads(lines[-1])["sections"]) == ["training"]
    with pytest.raises(SystemExit, match="unknown section"):
        suite["main"](["--small", "--sections", "training,trainin", "--out", str(out)])


def test_mfu_peak_table_matches_the_most_specific_name(suite):
    peak = suite["peak_flops"]
    assert peak("NVIDIA H100 80GB HBM3") == 989e12 and peak("NVIDIA H100 PCIe") == 756e12
    assert peak("NVIDIA H200") == 989e12 and peak("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak("NVIDIA L40S") == 362e12 and peak("NVIDIA L4") == 121e12 and peak("cpu") is None


def test_flop_parameters_leave_out_an_untied_input_table_only(suite):
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.config import resolve_model_config

    for tied in (False, True):
        model = AffectGPT.build(resolve_model_config("tiny", [f"llm_config.tie_word_embeddings={str(tied).lower()}"]))
        named = dict(model.llm.named_parameters())
        emb = model.llm.get_input_embeddings().weight.numel()
        total, base, lora = suite["flop_params"](model)
        assert lora == sum(p.numel() for n, p in named.items() if "lora_" in n) > 0
        assert base == sum(p.numel() for n, p in named.items() if "lora_" not in n) - (0 if tied else emb)
        assert total == base + lora + (0 if tied else emb)
    assert suite["flops_per_token"](100, 10, "lora") == 460 and suite["flops_per_token"](100, 0, "full") == 600


def test_vllm_memory_share_leaves_room_for_the_labellers_two_copies(suite):
    gib = 2**30
    assert suite["memory_share"](80 * gib, 100 * gib, 10 * gib) == 0.56  # 80 free - 2 x 10 - 4 margin
    assert suite["memory_share"](100 * gib, 100 * gib, 1 * gib) == 0.85  # at most the library default
    assert suite["memory_share"](20 * gib, 100 * gib, 10 * gib) == 0.1


def test_gpu_sampler_averages_the_sampled_gpus(suite):
    sampler = suite["GpuSampler"](ids=["0", "1"], period=0.01)
    sampler._read = lambda: [40.0, 80.0]  # what NVML would answer for two GPUs
    with sampler:
        time.sleep(0.1)
    assert sampler.summary() == {"gpu_util_mean": 60.0, "gpu_util_max": 60.0}
    assert suite["GpuSampler"](ids=[]).summary("x") == {"x_mean": None, "x_max": None}
