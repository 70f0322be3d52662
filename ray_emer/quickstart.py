"""The embedded default job, end to end: archives -> features -> two training stages -> labels -> scores -> report.

A chain of the library's own jobs in one process, so one Ray session serves every stage:
1. three synthetic archives: coarse (stage 1's auto-labelled stand-in), clean (stage 2),
   held-out (another seed, never trained on)
2. feature extraction of each with Ray Data
3. stage 1 on coarse features, stage 2 on clean features from stage 1's export (Ray Train;
   the tiny LLM is random, so it trains fully: LoRA on a random base learns next to nothing)
4. labelling of the held-out clips with Ray Data, scored against their gold
5. a report page (scores, loss curves, per-emotion confusion, a gallery of held-out clips)
   and MLflow: one parent run, a child run per stage (a local sqlite store by default)
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time

from ray_emer import storage
from ray_emer.data.extraction import ExtractConfig
from ray_emer.data.label_job import LabelJobConfig, read_labels, run_label
from ray_emer.data.manifest import read_manifest
from ray_emer.data.pipeline import run_extract
from ray_emer.eval.html_report import write_page
from ray_emer.eval.wheel import write_wheel_tables
from ray_emer.infer.labeller import LabellerConfig
from ray_emer.media import MediaConfig, MediaError, decode_uri
from ray_emer.model.config import TrainableConfig
from ray_emer.progress import say
from ray_emer.storage import StorageConfig
from ray_emer.synthetic import EMOTIONS, SYNONYMS, SynthConfig, emotion_of, write_archive
from ray_emer.tracking import TrackingConfig, parent_run, resolve_uri, tracking
from ray_emer.train.grpo import GRPOConfig
from ray_emer.train.loop import DataConfig, OptimConfig, ScalingConfig, TrainConfig
from ray_emer.train.run import run_stage


def _synth(clips: int, seed: int, coarse: bool, splits: list[float]) -> SynthConfig:
    return SynthConfig(clips=clips, seed=seed, coarse=coarse, split_fractions=splits)


@dataclasses.dataclass
class QuickstartConfig:
    out: str = "/tmp/ray_emer_quickstart"
    coarse: SynthConfig = dataclasses.field(default_factory=lambda: _synth(160, 21, True, [1.0, 0.0, 0.0]))
    clean: SynthConfig = dataclasses.field(default_factory=lambda: _synth(160, 22, False, [0.85, 0.15, 0.0]))
    heldout: SynthConfig = dataclasses.field(default_factory=lambda: _synth(48, 23, False, [0.0, 0.0, 1.0]))
    stage1_steps: int = 200
    stage2_steps: int = 300
    # stage 3 (GRPO from stage 2's export on the clean data; labelling then uses its export); 0: no stage 3
    stage3_steps: int = 0
    stage3_lr: float = 2.0e-4
    grpo: GRPOConfig = dataclasses.field(default_factory=GRPOConfig)
    lr: float = 1.0e-3
    batch_size: int = 8
    workers: int = 1  # Ray Train workers (one is enough on 2 cores)
    worker_cpus: float = 1.0
    # sequence packing (data.packing) in both stages. Off here: for the tiny LLM on CPU, packed rows' masked
    # attention costs a little more than the ~24% padding it saves (about 14% slower packed in one process)
    packing: bool = False
    # labels from the description's conclusion (the published two-step), so the two agree; the vocabulary is the
    # archives' (wheel tables written beside them)
    labeller: LabellerConfig = dataclasses.field(
        default_factory=lambda: LabellerConfig(batch_size=16, labels_from="lexicon"))
    gallery: int = 6  # held-out clips shown on the report page
    samples: int = 3  # sample descriptions printed in the terminal
    seed: int = 0  # training seed of both stages (model initialisation, data order)
    # MLflow: tracking.uri, else MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db (a local out; an s3:// out
    # uses the default store, sqlite:///$RAY_EMER_HOME/mlflow.db); tracking.register_as: NAME registers stage 2's
    # export as a version of model NAME, and the summary names it (registered.stage2: models:/NAME/VERSION)
    tracking: TrackingConfig = dataclasses.field(default_factory=lambda: tracking("ray_emer-quickstart"))
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)  # shared folders (multi-node)


def _tracking_uri(cfg: QuickstartConfig) -> str:
    if not cfg.tracking.enabled:
        return ""
    if cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or storage.is_remote(cfg.out):
        return resolve_uri(cfg.tracking.uri)
    os.makedirs(cfg.out, exist_ok=True)
    return f"sqlite:///{os.path.abspath(os.path.join(cfg.out, 'mlflow.db'))}"


def _stage(name: str, timings: dict, log):
    class Timer:
        def __enter__(self):
            log(f"[quickstart] {name} ...")
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            timings[name] = round(time.perf_counter() - self.t0, 1)
            if exc[0] is None:
                log(f"[quickstart] {name}: {timings[name]} s")

    return Timer()


def stage_config(cfg: QuickstartConfig, features: str, output: str, steps: int, init: str, split: str,
                 name: str, register_as: str = ""):
    """The TrainConfig of one quickstart stage."""
    return TrainConfig(features=features, output=output, preset="tiny", init=init, max_steps=steps, log_every=10,
                       val_samples=16, seed=cfg.seed, trainable=TrainableConfig(head="full", llm="full"),
                       data=DataConfig(train_split=split, val_split="val", batch_size=cfg.batch_size,
                                       packing=cfg.packing),
                       optim=OptimConfig(lr=cfg.lr, warmup_steps=10),
                       scaling=ScalingConfig(engine="ray", workers=cfg.workers, worker_cpus=cfg.worker_cpus),
                       tracking=TrackingConfig(experiment="ray_emer-train", run_name=name, register_as=register_as),
                       storage=cfg.storage)


def _train(cfg: QuickstartConfig, features: str, output: str, steps: int, init: str, split: str, name: str,
           log, register_as: str = "") -> dict:
    return run_stage(stage_config(cfg, features, output, steps, init, split, name, register_as), log=log)


def run_quickstart(cfg: QuickstartConfig, log=say) -> dict:
    t_start, timings = time.perf_counter(), {}
    out = cfg.out
    uri = _tracking_uri(cfg)
    with parent_run(uri, cfg.tracking.experiment, cfg.tracking.run_name or "quickstart") as parent:
        parent.log_params(dataclasses.asdict(cfg))
        with _stage("synthetic archives", timings, log):
            manifests = {name: write_archive(storage.join(out, name), getattr(cfg, name))
                         for name in ("coarse", "clean", "heldout")}
            # the archives' vocabulary as wheel tables: labelling states the labels with it, scoring groups by it
            wheel = write_wheel_tables(storage.join(out, "wheel"), {e: SYNONYMS[e] for e in EMOTIONS})
        features = {}
        with _stage("feature extraction (Ray Data)", timings, log):
            for name, manifest in manifests.items():
                features[name] = storage.join(out, f"{name}_features")
                run_extract(ExtractConfig(input=manifest, output=features[name], progress=False,
                                          storage=cfg.storage), log=log)
        with _stage("stage 1: coarse data (Ray Train)", timings, log):
            s1 = _train(cfg, features["coarse"], storage.join(out, "stage1"), cfg.stage1_steps, "", "", "stage1", log)
        with _stage("stage 2: clean data (Ray Train)", timings, log):
            s2 = _train(cfg, features["clean"], storage.join(out, "stage2"), cfg.stage2_steps, s1["output"],
                        "train", "stage2", log, cfg.tracking.register_as if uri else "")
        s3 = None
        if cfg.stage3_steps:
            with _stage("stage 3: GRPO on clean data (Ray Train)", timings, log):
                s3 = run_stage(dataclasses.replace(
                    stage_config(cfg, features["clean"], storage.join(out, "stage3"), cfg.stage3_steps, s2["output"],
                                 "train", "stage3"), method="grpo", grpo=cfg.grpo, log_every=1,
                    optim=OptimConfig(lr=cfg.stage3_lr, warmup_steps=0, schedule="constant")), log=log)
        with _stage("labelling the held-out clips (Ray Data)", timings, log):
            label_cfg = LabelJobConfig(input=features["heldout"], output=storage.join(out, "labels"),
                                       checkpoint=(s3 or s2)["output"], labeller=cfg.labeller, evaluate=True,
                                       wheel_dir=wheel,
                                       actor_cpus=0.5, progress=False, storage=cfg.storage)
            if storage.exists(label_cfg.output):  # an earlier run's labels are an earlier model's: start afresh
                storage.remove_tree(label_cfg.output)
            labelled = run_label(label_cfg, log=log)
        with _stage("report", timings, log):
            report = _report(cfg, manifests["heldout"], read_labels(label_cfg.output), labelled["scores"],
                             {"stage 1": s1.get("losses", []), "stage 2": s2.get("losses", []),
                              **({"stage 3 (GRPO)": s3["losses"]} if s3 else {})}, timings,
                             {"stage 3 (GRPO)": s3["rewards"]} if s3 else None)
            parent.log_metrics({k: v for k, v in labelled["scores"].items() if isinstance(v, float)})
        for path in report["files"]:
            parent.log_artifact(path)
        samples = report["samples"][: cfg.samples]
        for s in samples:
            log(f"[quickstart] {s['clip_id']}: {s['description']}\n[quickstart]   labels: {', '.join(s['labels'])} "
                f"({s['sentiment']}); gold: {', '.join(s['gold_labels'])}")
        scores = {k: labelled["scores"][k] for k in ("accuracy", "hit_rate", "sentiment_accuracy", "consistency",
                                                     "n_gold_labels")}
        scores.update(emer=labelled["scores"].get("emer"), text=labelled["scores"].get("text"))
        timings["total"] = round(time.perf_counter() - t_start, 1)
        parent.log_metrics({"wall_s": timings["total"]})
    summary = {"report": report["page"], "labels": label_cfg.output, "scores": scores,
               "stages": {"stage1": s1["output"], "stage2": s2["output"], "features": features,
                          "training": {"stage1": _brief(s1), "stage2": _brief(s2),
                                       **({"stage3": _brief(s3)} if s3 else {})},
                          **({"stage3": s3["output"]} if s3 else {})},
               "wall_s": timings, "mlflow": uri, "chance": 1 / len(EMOTIONS)}
    if "registered" in s2:  # tracking.register_as: stage 2's export is a version of that model
        summary["registered"] = {"stage2": s2["registered"]["uri"]}
    log(f"[quickstart] held-out accuracy {scores['accuracy']:.1%} (chance {1 / len(EMOTIONS):.1%}), labels agreeing "
        f"with their description {scores['consistency']:.1%}; report: "
        f"{report['page']}; MLflow: {uri or 'off'}; {timings['total']} s")
    return summary


def _brief(summary: dict) -> dict:
    keys = ("steps", "first_loss", "last_loss", "metrics", "wall_s", "reward_first", "reward_last", "kl_last")
    return {k: summary[k] for k in keys if k in summary}


def _report(cfg: QuickstartConfig, heldout_manifest: str, labels, scores: dict, losses: dict, timings: dict,
            rewards: dict | None = None) -> dict:
    gold = {r["clip_id"]: r for r in read_manifest(heldout_manifest).to_pylist()}  # extra columns kept: emotion
    emotion = {c: r.get("emotion") for c, r in gold.items()}
    rows = {r["clip_id"]: r for r in labels.to_dict("records")}
    ids = sorted(set(gold) & set(rows))
    pred_emotions = [emotion_of(list(rows[c]["labels"])[0]) if len(rows[c]["labels"]) else "" for c in ids]
    samples, gallery = [], []
    for c in ids:
        item = {"clip_id": c, "subtitle": gold[c]["subtitle"], "description": rows[c]["description"],
                "labels": list(rows[c]["labels"]), "sentiment": rows[c]["sentiment"],
                "gold_description": gold[c]["description"] or "", "gold_labels": list(gold[c]["labels"] or [])}
        samples.append(item)
        if len(gallery) < cfg.gallery:
            try:
                frames = decode_uri(gold[c]["video_uri"], None, MediaConfig(frame_size=96)).frames
            except MediaError:
                continue
            gallery.append({**item, "frames": frames})
    local = cfg.out if not storage.is_remote(cfg.out) else tempfile.mkdtemp(prefix="ray_emer_quickstart_report_")
    out_dir = os.path.join(local, "report")
    lines = [f"{len(ids)} held-out clips (seed {cfg.heldout.seed}); stage 1: {cfg.stage1_steps} steps on "
             f"{cfg.coarse.clips} coarse clips, stage 2: {cfg.stage2_steps} steps on {cfg.clean.clips} clean clips"
             + (f", stage 3 (GRPO): {cfg.stage3_steps} steps" if cfg.stage3_steps else "") + "; "
             f"chance accuracy {1 / len(EMOTIONS):.1%}",
             "wall time per stage: " + ", ".join(f"{k} {v} s" for k, v in timings.items())]
    page = write_page(out_dir, "ray_emer quickstart: labelled held-out clips", scores, losses,
                      [emotion[c] or "" for c in ids], pred_emotions, list(EMOTIONS), gallery, lines, rewards)
    with open(os.path.join(out_dir, "scores.json"), "w") as fh:
        json.dump(scores, fh, indent=2, default=str)
    files = [os.path.join(out_dir, f) for f in ("index.html", "loss_curves.png", "confusion.png", "scores.json")]
    if storage.is_remote(cfg.out):
        for f in files:
            with open(f, "rb") as fh:
                storage.write_bytes(storage.join(cfg.out, "report", os.path.basename(f)), fh.read())
    return {"page": page, "files": files, "samples": samples}
