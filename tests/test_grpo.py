"""Stage 3 (GRPO): the loss and advantages against hand computations, rewards against the evaluation scorer,
the reward rising on the synthetic archive (local engine), the reference identity, the config's errors."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from conftest import REPO, synthetic_features
from ray_emer.config import ConfigError, load_config
from ray_emer.eval.labelled import score_labels
from ray_emer.eval.metrics import ov_fscore
from ray_emer.eval.wheel import EmotionWheels
from ray_emer.model.config import TrainableConfig
from ray_emer.model.prompts import format_ov_labels, parse_ov_answer
from ray_emer.synthetic import SynthConfig
from ray_emer.tracking import TrackingConfig
from ray_emer.train.epoch import TrainState
from ray_emer.train.grpo import GRPOConfig, answer_rewards, group_advantages, grpo_loss, label_fscore
from ray_emer.train.loop import DataConfig, OptimConfig, ScalingConfig, TrainConfig
from ray_emer.train.rl import completion_batch, grpo_trainer, reference_id
from ray_emer.train.run import run_stage


# ---------------------------------------------------------------- the math, by hand
def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2, 0.4])
    adv, zero = group_advantages(rewards, 2, eps=0.0)
    s = math.sqrt(0.5)  # the sample std of (1, 0); of (0.2, 0.4): sqrt(0.02)
    expect = [0.5 / s, -0.5 / s, 0.0, 0.0, -0.1 / math.sqrt(0.02), 0.1 / math.sqrt(0.02)]
    assert adv.tolist() == pytest.approx(expect, rel=1e-5)
    assert zero == pytest.approx(1 / 3)  # the (0.5, 0.5) group: equal rewards teach nothing
    with pytest.raises(ValueError, match="whole groups"):
        group_advantages(rewards, 4)


def test_grpo_loss_by_hand():
    """Two answers of 3 token slots (the second has 2 tokens): ratios inside and outside the clip range, one
    positive and one negative advantage, a KL penalty (k3)."""
    lp = torch.tensor([[-1.0, -0.5, -2.0], [-0.2, -1.5, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.0, -0.8, -1.5], [-0.1, -1.0, 0.0]])
    ref = torch.tensor([[-1.2, -0.5, -2.5], [-0.3, -1.5, 0.0]])
    adv = torch.tensor([1.5, -0.5])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    eps, beta = 0.2, 0.1

    def token(lp_, old_, ref_, a):
        r = math.exp(lp_ - old_)
        objective = min(r * a, max(1 - eps, min(1 + eps, r)) * a)
        kl = math.exp(ref_ - lp_) - (ref_ - lp_) - 1
        return -(objective - beta * kl), kl, r

    rows = [[token(lp[i, t].item(), old[i, t].item(), ref[i, t].item(), adv[i].item()) for t in range(n)]
            for i, n in ((0, 3), (1, 2))]
    expect = sum(sum(x[0] for x in row) / len(row) for row in rows) / 2
    loss, stats = grpo_loss(lp, old, ref, adv, mask, eps, beta)
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    kls = [x[1] for row in rows for x in row]
    assert stats["kl"] == pytest.approx(sum(kls) / 5, rel=1e-6)
    # clipped against the advantage's sign: answer 0 (A > 0) token 1 (r = e^0.3 > 1.2); answer 1 (A < 0) token 1
    # (r = e^-0.5 < 0.8); answer 0 token 2 (r = e^-0.5) is below the range but A > 0 keeps the unclipped term
    assert stats["clip_share"] == pytest.approx(2 / 5)
    loss.backward()
    # the two clipped tokens sit where policy = reference (no KL gradient either): no gradient at all; an unclipped
    # token has one, a masked slot none
    assert lp.grad[0, 1] == 0 and lp.grad[1, 1] == 0 and lp.grad[0, 0] != 0 and lp.grad[1, 2] == 0
    # with the policy at the sampling policy (one update per batch) the ratio is 1 and the loss is -mean(A) + KL
    same, _ = grpo_loss(old, old, old, adv, mask, eps, 0.5)
    assert same.item() == pytest.approx(-adv.mean().item())


# ---------------------------------------------------------------- rewards = the evaluation's scorer
ANSWERS = [format_ov_labels(["happy", "joyful"]), format_ov_labels(["sad"]), "The character's emotional state is",
           format_ov_labels(["angry", "worried", "calm"]), "happy, sad", format_ov_labels(["nervous"])]
GOLD = [["happy"], ["happy", "cheerful"], ["sad"], ["angry", "irritated"], ["sad"], ["worried", "anxious"]]


@pytest.fixture(scope="module")
def wheels(reference_dir):
    return EmotionWheels.load(reference_dir / "emotion_wheel_csv")


def test_rewards_match_the_evaluation_scorer(wheels):
    cfg = GRPOConfig(format_weight=0.5, length_penalty=0.1, length_free_tokens=4)
    for i, (answer, gold) in enumerate(zip(ANSWERS, GOLD, strict=True)):
        labels = parse_ov_answer(answer)
        # the evaluation of one labelled row (score_labels, the quickstart's and `ray-emer label`'s scorer)
        row = pd.DataFrame([{"clip_id": "c", "status": "ok", "labels": labels, "sentiment": "", "description": ""}])
        scored = score_labels(row, {"c": {"labels": gold, "description": "", "emotion": gold[0]}}, wheels)
        r = answer_rewards(answer, 6, gold, cfg, wheels)
        assert r["fscore"] == pytest.approx(scored["ov"]["score"]), (answer, gold)
        assert r["fscore"] == pytest.approx(ov_fscore({"c": gold}, {"c": labels}, wheels)["score"])
        assert r["format"] == (1.0 if i in (0, 1, 3, 5) else 0.0)  # prefix and >= 1 label
        assert r["length"] == pytest.approx(-0.2)  # 6 tokens, 4 free
        assert r["reward"] == pytest.approx(r["fscore"] + 0.5 * r["format"] - 0.2)
    assert answer_rewards(ANSWERS[0], 6, GOLD[0], cfg, wheels)["fscore"] == 1.0  # joyful: happy's class too
    assert answer_rewards(ANSWERS[5], 6, GOLD[5], cfg, wheels)["fscore"] == 1.0  # nervous ~ worried on every wheel
    # without wheels: exact (lower-cased) labels, F of |G&P|/|P| and |G&P|/|G|
    p, r = 1 / 3, 1 / 2
    assert label_fscore(["Happy", "cheerful"], ["happy", "sad", "angry"]) == pytest.approx(2 * p * r / (p + r))
    assert label_fscore(["sad"], []) == 0.0 and label_fscore([], ["sad"]) == 0.0
    # a gold label the wheels do not know (neutral) falls back to exact matching
    assert label_fscore(["neutral"], ["neutral"], wheels) == 1.0


def test_an_answer_batch_puts_the_sampled_ids_after_the_prompt():
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.config import get_preset
    from ray_emer.model.processing import IGNORE

    model = AffectGPT.build(get_preset("tiny"), seed=0)
    proc = model.processor
    d = model.cfg
    prompt = proc(torch.zeros(2, 4, d.video_dim), torch.zeros(2, 4, d.audio_dim), ["hi", None],
                  ["ov_labels"] * 2)
    full = completion_batch(prompt, [[5, 6, 7], [9]], model.tokenizer.pad_token_id)
    n0, n1 = (int(x) for x in prompt.attention_mask.sum(1))
    assert full.input_ids[0, n0:n0 + 3].tolist() == [5, 6, 7] and full.input_ids[1, n1] == 9
    assert full.labels[0].ne(IGNORE).sum() == 3 and full.labels[1].ne(IGNORE).sum() == 1
    assert full.attention_mask[0].sum() == n0 + 3 and bool(full.attention_mask[:, 0].all())  # right padded


# ---------------------------------------------------------------- config errors
def test_the_shipped_config_and_bad_settings():
    cfg = load_config(TrainConfig, REPO / "jobs" / "configs" / "stage3_grpo.yaml")
    assert cfg.method == "grpo" and cfg.grpo.group_size >= 2 and cfg.grpo.clip_eps == 0.2 and cfg.grpo.kl_beta == 0.04
    from ray_emer.train.stage import check_io

    with pytest.raises(ConfigError, match="needs --init"):
        check_io(TrainConfig(features="f", output="o", method="grpo"))
    for bad, match in ((GRPOConfig(group_size=1), "group_size"), (GRPOConfig(temperature=0), "temperature")):
        with pytest.raises(ConfigError, match=match):
            check_io(TrainConfig(features="f", output="o", init="i", method="grpo", grpo=bad))
    with pytest.raises(ConfigError, match="grad_accum"):
        check_io(TrainConfig(features="f", output="o", init="i", method="grpo", optim=OptimConfig(grad_accum=2)))


# ---------------------------------------------------------------- on the synthetic archive
@pytest.fixture(scope="module")
def stage2(tmp_path_factory):
    """Features of 24 synthetic clips and a briefly trained (ov_labels) stand-in for a stage-2 checkpoint."""
    root = tmp_path_factory.mktemp("grpo")
    feats = synthetic_features(root, SynthConfig(clips=24, seed=3, split_fractions=[0.85, 0.15, 0.0]))
    run_stage(TrainConfig(features=str(feats), output=str(root / "stage2"), max_steps=10, val_samples=0,
                          trainable=TrainableConfig(head="full", llm="full"),
                          data=DataConfig(batch_size=8, task="ov_labels", packing=False),
                          optim=OptimConfig(lr=3e-3, warmup_steps=5), scaling=ScalingConfig(engine="local"),
                          tracking=TrackingConfig(enabled=False)), log=lambda m: None)
    return feats, root / "stage2"


def grpo_cfg(features, init, out, **kw) -> TrainConfig:
    return TrainConfig(features=str(features), output=str(out), init=str(init), method="grpo",
                       max_steps=kw.pop("max_steps", 15), val_samples=0, seed=kw.pop("seed", 0),
                       trainable=TrainableConfig(head="full", llm="full"), data=DataConfig(batch_size=4, packing=False),
                       optim=OptimConfig(lr=2e-3, warmup_steps=0, schedule="constant"),
                       grpo=GRPOConfig(group_size=4, max_new_tokens=12), **kw)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_grpo_raises_the_mean_reward_on_the_synthetic_archive(stage2, tmp_path):
    feats, init = stage2
    cfg = grpo_cfg(feats, init, tmp_path / "stage3", scaling=ScalingConfig(engine="local"),
                   tracking=TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="grpo"))
    summary = run_stage(cfg, log=lambda m: None)
    assert summary["steps"] == 15 and len(summary["rewards"]) == len(summary["kls"]) == 15
    # the last 20% of the steps (3) against the first 20%
    assert summary["reward_last"] > summary["reward_first"] + 0.05, summary["rewards"]
    assert summary["kl_last"] > 0  # the policy moved away from the reference
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("grpo").experiment_id])[0]
    for key in ("reward", "reward_fscore", "reward_format", "reward_length", "kl", "answer_tokens",
                "zero_advantage_groups", "loss"):
        assert len(client.get_metric_history(run.info.run_id, key)) == 15, key


def test_a_resumed_run_must_have_the_same_reference(stage2, tmp_path):
    feats, init = stage2
    cfg = grpo_cfg(feats, init, tmp_path / "out", max_steps=1, scaling=ScalingConfig(engine="local"))
    fit = grpo_trainer(cfg)
    from ray_emer.train.stage import build_model

    model = build_model(cfg)
    with pytest.raises(ConfigError, match="another reference model"):
        fit(model, lambda e: [], cfg, 1, state=TrainState(step=3, reference="0" * 64))
    assert reference_id(str(init)) == reference_id(str(init)) != reference_id(str(feats))


@pytest.mark.integration
@pytest.mark.slow  # ~2 min; the supervised stage's crash and resume on Ray Train runs in the default tier
@pytest.mark.timeout(600)
def test_ray_train_two_workers_crash_resume_with_the_same_reference(ray_local, stage2, tmp_path):
    """Ray Train + FSDP2 (2 CPU workers): rank 1 dies after step 3; the group resumes from the step-2 checkpoint,
    which names the same reference (the digest of --init), and finishes; the export loads."""
    from test_train_ray import crash_once

    from ray_emer.model.checkpoint import load_checkpoint
    from ray_emer.train.trainer import run_ray_training

    feats, init = stage2
    cfg = grpo_cfg(feats, init, tmp_path / "stage3", max_steps=4,
                   scaling=ScalingConfig(workers=2, worker_cpus=0.5, checkpoint_every=2),
                   tracking=TrackingConfig(uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="grpo", run_name="g"))
    cfg.data.batch_size, cfg.grpo.group_size, cfg.grpo.max_new_tokens = 2, 2, 6
    faults = tmp_path / "faults"
    faults.mkdir()
    summary = run_ray_training(cfg, log=lambda m: None, on_step=crash_once(faults, rank=1, step=3))
    assert summary["steps"] == 4 and summary["resumed_from"] == 2, summary
    assert summary["resume_check"]["reference"] == reference_id(str(init))
    assert summary["resume_check"]["loaded"] == summary["resume_check"]["saved"]
    assert len(summary["rewards"]) == len(summary["kls"]) == 4 and summary["kl_last"] is not None
    assert summary["reward_first"] is not None and summary["reward_last"] is not None
    load_checkpoint(str(tmp_path / "stage3"))
