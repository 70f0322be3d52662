"""Ray Data wiring (the only place Ray Data is used): archive -> decode tasks -> encoder actors -> Parquet.

One row per clip all the way. Decoding runs as CPU tasks and resizes frames to the
encoder's input size at once, so only small frames travel to the encoder actors; each
actor (one GPU when the cluster has them, a fraction of a CPU otherwise) encodes a batch
and writes it as one Parquet shard, so an interrupted run keeps every finished batch
and a rerun skips the clip ids already written.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import ray

from ray_emer import storage
from ray_emer.data.features import (
    ExtractConfig,
    FeatureEncoder,
    decode_row,
    effective_media,
    pending_records,
    scripted_encoders,
    stack_rows,
    write_shard,
)
from ray_emer.tracking import open_tracker


def _decode(batch: dict[str, np.ndarray], media, asr) -> dict[str, np.ndarray]:
    """Decode a batch of serialized manifest records (a stateless task; the offline ASR backend runs here)."""
    return stack_rows([decode_row(json.loads(s), media, asr) for s in batch["record"]])


class _EncodeAndWrite:
    """Actor: frozen encoders loaded once; each batch -> one shard; returns a small summary."""

    def __init__(self, preset: str, media, output: str, asr, scripted: str | None = None) -> None:
        # with asr.backend whisper: Whisper on its device; ``scripted``: traced towers (CPU), no transformers import
        self.encoder = FeatureEncoder(preset, media, asr=asr, scripted=scripted)
        self.output = output

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        table = self.encoder.encode_batch(batch)
        write_shard(table, self.output)
        out = {c: np.array(table.column(c).to_pylist(), dtype=object) for c in ("clip_id", "status", "error")}
        out["scripted"] = np.full(table.num_rows, self.encoder.encoders.scripted)
        return out


def ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init()  # joins RAY_ADDRESS / a running cluster / `ray job submit`'s, else starts a local one


def use_gpu(setting: str) -> bool:
    """``auto | true | false``: auto means the cluster has GPUs."""
    if setting in ("true", "false"):
        return setting == "true"
    return ray.cluster_resources().get("GPU", 0) > 0


def _decode_tasks(cfg: ExtractConfig, gpu: bool) -> int:
    """Concurrent decode tasks: what the cluster's CPUs hold once the encoder actors have theirs.

    Without this cap, decode tasks take every CPU slot, the encoder actor cannot start
    until decoding is nearly done, and decoded clips pile up in the object store.
    """
    if cfg.decode_tasks > 0:
        return cfg.decode_tasks
    reserved = 0.0 if gpu else cfg.num_encoders * cfg.encoder_cpus
    return max(1, int((ray.cluster_resources().get("CPU", 1) - reserved) / cfg.decode_cpus))


def run_extract(cfg: ExtractConfig, log=print) -> dict:
    """Extract features for every clip of ``cfg.input`` not yet in ``cfg.output``; returns counts."""
    if not cfg.input or not cfg.output:
        from ray_emer.config import ConfigError

        raise ConfigError("extract needs --input and --output (or input/output in the config)")
    if cfg.asr.enabled:
        from ray_emer.asr import check_config

        check_config(cfg.asr)  # a bad backend/model/language fails here, not as one error row per clip
    t_start = time.perf_counter()
    ensure_ray()
    ray.data.DataContext.get_current().enable_progress_bars = cfg.progress
    media = effective_media(cfg)
    from ray_emer.data.manifest import folder_manifest

    if folder_manifest(cfg.input):
        log(f"[extract] {cfg.input} holds {folder_manifest(cfg.input)}: reading the clips through it")
    todo, total, skipped = pending_records(cfg)
    log(f"[extract] {total} clips in {cfg.input}; {skipped} already in {cfg.output}; {len(todo)} to do")
    counts, errors = {"ok": 0, "error": 0}, []
    t0, first_shard = time.perf_counter(), None
    scripted_used: set[bool] = set()
    if todo:
        gpu = use_gpu(cfg.use_gpu)
        scripted = None
        if not gpu:  # CPU actors load the encoders traced once per machine (no transformers import: faster start)
            try:
                scripted = scripted_encoders(cfg.preset, media)
            except Exception as exc:  # noqa: BLE001 - a tower that does not trace: the actors build it as before
                log(f"[extract] encoders not traced ({type(exc).__name__}: {exc}); actors build them")
        n_blocks = max(1, min(len(todo), (len(todo) + cfg.decode_batch_size - 1) // cfg.decode_batch_size))
        ds = ray.data.from_items([{"record": json.dumps(r, default=str)} for r in todo], override_num_blocks=n_blocks)
        ds = ds.map_batches(_decode, fn_kwargs={"media": media, "asr": cfg.asr}, batch_size=cfg.decode_batch_size,
                            num_cpus=cfg.decode_cpus, compute=ray.data.TaskPoolStrategy(size=_decode_tasks(cfg, gpu)),
                            # decode tasks reserve memory (a long HD clip needs a few hundred MB); remote args
                            # that differ from the actor's also keep Ray from fusing decode into the encoder
                            # actor, where it would run serially next to the encoder
                            memory=cfg.decode_memory_mb * 2**20)
        ds = ds.map_batches(_EncodeAndWrite, fn_constructor_args=(cfg.preset, media, cfg.output, cfg.asr, scripted),
                            batch_size=cfg.encode_batch_size,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, cfg.num_encoders)),
                            num_gpus=1 if gpu else 0, num_cpus=0 if gpu else cfg.encoder_cpus)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if first_shard is None:  # an encoder actor returns a batch once its shard is written
                first_shard = time.perf_counter() - t_start
            scripted_used.update(bool(x) for x in batch["scripted"])
            for status, error, clip in zip(batch["status"], batch["error"], batch["clip_id"], strict=True):
                counts[status] += 1
                if status != "ok":
                    errors.append(f"{clip}: {error}")
            done = counts["ok"] + counts["error"]
            log(f"[extract] {done}/{len(todo)} clips (ok {counts['ok']}, error {counts['error']}), "
                f"{done / max(time.perf_counter() - t0, 1e-9):.1f} clips/s")
    wall = time.perf_counter() - t0
    summary = {"input": cfg.input, "output": cfg.output, "clips": total, "processed": len(todo),
               "skipped": skipped, **counts, "wall_s": round(wall, 3),
               "first_shard_s": round(first_shard, 3) if first_shard is not None else None,
               "scripted_encoders": scripted_used == {True},
               "clips_per_s": round(len(todo) / wall, 3) if todo and wall > 0 else 0.0,
               "errors": errors[:50]}
    storage.write_text(storage.join(cfg.output, "_summary.json"), json.dumps(summary, indent=2))
    _track(cfg, summary)
    log(f"[extract] done: {counts['ok']} ok, {counts['error']} error, {skipped} skipped in {wall:.1f} s")
    return summary


def _track(cfg: ExtractConfig, summary: dict) -> None:
    tracker = open_tracker(cfg.tracking, run_name="extract")
    try:
        tracker.log_params(dataclasses.asdict(cfg))
        tracker.log_metrics({k: summary[k] for k in ("clips", "processed", "skipped", "ok", "error",
                                                     "wall_s", "clips_per_s")})
    finally:
        tracker.close()
