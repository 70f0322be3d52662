"""Ray Data wiring (the only place Ray Data is used): archive -> decode -> frozen encoders -> Parquet.

One row per clip (a long recording: per segment) all the way; each encoded batch is one Parquet shard, so an
interrupted run keeps every finished batch and a rerun skips the clip ids already written. Two layouts
(``_dataset``): with GPUs, decoding runs as CPU tasks that resize frames to the encoder's input size at once (only
small frames travel) and encoder actors (one GPU each) encode and write; on CPU-only clusters, tasks decode,
encode and write their own batches (``fused_cpu``) in Ray's pooled workers, which keep their encoders loaded for a
while (``warm_keep_s``), so no decoded clip crosses the object store, no process sits between, and no actor has to
start before the first shard.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import queue
import threading
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import ray

from ray_emer import storage
from ray_emer.asr import check_config
from ray_emer.cluster import (
    NodeLossPasses,
    alive_node_ids,
    ensure_ray,
    pool_size,
    require_shared_storage,
    restarted,
    use_gpu,
    worker_device,
)
from ray_emer.config import ConfigError
from ray_emer.data.extraction import ExtractConfig, pending, record_rows
from ray_emer.data.manifest import folder_manifest
from ray_emer.features.columns import to_columns
from ray_emer.features.encoder import FeatureEncoder, effective_media, scripted_encoders
from ray_emer.features.shards import write_features
from ray_emer.tracking import open_tracker
from ray_emer.progress import Progress, say


def _decode(batch: pa.Table, media, asr, seg, output: str, rows: int) -> Iterator[dict[str, np.ndarray]]:
    """Decode a block of manifest rows (Arrow columns, as Ray Data carries them) into columnar batches of ``rows``
    decoded rows (a stateless task, or a fused task's first step; the offline ASR backend runs here). A long
    recording streams through as its segments: many rows from one record, never all of them held."""
    out: list[dict] = []
    for rec in batch.to_pylist():
        for row in record_rows(rec, media, asr, seg, output):
            out.append(row)
            if len(out) >= rows:
                yield to_columns(out)
                out = []
    if out:
        yield to_columns(out)


def _summary(table: pa.Table) -> dict[str, np.ndarray]:
    return {c: np.array(table.column(c).to_pylist(), dtype=object) for c in ("clip_id", "status", "error")}


class _EncodeAndWrite:
    """Actor: frozen encoders loaded once; each batch -> one shard; returns a small summary."""

    def __init__(self, preset: str, media, output: str, asr, scripted: str | None = None) -> None:
        # with asr.backend whisper: Whisper on its device; ``scripted``: traced towers (CPU), no transformers import
        self.encoder = FeatureEncoder(preset, media, device=worker_device(), asr=asr, scripted=scripted)
        self.output, self.fresh, self.restarted = output, True, restarted()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        table = write_features(self.encoder.encode_batch(batch), self.encoder.schema, self.output)
        out = _summary(table)
        out["scripted"] = np.full(table.num_rows, self.encoder.encoders.scripted)
        out["encoder_load"] = np.array([self.fresh] + [False] * (table.num_rows - 1))
        out["restarted"] = np.array([self.restarted] + [False] * (table.num_rows - 1))
        self.fresh = self.restarted = False
        return out


def _decode_encode_write(batch: pa.Table, preset: str, media, output: str, asr, scripted: str | None, seg,
                         keep_s: float, shard_rows: int) -> dict[str, np.ndarray]:
    """CPU-only clusters (``fused``): one Ray task decodes a block of manifest records ``shard_rows`` at a time,
    encodes them with the worker's warm encoders and writes each chunk as one shard. The decoded frames and audio
    (~0.5 MB a clip) never leave the process, and tasks run in Ray's pooled worker processes, which exist before
    the job (no actor start-up) and keep their encoders ``keep_s`` seconds for the next block or job."""
    encoder, loaded = _worker_encoder(preset, media, asr, scripted)
    parts = []
    try:
        for decoded in _decode(batch, media, asr, seg, output, shard_rows):
            table = write_features(encoder.encode_batch(decoded), encoder.schema, output)
            parts.append(table.select(["clip_id", "status", "error"]))
    finally:
        _release_after(keep_s)
    written = pa.concat_tables(parts)
    out = _summary(written)
    out["scripted"] = np.full(written.num_rows, encoder.encoders.scripted)
    out["encoder_load"] = np.array([loaded] + [False] * (written.num_rows - 1))
    out["restarted"] = np.zeros(written.num_rows, bool)  # tasks are retried, not restarted
    return out


# one worker process's warm encoders: {"key": settings, "encoder": FeatureEncoder, "generation": int}
_WARM: dict = {"key": None, "encoder": None, "generation": 0}
_WARM_LOCK = threading.Lock()


def _worker_encoder(preset: str, media, asr, scripted: str | None) -> tuple[FeatureEncoder, bool]:
    """This process's encoders for these settings, built (or loaded from ``scripted``) on first use; True when this
    call built them. Other settings replace them (one set per process). Cancels a pending release."""
    key = repr((preset, media, asr, scripted))
    with _WARM_LOCK:
        _WARM["generation"] += 1  # a release timer already running finds a newer generation and keeps them
        if _WARM["key"] == key:
            return _WARM["encoder"], False
        _WARM.update(key=None, encoder=None)  # the old set goes before the new one loads
    encoder = FeatureEncoder(preset, media, asr=asr, scripted=scripted)
    with _WARM_LOCK:
        _WARM.update(key=key, encoder=encoder)
    return encoder, True


def _release_after(keep_s: float) -> None:
    """Drop this process's encoders ``keep_s`` seconds from now unless a batch uses them before (0: now): pooled
    workers that sit idle after a job hold no model weights for long."""
    with _WARM_LOCK:
        generation = _WARM["generation"]

    def release() -> None:
        with _WARM_LOCK:
            if _WARM["generation"] == generation:
                _WARM.update(key=None, encoder=None)
        gc.collect()

    if keep_s <= 0:
        release()
        return
    timer = threading.Timer(keep_s, release)
    timer.daemon = True
    timer.start()


def _decode_tasks(cfg: ExtractConfig, gpu: bool) -> int:
    """Concurrent decode tasks: what the cluster's CPUs hold once the encoder actors have theirs.

    Without this cap, decode tasks take every CPU slot, the encoder actor cannot start
    until decoding is nearly done, and decoded clips pile up in the object store.
    """
    if cfg.decode_tasks > 0:
        return cfg.decode_tasks
    reserved = 0.0 if gpu else pool_size(cfg.num_encoders, gpu) * cfg.encoder_cpus
    return max(1, int((ray.cluster_resources().get("CPU", 1) - reserved) / cfg.decode_cpus))


def _batches(n: int, size: int, workers: int) -> list[tuple[int, int]]:
    """Row ranges of the fused tasks' blocks. The first ``workers`` hold a quarter of ``size`` rows (a worker's
    first shard follows its encoders' loading by a quarter of a shard's decode and encode); then each takes a
    ``2 * workers``-th of the rows left, in whole shards of ``size`` and at most 8 of them, so blocks shrink to one
    shard towards the end: few tasks (Ray Data notices a finished task only every 0.1 s, ~0.2 s idle a task
    here), and the workers still finish together."""
    bounds: list[tuple[int, int]] = []
    start = 0
    while start < n:
        if len(bounds) < workers:
            rows = max(1, size // 4)
        else:
            left = n - start
            rows = min(8, max(1, -(-left // (2 * workers * size)))) * size
        bounds.append((start, min(n, start + rows)))
        start = bounds[-1][1]
    return bounds


def _encoder_memory(cfg: ExtractConfig, scripted: str | None) -> int:
    """Bytes a fused task reserves for its encoders: ``encoder_memory_mb``, or (0) torch's own ~384 MB plus the
    traced towers' size, so Ray runs no more fused tasks on a node than their weights fit (large presets)."""
    if cfg.encoder_memory_mb > 0:
        return cfg.encoder_memory_mb * 2**20
    towers = sum(e.stat().st_size for e in os.scandir(scripted) if e.is_file()) if scripted else 0
    return 384 * 2**20 + towers


def _fused_tasks(cfg: ExtractConfig) -> int:
    """CPU-only clusters: concurrent decode+encode tasks, one per ``decode_cpus + encoder_cpus`` of the cluster's
    CPUs (``decode_tasks`` when set)."""
    if cfg.decode_tasks > 0:
        return cfg.decode_tasks
    return max(1, int(ray.cluster_resources().get("CPU", 1) / (cfg.decode_cpus + cfg.encoder_cpus)))


def run_extract(cfg: ExtractConfig, log=say) -> dict:
    """Extract features for every clip of ``cfg.input`` not yet in ``cfg.output``; returns counts.

    ``first_shard_s``: seconds from the call to the first shard written (None when nothing was to do);
    ``layout``: ``fused`` (CPU-only: tasks that decode and encode) or ``split`` (decode tasks -> encoder actors);
    ``encoder_loads``: worker processes that loaded the encoders for this job (fused: fewer than the concurrent
    tasks when workers kept theirs from a job a moment before)."""
    if not cfg.input or not cfg.output:
        raise ConfigError("extract needs --input and --output (or input/output in the config)")
    if cfg.asr.enabled:
        check_config(cfg.asr)  # a bad backend/model/language fails here, not as one error row per clip
    t_start = time.perf_counter()
    ensure_ray()
    nodes = alive_node_ids()  # a node that dies during the job is counted in the summary (nodes_lost)
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar per job (Progress), not per operator
    media = effective_media(cfg.preset, cfg.media)
    if folder_manifest(cfg.input):
        log(f"[extract] {cfg.input} holds {folder_manifest(cfg.input)}: reading the clips through it")
    todo, total, skipped = pending(cfg)
    first_local = _first_local_video(todo, cfg) if len(nodes) > 1 else {}  # one node: every path is shared
    require_shared_storage({"--output": cfg.output, **first_local}, cfg.storage)
    log(f"[extract] {total} clips in {cfg.input}; {skipped} already in {cfg.output}; {todo.num_rows} to do")
    counts, errors = {"ok": 0, "error": 0}, []
    t0, first_shard, layout, tracking, gpu, bar = time.perf_counter(), None, None, None, False, None
    scripted_used: set[bool] = set()
    loads = restarts = 0
    passes = NodeLossPasses(cfg.resume_on_node_loss, log, "extract")
    rest = [todo]  # the first pass does ``todo``; one after a node loss, what is not written by then
    try:
        if todo.num_rows:
            gpu = use_gpu(cfg.use_gpu)
            layout = "split" if gpu or not cfg.fused_cpu else "fused"
            scripted = None
            if not gpu:  # CPU workers load the encoders traced once per machine (no transformers import: faster)
                try:
                    scripted = scripted_encoders(cfg.preset, media)
                except Exception as exc:  # noqa: BLE001 - a tower that does not trace: the workers build it as before
                    log(f"[extract] encoders not traced ({type(exc).__name__}: {exc}); workers build them")
            bar = Progress("[extract]", todo.num_rows, "clips", log=log, bar=None if cfg.progress else False)
            for batch in passes.run(lambda: _as_returned(_dataset(cfg, rest.pop() if rest else pending(cfg)[0], media,
                                                                  gpu, layout, scripted))):
                if first_shard is None:  # a task / actor returns a batch once its shard is written
                    first_shard = time.perf_counter() - t_start
                    tracking = _Tracking(cfg)  # MLflow's start-up runs beside the job, not after its last shard
                scripted_used.update(bool(x) for x in batch["scripted"])
                loads += int(np.sum(batch["encoder_load"]))
                restarts += int(np.sum(batch["restarted"]))
                for status, error, clip in zip(batch["status"], batch["error"], batch["clip_id"], strict=True):
                    counts[status] += 1
                    if status != "ok":
                        errors.append(f"{clip}: {error}")
                bar.update(counts["ok"] + counts["error"], f"ok {counts['ok']}, error {counts['error']}")
            bar.close()
        wall = time.perf_counter() - t0
        summary = {"input": cfg.input, "output": cfg.output, "clips": total, "processed": todo.num_rows,
                   "skipped": skipped, **counts, "wall_s": round(wall, 3),
                   "first_shard_s": round(first_shard, 3) if first_shard is not None else None,
                   "layout": layout, "gpu": gpu, "scripted_encoders": scripted_used == {True},
                   "encoder_loads": loads, "restarted_actors": restarts,
                   "nodes_lost": len(nodes - alive_node_ids()), "resumed_passes": passes.resumed,
                   "clips_per_s": round(todo.num_rows / wall, 3) if todo.num_rows and wall > 0 else 0.0,
                   "errors": errors[:50]}
        storage.write_text(storage.join(cfg.output, "_summary.json"), json.dumps(summary, indent=2))
    except BaseException:
        if bar is not None:
            bar.close()
        if tracking is not None:
            tracking.finish(None)
        raise
    (tracking or _Tracking(cfg)).finish(summary)
    log(f"[extract] done: {counts['ok']} ok, {counts['error']} error, {skipped} skipped in {wall:.1f} s")
    return summary


def _first_local_video(todo: pa.Table, cfg: ExtractConfig) -> dict[str, str]:
    """``{what: uri}`` of the first clip whose video only this node's disk holds (for the shared-storage rule)."""
    shared = storage.shared_paths(cfg.storage)
    videos = [u for u in todo.column("video_uri").to_pylist() if u]
    local = [u for u in videos if not storage.is_shared(u, shared)]
    return {f"video_uri ({len(local)} of {len(videos)} clips; the first)": local[0]} if local else {}


def _as_returned(ds):
    """The job's summary batches, each as soon as its task or actor call returns (its shard is written then).
    ``prefetch_batches=0``: with ``batch_size=None`` Ray Data otherwise hands a block out only once the next block
    is there too, so the driver saw the first shard (and each later one) a whole task late."""
    return ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0)


def _dataset(cfg: ExtractConfig, todo: pa.Table, media, gpu: bool, layout: str, scripted: str | None):
    """The Ray Data plan: manifest records -> shards written, one small summary batch per shard.

    ``split`` (GPUs, or ``fused_cpu: false``): decode tasks -> encoder actors (one GPU each, else
    ``encoder_cpus``). ``fused`` (CPU only): tasks that decode, encode and write their own batches, one per
    ``decode_cpus + encoder_cpus`` of the cluster at a time: no decoded clip (~0.5 MB of audio and frames) crosses
    the object store, a 2-core machine runs 2 worker processes instead of 4, and the tasks start in Ray's pooled
    workers at once (an actor pool first starts a process per actor), which keep their encoders ``warm_keep_s``."""
    args = (cfg.preset, media, cfg.output, cfg.asr, scripted)
    if layout == "fused":  # one block per task: it decodes, encodes and writes the block shard by shard
        tasks = _fused_tasks(cfg)
        bounds = _batches(todo.num_rows, cfg.encode_batch_size, tasks)
        ds = ray.data.from_arrow([todo.slice(a, b - a) for a, b in bounds])
        # one operator whose concurrency is capped below: no resource reservation, whose budget in a session's
        # first job waits on Ray Data's autoscaling coordinator (a new actor process) and ran one task for ~2 s
        ds.context.op_resource_reservation_enabled = False
        return ds.map_batches(_decode_encode_write, fn_args=(*args, cfg.segment, cfg.warm_keep_s,
                                                             cfg.encode_batch_size),
                              batch_size=None, batch_format="pyarrow",
                              compute=ray.data.TaskPoolStrategy(size=min(len(bounds), tasks)),
                              num_cpus=cfg.decode_cpus + cfg.encoder_cpus,
                              memory=cfg.decode_memory_mb * 2**20 + _encoder_memory(cfg, scripted))
    size = cfg.decode_batch_size
    ds = ray.data.from_arrow([todo.slice(a, size) for a in range(0, todo.num_rows, size)])
    ds = ds.map_batches(_decode, fn_kwargs={"media": media, "asr": cfg.asr, "seg": cfg.segment, "output": cfg.output,
                                            "rows": size}, batch_size=size, batch_format="pyarrow",
                        num_cpus=cfg.decode_cpus, compute=ray.data.TaskPoolStrategy(size=_decode_tasks(cfg, gpu)),
                        # decode tasks reserve memory (a long HD clip needs a few hundred MB); remote args
                        # that differ from the actor's also keep Ray from fusing decode into the encoder
                        # actor, where it would run serially next to the encoder
                        memory=cfg.decode_memory_mb * 2**20)
    return ds.map_batches(_EncodeAndWrite, fn_constructor_args=args, batch_size=cfg.encode_batch_size,
                          compute=ray.data.ActorPoolStrategy(min_size=1, max_size=pool_size(cfg.num_encoders, gpu)),
                          num_gpus=1 if gpu else 0, num_cpus=0 if gpu else cfg.encoder_cpus)


class _Tracking:
    """The job's MLflow run, written from one thread of its own: it opens the run and logs the config at once
    (importing MLflow and opening its store cost ~2 CPU-s, which the job's own work now covers), then waits for
    the summary's metrics. ``finish(None)``: the job failed; the run closes without metrics."""

    def __init__(self, cfg: ExtractConfig) -> None:
        self.cfg, self.error = cfg, None
        self._summary: queue.Queue = queue.Queue(maxsize=1)
        self._thread = threading.Thread(target=self._run, name="extract-tracking", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            tracker = open_tracker(self.cfg.tracking, run_name="extract")
            try:
                tracker.log_params(dataclasses.asdict(self.cfg))
                summary = self._summary.get()
                if summary is not None:
                    tracker.log_metrics({k: summary[k] for k in ("clips", "processed", "skipped", "ok", "error",
                                                                 "wall_s", "clips_per_s")})
            finally:
                tracker.close()
        except BaseException as exc:  # noqa: BLE001 - raised again in the caller's thread by finish()
            self.error = exc

    def finish(self, summary: dict | None) -> None:
        self._summary.put(summary)
        self._thread.join(timeout=None if summary is not None else 30)  # a failing job does not wait on MLflow long
        if self.error is not None and summary is not None:
            raise self.error
