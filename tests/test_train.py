"""The plain-PyTorch training loop (no Ray): schedule, decay groups, collate, a stage end to end."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from ray_emer.cli import main
from conftest import synthetic_features
from ray_emer.features.shards import read_shards
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.checkpoint import load_checkpoint
from ray_emer.model.config import get_preset
from ray_emer.synthetic import SynthConfig
from ray_emer.errors import TrainDataError
from ray_emer.config import ConfigError, load_config
from ray_emer.model.config import TrainableConfig
from ray_emer.train.loop import (
    DataConfig,
    OptimConfig,
    TrainConfig,
    batches,
    feature_rows,
    lr_lambda,
    param_groups,
    ScalingConfig,
    total_steps,
)
from ray_emer.train.stage import build_model


def test_warmup_then_cosine_and_constant():
    f = lr_lambda(OptimConfig(warmup_steps=4, schedule="cosine", min_lr_ratio=0.1), total_steps=24)
    assert [round(f(s), 3) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(24) == pytest.approx(0.1) and f(14) == pytest.approx(0.55)
    g = lr_lambda(OptimConfig(warmup_steps=0, schedule="constant"), total_steps=10)
    assert {g(s) for s in range(10)} == {1.0}


def test_weight_decay_on_matrices_only():
    model = AffectGPT.build(get_preset("tiny"))
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(p.numel() for g in (decay, no_decay) for p in g["params"]) == n_trainable


@pytest.fixture(scope="module")
def synth_features(tmp_path_factory):
    """Features of 120 synthetic clips."""
    return synthetic_features(tmp_path_factory.mktemp("train"), SynthConfig(clips=120, seed=11))


def test_collate_builds_prompts_targets_and_drops_modalities(synth_features):
    model = AffectGPT.build(get_preset("tiny"))
    rows = feature_rows(read_shards(str(synth_features)), "train")
    batch = next(batches(rows, 4, random.Random(0)))
    mb = model.processor.from_rows(batch)
    assert len(mb) == 4 and mb.video_feats.shape == (4, 8, 48) and len(mb.targets) == 4
    assert all(t.startswith("The character's emotional state is") or t.startswith("In the video") for t in mb.targets)
    dropped = model.processor.from_rows(batch, "ov_labels", drop=("audio",))
    assert not any(dropped.has_audio) and all("<AudioHere>" not in p for p in dropped.prompts)
    assert torch.isfinite(model(dropped).loss)


@pytest.mark.timeout(600)
def test_stage_trains_exports_and_the_export_generates(synth_features, tmp_path, capsys):
    out = tmp_path / "stage1"
    db = tmp_path / "mlflow.db"
    rc = main(["train", "--features", str(synth_features), "--output", str(out), "--preset", "tiny",
               "--max-steps", "60", "--set", "optim.lr=3e-3", "--set", "data.batch_size=8", "--set", "log_every=10",
               "--set", f"tracking.uri=sqlite:///{db}", "--set", "val_samples=24", "--set", "scaling.engine=local"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["engine"] == "local" and summary["steps"] == 60 and len(summary["losses"]) == 60
    assert summary["last_loss"] < summary["first_loss"] and "val_label_accuracy" in summary["metrics"]
    cfg_json = json.loads((out / "config.json").read_text())
    assert cfg_json["architecture"] == "AffectGPT" and (out / "adapter" / "adapter_model.safetensors").is_file()
    model = load_checkpoint(str(out))
    rows = feature_rows(read_shards(str(synth_features)), "val")
    batch = next(batches(rows, 4, random.Random(0), shuffle=False))
    texts = model.generate(model.processor.from_rows(batch, "ov_labels", with_targets=False),
                           max_new_tokens=12)
    assert len(texts) == 4 and all(isinstance(t, str) for t in texts)
    # the export holds the trained weights: on held-out rows its loss is far below the untrained model's
    with torch.no_grad():
        fresh = build_model(TrainConfig(preset="tiny")).eval()
        loss = {name: float(m.eval()(m.processor.from_rows(batch, "ov_labels", random.Random(0))).loss)
                for name, m in (("export", model), ("fresh", fresh))}
    assert loss["export"] < 0.8 * loss["fresh"], loss
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    run = mlflow.search_runs(experiment_names=["ray_emer-train"]).iloc[0]
    assert run["params.preset"] == "tiny" and "metrics.val_label_accuracy" in run and run["metrics.loss"] < 6
    arts = [a.path for a in mlflow.MlflowClient().list_artifacts(run["run_id"])]
    assert "loss_curve.png" in arts and "stage1" in arts
    # stage 2 starts from stage 1's export
    rc = main(["train", "--features", str(synth_features), "--output", str(tmp_path / "stage2"),
               "--init", str(out), "--max-steps", "5", "--set", "optim.lr=1e-3", "--set", "scaling.engine=local"])
    assert rc == 0 and (tmp_path / "stage2" / "head.safetensors").is_file()


def test_total_steps_and_epochs():
    cfg = TrainConfig(data=DataConfig(batch_size=8), epochs=3)
    assert total_steps(100, cfg) == 3 * math.ceil(100 / 8)
    cfg.optim.grad_accum = 2
    assert total_steps(100, cfg, world_size=2) == 3 * (math.ceil(50 / 8) // 2)
    assert total_steps(100, TrainConfig(max_steps=7)) == 7


def test_feature_rows_skip_errors_and_other_splits(synth_features):
    table = read_shards(str(synth_features))
    rows = feature_rows(table, "train")
    splits = table.column("split").to_pylist()
    assert 0 < len(rows) == sum(s == "train" for s in splits)
    assert all(isinstance(r["video_feats"], np.ndarray) and r["video_feats"].shape == (8, 48) for r in rows)
    assert len(feature_rows(table, "")) == table.num_rows


def test_mlflow_tracking_does_not_leak_into_the_environment(tmp_path, monkeypatch):
    import os

    from ray_emer.tracking import MLflowTracker, NullTracker, TrackingConfig, default_uri, make_tracker, open_tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RAY_EMER_HOME", str(tmp_path / "home"))
    tracker = make_tracker(f"sqlite:///{tmp_path / 'm.db'}", "leak-check")
    tracker.log_metrics({"x": 1.0})
    tracker.close()
    assert "MLFLOW_TRACKING_URI" not in os.environ  # mlflow.set_tracking_uri exports it; we put it back
    # tracking is on by default: no URI anywhere -> the local default store under RAY_EMER_HOME
    assert default_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    tracker = open_tracker(TrackingConfig(experiment="default-store"))
    assert isinstance(tracker, MLflowTracker)
    tracker.log_artifact(__file__)
    tracker.close()
    assert (tmp_path / "home" / "mlflow.db").is_file()
    assert list((tmp_path / "home" / "mlartifacts").rglob("test_train.py"))  # artifacts beside the store, not cwd
    assert isinstance(open_tracker(TrackingConfig(enabled=False)), NullTracker)


def test_no_usable_rows_fails_at_once_with_the_counts(synth_features, tmp_path, capsys):
    """Features without targets (a folder of videos, no manifest): training stops before it starts."""
    import pyarrow.parquet as pq

    table = read_shards(str(synth_features))
    bare = tmp_path / "bare"
    bare.mkdir()
    import pyarrow as pa

    for col in ("description", "labels"):  # what extraction writes for a folder of videos without a manifest
        table = table.set_column(table.column_names.index(col), col, pa.nulls(table.num_rows, table.schema.field(col).type))
    pq.write_table(table, bare / "part-0.parquet")
    rc = main(["train", "--features", str(bare), "--output", str(tmp_path / "out"), "--set", "scaling.engine=local",
               "--set", "data.train_split="])
    err = capsys.readouterr().err
    assert rc == 2 and f"no usable training rows: {table.num_rows} rows, {table.num_rows} ok" in err, err
    assert not (tmp_path / "out").exists()


def test_an_epoch_without_batches_is_an_error_not_a_spin():
    from ray_emer.train.loop import train

    model = AffectGPT.build(get_preset("tiny"))
    with pytest.raises(TrainDataError, match="epoch 0 yielded no batch; 0 of 5 steps done"):
        train(model, lambda epoch: iter(()), TrainConfig(log_every=0), total_steps=5)


def test_the_training_seed_seeds_the_stage_model_and_nothing_else_does(tmp_path):
    """``TrainConfig.seed`` decides the head / LLM / LoRA initialisation of a stage (fresh or from --init)."""
    from ray_emer.model.checkpoint import save_checkpoint

    def head(seed, **kw):
        return build_model(TrainConfig(seed=seed, **kw)).head.state_dict()

    a, b, again = head(0), head(1), head(0)
    assert all(torch.equal(a[k], again[k]) for k in a)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    # stage 2 from an export: saved weights load as saved, only new LoRA adapters follow the seed
    save_checkpoint(build_model(TrainConfig(seed=3, trainable=TrainableConfig(llm="full"))), str(tmp_path / "s1"))

    def lora(seed):
        model = build_model(TrainConfig(seed=seed, init=str(tmp_path / "s1")))
        return {k: v for k, v in model.llm.state_dict().items() if "lora_A" in k}

    l0, l1 = lora(0), lora(1)
    assert l0 and any(not torch.equal(l0[k], l1[k]) for k in l0)
    assert all(torch.equal(l0[k], v) for k, v in lora(0).items())


def test_training_on_every_split_still_holds_the_validation_rows_out(synth_features, tmp_path):
    """Stage 1's YAML trains on every split (`train_split: ""`): its validation rows must not train."""
    from ray_emer.tracking import TrackingConfig
    from ray_emer.train.loop import train_exclude
    from ray_emer.train.run import run_stage

    table = read_shards(str(synth_features))
    splits = [s for s, ok in zip(table.column("split").to_pylist(), table.column("status").to_pylist()) if ok == "ok"]
    assert "val" in splits and "train" in splits
    cfg = TrainConfig(features=str(synth_features), output=str(tmp_path / "s"), max_steps=1, val_samples=0,
                      data=DataConfig(train_split="", val_split="val"), scaling=ScalingConfig(engine="local"),
                      tracking=TrackingConfig(enabled=False))
    rows = feature_rows(table, cfg.data.train_split, train_exclude(cfg))
    assert rows and all(r["split"] != "val" for r in rows) and len(rows) == sum(s != "val" for s in splits)
    logs: list[str] = []
    run_stage(cfg, log=logs.append)
    assert f"[train] {len(rows)} train rows" in logs[0], logs[0]


@pytest.mark.parametrize("engine", ["local", "ray"])
def test_a_stage_checks_its_inputs_once(engine, tmp_path, monkeypatch):
    """``check_io`` runs once per stage, whichever engine: counted under every name a train module holds it by,
    the stage stopped right after (before any feature is read or Ray starts)."""
    import importlib

    from ray_emer.train import stage

    calls: list[str] = []
    real = stage.check_io

    def counted(cfg):
        calls.append(cfg.output)
        real(cfg)

    class Stop(Exception):
        pass

    def stop(*a, **kw):
        raise Stop

    for name in ("run", "local", "stage", "trainer"):
        mod = importlib.import_module(f"ray_emer.train.{name}")
        if hasattr(mod, "check_io"):
            monkeypatch.setattr(mod, "check_io", counted)
    monkeypatch.setattr("ray_emer.train.local.read_shards", stop)
    monkeypatch.setattr("ray_emer.train.trainer.ensure_ray", stop)
    from ray_emer.train.run import run_stage

    cfg = TrainConfig(features=str(tmp_path / "f"), output=str(tmp_path / "o"), scaling=ScalingConfig(engine=engine))
    with pytest.raises(Stop):
        run_stage(cfg, log=lambda m: None)
    assert calls == [str(tmp_path / "o")]
    with pytest.raises(ConfigError, match="training needs features and output"):
        run_stage(TrainConfig(scaling=ScalingConfig(engine=engine)), log=lambda m: None)


def test_trainable_is_set_in_one_place_and_a_conflicting_model_override_fails():
    """The stage's ``trainable`` is the source: a ``model_overrides`` entry saying otherwise was silently replaced
    by it; now it is an error naming both values. One that agrees (or names other keys) is fine."""
    with pytest.raises(ConfigError, match=r"model_overrides say trainable.llm=full, the stage's own setting "
                                          r"trainable.llm=lora"):
        TrainConfig(model_overrides=["trainable.llm=full"])
    with pytest.raises(ConfigError, match=r"trainable.head=frozen.*trainable.head=full"):
        load_config(TrainConfig, None, ["model_overrides=[trainable.head=frozen]"])
    agreed = TrainConfig(trainable=TrainableConfig(head="frozen", llm="full"),
                         model_overrides=["trainable.llm=full", "fusion=none"])
    model = build_model(agreed)
    assert model.cfg.trainable == TrainableConfig(head="frozen", llm="full") and model.cfg.fusion == "none"
    assert not any(p.requires_grad for p in model.head.parameters())


def test_ray_train_is_told_the_stage_numbers_not_every_step_loss():
    """Ray Train prints what a worker reports on one log line: 300 losses made it unreadable. The list stays in
    the final checkpoint (read back into the summary; the crash/resume test checks all 8 come back)."""
    from ray_emer.train.trainer import reported

    final = {"step": 300, "losses": [float(i) for i in range(300)], "metrics": {"val_loss": 1.0}, "resumed_from": 0}
    out = reported(final)
    assert "losses" not in out and out["losses_n"] == 300 and (out["loss_first"], out["loss_last"]) == (0.0, 299.0)
    assert out["metrics"] == {"val_loss": 1.0} and len(repr(out)) < 300
