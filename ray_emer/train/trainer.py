"""Ray Train wiring (the only Ray file in train/): TorchTrainer + FSDP2 around the plain loop.

Driver side: feature shards -> a Ray Data dataset (ok rows of the split), one
``TorchTrainer`` with a ``ScalingConfig`` from the config (GPUs when there are any,
fractional CPUs otherwise) and a ``FailureConfig``. Worker side: build the model, apply
FSDP2, resume from ``ray.train.get_checkpoint()`` when Ray restarted the group, run
``loop.train`` on this worker's dataset shard, write torch.distributed.checkpoint
shards every ``checkpoint_every`` steps (every rank reports its own files; Ray merges
them), then gather the full weights and export the checkpoint directory from rank 0.
Train V2 rejects ``MLflowLoggerCallback``, so rank 0 logs to MLflow itself. What the
local engine does too (building the model, checking inputs, logging, the summary) comes
from ``stage.py``; this module never imports the local driver, nor it this one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable

import pyarrow.dataset as pads
import ray
import ray.train
import torch
import torch.distributed.checkpoint as dcp
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from ray_emer import storage
from ray_emer.cluster import ensure_ray, require_shared_storage, use_gpu
from ray_emer.config import from_dict, to_dict
from ray_emer.features.shards import read_shards
from ray_emer.model.checkpoint import save_checkpoint
from ray_emer.progress import Progress, say
from ray_emer.tracking import NullTracker, make_tracker, open_tracker, resolve_uri
from ray_emer.train.fsdp import (
    full_state_dict,
    load_sharded_state,
    shard_model,
    sharded_state,
    state_fingerprint,
)
from ray_emer.train.loop import (
    TrainConfig,
    TrainState,
    feature_rows,
    make_optimizer,
    require_rows,
    total_steps,
    train,
    train_exclude,
    usable_row,
    validate,
)
from ray_emer.train.rl import grpo_trainer
from ray_emer.train.stage import build_model, check_io, log_stage_artifacts, log_stage_params, stage_card, stage_summary

# the directory name of the small checkpoint a finished run reports its summary with (no training state)
FINAL_CHECKPOINT = "final"


# ---------------------------------------------------------------- worker side
def _device() -> torch.device:
    if torch.cuda.is_available():
        local = ray.train.get_context().get_local_rank()
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def _seen_record(state: TrainState) -> dict:
    return {"epoch": state.epoch, "restored": state.epoch_restored, "seen": state.epoch_seen,
            "last_epoch": state.last_epoch}


def _save_checkpoint(model, opt, sched, state: TrainState, metrics: dict) -> None:
    rank = ray.train.get_context().get_world_rank()
    with tempfile.TemporaryDirectory() as tmp:
        dcp.save(sharded_state(model, opt), checkpoint_id=tmp)
        with open(os.path.join(tmp, f"fingerprint_rank{rank}.json"), "w") as fh:  # checked when resuming
            json.dump(state_fingerprint(model, opt, sched), fh)
        with open(os.path.join(tmp, f"seen_rank{rank}.json"), "w") as fh:  # this rank's place in the epoch
            json.dump(_seen_record(state), fh)
        if rank == 0:
            extra = {**dataclasses.asdict(state), "scheduler": sched.state_dict()}
            for key in ("epoch_seen", "epoch_restored", "last_epoch"):  # every rank's own file holds its part
                extra.pop(key)
            with open(os.path.join(tmp, "train_state.json"), "w") as fh:
                json.dump(extra, fh)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"step_{state.step:07d}")


def _resume(model, opt, sched) -> tuple[TrainState, dict] | None:
    """Restore model, optimizer, scheduler and loop state from the last checkpoint Ray hands back; verify
    against the fingerprint this rank wrote when saving. -> (state, {"saved": ..., "loaded": ...}) or None."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None
    rank = ray.train.get_context().get_world_rank()
    with ckpt.as_directory() as d:
        if not os.path.exists(os.path.join(d, "train_state.json")):
            return None  # the "final" summary of a finished run carries no training state
        state = sharded_state(model, opt)
        dcp.load(state, checkpoint_id=d)
        load_sharded_state(model, opt, state)
        with open(os.path.join(d, "train_state.json")) as fh:
            extra = json.load(fh)
        with open(os.path.join(d, f"fingerprint_rank{rank}.json")) as fh:
            saved = json.load(fh)
        seen: set[str] = set()  # every rank's rows of the epoch so far: the resumed epoch goes on without them
        for name in sorted(os.listdir(d)):
            if name.startswith("seen_rank") and name.endswith(".json"):
                with open(os.path.join(d, name)) as fh:
                    part = json.load(fh)
                if part["epoch"] != extra["epoch"]:
                    raise RuntimeError(f"{name} is at epoch {part['epoch']}, the checkpoint at {extra['epoch']}")
                seen.update(part["restored"], part["seen"])
    sched.load_state_dict(extra.pop("scheduler"))
    extra["epoch_restored"] = sorted(seen)
    loaded = state_fingerprint(model, opt, sched)
    if json.dumps(saved, sort_keys=True) != json.dumps(loaded, sort_keys=True):
        raise RuntimeError(f"rank {rank}: the resumed state differs from the checkpoint: saved {saved}, "
                           f"loaded {loaded}")
    return TrainState(**extra), {"saved": saved, "loaded": loaded, "seen": len(seen)}


def _export(model, cfg: TrainConfig, rank: int, card: dict) -> None:
    """Gather the unsharded weights (collective) and write the checkpoint directory from rank 0."""
    full = full_state_dict(model)
    if rank == 0:
        plain = build_model(cfg)
        plain.load_state_dict(full)
        save_checkpoint(plain, cfg.output, card=card)


def train_worker(config: dict) -> None:
    """``train_loop_per_worker``: one rank of one stage."""
    cfg = from_dict(TrainConfig, config["train"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = _device()
    model = build_model(cfg)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = shard_model(model.to(device=device, dtype=dtype))
    # stage 3: the frozen reference sharded like the policy (a digest of --init checked when resuming)
    fit = grpo_trainer(cfg, lambda m: shard_model(m.to(device=device, dtype=dtype))) if cfg.method == "grpo" else train
    steps = config["total_steps"]
    opt, sched = make_optimizer(model, cfg.optim, steps)
    resumed = _resume(model, opt, sched)
    state, resume_check = resumed if resumed else (None, None)
    resumed_from = state.step if state else 0
    saved_reference = state.reference if state else ""
    if state:
        print(f"[train] rank {rank} resumed at step {state.step} (epoch {state.epoch})", flush=True)
    run_id = config.get("mlflow_run_id")  # the driver decided: no run id, no tracking on any rank
    tracker = make_tracker(config["tracking_uri"], cfg.tracking.experiment, rank=rank, run_id=run_id) if run_id \
        else NullTracker()
    hook = config.get("on_step")  # the caller's own (run_ray_training's on_step), e.g. a test's injected crash
    if state is None:
        log_stage_params(tracker, cfg, model, world)
    shard = ray.train.get_dataset_shard("train")

    def epoch_batches(epoch: int):
        return shard.iter_batches(batch_size=cfg.data.batch_size, batch_format="numpy")

    bar = Progress("[train]", steps, "steps", start=resumed_from) if rank == 0 else None  # lines Ray forwards

    def on_step(st: TrainState) -> None:
        if hook is not None:
            hook(st, rank)
        if bar is not None:
            bar.update(st.step, f"loss {st.losses[-1]:.3f}")
        every = cfg.scaling.checkpoint_every
        if every and st.step % every == 0 and st.step < steps:
            _save_checkpoint(model, opt, sched, st, {"step": st.step, "loss": st.losses[-1]})

    val_rows = config.get("val_rows") or []
    state = fit(model, epoch_batches, cfg, steps, val_rows, tracker, state, (opt, sched), on_step)
    metrics = validate(model, val_rows, cfg) if val_rows else {}
    tracker.log_metrics(metrics, step=state.step)
    _export(model, cfg, rank, stage_card(cfg, state.step, metrics))
    if rank == 0:
        log_stage_artifacts(tracker, cfg, state.losses)
    tracker.close()  # ends this process's handle (Ray reuses worker processes); the driver ends the run too
    if resume_check and cfg.method == "grpo":
        resume_check["reference"] = saved_reference  # the checkpoint's, which fit checked against --init
    final = {"step": state.step, "losses": state.losses, "metrics": metrics, "resumed_from": resumed_from,
             "resume_check": resume_check, "epoch": state.epoch, "rewards": state.rewards, "kls": state.kls,
             "resumed_seen": resume_check["seen"] if resume_check else 0}
    # Train V2 keeps only metrics that come with a checkpoint: a small "final" one (rank 0's metrics, and
    # every rank's rows of the last epoch, seen_rank<r>.json)
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, f"seen_rank{rank}.json"), "w") as fh:
            json.dump(_seen_record(state), fh)
        if rank == 0:
            with open(os.path.join(tmp, "final_metrics.json"), "w") as fh:
                json.dump(final, fh)
        ray.train.report(reported(final), checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=FINAL_CHECKPOINT)


def reported(final: dict) -> dict:
    """What a worker reports to Ray Train, which prints it on one "Reporting training result" line: the stage's
    numbers without its per-step losses (hundreds of floats); they stay in ``final_metrics.json`` of the final
    checkpoint, in MLflow per step, and in the stage's summary."""
    losses = final.get("losses") or []
    return {**{k: v for k, v in final.items() if k not in ("losses", "rewards", "kls")}, "losses_n": len(losses),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


def _final_lists(checkpoint) -> dict[str, list[float]]:
    """The per-step losses (stage 3: rewards, KLs) rank 0 wrote into the final checkpoint (``final_metrics.json``)."""
    if checkpoint is None:
        return {}
    with checkpoint.as_directory() as local:
        path = os.path.join(local, "final_metrics.json")
        if not os.path.exists(path):
            return {}
        with open(path) as fh:
            final = json.load(fh)
    return {k: list(final.get(k) or []) for k in ("losses", "rewards", "kls")}


# ---------------------------------------------------------------- driver side
def _storage_path(cfg: TrainConfig) -> str:
    return cfg.scaling.storage_path or (cfg.output.rstrip("/") + ".ray")


def _start_anew_if_finished(run_dir: str, log) -> None:
    """A stage run again into the same output (and so the same Ray Train run directory): when the run there has
    finished (its latest checkpoint is the "final" summary), it is removed and this becomes a new run; Ray would
    otherwise restore it, and the new "final" would share the old one's directory, which Ray then deletes when it
    rotates the old entry out (a third run failed on a snapshot that points at a missing checkpoint). An
    interrupted run (its latest checkpoint a training step) stays: the stage resumes from it."""
    snapshot = storage.join(run_dir, "checkpoint_manager_snapshot.json")
    if not storage.exists(snapshot):
        return
    try:
        latest = (json.loads(storage.read_text(snapshot)).get("latest_checkpoint_result") or {})
    except ValueError:
        return  # not a snapshot we can read: Ray reports what is wrong with it
    if latest.get("checkpoint_dir_name") != FINAL_CHECKPOINT:
        return
    storage.remove_tree(run_dir)
    log(f"[train] {run_dir} held a finished run of this stage: removed it, this run starts anew "
        "(an interrupted run would resume)")


def _dataset(cfg: TrainConfig, log=say) -> tuple[ray.data.Dataset, bool]:
    """The training rows as a Ray dataset, and whether they are cached: read once and kept in the object store
    (``data.cache_mb``), since Ray Data otherwise re-runs the whole read for every epoch (2-4 s an epoch on a
    small machine, which for a small dataset of many epochs cost as much as the training steps)."""
    sizes = storage.file_sizes(cfg.features, suffixes=[".parquet"], recursive=False)
    files = sorted(f for f in sizes if storage.basename(f).startswith("part-"))
    cols = ["clip_id", "subtitle", "description", "labels", "split", "status", "has_video", "has_audio",
            "video_feats", "audio_feats"]
    ds = ray.data.read_parquet(files).select_columns(cols)
    split, exclude = cfg.data.train_split, train_exclude(cfg)
    ds = ds.filter(lambda r: usable_row(r, split, exclude))
    mb = sum(sizes[f] for f in files) / 2**20
    limit = min(cfg.data.cache_mb, ray.cluster_resources().get("object_store_memory", 0) / 4 / 2**20)
    if mb > limit:
        return ds, False
    t0 = time.perf_counter()
    ds = ds.materialize()
    log(f"[train] training rows read once and kept in Ray's object store for every epoch ({mb:.1f} MB of "
        f"Parquet, {time.perf_counter() - t0:.1f} s; data.cache_mb {cfg.data.cache_mb})")
    return ds, True


def run_ray_training(cfg: TrainConfig, log=say,
                     on_step: Callable[[TrainState, int], None] | None = None) -> dict:
    """Train one stage with Ray Train (joins a running cluster, else starts a local one); ``run_stage`` with
    ``scaling.engine: ray``. ``on_step(state, rank)``, when given, runs in every worker after each optimizer
    step, before that step's checkpoint (tests crash a rank with it). It reaches the workers inside
    ``train_loop_config``, which Ray ships with cloudpickle: a function the workers can import travels by
    reference, one they cannot (a closure, a test module's function) by value."""
    check_io(cfg)
    t0 = time.perf_counter()
    ensure_ray()
    require_shared_storage({"--features": cfg.features, "--output": cfg.output, "--init": cfg.init,
                            "scaling.storage_path": _storage_path(cfg)}, cfg.storage)
    gpu = use_gpu(cfg.scaling.use_gpu)
    sc = cfg.scaling
    light = read_shards(cfg.features, columns=["clip_id", "status", "split", "description", "labels"]).to_pylist()
    split = cfg.data.train_split
    exclude = train_exclude(cfg)
    require_rows(light, split, cfg.features, exclude)  # before any worker starts: nothing to train fails now
    n_train = sum(usable_row(r, split, exclude) for r in light)
    steps = total_steps(n_train, cfg, sc.workers)
    val_rows = []
    if cfg.val_samples and cfg.data.val_split:  # only the validation split's features come to the driver
        val = read_shards(cfg.features, filter=pads.field("split") == cfg.data.val_split)
        val_rows = feature_rows(val, cfg.data.val_split)[: cfg.val_samples]
    log(f"[train] {n_train} train rows on {sc.workers} worker(s) ({'GPU' if gpu else 'CPU'}), {steps} steps")
    storage_path = _storage_path(cfg)
    name = cfg.tracking.run_name or f"train-{storage.basename(cfg.output.rstrip('/'))}"
    # the driver opens the MLflow run; rank 0 (first start or restart) logs into that same run
    tracker = open_tracker(cfg.tracking, run_name=name)
    tracking_uri = resolve_uri(cfg.tracking.uri, cfg.tracking.enabled)
    run_root = os.path.abspath(storage_path) if not storage.is_remote(storage_path) else storage_path
    _start_anew_if_finished(storage.join(run_root, name), log)
    train_ds, cached = _dataset(cfg, log)
    trainer = TorchTrainer(
        train_worker,
        train_loop_config={"train": to_dict(cfg), "total_steps": steps, "val_rows": val_rows, "on_step": on_step,
                           "mlflow_run_id": tracker.run_id, "tracking_uri": tracking_uri},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=sc.workers, use_gpu=gpu,
                                     resources_per_worker=None if gpu else {"CPU": sc.worker_cpus}),
        run_config=RunConfig(name=name, storage_path=run_root,
                             failure_config=FailureConfig(max_failures=sc.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": train_ds},
    )
    try:
        result = trainer.fit()
    finally:
        tracker.close()
    final, lists = dict(result.metrics or {}), _final_lists(result.checkpoint)
    summary = stage_summary(cfg, final.get("step", 0), lists.get("losses", []), final.get("metrics", {}),
                            sc.workers, time.perf_counter() - t0,
                            result.checkpoint.path if result.checkpoint else None,
                            final.get("resumed_from", 0), final.get("resume_check"), tracker.run_id,
                            lists.get("rewards"), lists.get("kls"))
    summary["train_rows_cached"] = cached
    log(f"[train] {summary['steps']} steps, loss {summary['first_loss']} -> {summary['last_loss']}; "
        f"exported {cfg.output}")
    return summary
