"""Group-relative policy optimisation (GRPO) in plain PyTorch: rewards, group advantages, the loss.

No model and no Ray here: the stage-3 loop (``rl.py``) samples ``group_size`` answers per
prompt from the policy, scores them here, and feeds per-token log-probabilities of the
sampled tokens (policy, the policy that sampled them, the frozen reference) to
``grpo_loss``. Written here rather than taken from a library's GRPO trainer (e.g. TRL's):
those sample from token-id prompts, and AffectGPT's prompts are embeddings (the head's
feature tokens spliced into the text), so their rollout and log-prob code does not apply.

- reward of one answer = ``fscore_weight`` x the emotion-wheel F-score of its parsed
  labels against the gold labels (per answer the evaluation's ``ov_fscore`` arithmetic, over
  the wheels where the gold labels map; exact, lower-cased label matching when no wheel is
  given or the gold maps on none, as ``emer_set_metrics`` groups without synonyms)
  + ``format_weight`` x (the answer starts with the answer prefix and parses to >= 1 label)
  - ``length_penalty`` x (answer tokens beyond ``length_free_tokens``)
- advantage = (reward - group mean) / (group std + ``adv_eps``) (the sample std, as TRL);
  a group whose rewards are all equal has zero advantage (it teaches nothing)
- loss per token = -(min(r A, clip(r, 1 - eps, 1 + eps) A) - beta KL), r = exp(logp - logp_old),
  KL = exp(ref - logp) - (ref - logp) - 1 (the k3 estimator of DeepSeekMath's GRPO), averaged over
  each answer's tokens, then over the answers
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ray_emer.config import ConfigError
from ray_emer.eval.metrics import emer_set_metrics
from ray_emer.eval.wheel import NUM_WHEELS, EmotionWheels
from ray_emer.model.prompts import OV_PREFIX, parse_ov_answer


@dataclasses.dataclass
class GRPOConfig:
    """Stage 3 (``method: grpo``). Where AffectGPT-R1 does not state a number, DeepSeekMath's GRPO does:
    clip 0.2, KL weight 0.04, one policy update per batch of answers."""

    group_size: int = 4  # answers sampled per prompt
    temperature: float = 1.0  # sampling temperature (> 0); log-probs are of the same tempered distribution
    top_k: int = 0  # 0: the whole vocabulary
    max_new_tokens: int = 24  # answer length cap
    clip_eps: float = 0.2  # ratio clipping
    kl_beta: float = 0.04  # weight of the KL penalty to the frozen --init reference
    updates_per_batch: int = 1  # optimizer steps per batch of sampled answers (> 1: the ratio moves off 1)
    adv_eps: float = 1e-4
    fscore_weight: float = 1.0
    format_weight: float = 0.5
    length_penalty: float = 0.01  # per answer token beyond length_free_tokens
    length_free_tokens: int = 16
    wheel_dir: str = ""  # emotion-wheel tables (local or s3://); empty: exact-match grouping
    wheel_level: int = 1

    def check(self) -> None:
        if self.group_size < 2:
            raise ConfigError(f"grpo.group_size must be >= 2 (advantages are relative to the group), "
                              f"not {self.group_size}")
        if self.temperature <= 0:
            raise ConfigError(f"grpo.temperature must be > 0 (answers are sampled), not {self.temperature}")
        if self.updates_per_batch < 1 or self.max_new_tokens < 1:
            raise ConfigError("grpo.updates_per_batch and grpo.max_new_tokens must be >= 1")
        if self.clip_eps <= 0 or self.kl_beta < 0:
            raise ConfigError("grpo.clip_eps must be > 0 and grpo.kl_beta >= 0")


# ---------------------------------------------------------------- rewards
def _f(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def label_fscore(gold: Sequence[str], pred: Sequence[str], wheels: EmotionWheels | None = None,
                 level: int = 1) -> float:
    """F-score of one answer's labels against its gold labels: with ``wheels``, per wheel where the gold
    maps, P = |G&P|/|P| and R = |G&P|/|G| of the wheel classes (empty P: 0), F = 2PR/(P+R), mean over those
    wheels (``ov_fscore`` of this one sample); without (or when the gold maps on no wheel), the same on
    lower-cased labels (``emer_set_metrics`` with no synonym groups)."""
    if wheels is not None:
        fs = []
        for w in range(NUM_WHEELS):
            g = wheels.map_labels(gold, w, level)
            if g:
                p = wheels.map_labels(pred, w, level)
                fs.append(_f(len(g & p) / len(p), len(g & p) / len(g)) if p else 0.0)
        if fs:
            return sum(fs) / len(fs)
    if not gold:
        return 0.0
    m = emer_set_metrics({"a": list(gold)}, {"a": list(pred)}, {})
    return _f(m["accuracy_s"], m["recall_s"])


def answer_rewards(answer: str, tokens: int, gold: Sequence[str], cfg: GRPOConfig,
                   wheels: EmotionWheels | None = None) -> dict[str, float]:
    """One answer's reward and its parts: ``fscore``, ``format`` (1/0), ``length`` (the penalty, <= 0),
    ``reward`` (the weighted sum)."""
    labels = parse_ov_answer(answer)
    fscore = label_fscore(gold, labels, wheels, cfg.wheel_level)
    fmt = float(answer.strip().startswith(OV_PREFIX) and bool(labels))
    length = -cfg.length_penalty * max(0, tokens - cfg.length_free_tokens)
    return {"reward": cfg.fscore_weight * fscore + cfg.format_weight * fmt + length, "fscore": fscore,
            "format": fmt, "length": length}


# ---------------------------------------------------------------- advantages and loss
def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> tuple[torch.Tensor, float]:
    """Rewards ``[N * G]`` (each prompt's G answers together) -> advantages ``[N * G]`` normalised within each
    group, and the share of groups whose advantages are all zero (equal rewards)."""
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards are not whole groups of {group_size}")
    grouped = rewards.float().view(-1, group_size)
    std = grouped.std(dim=1, keepdim=True)
    adv = (grouped - grouped.mean(dim=1, keepdim=True)) / (std + eps)
    flat = (std.squeeze(1) == 0)
    adv = torch.where(flat.unsqueeze(1), torch.zeros_like(adv), adv)
    return adv.reshape(-1), float(flat.float().mean())


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, clip_eps: float, kl_beta: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token log-probs ``[B, T]`` of the sampled answers under the policy (with grad), the policy that
    sampled them and the reference; advantages ``[B]``; ``mask`` ``[B, T]`` marks answer tokens. -> the loss
    (mean over answers of the mean over their tokens) and ``kl`` (mean per token), ``clip_share`` (tokens
    whose ratio was clipped against the advantage's sign)."""
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype).unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = ratio * adv, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * adv
    objective = torch.minimum(unclipped, clipped)
    log_ref_ratio = ref_logp - logp
    kl = torch.exp(log_ref_ratio) - log_ref_ratio - 1
    per_token = -(objective - kl_beta * kl)
    lengths = mask.sum(1).clamp(min=1)
    loss = ((per_token * mask).sum(1) / lengths).mean()
    n = mask.sum().clamp(min=1)
    with torch.no_grad():
        stats = {"kl": float((kl * mask).sum() / n),
                 "clip_share": float(((clipped < unclipped).to(mask.dtype) * mask).sum() / n)}
    return loss, stats
