"""The local engine: one training stage in this process (``scaling.engine: local``; no Ray).

Reads the feature shards, builds the model (``stage.build_model``), runs ``loop.train``
over shuffled batches, validates, exports the checkpoint directory and logs params,
metrics, the checkpoint and a loss-curve PNG to the tracker. ``run.run_stage`` picks
this or the Ray Train wiring (``trainer.py``); the two share ``stage.py`` and never
import each other.
"""

from __future__ import annotations

import os
import random
import time

from ray_emer.features.shards import read_shards
from ray_emer.progress import Progress, say
from ray_emer.model.checkpoint import save_checkpoint
from ray_emer.tracking import open_tracker
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
from ray_emer.train.rl import grpo_trainer
from ray_emer.train.stage import build_model, check_io, log_stage_artifacts, log_stage_params, stage_card, stage_summary


def run_local(cfg: TrainConfig, log=say) -> dict:
    """Train one stage in this process (``run_stage`` with ``scaling.engine: local``). -> ``stage_summary``."""
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
        fit = grpo_trainer(cfg) if cfg.method == "grpo" else train  # stage 3 or a supervised stage
        with Progress("[train]", steps, "steps", log=log) as bar:
            state = fit(model, lambda epoch: batches(train_rows, cfg.data.batch_size, rng), cfg, steps, val_rows,
                        tracker, on_step=lambda st: bar.update(st.step, f"loss {st.losses[-1]:.3f}"))
        metrics = validate(model, val_rows, cfg) if val_rows else {}
        tracker.log_metrics(metrics, step=state.step)
        save_checkpoint(model, cfg.output, card=stage_card(cfg, state.step, metrics))
        log_stage_artifacts(tracker, cfg, state.losses)
    finally:
        tracker.close()
    summary = stage_summary(cfg, state.step, state.losses, metrics, 1, time.perf_counter() - t0,
                            run_id=tracker.run_id, rewards=state.rewards, kls=state.kls)
    log(f"[train] {state.step} steps, loss {summary['first_loss']:.3f} -> {summary['last_loss']:.3f}, {metrics}; "
        f"exported {cfg.output}")
    return summary
