"""The labelling job (Ray Data): features (or an archive, extracted first) -> label shards + exports.

Feature shards -> an actor pool (one GPU per actor when the cluster has them, a fraction
of a CPU otherwise); each actor loads the checkpoint and an engine once, builds prompt
embeddings itself (no ``[L, H]`` tensors through the object store), labels a batch with
the plain-Python ``Labeller`` and writes it as one Parquet shard, atomically. The driver
sees only small per-clip summaries (progress), then writes ``_summary.json``, the
published layouts (``_published/reason.csv`` = ``name,reason``; ``_published/openset.csv``
= ``name,openset,sentiment``) and, with ``evaluate``, the scores against the gold and a
report (``_report/``). An archive input is extracted into ``_features/`` first. Names
starting with ``_`` keep ``pyarrow.dataset(OUTPUT)`` to the label shards alone.

Nothing lost, nothing twice: every input row (error rows from extraction included)
becomes one label row; a rerun skips the clip ids already written, so a killed job
resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Literal

import numpy as np
import pandas as pd
import ray

from ray_emer import storage
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
from ray_emer.data.extraction import ExtractConfig
from ray_emer.data.pipeline import run_extract
from ray_emer.features.shards import done_clip_ids, part_files, read_shards, write_shard
from ray_emer.eval.wheel import EmotionWheels
from ray_emer.infer.labeller import Labeller, LabellerConfig
from ray_emer.model.checkpoint import checkpoint_id
from ray_emer.registry import resolve_checkpoint
from ray_emer.schema import label_table
from ray_emer.storage import StorageConfig
from ray_emer.timeline import FOLDER, timelines, write_timelines
from ray_emer.tracking import TrackingConfig, open_tracker, tracking
from ray_emer.progress import Progress, say

FEATURE_COLUMNS = ["clip_id", "subtitle", "status", "error", "has_video", "has_audio", "video_feats", "audio_feats"]
SPAN_COLUMNS = ["recording_id", "start_s", "end_s"]  # features written before segments existed lack them


@dataclasses.dataclass
class LabelJobConfig:
    input: str = ""  # feature shards (ray-emer extract output), or an archive: folder, s3:// prefix, manifest
    output: str = ""  # label shards, _summary.json, _published/{reason,openset}.csv, _report/, _features/ (archive)
    # an exported checkpoint directory (ray-emer train --output), or models:/NAME/VERSION, models:/NAME@ALIAS,
    # runs:/RUN_ID/PATH (resolved through tracking.uri, else MLFLOW_TRACKING_URI, else the default store)
    checkpoint: str = ""
    labeller: LabellerConfig = dataclasses.field(default_factory=LabellerConfig)
    extract: ExtractConfig = dataclasses.field(default_factory=ExtractConfig)  # archive input only
    num_actors: int = 0  # labelling actors (one GPU each when the cluster has GPUs); 0: one per GPU, else 1
    actor_cpus: float = 1.0  # CPUs per actor without GPUs
    use_gpu: Literal["auto", "true", "false"] = "auto"  # auto: GPUs when the cluster has them
    evaluate: bool = False  # score against the gold labels/descriptions the input carries
    # the emotion-wheel tables: evaluation (EW F_s, wheel-grouped EMER metrics and consistency), and the
    # labeller's vocabulary (descriptions state the labels, labeller.state_labels) unless it names its own
    wheel_dir: str = ""
    tracking: TrackingConfig = dataclasses.field(default_factory=lambda: tracking("ray_emer-label"))
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)  # shared folders (multi-node)
    # passes started again, over what is not labelled yet, when one fails while a node died (0: fail)
    resume_on_node_loss: int = 3
    progress: bool = True  # a progress bar on a terminal; false: plain progress lines there too


def is_feature_dir(uri: str) -> bool:
    """A directory of ``part-*.parquet`` feature shards (what ``ray-emer extract`` writes)."""
    return not uri.lower().endswith((".csv", ".tsv", ".parquet")) and bool(part_files(uri))


class _LabelAndWrite:
    """Actor: checkpoint + engine loaded once; each batch -> one label shard; returns small summaries."""

    def __init__(self, checkpoint: str, cfg: LabellerConfig, output: str, model_id: str) -> None:
        device = worker_device()  # a GPU actor: cuda, or why not
        self.labeller = Labeller(checkpoint, dataclasses.replace(cfg, device=device) if device else cfg, model_id)
        self.output, self.restarted = output, restarted()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = self.labeller.label_batch(batch)
        write_shard(label_table(rows), self.output)
        return {"clip_id": np.array([r["clip_id"] for r in rows], dtype=object),
                "status": np.array([r["status"] for r in rows], dtype=object),
                "error": np.array([r["error"] for r in rows], dtype=object),
                "tokens": np.array([r["generated_tokens"] for r in rows], dtype=np.int64),
                "restarted": np.array([self._first_after_restart()] + [False] * (len(rows) - 1))}

    def _first_after_restart(self) -> bool:
        was, self.restarted = self.restarted, False
        return was


def _features(cfg: LabelJobConfig, log) -> tuple[str, dict | None]:
    """The feature directory to label: the input itself, or the archive extracted into OUTPUT/features."""
    if is_feature_dir(cfg.input):
        return cfg.input, None
    out = storage.join(cfg.output, "_features")
    log(f"[label] {cfg.input} is an archive: extracting features into {out} first")
    ext = dataclasses.replace(cfg.extract, input=cfg.input, output=out, preset=cfg.checkpoint,
                              progress=cfg.progress, tracking=TrackingConfig(enabled=False), storage=cfg.storage)
    return out, run_extract(ext, log=log)


def labeller_config(cfg: LabelJobConfig) -> LabellerConfig:
    """The labeller's settings, with the job's wheel tables when it names none of its own."""
    if cfg.wheel_dir and not cfg.labeller.wheel_dir:
        return dataclasses.replace(cfg.labeller, wheel_dir=cfg.wheel_dir)
    return cfg.labeller


def _label_dataset(cfg: LabelJobConfig, features: str, done: set[str], model_id: str, gpu: bool, actors: int):
    """The feature rows not in ``done``, through the labelling actors (each returns its written batch's summary)."""
    fs, _ = storage.arrow_filesystem(features)
    files = [storage.arrow_filesystem(f)[1] for f in part_files(features)]
    ds = ray.data.read_parquet(files, filesystem=fs)
    ds = ds.select_columns(FEATURE_COLUMNS + [c for c in SPAN_COLUMNS if c in ds.schema().names])
    if done:
        ds = ds.filter(lambda r: r["clip_id"] not in done)
    return ds.map_batches(_LabelAndWrite, fn_constructor_args=(cfg.checkpoint, labeller_config(cfg), cfg.output,
                                                               model_id),
                          batch_size=cfg.labeller.batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
                          num_gpus=1 if gpu else 0, num_cpus=0 if gpu else cfg.actor_cpus)


def _run_actors(cfg: LabelJobConfig, features: str, done: set[str], todo: int, model_id: str, log) -> dict:
    gpu = use_gpu(cfg.use_gpu)
    actors = pool_size(cfg.num_actors, gpu)
    passes = NodeLossPasses(cfg.resume_on_node_loss, log, "label")

    def a_pass():  # after a node loss, ``done`` is what the output holds by then
        now = done_clip_ids(cfg.output) if passes.resumed else done
        return _label_dataset(cfg, features, now, model_id, gpu, actors).iter_batches(batch_size=None,
                                                                                       batch_format="numpy")

    counts, tokens, errors, restarts = {"ok": 0, "error": 0}, 0, [], 0
    with Progress("[label]", todo, "clips", "labelled", log=log, bar=None if cfg.progress else False) as bar:
        for batch in passes.run(a_pass):
            for clip, status, error in zip(batch["clip_id"], batch["status"], batch["error"], strict=True):
                counts[status] += 1
                if status != "ok":
                    errors.append(f"{clip}: {error}")
            tokens += int(batch["tokens"].sum())
            restarts += int(np.sum(batch["restarted"]))
            bar.update(counts["ok"] + counts["error"], f"ok {counts['ok']}, error {counts['error']}")
    return {**counts, "generated_tokens": tokens, "errors": errors, "gpu": gpu, "actors": actors,
            "restarted_actors": restarts, "resumed_passes": passes.resumed}


def _check_same_model(output: str, done: set[str], model_id: str) -> None:
    """A rerun skips the clips already labelled, so they must be this model's: labels another checkpoint wrote
    (a retrained stage, say) would otherwise be kept and mixed with this one's, and scored as this model's."""
    if not done:
        return
    rows = read_shards(output, columns=["clip_id", "model"]).to_pylist()
    other = [r["model"] for r in rows if r["clip_id"] in done and r["model"] != model_id]
    if other:
        models = ", ".join(sorted(set(other))[:3])
        raise ConfigError(f"{output} holds labels of {len(other)} of these clips by another model ({models}); "
                          f"this checkpoint is {model_id}: label into another output, or remove that one first "
                          "(a rerun only skips clips this same model labelled)")


def read_labels(output: str) -> pd.DataFrame:
    """Every label row under ``output`` (one per clip id; the first written wins), as a DataFrame."""
    return read_shards(output).to_pandas()


def write_exports(labels: pd.DataFrame, output: str) -> dict[str, str]:
    """The published layouts of the ok rows: ``reason.csv`` (name,reason) and ``openset.csv``
    (name,openset,sentiment), which ``ray-emer evaluate`` reads as they are."""
    ok = labels[labels["status"] == "ok"]
    reason = pd.DataFrame({"name": ok["clip_id"], "reason": ok["description"]})
    openset = pd.DataFrame({"name": ok["clip_id"], "openset": [", ".join(list(ls)) for ls in ok["labels"]],
                            "sentiment": ok["sentiment"]})
    paths = {"reason": storage.join(output, "_published", "reason.csv"),
             "openset": storage.join(output, "_published", "openset.csv")}
    storage.write_text(paths["reason"], reason.to_csv(index=False))
    storage.write_text(paths["openset"], openset.to_csv(index=False))
    return paths


def run_label(cfg: LabelJobConfig, log=say) -> dict:
    """Label every clip of ``cfg.input`` not yet labelled under ``cfg.output``; returns the summary."""
    if not cfg.input or not cfg.output or not cfg.checkpoint:
        raise ConfigError("label needs --input, --output and --checkpoint (or input/output/checkpoint in the config)")
    source = cfg.checkpoint  # a models:/ or runs:/ URI: resolved once here, the actors load the local copy
    cfg = dataclasses.replace(cfg, checkpoint=resolve_checkpoint(cfg.checkpoint, cfg.tracking.uri))
    if not storage.exists(storage.join(cfg.checkpoint, "config.json")):
        raise storage.StorageError(f"{cfg.checkpoint}: no config.json, not a checkpoint directory")
    ensure_ray()
    nodes = alive_node_ids()  # a node that dies during the job is counted in the summary (nodes_lost)
    manifest = cfg.input.lower().endswith((".csv", ".tsv", ".parquet"))  # read by this process alone
    require_shared_storage({"--output": cfg.output, "--checkpoint": cfg.checkpoint,
                            "--input": "" if manifest else cfg.input}, cfg.storage)
    ray.data.DataContext.get_current().enable_progress_bars = False  # one bar per job (Progress), not per operator
    t0 = time.perf_counter()
    features, extract_summary = _features(cfg, log)
    ids = read_shards(features, columns=["clip_id"]).column("clip_id").to_pylist()
    done = done_clip_ids(cfg.output) & set(ids)
    todo = len(ids) - len(done)
    model_id = checkpoint_id(cfg.checkpoint)
    _check_same_model(cfg.output, done, model_id)
    log(f"[label] {len(ids)} clips in {features}; {len(done)} already labelled in {cfg.output}; {todo} to do "
        f"(engine {cfg.labeller.engine}, model {model_id})")
    t1 = time.perf_counter()
    run = _run_actors(cfg, features, done, todo, model_id, log) if todo else \
        {"ok": 0, "error": 0, "generated_tokens": 0, "errors": [], "gpu": False, "actors": 0, "restarted_actors": 0,
         "resumed_passes": 0}
    label_s = time.perf_counter() - t1
    labels = read_labels(cfg.output)
    labels = labels[labels["clip_id"].isin(set(ids))]
    exports = write_exports(labels, cfg.output)
    timelines = write_recording_timelines(features, labels, cfg.output, log)
    summary = {"input": cfg.input, "features": features, "output": cfg.output, "checkpoint": source,
               "checkpoint_dir": cfg.checkpoint,
               "model": model_id, "engine": cfg.labeller.engine, "clips": len(ids), "processed": todo,
               "skipped": len(done), "rows": int(len(labels)), "ok": int((labels["status"] == "ok").sum()),
               "error": int((labels["status"] != "ok").sum()), "wall_s": round(time.perf_counter() - t0, 3),
               "label_s": round(label_s, 3), "clips_per_s": round(todo / label_s, 3) if todo and label_s else 0.0,
               "generated_tokens": run["generated_tokens"], "gpu": run["gpu"], "actors": run["actors"],
               "restarted_actors": run["restarted_actors"], "nodes_lost": len(nodes - alive_node_ids()),
               "resumed_passes": run["resumed_passes"] + (extract_summary or {}).get("resumed_passes", 0),
               "tokens_per_s": round(run["generated_tokens"] / label_s, 1) if todo and label_s else 0.0,
               "exports": exports, "timelines": timelines, "errors": run["errors"][:50]}
    if extract_summary is not None:
        summary["extract"] = {k: extract_summary[k] for k in ("clips", "ok", "error", "wall_s")}
    if cfg.evaluate:
        summary["scores"] = evaluate_labels(cfg, features, labels, log)
    storage.write_text(storage.join(cfg.output, "_summary.json"), json.dumps(summary, indent=2, default=str))
    _track(cfg, summary)
    log(f"[label] done: {summary['ok']} ok, {summary['error']} error, {len(done)} skipped; "
        f"{summary['clips_per_s']} clips/s, {summary['tokens_per_s']} tokens/s -> {cfg.output}")
    return summary


def write_recording_timelines(features: str, labels: pd.DataFrame, output: str, log) -> dict[str, str]:
    """Per segmented recording: ``OUTPUT/_timelines/<id>.json``, ``.vtt`` and ``.html`` (the timeline view, with
    the frame of each segment); returns ``{recording_id: json path}``."""
    if "recording_id" not in labels.columns:
        return {}
    segments = labels[labels["recording_id"].notna() & (labels["recording_id"] != labels["clip_id"])]
    if segments.empty:
        return {}
    from ray_emer.eval.timeline_view import timeline_html  # matplotlib-free; loaded when there is a timeline

    feats = read_shards(features, columns=["clip_id", "subtitle", "thumbnail"]).to_pandas()
    feats = feats[feats["clip_id"].isin(set(segments["clip_id"]))]
    found = timelines(segments.merge(feats, on="clip_id", how="left").to_dict("records"))
    paths = write_timelines(found, output)
    frames: dict[str, dict[str, bytes]] = {}  # recording -> "<start_ms>-<end_ms>" -> JPEG
    for clip, jpeg in zip(feats["clip_id"], feats["thumbnail"], strict=True):
        if jpeg:
            rid, span = clip.rsplit("@", 1)
            frames.setdefault(rid, {})[span] = jpeg
    for rid, timeline in found.items():
        storage.write_text(storage.join(output, FOLDER, f"{rid}.html"), timeline_html(timeline, frames.get(rid)))
    log(f"[label] {len(found)} recording timeline(s) in {storage.join(output, FOLDER)} (.json, .vtt, .html)")
    return paths


def evaluate_labels(cfg: LabelJobConfig, features: str, labels: pd.DataFrame, log) -> dict:
    """Scores of the labelled set against the gold the features carry; a report dir under the output."""
    # here, not at the top: scoring brings nltk, pycocoevalcap and matplotlib, which labelling alone (a GPU
    # node's vLLM environment included) never needs
    from ray_emer.eval.labelled import gold_from_features, score_labels, write_label_report

    gold = gold_from_features(read_shards(features, columns=None).drop(["video_feats", "audio_feats"]))
    wheels = EmotionWheels.load(cfg.wheel_dir) if cfg.wheel_dir else None
    scores = score_labels(labels, gold, wheels)
    if scores.get("n_gold", 0) == 0:
        log("[label] --evaluate: the input carries no gold labels or descriptions; nothing scored")
        return scores
    report_dir = storage.join(cfg.output, "_report")
    scores["report"] = write_label_report(scores, report_dir)
    log(f"[label] scores: accuracy {scores.get('accuracy', 0):.3f} on {scores['n_gold']} gold clips; "
        f"report in {report_dir}")
    return scores


def _track(cfg: LabelJobConfig, summary: dict) -> None:
    tracker = open_tracker(cfg.tracking, run_name="label")
    try:
        tracker.log_params(dataclasses.asdict(cfg))
        tracker.log_metrics({k: summary[k] for k in ("clips", "processed", "skipped", "ok", "error", "wall_s",
                                                     "clips_per_s", "tokens_per_s", "generated_tokens")})
        scores = summary.get("scores") or {}
        tracker.log_metrics({k: v for k, v in scores.items() if isinstance(v, (int, float))})
        for name in ("json", "markdown", "png"):
            path = (scores.get("report") or {}).get(name)
            if path and os.path.exists(path):
                tracker.log_artifact(path)
        local = [p for p in summary["exports"].values() if not storage.is_remote(p)]
        for path in local:
            tracker.log_artifact(path)
    finally:
        tracker.close()
