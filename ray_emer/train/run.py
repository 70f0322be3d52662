"""One training stage: ``run_stage`` is the one entry point (local or Ray Train, by ``scaling.engine``)
and ``stage_summary`` the one summary shape both return. The local runner lives here (no Ray);
the Ray Train one in ``trainer.py``, imported only when asked for.

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
import time

import torch

from ray_emer.config import to_dict
from ray_emer.features.shards import read_shards
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.checkpoint import load_checkpoint, save_checkpoint
from ray_emer.model.config import resolve_model_config
from ray_emer.tracking import Tracker, open_tracker
from ray_emer.train.loop import (
    TrainConfig,
    batches,
    feature_rows,
    require_rows,
    total_steps,
    train,
    train_exclude,
    validate,
)


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                              timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build_model(cfg: TrainConfig) -> AffectGPT:
    """The stage's model: a fresh preset, or an earlier export re-armed with this stage's trainable setting.
    ``cfg.seed`` seeds what is initialised here (head, a random LLM, new LoRA adapters)."""
    torch.manual_seed(cfg.seed)  # dropout; the initialisation takes the seed explicitly
    if cfg.init:
        model = load_checkpoint(cfg.init, trainable=cfg.trainable, seed=cfg.seed)
        if cfg.model_overrides:
            from ray_emer.config import ConfigError

            raise ConfigError("model_overrides apply to a fresh preset, not to an --init checkpoint")
        return model
    mcfg = resolve_model_config(cfg.preset, cfg.model_overrides)
    mcfg.trainable = dataclasses.replace(cfg.trainable)
    return AffectGPT.build(mcfg, seed=cfg.seed)


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
        tracker.log_artifact(loss_curve_png(losses, os.path.join(tmp, "loss_curve.png"), cfg.tracking.run_name or "training"))
    if cfg.output and not cfg.output.startswith("s3://") and os.path.isdir(cfg.output):
        tracker.log_artifact(cfg.output)


def stage_summary(cfg: TrainConfig, steps: int, losses: list[float], metrics: dict, workers: int,
                  wall_s: float, checkpoint: str | None = None, resumed_from: int = 0,
                  resume_check: dict | None = None) -> dict:
    """The one summary of a training stage, whichever engine ran it."""

    def mean(xs: list[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {"output": cfg.output, "engine": cfg.scaling.engine, "workers": workers, "steps": steps,
            "first_loss": mean(losses[:5]), "last_loss": mean(losses[-5:]), "losses": list(losses),
            "metrics": dict(metrics), "checkpoint": checkpoint, "wall_s": round(wall_s, 3),
            "resumed_from": resumed_from, "resume_check": resume_check}


def check_io(cfg: TrainConfig) -> None:
    if not cfg.features or not cfg.output:
        from ray_emer.config import ConfigError

        raise ConfigError("training needs features and output (--features/--output, or features/output in the config)")


def run_stage(cfg: TrainConfig, log=print, **engine_options) -> dict:
    """Train one stage where ``cfg.scaling.engine`` says: ``local`` (this process) or ``ray`` (Ray Train;
    joins a running cluster, else starts a local one). Returns ``stage_summary``."""
    check_io(cfg)
    if cfg.scaling.engine == "local":
        if engine_options:
            raise TypeError(f"the local engine takes no options: {sorted(engine_options)}")
        return run_local(cfg, log)
    from ray_emer.train.trainer import run_ray_training

    return run_ray_training(cfg, log, **engine_options)


def run_local(cfg: TrainConfig, log=print) -> dict:
    """Train one stage in this process (``run_stage`` with ``scaling.engine: local``)."""
    check_io(cfg)
    t0 = time.perf_counter()
    table = read_shards(cfg.features)
    exclude = train_exclude(cfg)
    require_rows(table.select(["status", "split", "description", "labels"]).to_pylist(), cfg.data.train_split,
                 cfg.features, exclude)
    train_rows = feature_rows(table, cfg.data.train_split, exclude)
    val_rows = feature_rows(table, cfg.data.val_split)
    model = build_model(cfg)
    steps = total_steps(len(train_rows), cfg)
    tracker = open_tracker(cfg.tracking, run_name=f"train-{os.path.basename(cfg.output.rstrip('/'))}")
    try:
        log_stage_params(tracker, cfg, model, 1)
        log(f"[train] {len(train_rows)} train rows, {len(val_rows)} val rows, {steps} steps (local)")
        rng = random.Random(cfg.seed)
        state = train(model, lambda epoch: batches(train_rows, cfg.data.batch_size, rng), cfg, steps, val_rows,
                      tracker)
        metrics = validate(model, val_rows, cfg) if val_rows else {}
        tracker.log_metrics(metrics, step=state.step)
        save_checkpoint(model, cfg.output)
        log_stage_artifacts(tracker, cfg, state.losses)
    finally:
        tracker.close()
    summary = stage_summary(cfg, state.step, state.losses, metrics, 1, time.perf_counter() - t0)
    log(f"[train] {state.step} steps, loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}, {metrics}; "
        f"exported {cfg.output}")
    return summary
