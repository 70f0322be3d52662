"""AffectGPT with the tiny preset on CPU: forward/backward, masking, prompts, generate, checkpoints, counts."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
import torch

from ray_emer.cli import main
from ray_emer.model.affectgpt import IGNORE, AffectGPT
from ray_emer.model.checkpoint import CheckpointError, checkpoint_files, load_checkpoint, save_checkpoint
from ray_emer.model.config import AffectGPTConfig, TrainableConfig, get_preset
from ray_emer.model.encoders import Encoders
from ray_emer.model.inspect import inspect_model
from ray_emer.model.prompts import Modalities, PromptBuilder, format_ov_labels, parse_ov_answer


def tiny(**trainable) -> AffectGPT:
    cfg = get_preset("tiny")
    if trainable:
        cfg.trainable = TrainableConfig(**trainable)
    return AffectGPT.build(cfg)


def feats(b: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 8, 48, generator=g), torch.randn(b, 8, 32, generator=g)


def batch(model: AffectGPT, tasks=("description", "ov_labels"), has_video=None, has_audio=None, targets=True):
    v, a = feats(len(tasks))
    tg = ["In the video, the mouth curves up.", format_ov_labels(["happy", "excited"])][: len(tasks)] if targets else None
    return model.processor(v, a, ["I won the prize!", None][: len(tasks)], list(tasks), has_video, has_audio, tg)


@pytest.fixture(scope="module")
def model() -> AffectGPT:
    torch.manual_seed(0)
    return tiny()


def test_forward_backward_reaches_head_and_lora_only(model):
    model.zero_grad()
    out = model(batch(model))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    head_grads = [p.grad.abs().sum() for p in model.head.parameters()]
    assert all(g > 0 for g in head_grads)
    assert any("lora_B" in n and p.grad.abs().sum() > 0 for n, p in model.named_parameters())


def test_loss_covers_answer_tokens_only(model):
    b = batch(model)
    labels = b.labels
    assert b.attention_mask[:, 0].all()  # training batches pad on the right
    tok = model.tokenizer
    for i in range(len(b)):
        answer = tok(b.targets[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        kept = labels[i][labels[i] != IGNORE].tolist()
        assert kept == answer  # the prompt (placeholders, subtitle, question) and padding carry no loss
    with torch.no_grad():
        out = model(b)
        logits = out.logits[:, :-1].float()
        manual = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                                   ignore_index=IGNORE)
    assert torch.allclose(out.loss, manual, atol=1e-5)


def test_placeholder_mismatch_names_both_numbers(model):
    b = batch(model)
    b.has_audio = [False, True]  # the first prompt still has fused + audio placeholders
    with pytest.raises(ValueError, match=r"2 fused placeholder token\(s\) in the prompts but 1 fused feature row"):
        model(b)
    b = batch(model, targets=False)
    first_text = int(b.attention_mask[1].argmax()) + 1  # a text token of sample 1 becomes a video placeholder
    b.input_ids[1, first_text] = model.processor.placeholder_ids["video"]
    with pytest.raises(ValueError, match=r"3 video placeholder token\(s\) in the prompts but 2 video feature row"):
        model.generate(b, max_new_tokens=2)


def test_missing_modalities_adapt_the_prompt(model):
    v, a = feats(4)
    b = model.processor(v, a, ["hi", "hi", "hi", "hi"], ["ov_labels"] * 4,
                         has_video=[True, True, False, False], has_audio=[True, False, True, False])
    p = model.cfg.prompts
    assert [pr.count("Here>") for pr in b.prompts] == [3, 1, 1, 0]
    assert p.video_token in b.prompts[1] and p.audio_token not in b.prompts[1]
    assert p.audio_token in b.prompts[2] and p.video_token not in b.prompts[2]
    assert "seen" not in b.prompts[2] and "heard" not in b.prompts[3]
    texts = model.generate(b, max_new_tokens=4)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    trained = model.processor(v, a, ["hi"] * 4, ["ov_labels"] * 4, [True, True, False, False],
                               [True, False, True, False], targets=["calm"] * 4)
    assert torch.isfinite(model(trained).loss)
    # a missing modality's feature rows do not influence the answer
    emb = model.prompt_embeddings(b)[3]
    b2 = model.processor(v * 10, a * 10, ["hi"] * 4, ["ov_labels"] * 4, [True, True, False, False],
                          [True, False, True, False])
    assert torch.equal(model.prompt_embeddings(b2)[3], emb)


def test_generate_returns_text_and_matches_the_embeddings_path(model):
    b = batch(model, targets=False)
    texts = model.generate(b, max_new_tokens=8)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    assert any(texts)
    embs = model.prompt_embeddings(b)
    assert embs[0].shape[1] == model.cfg.llm_hidden and embs[0].ndim == 2
    for i, emb in enumerate(embs):
        ids = model.llm.generate(inputs_embeds=emb[None], attention_mask=torch.ones(1, emb.shape[0], dtype=torch.long),
                                 max_new_tokens=8, do_sample=False, pad_token_id=model.tokenizer.pad_token_id,
                                 eos_token_id=model.tokenizer.eos_token_id)
        assert model.tokenizer.decode(ids[0], skip_special_tokens=True).strip() == texts[i]
    # batching (left padding) does not change an answer
    single = model.processor(b.video_feats[1:], b.audio_feats[1:], [None], ["ov_labels"])
    assert model.generate(single, max_new_tokens=8) == [texts[1]]


def _logits(model: AffectGPT, b) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(b).logits


@pytest.mark.parametrize("llm", ["lora", "full", "frozen"])
def test_save_load_gives_identical_logits(tmp_path, llm):
    torch.manual_seed(1)
    m = tiny(llm=llm)
    with torch.no_grad():  # make LoRA non-trivial (B starts at zero)
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    b = batch(m)
    save_checkpoint(m, str(tmp_path / "ck"))
    files = checkpoint_files(str(tmp_path / "ck"))
    assert "config.json" in files and "head.safetensors" in files and "tokenizer/tokenizer.json" in files
    assert ("adapter/adapter_model.safetensors" in files) == (llm == "lora")
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    loaded = load_checkpoint(str(tmp_path / "ck"))
    assert loaded.cfg == m.cfg
    assert torch.equal(_logits(m, b), _logits(loaded, b))
    g = batch(m, targets=False)
    assert loaded.generate(g, max_new_tokens=5) == m.generate(g, max_new_tokens=5)


def test_merged_export_and_unsafe_files(tmp_path):
    torch.manual_seed(2)
    m = tiny()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    b = batch(m)
    save_checkpoint(m, str(tmp_path / "merged"), merge_lora=True)
    files = checkpoint_files(str(tmp_path / "merged"))
    assert "llm/model.safetensors" in files and not any(f.startswith("adapter/") for f in files)
    merged = load_checkpoint(str(tmp_path / "merged"))
    assert torch.allclose(_logits(m, b), _logits(merged, b), atol=1e-4)
    (tmp_path / "merged" / "evil.bin").write_bytes(b"\x80\x04not a tensor")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(str(tmp_path / "merged"))
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(str(tmp_path))


def test_checkpoint_round_trip_on_s3(s3_bucket):
    torch.manual_seed(3)
    m = tiny()
    uri = f"{s3_bucket}/ckpt/stage1"
    save_checkpoint(m, uri)
    assert "adapter/adapter_config.json" in checkpoint_files(uri)
    b = batch(m)
    assert torch.equal(_logits(m, b), _logits(load_checkpoint(uri), b))


def test_trainable_settings_count_parameters():
    counts = {}
    for head, llm in [("full", "lora"), ("full", "frozen"), ("frozen", "lora"), ("full", "full"), ("frozen", "frozen")]:
        m = tiny(head=head, llm=llm)
        t = m.parameter_table()
        counts[(head, llm)] = sum(r["trainable"] for r in t.values())
        head_n = sum(r["params"] for k, r in t.items() if k.startswith("head."))
        lora_n = t.get("llm.lora", {"params": 0})["params"]
        base_n = t["llm.base"]["params"]
        expect = (head_n if head == "full" else 0) + {"lora": lora_n, "full": base_n, "frozen": 0}[llm]
        assert counts[(head, llm)] == expect == sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert counts[("frozen", "frozen")] == 0
    assert counts[("full", "lora")] > counts[("full", "frozen")] > 0
    # LoRA on every q/k/v/o/gate/up/down of 2 layers, r=8: r * (in + out) each
    h, kv, inter = 64, 2 * 16, 128
    per_layer = 8 * ((h + h) * 2 + (h + kv) * 2 + (h + inter) * 3)
    assert tiny().parameter_table()["llm.lora"]["params"] == 2 * per_layer


def test_switching_stage_settings_is_config_only():
    m = tiny(head="full", llm="lora")
    m.set_trainable(TrainableConfig(head="frozen", llm="lora"))
    assert all(not p.requires_grad for p in m.head.parameters())
    m.set_trainable(TrainableConfig(head="full", llm="full"))  # merges LoRA into the base
    assert not m.has_lora and all(p.requires_grad for p in m.parameters())


def test_published_preset_on_meta_device_matches_the_paper():
    report = inspect_model("affectgpt-qwen2.5-7b")
    comps = report["components"]
    # Qwen2.5-7B: 28 layers, hidden 3584, kv 512, intermediate 18944; r=16 on 7 projections
    per_layer = 16 * ((3584 + 3584) * 2 + (3584 + 512) * 2 + (3584 + 18944) * 3)
    assert comps["llm.lora"]["trainable"] == 28 * per_layer == 40_370_176
    head = sum(r["trainable"] for k, r in comps.items() if k.startswith("head."))
    assert 16e6 < head < 18e6  # paper: ~17 M for projectors and fusion
    assert 56e6 < report["trainable_params"] < 58e6  # paper: ~57 M
    assert 7.5e9 < comps["llm.base"]["params"] < 7.7e9
    assert comps["encoders.vision"]["trainable"] == 0 and 3.0e8 < comps["encoders.vision"]["params"] < 3.1e8


def test_cli_model_inspect_json(capsys):
    assert main(["model", "inspect", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"total_params", "trainable_params", "components"} <= set(report)
    assert report["trainable_params"] == sum(r["trainable"] for r in report["components"].values())
    assert main(["model", "inspect", "tiny", "--set", "trainable.llm=frozen", "--json"]) == 0
    frozen = json.loads(capsys.readouterr().out)
    assert frozen["trainable_params"] < report["trainable_params"]
    assert main(["model", "inspect", "no-such-preset"]) == 2


def test_overfits_a_handful_of_pairs():
    """The whole trainable path (head + LoRA) learns: loss on 6 pairs falls by a large factor."""
    torch.manual_seed(0)
    cfg = get_preset("tiny")
    cfg.lora.r, cfg.lora.alpha = 16, 32
    m = AffectGPT.build(cfg)
    v, a = feats(6, seed=5)
    rng = random.Random(0)
    descs = [f"In the video, clue {w}. The state is {w}." for w in ("happy", "sad", "angry", "worried", "surprised", "calm")]
    labels = [[w] for w in ("happy", "sad", "angry", "worried", "surprised", "calm")]
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    losses = []
    for _step in range(120):
        tasks = [PromptBuilder.hybrid_task(rng, d, lab) for d, lab in zip(descs, labels, strict=True)]
        targets = [PromptBuilder.target(t, d, lab) for t, d, lab in zip(tasks, descs, labels, strict=True)]
        b = m.processor(v, a, [None] * 6, tasks, targets=targets)
        loss = m(b).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first / 10, (first, last)
    m.eval()
    answers = m.generate(m.processor(v, a, [None] * 6, ["ov_labels"] * 6), max_new_tokens=16)
    assert sum(parse_ov_answer(ans) == lab for ans, lab in zip(answers, labels, strict=True)) >= 5


def test_prompt_builder_order_styles_and_targets():
    cfg = get_preset("tiny")
    pb = PromptBuilder(cfg.prompts)
    text = pb.prompt("hello", "description", Modalities(True, True))
    p = cfg.prompts
    assert text.index(p.fused_token) < text.index(p.audio_token) < text.index(p.video_token) < text.index("hello")
    assert pb.prompt(None, "ov_labels", Modalities(False, False)).count("Here>") == 0
    assert parse_ov_answer(format_ov_labels(["happy", "grateful"])) == ["happy", "grateful"]
    assert PromptBuilder.target("ov_labels", None, ["sad"]) == "The character's emotional state is sad."
    rng = random.Random(0)
    assert {PromptBuilder.hybrid_task(rng, "d", ["x"]) for _ in range(50)} == {"description", "ov_labels"}
    assert PromptBuilder.hybrid_task(rng, None, ["x"]) == "ov_labels"
    with pytest.raises(ValueError, match="unknown task"):
        pb.prompt("x", "summarise", Modalities())
    cfg.prompts.style = "chat"
    m = AffectGPT.build(cfg)
    chat = m.processor(*feats(1), ["hi"], ["ov_labels"], targets=["The character's emotional state is calm."])
    assert chat.prompts[0].startswith("<|im_start|>user\n") and chat.prompts[0].endswith("<|im_start|>assistant\n")
    assert torch.isfinite(m(chat).loss)


def test_config_json_round_trip():
    cfg = get_preset("affectgpt-qwen2.5-7b")
    assert AffectGPTConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["architecture"] == "AffectGPT"


def test_encoders_are_frozen_and_follow_the_published_recipe():
    cfg = get_preset("tiny")
    enc = Encoders.build(cfg)
    enc.train()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (2, 8, 64, 64, 3), dtype=np.uint8)
    windows = rng.standard_normal((2, 8, 32000)).astype(np.float32)
    v, a = enc.encode(frames, windows)
    assert v.shape == (2, 8, cfg.video_dim) and a.shape == (2, 8, cfg.audio_dim)
    assert torch.equal(Encoders.build(cfg).encode_video(frames), v)  # random init is seeded
    # audio: time mean of the average of the last 4 hidden layers, per window
    x = torch.from_numpy(windows[0, 3:4])
    x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
    with torch.no_grad():
        hs = enc.audio(input_values=x, output_hidden_states=True).hidden_states
    assert len(hs) == cfg.encoders.audio_config["num_hidden_layers"] + 1
    expect = torch.stack(hs[-4:]).mean(0).mean(1)[0]
    assert torch.allclose(a[0, 3], expect, atol=1e-5)
    # video: frames at any size are resized to the tower's input; one vector per frame
    assert not torch.allclose(v[0, 0], v[0, 1])
    assert enc.encode_video(frames[:, :, :32, :32]).shape == (2, 8, cfg.video_dim)


# ------------------------------------------------------------------ seeds: each seeds what it names


def _parts(m: AffectGPT) -> dict[str, dict[str, torch.Tensor]]:
    """State dict split into head / LLM base / LoRA, detached copies; base names as without PEFT."""
    out = {"head": {}, "llm": {}, "lora": {}}
    for name, t in m.state_dict().items():
        part = "head" if name.startswith("head.") else "lora" if "lora_" in name else "llm"
        out[part][name.replace("base_model.model.", "").replace(".base_layer", "")] = t.detach().clone()
    return out


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    assert a.keys() == b.keys() and a
    return all(torch.equal(a[k], b[k]) for k in a)


def _differs_everywhere(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Every randomly initialised tensor differs (constant inits such as biases at 0, norms at 1 aside)."""
    assert a.keys() == b.keys() and a
    drawn = [k for k in a if a[k].unique().numel() > 1]
    return bool(drawn) and all(not torch.equal(a[k], b[k]) for k in drawn)


def test_build_seed_gives_identical_weights_whatever_the_callers_random_state():
    torch.manual_seed(100)
    first = AffectGPT.build(get_preset("tiny"), seed=7)
    torch.manual_seed(200)
    state = torch.get_rng_state()
    second = AffectGPT.build(get_preset("tiny"), seed=7)
    assert torch.equal(torch.get_rng_state(), state)  # building draws nothing from the caller's generator
    a, b = _parts(first), _parts(second)
    assert first.has_lora and all(_same(a[p], b[p]) for p in ("head", "llm", "lora"))
    assert first.cfg.init_seed == second.cfg.init_seed == 7


def test_training_seed_changes_head_llm_and_lora_init():
    a, b = AffectGPT.build(get_preset("tiny"), seed=1), AffectGPT.build(get_preset("tiny"), seed=2)
    pa, pb = _parts(a), _parts(b)
    assert all(_differs_everywhere(pa[p], pb[p]) for p in ("head", "llm", "lora"))
    assert (a.cfg.init_seed, b.cfg.init_seed) == (1, 2)  # recorded: config.json says which init it was
    # no seed argument: the config's init_seed (a preset override) decides
    from ray_emer.model.config import resolve_model_config

    c = AffectGPT.build(resolve_model_config("tiny", ["init_seed=2"]))
    assert all(_same(_parts(c)[p], pb[p]) for p in ("head", "llm", "lora"))


def test_encoder_seed_moves_the_encoders_only():
    one, other = get_preset("tiny"), get_preset("tiny")
    other.encoders.seed = 5
    assert all(_same(_parts(AffectGPT.build(one, seed=3))[p], _parts(AffectGPT.build(other, seed=3))[p])
               for p in ("head", "llm", "lora"))
    e0, e5 = Encoders.build(one).state_dict(), Encoders.build(other).state_dict()
    assert _differs_everywhere(e0, e5)
    one.init_seed = 11  # and the model's init seed does not move the encoders
    assert _same(Encoders.build(one).state_dict(), e0)


def test_lora_added_later_is_seeded():
    def frozen(seed):
        return AffectGPT.build(dataclasses.replace(get_preset("tiny"), trainable=TrainableConfig(llm="frozen")),
                               seed=seed)

    lora = TrainableConfig(head="full", llm="lora")
    m1, m2, m3 = frozen(3), frozen(3), frozen(3)
    assert not m1.has_lora
    torch.manual_seed(1)
    m1.set_trainable(lora, seed=9)
    torch.manual_seed(2)
    m2.set_trainable(lora, seed=9)
    m3.set_trainable(lora, seed=10)
    l1, l2, l3 = _parts(m1)["lora"], _parts(m2)["lora"], _parts(m3)["lora"]
    assert _same(l1, l2) and _differs_everywhere(l1, l3)
    assert (m1.cfg.init_seed, m3.cfg.init_seed) == (9, 10)  # the adapter's seed is recorded
    # no seed: the model's own init_seed, so the adapter is what build(seed=3) would have given it
    m4 = frozen(3)
    torch.manual_seed(4)
    m4.set_trainable(lora)
    assert _same(_parts(m4)["lora"], _parts(AffectGPT.build(get_preset("tiny"), seed=3))["lora"])
    # existing adapters are never re-drawn by another seed
    m1.set_trainable(TrainableConfig(head="frozen", llm="lora"), seed=99)
    assert _same(_parts(m1)["lora"], l1) and m1.cfg.init_seed == 9


def test_loading_does_not_depend_on_seeds(tmp_path):
    m = AffectGPT.build(get_preset("tiny"), seed=4)
    with torch.no_grad():  # a trained-looking adapter (B starts at zero)
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    save_checkpoint(m, str(tmp_path / "ck"))
    saved = _parts(m)
    for seed, global_seed in ((None, 0), (1, 1), (2, 2)):
        torch.manual_seed(global_seed)
        state = torch.get_rng_state()
        loaded = load_checkpoint(str(tmp_path / "ck"), seed=seed)
        assert torch.equal(torch.get_rng_state(), state)  # loading draws nothing from the caller's generator
        got = _parts(loaded)
        assert all(_same(got[p], saved[p]) for p in ("head", "llm", "lora"))
        assert loaded.cfg.init_seed == 4


def test_stage_two_lora_on_a_checkpoint_without_adapter_follows_the_seed(tmp_path):
    cfg = get_preset("tiny")
    cfg.trainable = TrainableConfig(head="full", llm="frozen")
    stage1 = AffectGPT.build(cfg, seed=4)
    save_checkpoint(stage1, str(tmp_path / "s1"))
    lora = TrainableConfig(head="frozen", llm="lora")
    torch.manual_seed(0)
    a = load_checkpoint(str(tmp_path / "s1"), trainable=lora, seed=21)
    torch.manual_seed(1)
    b = load_checkpoint(str(tmp_path / "s1"), trainable=lora, seed=21)
    c = load_checkpoint(str(tmp_path / "s1"), trainable=lora, seed=22)
    pa, pb, pc = _parts(a), _parts(b), _parts(c)
    assert a.has_lora and _same(pa["lora"], pb["lora"]) and _differs_everywhere(pa["lora"], pc["lora"])
    saved = _parts(stage1)
    assert all(_same(p[k], saved[k]) for p in (pa, pc) for k in ("head", "llm"))  # loaded weights untouched
    assert (a.cfg.init_seed, c.cfg.init_seed) == (21, 22)
    # no seed: the saved init_seed (4), i.e. the adapter stage 1 would have had with LoRA on
    d = load_checkpoint(str(tmp_path / "s1"), trainable=lora)
    assert _same(_parts(d)["lora"], _parts(AffectGPT.build(get_preset("tiny"), seed=4))["lora"])
