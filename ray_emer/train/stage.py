"""What every driver of one training stage shares, whichever engine runs it (no Ray here).

The local driver (``local.py``) and the Ray Train wiring (``trainer.py``) both build the
stage's model here (a preset, or ``init``: an earlier stage's export re-armed with this
stage's ``trainable``), check its inputs once (``check_io``), log its params and
artifacts (a loss-curve PNG, the exported checkpoint) and return ``stage_summary``, the
one summary shape of a stage. Neither driver imports the other: both import this.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import tempfile

import torch

from ray_emer.config import ConfigError, to_dict
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.checkpoint import load_checkpoint
from ray_emer.model.config import resolve_model_config
from ray_emer.tracking import Tracker
from ray_emer.train.loop import TrainConfig
from ray_emer.train.rl import check_grpo


def check_io(cfg: TrainConfig) -> None:
    """A stage reads ``features`` and writes ``output``: both must be named (each driver checks this once)."""
    if not cfg.features or not cfg.output:
        raise ConfigError("training needs features and output (--features/--output, or features/output in the config)")
    if cfg.method == "grpo":
        check_grpo(cfg)


def build_model(cfg: TrainConfig) -> AffectGPT:
    """The stage's model: a fresh preset, or an earlier export re-armed with this stage's trainable setting.
    ``cfg.seed`` seeds what is initialised here (head, a random LLM, new LoRA adapters). ``cfg.trainable`` is
    the one source of the setting: the model config only records it (``TrainConfig`` rejects a
    ``model_overrides`` entry that says otherwise)."""
    torch.manual_seed(cfg.seed)  # dropout; the initialisation takes the seed explicitly
    if cfg.init:
        if cfg.model_overrides:
            raise ConfigError("model_overrides apply to a fresh preset, not to an --init checkpoint")
        return load_checkpoint(cfg.init, trainable=cfg.trainable, seed=cfg.seed)
    mcfg = resolve_model_config(cfg.preset, cfg.model_overrides)
    mcfg.trainable = dataclasses.replace(cfg.trainable)
    return AffectGPT.build(mcfg, seed=cfg.seed)


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def loss_curve_png(losses: list[float], path: str, title: str) -> str:
    import matplotlib  # only here: a stage pays for matplotlib when it draws its one figure, importers never

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_stage_params(tracker: Tracker, cfg: TrainConfig, model: AffectGPT, world_size: int) -> None:
    tracker.log_params({"train": to_dict(cfg), "git_commit": git_commit(), "preset": model.cfg.preset,
                        "world_size": world_size, "trainable_params": sum(
                            p.numel() for p in model.parameters() if p.requires_grad)})


def log_stage_artifacts(tracker: Tracker, cfg: TrainConfig, losses: list[float]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tracker.log_artifact(loss_curve_png(losses, os.path.join(tmp, "loss_curve.png"), cfg.tracking.run_name or "training"))
    if cfg.output and not cfg.output.startswith("s3://") and os.path.isdir(cfg.output):
        tracker.log_artifact(cfg.output)


def stage_card(cfg: TrainConfig, steps: int, metrics: dict) -> dict:
    """What the exported checkpoint's model card tells of this stage (``model.card.card_text``)."""
    scores = {k: v for k, v in metrics.items() if k != "val_n"}
    return {"data": cfg.features, "init": cfg.init, "steps": steps, "engine": cfg.scaling.engine, "seed": cfg.seed,
            "scores": scores, "scores_on": f"{metrics.get('val_n', 0)} rows of split {cfg.data.val_split!r} "
                                          "(held out of training)"}


def stage_summary(cfg: TrainConfig, steps: int, losses: list[float], metrics: dict, workers: int,
                  wall_s: float, checkpoint: str | None = None, resumed_from: int = 0,
                  resume_check: dict | None = None, run_id: str | None = None, rewards: list[float] | None = None,
                  kls: list[float] | None = None) -> dict:
    """The one summary of a training stage, whichever engine ran it. Stage 3 (``method: grpo``) adds its mean
    reward and KL per step, ``reward_first``/``reward_last`` (means over the first and last 20% of the steps)
    and ``kl_last`` (over the last 20%)."""

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    out = {"output": cfg.output, "engine": cfg.scaling.engine, "workers": workers, "steps": steps,
           "first_loss": mean(losses[:5]), "last_loss": mean(losses[-5:]), "losses": list(losses),
           "metrics": dict(metrics), "checkpoint": checkpoint, "wall_s": round(wall_s, 3),
           "resumed_from": resumed_from, "resume_check": resume_check, "run_id": run_id}
    if cfg.method == "grpo":
        rewards, kls = list(rewards or []), list(kls or [])
        tail = max(1, round(len(rewards) * 0.2))
        out.update(rewards=rewards, kls=kls, reward_first=mean(rewards[:tail]), reward_last=mean(rewards[-tail:]),
                   kl_last=mean(kls[-max(1, round(len(kls) * 0.2)):]))
    return out
