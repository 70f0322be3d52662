"""One training stage in one process (no Ray): features in, exported checkpoint + metrics out.

Builds the model (preset, or ``init``: an earlier stage's export, with this stage's
``trainable`` settings), reads the feature shards, runs ``loop.train``, validates,
exports the checkpoint directory and logs params, metrics, the checkpoint and a
loss-curve PNG to the tracker.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import tempfile

import torch

from ray_emer.config import to_dict
from ray_emer.data.features import read_features
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.checkpoint import load_checkpoint, save_checkpoint
from ray_emer.model.config import resolve_model_config
from ray_emer.tracking import Tracker, make_tracker
from ray_emer.train.loop import TrainConfig, batches, feature_rows, require_rows, total_steps, train, validate


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_model(cfg: TrainConfig) -> AffectGPT:
    """The stage's model: a fresh preset, or an earlier export re-armed with this stage's trainable setting."""
    if cfg.init:
        model = load_checkpoint(cfg.init, trainable=cfg.trainable)
        if cfg.model_overrides:
            raise ValueError("model_overrides apply to a fresh preset, not to an --init checkpoint")
        return model
    mcfg = resolve_model_config(cfg.preset, cfg.model_overrides)
    mcfg.trainable = dataclasses.replace(cfg.trainable)
    return AffectGPT.build(mcfg)


def loss_curve_png(losses: list[float], path: str, title: str) -> str:
    import matplotlib

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
        tracker.log_artifact(loss_curve_png(losses, os.path.join(tmp, "loss_curve.png"), cfg.run_name or "training"))
    if cfg.output and not cfg.output.startswith("s3://") and os.path.isdir(cfg.output):
        tracker.log_artifact(cfg.output)


def run_training(cfg: TrainConfig, log=print) -> dict:
    """Train one stage in this process; returns a summary (steps, losses, validation metrics)."""
    if not cfg.features or not cfg.output:
        raise ValueError("training needs features and output")
    table = read_features(cfg.features)
    require_rows(table.select(["status", "split", "description", "labels"]).to_pylist(), cfg.train_split,
                 cfg.features)
    train_rows, val_rows = feature_rows(table, cfg.train_split), feature_rows(table, cfg.val_split)
    torch.manual_seed(cfg.seed)  # head and LoRA initialisation, as the Ray workers do
    model = build_model(cfg)
    steps = total_steps(len(train_rows), cfg)
    tracker = make_tracker(cfg.tracking_uri or None, cfg.experiment, cfg.run_name or None)
    try:
        log_stage_params(tracker, cfg, model, 1)
        log(f"[train] {len(train_rows)} train rows, {len(val_rows)} val rows, {steps} steps")
        rng = random.Random(cfg.seed)
        state = train(model, lambda epoch: batches(train_rows, cfg.batch_size, rng), cfg, steps, val_rows, tracker)
        metrics = validate(model, val_rows, cfg) if val_rows else {}
        tracker.log_metrics(metrics, step=state.step)
        save_checkpoint(model, cfg.output)
        log_stage_artifacts(tracker, cfg, state.losses)
    finally:
        tracker.close()
    head = sum(state.losses[:5]) / max(1, len(state.losses[:5]))
    tail = sum(state.losses[-5:]) / max(1, len(state.losses[-5:]))
    log(f"[train] {state.step} steps, loss {head:.3f} -> {tail:.3f}, {metrics}; exported {cfg.output}")
    return {"steps": state.step, "first_loss": head, "last_loss": tail, "output": cfg.output, **metrics}
