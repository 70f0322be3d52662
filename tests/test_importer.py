"""``ray-emer model import``: the published AffectGPT checkpoint layout -> a ray_emer checkpoint directory.

The published file is built here the way the published runner writes it (``torch.save`` of
``{"model", "optimizer", "config", "scaler", "epoch"}``, ``"model"`` = the trainable tensors under their
published names, from ``my_affectgpt/models/affectgpt.py`` and ``runners/runner_base.py`` of
3FEmotionResearch/AffectGPT), at tiny sizes with real values and at the 7B sizes on the meta device.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ray_emer import storage
from ray_emer.cli import main
from ray_emer.model.affectgpt import AffectGPT, build_llm
from ray_emer.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ray_emer.model.config import get_preset
from ray_emer.model.importer import import_published
from ray_emer.model.published import check_source, map_published, meta_model, published_layout
from ray_emer.model.tokenizer import TokenizerError, build_tokenizer, tiny_tokenizer

# published module -> (ray_emer head module, (in, out) as a function of video dim V, audio dim A, fusion dim F,
# LLM hidden H); read from AffectGPT.__init__ (attention fusion setup, image_fusion_type mean)
PUBLISHED = {
    "video_attention_mlp": ("video_pool.score", lambda V, A, F, H: (V, 1)),
    "affectgpt_proj": ("video_proj", lambda V, A, F, H: (V, H)),
    "audio_attention_mlp": ("audio_pool.score", lambda V, A, F, H: (A, 1)),
    "audio_llama_proj": ("audio_proj", lambda V, A, F, H: (A, H)),
    "multi_video_embs": ("fusion.video_in", lambda V, A, F, H: (V, F)),
    "multi_audio_embs": ("fusion.audio_in", lambda V, A, F, H: (A, F)),
    "attention_mlp": ("fusion.attention", lambda V, A, F, H: (2 * F, F)),
    "fc_att": ("fusion.weights", lambda V, A, F, H: (F, 2)),
    "multi_llama_proj": ("fusion.out", lambda V, A, F, H: (F, H)),
    "image_llama_proj": ("image_proj", lambda V, A, F, H: (V, H)),
}
PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def published_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """Every key of the published ``"model"`` state dict for ``cfg``'s sizes, with its shape."""
    c = cfg.llm_config
    h, inter, r = c["hidden_size"], c["intermediate_size"], cfg.lora.r
    kv = h // c["num_attention_heads"] * c["num_key_value_heads"]
    shapes = {}
    for module, (_, dims) in PUBLISHED.items():
        n_in, n_out = dims(cfg.video_dim, cfg.audio_dim, cfg.fusion_dim, h)
        shapes[f"{module}.weight"], shapes[f"{module}.bias"] = (n_out, n_in), (n_out,)
    io = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
          "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    for layer in range(c["num_hidden_layers"]):
        for proj in PROJECTIONS:
            n_in, n_out = io[proj.split(".")[1]]
            key = f"llama_model.base_model.model.model.layers.{layer}.{proj}"
            shapes[f"{key}.lora_A.default.weight"], shapes[f"{key}.lora_B.default.weight"] = (r, n_in), (n_out, r)
    return shapes


@pytest.fixture(scope="module")
def tiny_cfg(tmp_path_factory):
    """A tiny preset whose base LLM is a saved (pretrained-style) folder, LoRA as published (alpha 32)."""
    base = tmp_path_factory.mktemp("base")
    cfg = get_preset("tiny")
    cfg.image_branch = True
    cfg.lora.alpha = 32
    cfg.llm_config["vocab_size"] = len(build_tokenizer(cfg))
    torch.manual_seed(0)
    build_llm(cfg, cfg.llm_config["vocab_size"]).save_pretrained(str(base))
    return dataclasses.replace(cfg, init="pretrained", llm_name=str(base))


def published_file(path: Path, cfg, edit=None, **container) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(*s, generator=gen) * 0.1 for k, s in published_shapes(cfg).items()}
    if edit:
        edit(state)
    obj = {"model": state,
           "optimizer": {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4),
                                       "exp_avg_sq": torch.zeros(4)}},
                         "param_groups": [{"lr": 1e-5, "betas": (0.9, 0.999), "weight_decay": 0.05, "params": [0]}]},
           "config": {"model": {"arch": "affectgpt", "lora_r": cfg.lora.r, "video_fusion_type": "attention",
                                "audio_fusion_type": "attention", "multi_fusion_type": "attention",
                                "num_video_query_token": 1, "num_audio_query_token": 1,
                                "num_multi_query_token": 1, "num_image_query_token": 1},
                      "datasets": {"mercaptionplus": {"face_or_frame": "multiface_audio_face_text"}}},
           "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 7}, "epoch": 30} | container
    torch.save(obj, path)
    return state


def test_every_published_tensor_lands_where_it_belongs(tiny_cfg, tmp_path):
    state = published_file(tmp_path / "ck.pth", tiny_cfg)
    result = import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"), tiny_cfg)
    n_lora = 2 * len(PROJECTIONS) * tiny_cfg.llm_config["num_hidden_layers"]
    assert result["mapped"] == {"head": 20, "lora": n_lora, "params": sum(t.numel() for t in state.values())}
    assert result["source"] | {"file": None} == {
        "file": None, "container": "training checkpoint", "epoch": 30, "tensors": 20 + n_lora,
        "dtypes": {"float32": 20 + n_lora}, "arch": "affectgpt", "lora_r": 8,
        "face_or_frame": ["multiface_audio_face_text"]}
    assert set(result["ignored"]) == {"optimizer", "config", "scaler", "epoch"}
    assert "3 tensors, 9 values" in result["ignored"]["optimizer"]
    assert {"config.json", "head.safetensors", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
            "tokenizer/tokenizer.json"} <= set(result["files"])

    model = load_checkpoint(str(tmp_path / "out"))
    head = dict(model.head.named_parameters())
    assert len(head) == 20
    for module, (ours, _) in PUBLISHED.items():
        for leaf in ("weight", "bias"):
            assert torch.equal(head[f"{ours}.{leaf}"], state[f"{module}.{leaf}"]), module
    lora = {n: p for n, p in model.llm.named_parameters() if "lora_" in n}
    assert len(lora) == n_lora
    for key, value in state.items():
        if key.startswith("llama_model."):
            assert torch.equal(lora[key.removeprefix("llama_model.")], value), key
    assert model.has_lora and model.cfg.lora.alpha == 32


def test_imported_model_computes_the_published_formulas(tiny_cfg, tmp_path):
    state = published_file(tmp_path / "ck.pth", tiny_cfg)
    result = import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"), tiny_cfg)
    model = load_checkpoint(str(tmp_path / "out"))
    s = {k: v.double() for k, v in state.items()}
    video, audio = torch.randn(3, 8, tiny_cfg.video_dim).double(), torch.randn(3, 8, tiny_cfg.audio_dim).double()
    tokens = model.head.double()(video, audio)

    def lin(name, x):
        return x @ s[f"{name}.weight"].T + s[f"{name}.bias"]

    def pooled(name, x):  # encode_*_attention: matmul of [b, h, t] with the raw scores [b, t, 1]
        return torch.matmul(x.transpose(1, 2), lin(name, x)).squeeze(2)

    assert torch.allclose(tokens["video"], lin("affectgpt_proj", pooled("video_attention_mlp", video)))
    assert torch.allclose(tokens["audio"], lin("audio_llama_proj", pooled("audio_attention_mlp", audio)))
    v, a = lin("multi_video_embs", video.mean(1)), lin("multi_audio_embs", audio.mean(1))
    w = lin("fc_att", lin("attention_mlp", torch.cat([v, a], dim=1))).unsqueeze(2)  # encode_multi_attention
    published_fused = lin("multi_llama_proj", torch.matmul(torch.stack([v, a], dim=2), w).squeeze(2))
    # the importer reports the difference exactly when ray_emer's pre-fusion computes something else: with the
    # published raw fusion weights (fusion_weights: raw, the 7B preset's) the fused token is the published one
    assert (not torch.allclose(tokens["fused"], published_fused)) == bool(result["differences"])
    assert tiny_cfg.fusion_weights == "softmax" and result["differences"]
    raw_cfg = dataclasses.replace(tiny_cfg, fusion_weights="raw")
    raw = import_published(str(tmp_path / "ck.pth"), str(tmp_path / "raw"), raw_cfg)
    raw_tokens = load_checkpoint(str(tmp_path / "raw")).head.double()(video, audio)
    assert raw["differences"] == [] and torch.allclose(raw_tokens["fused"], published_fused)
    assert get_preset("affectgpt-qwen2.5-7b").fusion_weights == "raw"

    # LoRA as published: W x + (alpha / r) B A x with alpha 32
    q = model.llm.base_model.model.model.layers[1].self_attn.q_proj
    x = torch.randn(2, tiny_cfg.llm_config["hidden_size"])
    key = "llama_model.base_model.model.model.layers.1.self_attn.q_proj"
    lora_a, lora_b = state[f"{key}.lora_A.default.weight"], state[f"{key}.lora_B.default.weight"]
    expected = q.base_layer(x) + (32 / 8) * x @ lora_a.T @ lora_b.T
    model.eval()
    assert torch.allclose(q(x), expected, atol=1e-5)


def test_import_writes_what_save_checkpoint_writes(tiny_cfg, tmp_path):
    published_file(tmp_path / "ck.pth", tiny_cfg)
    import_published(str(tmp_path / "ck.pth"), str(tmp_path / "imported"), tiny_cfg)
    save_checkpoint(AffectGPT.build(dataclasses.replace(tiny_cfg)), str(tmp_path / "saved"))

    def tensors(path):
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}

    for rel in ("head.safetensors", "adapter/adapter_model.safetensors"):
        assert tensors(tmp_path / "imported" / rel) == tensors(tmp_path / "saved" / rel), rel
    for rel in ("config.json", "adapter/adapter_config.json"):
        imported, saved = (json.loads((tmp_path / d / rel).read_text()) for d in ("imported", "saved"))
        for cfg in (imported, saved):
            if "target_modules" in cfg:
                cfg["target_modules"] = sorted(cfg["target_modules"])
        assert imported == saved, rel


def test_the_7b_published_layout_is_covered_on_the_meta_device():
    cfg = get_preset("affectgpt-qwen2.5-7b")
    shapes = published_shapes(cfg)
    assert len(shapes) == 412
    layout = published_layout(*meta_model(cfg))
    assert {k: v[2] for k, v in layout.items()} == shapes
    mapped = map_published({k: torch.empty(s, device="meta") for k, s in shapes.items()}, layout)
    assert (len(mapped["head"]), len(mapped["lora"])) == (20, 392)
    assert sum(t.numel() for t in mapped["lora"].values()) == 40_370_176
    assert sum(t.numel() for t in mapped["head"].values()) == 16_798_468
    check_source({"model": {"llama_model": "Qwen25", "visual_encoder": "CLIP_VIT_LARGE",
                            "acoustic_encoder": "HUBERT_LARGE", "lora_r": 16}}, cfg)


@pytest.mark.parametrize("model, message", [
    ({"llama_model": "Qwen2"}, "llama_model is 'Qwen2'"),  # Qwen2-7B has Qwen2.5-7B's shapes: only the name tells
    ({"acoustic_encoder": "WAVLM_LARGE"}, "acoustic_encoder"),
    ({"num_video_query_token": 32}, "num_video_query_token is 32"),
    ({"multi_fusion_type": "qformer"}, "multi_fusion_type is 'qformer'"),
    ({"lora_r": 32}, "lora_r is 32"),
])
def test_a_published_config_the_preset_cannot_run_fails(model, message):
    with pytest.raises(CheckpointError, match=message):
        check_source({"model": model}, get_preset("affectgpt-qwen2.5-7b"))


class Boom:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'boom-marker'}",))


def _drop_one_lora(state):
    state.pop(next(k for k in state if k.endswith("lora_B.default.weight")))


def _reshape(state):
    state["fc_att.weight"] = torch.zeros(3, state["fc_att.weight"].shape[1])


@pytest.mark.parametrize("edit, container, message", [
    (lambda s: s.update({"video_Qformer.bert.encoder.layer.0.attention.self.query.weight": torch.zeros(2, 2)}), {},
     r"1 keys with no counterpart in this preset: video_Qformer\S* \(the video Q-Former"),
    (lambda s: s.update({"llama_model.base_model.model.model.embed_tokens.weight": torch.zeros(2, 2)}), {},
     "LLM weights other than LoRA"),
    (_drop_one_lora, {}, "1 keys this preset needs that the file lacks: llama_model.base_model"),
    (_reshape, {}, r"fc_att.weight: \(3, 48\) in the file, \(2, 48\) expected"),
    (lambda s: s.update({"fc_att.bias": torch.zeros(2, dtype=torch.int64)}), {}, "non-float tensors: fc_att.bias"),
    (lambda s: s["affectgpt_proj.weight"].__setitem__((0, 0), float("nan")), {}, "NaN or inf"),
    (lambda s: s.update({"fc_att.bias": 3}), {}, "non-tensor entries \\['fc_att.bias'\\]"),
    (None, {"extra": Boom()}, "refusing to unpickle.*unsupported GLOBAL posix.system"),
    (None, {"config": {"model": {"llama_model": "Qwen25"}}}, "preset's llm_name"),
])
def test_an_unknown_layout_fails_clearly_and_writes_nothing(tiny_cfg, tmp_path, edit, container, message):
    published_file(tmp_path / "ck.pth", tiny_cfg, edit, **container)
    with pytest.raises(CheckpointError, match=message):
        import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"), tiny_cfg)
    assert not (tmp_path / "out").exists()
    assert not (Path.cwd() / "boom-marker").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pth"]  # no staging folder left behind


def test_other_containers(tiny_cfg, tmp_path):
    state = published_file(tmp_path / "ck.pth", tiny_cfg)
    save_file(state, str(tmp_path / "ck.safetensors"))
    result = import_published(str(tmp_path / "ck.safetensors"), str(tmp_path / "a"), tiny_cfg)
    assert (result["source"]["container"], result["ignored"], result["mapped"]["head"]) == ("safetensors", {}, 20)
    half = {k: v.half() for k, v in state.items()}  # fp16 tensors are stored as float32, like a saved model
    torch.save(half, tmp_path / "half.pt")
    result = import_published(str(tmp_path / "half.pt"), str(tmp_path / "h"), tiny_cfg)
    assert result["source"]["dtypes"] == {"float16": len(state)}
    with safe_open(str(tmp_path / "h" / "head.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
        assert torch.equal(f.get_tensor("fusion.weights.weight"), half["fc_att.weight"].float())
    torch.save({"model": state}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)  # torch < 1.6
    assert import_published(str(tmp_path / "legacy.pth"), str(tmp_path / "l"), tiny_cfg)["mapped"]["head"] == 20
    torch.save(state, tmp_path / "bare.pt")
    result = import_published(str(tmp_path / "bare.pt"), str(tmp_path / "b"), tiny_cfg)
    assert result["source"]["container"] == "state dict"
    for name, payload in (("list.pt", [1, 2]), ("nomodel.pt", {"optimizer": {}})):
        torch.save(payload, tmp_path / name)
        with pytest.raises(CheckpointError, match="unknown container"):
            import_published(str(tmp_path / name), str(tmp_path / "c"), tiny_cfg)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable torch checkpoint \\(neither a torch.save"):
        import_published(str(tmp_path / "junk.pth"), str(tmp_path / "c"), tiny_cfg)


def test_preset_and_destination_checks(tiny_cfg, tmp_path):
    published_file(tmp_path / "ck.pth", tiny_cfg)
    with pytest.raises(CheckpointError, match="random LLM"):
        import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"), "tiny")
    with pytest.raises(CheckpointError, match="lora.alpha is 16"):
        import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"), dataclasses.replace(
            tiny_cfg, lora=dataclasses.replace(tiny_cfg.lora, alpha=16)))
    with pytest.raises(CheckpointError, match="pooling is 'softmax'"):
        import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"),
                         dataclasses.replace(tiny_cfg, pooling="softmax"))
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(CheckpointError, match="not empty"):
        import_published(str(tmp_path / "ck.pth"), str(tmp_path / "full"), tiny_cfg)
    (tmp_path / "no-tokenizer").mkdir()
    with pytest.raises(CheckpointError, match="cannot load the tokenizer for tokenizer/ from the preset.s folder"):
        import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"), dataclasses.replace(
            tiny_cfg, tokenizer="", llm_name=str(tmp_path / "no-tokenizer")))
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()  # an existing empty directory is fine
    assert import_published(str(tmp_path / "ck.pth"), str(tmp_path / "empty"), tiny_cfg)["mapped"]["head"] == 20


def test_cli_model_import(tiny_cfg, tmp_path, capsys):
    published_file(tmp_path / "ck.pth", tiny_cfg)
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "config.json").write_text(tiny_cfg.to_json())  # --preset takes a checkpoint's config
    assert main(["model", "import", str(tmp_path / "ck.pth"), "--out", str(tmp_path / "out"),
                 "--preset", str(tmp_path / "arch")]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mapped"]["head"] == 20 and set(result["ignored"]) == {"optimizer", "config", "scaler", "epoch"}
    assert load_checkpoint(str(tmp_path / "out")).has_lora
    published_file(tmp_path / "evil.pth", tiny_cfg, extra=Boom())
    assert main(["model", "import", str(tmp_path / "evil.pth"), "--out", str(tmp_path / "o2"),
                 "--preset", str(tmp_path / "arch")]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err


def test_import_from_and_to_s3(tiny_cfg, tmp_path, s3_bucket):
    state = published_file(tmp_path / "ck.pth", tiny_cfg)
    storage.write_bytes(f"{s3_bucket}/published/ck.pth", (tmp_path / "ck.pth").read_bytes())
    result = import_published(f"{s3_bucket}/published/ck.pth", f"{s3_bucket}/imported", tiny_cfg)
    assert "head.safetensors" in result["files"]
    model = load_checkpoint(f"{s3_bucket}/imported")
    assert torch.equal(model.head.video_proj.weight, state["affectgpt_proj.weight"])
    with pytest.raises(CheckpointError, match="not empty"):
        import_published(f"{s3_bucket}/published/ck.pth", f"{s3_bucket}/imported", tiny_cfg)


@pytest.fixture
def no_network(monkeypatch):
    """Every DNS lookup or connection attempt is recorded and fails at once (as on a machine with no network).
    huggingface_hub's telemetry is off (it fetches a registry for its user-agent header, best effort, unless
    HF_HUB_OFFLINE or HF_HUB_DISABLE_TELEMETRY): any attempt left is one the import made."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


HUB_ONLY = "ray-emer-tests/not-downloaded-llm"  # a Hub name that no cache holds


def test_import_needs_no_network(tiny_cfg, tmp_path, no_network):
    state = published_file(tmp_path / "ck.pth", tiny_cfg)
    cfg = dataclasses.replace(tiny_cfg, tokenizer="", llm_name=HUB_ONLY)
    t0 = time.perf_counter()
    result = import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"), cfg)
    assert time.perf_counter() - t0 < 30 and no_network == []
    assert result["mapped"]["params"] == sum(t.numel() for t in state.values())
    assert result["tokenizer"]["written"] is False and result["tokenizer"]["from"] == HUB_ONLY
    assert HUB_ONLY in result["tokenizer"]["why"] and "--tokenizer PATH" in result["tokenizer"]["why"]
    assert {"config.json", "head.safetensors", "adapter/adapter_model.safetensors"} <= set(result["files"])
    assert not any(f.startswith("tokenizer/") for f in result["files"])
    # where the checkpoint is loaded, the tokenizer comes from the name it records (here: not reachable either)
    with pytest.raises(TokenizerError, match=f"tokenizer '{HUB_ONLY}' not found locally or on the Hub") as err:
        build_tokenizer(cfg, path=str(tmp_path / "out" / "tokenizer"))
    assert "\n" not in str(err.value)


def test_a_checkpoint_without_tokenizer_folder_loads_the_configs_tokenizer(tiny_cfg, tmp_path):
    published_file(tmp_path / "ck.pth", tiny_cfg)
    import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"), tiny_cfg)
    shutil.rmtree(tmp_path / "out" / "tokenizer")  # an import made without a tokenizer at hand
    model = load_checkpoint(str(tmp_path / "out"))
    assert model.tokenizer.get_vocab() == build_tokenizer(tiny_cfg).get_vocab() and model.has_lora


def test_import_tokenizer_from_a_folder(tiny_cfg, tmp_path, no_network, capsys):
    published_file(tmp_path / "ck.pth", tiny_cfg)
    tiny_tokenizer().save_pretrained(str(tmp_path / "tok"))
    cfg = dataclasses.replace(tiny_cfg, tokenizer="", llm_name=HUB_ONLY)
    result = import_published(str(tmp_path / "ck.pth"), str(tmp_path / "out"), cfg, tokenizer=str(tmp_path / "tok"))
    assert result["tokenizer"] == {"written": True, "from": str(tmp_path / "tok")} and no_network == []
    written = build_tokenizer(cfg, path=str(tmp_path / "out" / "tokenizer"))
    assert written.get_vocab() == build_tokenizer(tiny_cfg).get_vocab()  # the placeholders registered, as trained
    (tmp_path / "arch").mkdir()
    (tmp_path / "arch" / "config.json").write_text(cfg.to_json())
    (tmp_path / "empty").mkdir()
    for path, message in ((tmp_path / "nowhere", "not a local folder"),
                          (tmp_path / "empty", f"tokenizer '{tmp_path / 'empty'}' not found")):
        t0 = time.perf_counter()
        assert main(["model", "import", str(tmp_path / "ck.pth"), "--out", str(tmp_path / "o2"), "--preset",
                     str(tmp_path / "arch"), "--tokenizer", str(path)]) == 2
        err = capsys.readouterr().err
        assert time.perf_counter() - t0 < 10 and f"--tokenizer {path}: " in err and message in err
        assert err.count("\n") == 1 and not (tmp_path / "o2").exists()
    no_vocab = dataclasses.replace(cfg, llm_config={k: v for k, v in cfg.llm_config.items() if k != "vocab_size"})
    with pytest.raises(CheckpointError, match=f"no vocab_size and its tokenizer is not here \\('{HUB_ONLY}'\\)"):
        import_published(str(tmp_path / "ck.pth"), str(tmp_path / "o3"), no_vocab)
    assert no_network == [] and not (tmp_path / "o3").exists()
