"""The training loop in plain PyTorch: feature batches in, an exported checkpoint out.

No Ray here (docs/architecture.md): the loop takes an iterable of columnar feature
batches per epoch (numpy dicts, as ``features.shards.table_columns`` or a Ray Data shard yields them),
a ``Tracker`` and a rank, so the same code runs in a unit test, in one process, and in
every Ray Train worker.

Per step: prompts + hybrid targets from the model's processor, loss on answer
tokens, gradient accumulation, clipping, AdamW (weight decay on matrices only),
warmup + cosine or constant lr; bf16 autocast on CUDA, fp32 on CPU. Periodic
validation reports the loss and label accuracy by generation.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Literal

import numpy as np
import torch

from ray_emer.config import ConfigError, load_config, parse_override
from ray_emer.errors import TrainDataError
from ray_emer.features.columns import to_columns, to_rows
from ray_emer.features.shards import table_columns
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.config import AffectGPTConfig, TrainableConfig
from ray_emer.model.processing import label_list
from ray_emer.model.prompts import parse_ov_answer
from ray_emer.storage import StorageConfig
from ray_emer.tracking import NullTracker, Tracker, TrackingConfig, tracking
from ray_emer.train.epoch import EpochFeed, TrainState
from ray_emer.train.grpo import GRPOConfig


@dataclasses.dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.05  # matrices only; biases and norms get 0
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.999])
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = 10
    min_lr_ratio: float = 0.1  # cosine floor as a share of lr
    grad_clip: float = 1.0  # 0 disables clipping
    grad_accum: int = 1


@dataclasses.dataclass
class DataConfig:
    """What a stage trains on and how it is batched."""

    train_split: str = "train"  # rows whose split matches ("" = all ok rows)
    val_split: str = "val"
    batch_size: int = 8  # per worker
    task: Literal["hybrid", "description", "ov_labels"] = "hybrid"
    drop_modalities: list[str] = dataclasses.field(default_factory=list)  # ablation: audio | video
    # Sequence packing: a micro-batch's samples share rows (positions restart per sample, attention stays
    # inside each sample, the loss per sample is unchanged), so the LLM computes almost no padding
    packing: bool = True
    # tokens per packed row (at least the longest sample; rows come out about equally long); 0: the whole
    # micro-batch in one row (no padding at all, but attention over one long row: dearer where it is not
    # varlen, e.g. on CPU)
    pack_length: int = 1024
    # engine ray: the training rows are read once and kept in Ray's object store for every epoch when their
    # Parquet files total at most this many MB (and a quarter of the object store); larger ones are read from
    # storage again each epoch (Ray Data re-runs the read, seconds per epoch). 0: always read again
    cache_mb: int = 1024


@dataclasses.dataclass
class ScalingConfig:
    """Where a stage runs: this process (``local``) or Ray Train + FSDP2 workers (``ray``)."""

    engine: Literal["ray", "local"] = "ray"
    workers: int = 1
    use_gpu: Literal["auto", "true", "false"] = "auto"
    worker_cpus: float = 0.5  # CPUs per worker without GPUs (fractional: small machines never starve)
    checkpoint_every: int = 0  # optimizer steps between distributed checkpoints (0: none)
    storage_path: str = ""  # Ray Train run storage (checkpoints); empty: <output>.ray next to the output
    max_failures: int = 1  # worker-group restarts from the last checkpoint


@dataclasses.dataclass
class TrainConfig:
    features: str = ""  # feature shards (ray-emer extract output)
    output: str = ""  # exported checkpoint directory
    preset: str = "tiny"  # model preset (ignored with init)
    init: str = ""  # checkpoint directory of an earlier stage
    model_overrides: list[str] = dataclasses.field(default_factory=list)  # e.g. ["fusion=none"]
    # What the stage trains: the one place to set it (the model config's trainable records it; a
    # model_overrides entry that says otherwise is an error, see check_trainable_once)
    trainable: TrainableConfig = dataclasses.field(default_factory=TrainableConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    scaling: ScalingConfig = dataclasses.field(default_factory=ScalingConfig)
    tracking: TrackingConfig = dataclasses.field(default_factory=lambda: tracking("ray_emer-train"))
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)  # shared folders (multi-node)
    epochs: int = 1
    max_steps: int = 0  # optimizer steps; 0 = run the epochs
    log_every: int = 10
    val_every: int = 0  # optimizer steps between validations; 0 = at the end only
    val_samples: int = 64
    val_max_new_tokens: int = 24
    seed: int = 0  # model initialisation (head, random LLM, LoRA), data order and task sampling
    method: Literal["sft", "grpo"] = "sft"  # grpo: stage 3 (rl.py), sampled answers scored, init = reference
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)

    def __post_init__(self) -> None:
        check_trainable_once(self.trainable, self.model_overrides)


def check_trainable_once(trainable: TrainableConfig, model_overrides: list[str]) -> None:
    """A stage's ``trainable`` has one source: its own setting, which ``build_model`` writes into the model
    config. A ``model_overrides`` entry (``trainable.llm=full``) that names a component differently would
    be overwritten without a word: it is a ``ConfigError`` giving both values (an equal one is harmless)."""
    entries = [o for o in model_overrides if o.strip().startswith("trainable")]
    if not entries:
        return
    keys = {parse_override(o)[0] for o in entries}
    given = load_config(AffectGPTConfig, None, entries).trainable
    clash = [f.name for f in dataclasses.fields(TrainableConfig)
             if keys & {"trainable", f"trainable.{f.name}"} and getattr(given, f.name) != getattr(trainable, f.name)]
    if clash:
        raise ConfigError("trainable is set twice: model_overrides say "
                          + ", ".join(f"trainable.{c}={getattr(given, c)}" for c in clash) + ", the stage's own setting "
                          + ", ".join(f"trainable.{c}={getattr(trainable, c)}" for c in clash)
                          + "; set it once, under the stage's trainable (the model config only records it)")


# ---------------------------------------------------------------- data
def in_split(row: dict, split: str, exclude: str = "") -> bool:
    """``row`` belongs to ``split`` ("" = any split but ``exclude``)."""
    return row.get("split") == split if split else not (exclude and row.get("split") == exclude)


def usable_row(row: dict, split: str, exclude: str = "") -> bool:
    """A row a stage trains or validates on: decoded, in ``split`` ("" = any split but ``exclude``), with a target."""
    labels = row.get("labels")
    return (row["status"] == "ok" and in_split(row, split, exclude)
            and (bool(row.get("description")) or (labels is not None and len(labels) > 0)))


def require_rows(rows: list[dict], split: str, source: str, exclude: str = "") -> None:
    """Fail at once, with the counts, when a stage has nothing to train on (rows = feature rows as dicts)."""
    if any(usable_row(r, split, exclude) for r in rows):
        return
    ok = [r for r in rows if r["status"] == "ok"]
    rows_in_split = [r for r in ok if in_split(r, split, exclude)]
    raise TrainDataError(f"{source}: no usable training rows: {len(rows)} rows, {len(ok)} ok, {len(rows_in_split)} in split "
                     f"{split or '<any>'!r}, 0 of those with a description or labels (extract a manifest that "
                     f"carries them, or set train_split)")


def train_exclude(cfg: TrainConfig) -> str:
    """With ``train_split: ""`` (every split trains) the validation split is still held out of training."""
    return "" if cfg.data.train_split else cfg.data.val_split


def feature_rows(table, split: str, exclude: str = "") -> list[dict]:
    """The usable rows of a feature table as dicts, features as ``[T, D]`` arrays."""
    return [r for r in to_rows(table_columns(table)) if usable_row(r, split, exclude)]


def batches(rows: list[dict], batch_size: int, rng: random.Random, shuffle: bool = True) -> Iterator[dict]:
    """Columnar numpy batches (the shape a Ray Data shard yields) from row dicts."""
    order = list(range(len(rows)))
    if shuffle:
        rng.shuffle(order)
    for start in range(0, len(order), batch_size):
        yield to_columns([rows[i] for i in order[start:start + batch_size]])


# ---------------------------------------------------------------- optimisation
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices (ndim >= 2), none on biases and norm scales."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(cfg: OptimConfig, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def make_optimizer(model: torch.nn.Module, cfg: OptimConfig, total_steps: int):
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, total_steps))


# ---------------------------------------------------------------- validation
@torch.no_grad()
def validate(model: AffectGPT, rows: list[dict], cfg: TrainConfig, max_samples: int | None = None) -> dict:
    """Validation loss (ov_labels targets) and label accuracy: the first generated label is a gold label."""
    rows = rows[: max_samples or cfg.val_samples]
    if not rows:
        return {}
    was_training = model.training
    model.eval()
    rng, drop = random.Random(0), tuple(cfg.data.drop_modalities)
    losses, hits = [], 0
    for batch in batches(rows, cfg.data.batch_size, rng, shuffle=False):
        with _autocast(model):
            proc = model.processor
            losses.append(float(model(proc.from_rows(batch, "ov_labels", rng, drop)).loss))
            answers = model.generate(proc.from_rows(batch, "ov_labels", rng, drop, with_targets=False),
                                     max_new_tokens=cfg.val_max_new_tokens)
        for ans, gold in zip(answers, batch["labels"], strict=True):
            pred = parse_ov_answer(ans)
            hits += bool(pred) and pred[0] in set(label_list(gold))
    model.train(was_training)
    return {"val_loss": float(np.mean(losses)), "val_label_accuracy": hits / len(rows), "val_n": len(rows)}


def _autocast(model: torch.nn.Module):
    dev = model.device if hasattr(model, "device") else next(model.parameters()).device
    if dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# ---------------------------------------------------------------- the loop
def micro_step(model: AffectGPT, batch: dict, data: DataConfig, rng: random.Random, accum: int = 1,
               weight: float = 1.0) -> dict:
    """Forward + backward of one micro-batch as training runs it (processor, packing, head, LLM); the
    gradients accumulate in the parameters (``weight=0``: a rank with no data left keeps the collectives in
    step without moving anything). -> ``loss`` (this micro-batch's share), ``tokens`` (real tokens),
    ``positions`` (token positions the LLM computed, padding included)."""
    mb = model.processor.from_rows(batch, data.task, rng, tuple(data.drop_modalities), pack=data.packing,
                                   row_length=data.pack_length)
    with _autocast(model):
        loss = model(mb).loss / accum
    (loss * weight).backward()
    positions = mb.packed.tokens if mb.packed is not None else int(mb.attention_mask.numel())
    return {"loss": loss.item(), "tokens": mb.real_tokens, "positions": positions}


def optimizer_step(opt, sched, params: list, grad_clip: float) -> None:
    """One optimizer step on the accumulated gradients: clip (``grad_clip`` > 0), step, schedule, zero."""
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)


def train(model: AffectGPT, epoch_batches: Callable[[int], Iterable[dict]], cfg: TrainConfig, total_steps: int,
          val_rows: list[dict] | None = None, tracker: Tracker | None = None, state: TrainState | None = None,
          optimizer=None, on_step: Callable[[TrainState], None] | None = None) -> TrainState:
    """Train ``cfg.epochs`` epochs, or ``total_steps`` optimizer steps when ``cfg.max_steps`` sets a step budget
    (``total_steps`` also shapes the lr schedule); ``epoch_batches(epoch)`` yields that epoch's batches.

    ``state``/``optimizer`` resume a run: a resumed epoch continues where the state says (its rows
    not in ``state.epoch_seen``, whatever order the data comes in). ``on_step(state)`` runs after every
    optimizer step: the seam for checkpointing and for a caller's own hook (the Ray Train wiring uses it for
    both; the loop itself knows nothing of Ray).
    """
    tracker = tracker or NullTracker()
    state = state or TrainState()
    opt, sched = optimizer or make_optimizer(model, cfg.optim, total_steps)
    rng = random.Random(cfg.seed + state.step)
    accum = max(1, cfg.optim.grad_accum)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    t_log, samples_log, tokens_log, positions_log = time.perf_counter(), 0, 0, 0
    by_steps = cfg.max_steps > 0  # else by epochs: a resumed epoch ends when its remaining rows do
    feed = EpochFeed(epoch_batches, cfg.data.batch_size)

    def finished() -> bool:
        return state.step >= total_steps if by_steps else state.epoch >= cfg.epochs

    while not finished():
        micro, running, pending = 0, 0.0, []
        for batch in feed.epoch(state):
            if batch is None and feed.idle is None:  # (re-reading the data here could deadlock a streaming split)
                raise TrainDataError(f"epoch {state.epoch}: this rank got no rows while others did (fewer rows "
                                     f"than workers?); {state.step} of {total_steps} steps done")
            out = micro_step(model, batch if batch is not None else feed.idle, cfg.data, rng, accum,
                             weight=1.0 if batch is not None else 0.0)
            if batch is not None:
                running += out["loss"]
                tokens_log += out["tokens"]
                positions_log += out["positions"]
                samples_log += len(batch["clip_id"])
                pending.extend(str(c) for c in batch["clip_id"])
            micro += 1
            if micro % accum:
                continue
            optimizer_step(opt, sched, params, cfg.optim.grad_clip)
            state.step += 1
            state.losses.append(running)
            state.samples += len(pending)
            state.epoch_seen.extend(pending)
            pending = []
            if cfg.log_every and state.step % cfg.log_every == 0:
                dt = time.perf_counter() - t_log
                tracker.log_metrics({"loss": running, "lr": sched.get_last_lr()[0],
                                     "samples_per_s": samples_log / max(dt, 1e-9),
                                     "tokens_per_s": tokens_log / max(dt, 1e-9),
                                     "padding_share": 1 - tokens_log / max(1, positions_log)}, step=state.step)
                t_log, samples_log, tokens_log, positions_log = time.perf_counter(), 0, 0, 0
            if cfg.val_every and val_rows and state.step % cfg.val_every == 0:
                tracker.log_metrics(validate(model, val_rows, cfg), step=state.step)
            running = 0.0
            if on_step is not None:
                on_step(state)
            if by_steps and state.step >= total_steps:
                break
        else:  # the epoch's data ran out (not the step budget): the next epoch starts from all rows
            if not feed.raw:  # an empty epoch would loop forever without a step
                raise TrainDataError(f"epoch {state.epoch} yielded no batch; {state.step} of {total_steps} steps done")
            state.last_epoch = {"epoch": state.epoch, "restored": state.epoch_restored, "seen": state.epoch_seen}
            state.epoch += 1
            state.epoch_seen, state.epoch_restored = [], []
    return state


def steps_per_epoch(n_rows: int, cfg: TrainConfig, world_size: int = 1) -> int:
    per_worker = math.ceil(n_rows / world_size)
    return max(1, math.ceil(per_worker / cfg.data.batch_size) // max(1, cfg.optim.grad_accum))


def total_steps(n_rows: int, cfg: TrainConfig, world_size: int = 1) -> int:
    per_batch = cfg.grpo.updates_per_batch if cfg.method == "grpo" else 1  # GRPO: optimizer steps per batch
    return cfg.max_steps if cfg.max_steps > 0 else cfg.epochs * steps_per_epoch(n_rows, cfg, world_size) * per_batch
