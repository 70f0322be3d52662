"""Ray Train + FSDP2 on CPU (gloo): 2 workers, distributed checkpoints, a crash and resume, export, MLflow."""

from __future__ import annotations

import dataclasses
import random

import pytest

from conftest import synthetic_features
from ray_emer.features.shards import read_shards
from ray_emer.model.checkpoint import load_checkpoint
from ray_emer.synthetic import SynthConfig
from ray_emer.tracking import TrackingConfig
from ray_emer.train.loop import DataConfig, OptimConfig, ScalingConfig, TrainConfig, batches, feature_rows
from ray_emer.train.run import run_stage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    return synthetic_features(tmp_path_factory.mktemp("ray_train"), SynthConfig(clips=48, seed=5))


def _cfg(features, out, **kw) -> TrainConfig:
    scaling = ScalingConfig(workers=2, worker_cpus=0.5, checkpoint_every=kw.pop("checkpoint_every", 0))
    return TrainConfig(features=str(features), output=str(out), preset="tiny", scaling=scaling,
                       data=DataConfig(batch_size=4), max_steps=kw.pop("max_steps", 6), log_every=1, val_samples=8, val_max_new_tokens=6,
                       optim=OptimConfig(lr=3e-3, warmup_steps=1, schedule="constant"), **kw)


def crash_once(marker_dir, rank: int, step: int):
    """An ``on_step`` hook that kills ``rank`` right after ``step``, once: a marker file (on a path every restarted
    worker sees) keeps the resumed group, which runs that step again, from crashing a second time. A closure, so
    cloudpickle ships it to the Ray Train workers by value (they cannot import this test module)."""
    import os
    import time

    def on_step(state, this_rank: int) -> None:
        marker = os.path.join(str(marker_dir), f"crashed_rank{rank}_step{step}")
        if (this_rank, state.step) != (rank, step) or os.path.exists(marker):
            return
        open(marker, "w").close()
        # Ray's controller registers reported checkpoints asynchronously: a crash in the same instant as the last
        # report can lose that checkpoint (the group then restarts from an older one, or from scratch). Waiting
        # until the last report is surely registered lets the test demand the resume.
        time.sleep(5)
        os._exit(1)  # a crashed worker, as a lost node or an OOM kill looks to Ray

    return on_step


def test_fsdp_two_workers_crash_resume_export(ray_local, features, tmp_path):
    from ray_emer.train.trainer import run_ray_training

    db = tmp_path / "mlflow.db"
    # 36 train rows on 2 ranks, batch 4: epoch 0 is 5 steps (7 at most after a resume whose remaining rows come
    # unevenly split), so 8 steps finish it and start epoch 1
    cfg = _cfg(features, tmp_path / "export", checkpoint_every=2, max_steps=8,
               tracking=TrackingConfig(uri=f"sqlite:///{db}", experiment="ray_emer-train", run_name="crashy"))
    faults = tmp_path / "faults"
    faults.mkdir()
    summary = run_ray_training(cfg, log=lambda m: None, on_step=crash_once(faults, rank=1, step=3))
    assert summary["steps"] == 8 and len(summary["losses"]) == 8 and summary["engine"] == "ray"
    assert summary["train_rows_cached"]  # the epochs (and the restarted group) iterate the rows read once
    # the restarted group began at the step-2 checkpoint, not at 0, with the state that was saved there: each
    # rank fingerprints its shards of weights and Adam moments, Adam's step count and the scheduler when saving,
    # and again after loading (rank 0's pair comes back; a mismatch on any rank fails the worker)
    assert summary["resumed_from"] == 2, summary
    check = summary["resume_check"]
    assert check["loaded"] == check["saved"] and check["saved"]["optimizer_steps"] == [2.0]
    assert check["saved"]["scheduler_epoch"] == 2 and check["saved"]["moments"] != 0  # Adam moments were restored
    # mid-epoch resume: the restarted group went on with epoch 0's remaining rows (Ray Data hands them out in its own
    # order): every train row once in epoch 0, none twice (the 16 in the step-2 weights not again), none skipped
    assert check["seen"] == 16
    import json

    parts = [json.loads((tmp_path / "export.ray" / "crashy" / "final" / f"seen_rank{r}.json").read_text())
             for r in (0, 1)]
    epoch0 = [p["last_epoch"] for p in parts]
    assert [e["epoch"] for e in epoch0] == [0, 0] and epoch0[0]["restored"] == epoch0[1]["restored"]
    restored, after = set(epoch0[0]["restored"]), epoch0[0]["seen"] + epoch0[1]["seen"]
    assert len(restored) == 16 and len(after) == len(set(after)) and not restored & set(after), (restored, after)
    train_ids = {r["clip_id"] for r in feature_rows(read_shards(str(features)), "train")}
    assert restored | set(after) == train_ids and len(train_ids) == 36
    # the crash happened (the hook's marker) and the group resumed from the step-2 checkpoint
    storage = tmp_path / "export.ray"
    assert [p.name for p in faults.iterdir()] == ["crashed_rank1_step3"]
    ckpts = sorted(storage.glob("crashy/step_*"))
    assert (storage / "crashy" / "final" / "final_metrics.json").is_file()
    assert [c.name for c in ckpts] == ["step_0000006"]  # num_to_keep=2: step 6 and "final" (older rotated out)
    assert sorted(p.name for p in ckpts[-1].glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (ckpts[-1] / "train_state.json").is_file()

    # the export loads without Ray and generates
    model = load_checkpoint(str(tmp_path / "export"))
    rows = feature_rows(read_shards(str(features)), "val")
    batch = next(batches(rows, 2, random.Random(0), shuffle=False))
    texts = model.generate(model.processor.from_rows(batch, "ov_labels", with_targets=False), max_new_tokens=6)
    assert len(texts) == 2
    # the export holds what the two sharded workers trained: its loss is below the untrained model's
    import torch

    from ray_emer.train.stage import build_model

    with torch.no_grad():
        fresh = build_model(dataclasses.replace(cfg, output="")).eval()
        loss = {name: float(m.eval()(m.processor.from_rows(batch, "ov_labels", random.Random(0))).loss)
                for name, m in (("export", model), ("fresh", fresh))}
    assert loss["export"] < loss["fresh"] - 0.1, loss

    # MLflow (rank 0 only): params, per-step metrics, validation, artifacts
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["ray_emer-train"])
    assert len(runs) == 1, "one run: rank 0 logs, the restarted group reuses nothing else"
    run = runs.iloc[0]
    assert run["params.world_size"] == "2" and run["params.preset"] == "tiny"
    history = mlflow.MlflowClient().get_metric_history(run["run_id"], "loss")
    per_step = {s: sum(m.step == s for m in history) for s in range(1, 9)}
    # rank 0 alone logs: one entry per step; step 3 ran twice (before the crash and again after the resume)
    assert all(per_step[s] == 1 for s in (1, 2, 4, 5, 6, 7, 8)) and 1 <= per_step[3] <= 2, per_step
    assert "metrics.val_label_accuracy" in run
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])}
    assert {"loss_curve.png", "export"} <= arts

    # the resumed export against an undisturbed run of the same stage: the multi-node tier (a rank's node lost)


def test_a_stage_with_features_output_and_ray_storage_on_s3(ray_local, features, s3_bucket):
    """Features read from s3://, the export written to s3://, Ray Train's checkpoints under an s3:// storage_path."""
    from ray_emer import storage

    for part in sorted(features.glob("part-*.parquet")):
        storage.write_bytes(f"{s3_bucket}/features/{part.name}", part.read_bytes())
    cfg = _cfg(f"{s3_bucket}/features", f"{s3_bucket}/stage1", checkpoint_every=2,
               tracking=TrackingConfig(enabled=False))
    cfg = dataclasses.replace(cfg, max_steps=4, val_samples=0,
                              scaling=dataclasses.replace(cfg.scaling, workers=1, storage_path=f"{s3_bucket}/ray"))
    summary = run_stage(cfg, log=lambda m: None)
    assert summary["steps"] == 4 and summary["checkpoint"] and summary["output"] == f"{s3_bucket}/stage1"
    assert summary["train_rows_cached"]  # sized from one S3 listing
    written = {storage.basename(f) for f in storage.list_files(f"{s3_bucket}/ray")}
    assert {"train_state.json", "final_metrics.json"} <= written, written  # Ray Train's run storage is on S3
    model = load_checkpoint(f"{s3_bucket}/stage1")
    rows = feature_rows(read_shards(f"{s3_bucket}/features"), "val")
    batch = next(batches(rows, 2, random.Random(0), shuffle=False))
    assert len(model.generate(model.processor.from_rows(batch, "ov_labels", with_targets=False), max_new_tokens=4)) == 2


def test_small_training_data_is_read_once_for_every_epoch(ray_local, features, tmp_path):
    """Within ``data.cache_mb`` the training rows are read once: with the feature files gone, two epochs still
    yield every train row (Ray Data would otherwise run the read again each epoch); ``cache_mb: 0`` streams."""
    import shutil

    from ray_emer.train.loop import train_exclude, usable_row
    from ray_emer.train.trainer import _dataset

    copy = tmp_path / "features"
    shutil.copytree(features, copy)
    cfg = _cfg(copy, tmp_path / "out")
    want = sorted(r["clip_id"] for r in read_shards(str(copy)).to_pylist()
                  if usable_row(r, cfg.data.train_split, train_exclude(cfg)))
    logs: list[str] = []
    ds, cached = _dataset(cfg, logs.append)
    assert cached and any("read once" in m for m in logs), logs
    shutil.rmtree(copy)
    for _ in range(2):
        assert sorted(r["clip_id"] for r in ds.iter_rows()) == want
    shutil.copytree(features, copy)
    ds, cached = _dataset(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, cache_mb=0)), logs.append)
    assert not cached and sorted(r["clip_id"] for r in ds.iter_rows()) == want
