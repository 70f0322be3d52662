"""The MLflow Model Registry: `train --register` makes the export a model version (run linked, config and scores
as tags); every checkpoint reader takes models:/NAME/VERSION, models:/NAME@ALIAS and runs:/RUN_ID/PATH through
the tracking URI; a URI that names nothing fails with one line; every checkpoint carries a model card."""

from __future__ import annotations

import contextlib
import io
import json
import re

import pytest
import torch

from conftest import synthetic_features
from ray_emer.cli import main
from ray_emer.model.checkpoint import load_checkpoint, save_checkpoint
from ray_emer.registry import RegistryError, resolve_checkpoint
from ray_emer.synthetic import SynthConfig


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """Two local stages on 12 synthetic clips, both registered as versions of `emo` in a sqlite store; the
    second starts from models:/emo/1. Alias `champion` -> version 1."""
    import mlflow

    root = tmp_path_factory.mktemp("registry")
    features = synthetic_features(root, SynthConfig(clips=12, seed=5, split_fractions=[0.6, 0.4, 0.0]))
    store = f"sqlite:///{root / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("RAY_EMER_HOME", str(root / "home"))  # where model URIs download to
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    summaries = []
    try:
        for out, init in (("stage1", []), ("stage2", ["--init", "models:/emo/1"])):
            argv = ["train", "--features", str(features), "--output", str(root / out), "--preset", "tiny",
                    "--max-steps", "3", "--register", "emo", *init, "--set", "scaling.engine=local",
                    "--set", "data.batch_size=4", "--set", "val_samples=4", "--set", f"tracking.uri={store}"]
            buf, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
                assert main(argv) == 0
            summaries.append(json.loads(buf.getvalue().strip().splitlines()[-1]))
            summaries[-1]["stderr"] = err.getvalue()
        client = mlflow.MlflowClient(store)
        client.set_registered_model_alias("emo", "champion", "1")
        yield {"root": root, "store": store, "features": features, "s1": summaries[0], "s2": summaries[1],
               "client": client, "mp": mp}
    finally:
        mp.undo()


def _head(model) -> dict:
    return {k: v.clone() for k, v in model.head.state_dict().items()}


def test_register_makes_a_version_with_run_config_and_scores(registered):
    s1, s2, client = registered["s1"], registered["s2"], registered["client"]
    assert s1["registered"]["uri"] == "models:/emo/1" and s2["registered"]["uri"] == "models:/emo/2"
    v1 = client.get_model_version("emo", "1")
    assert v1.run_id == s1["run_id"] and client.get_run(v1.run_id).info.run_name == "train-stage1"
    assert v1.tags["preset"] == "tiny" and v1.tags["steps"] == "3" and v1.tags["init"] == ""
    assert json.loads(v1.tags["config"])["max_steps"] == 3
    assert float(v1.tags["score.val_loss"]) == pytest.approx(s1["metrics"]["val_loss"])
    assert v1.source.endswith("/stage1")  # the checkpoint directory among the run's artifacts
    v2 = client.get_model_version("emo", "2")
    assert v2.tags["init"] == "models:/emo/1" and v2.run_id == s2["run_id"]


def test_a_stage_shows_its_steps_with_rate_and_eta(registered):
    # not a terminal: plain lines (the first step, then every 10 s, and the last)
    err = registered["s1"]["stderr"]
    assert re.search(r"^\[train\] 1/3 steps \(loss [\d.]+\), [\d.]+ steps/s, ETA \d+ s$", err, re.M), err
    assert re.search(r"^\[train\] 3/3 steps \(loss [\d.]+\), [\d.]+ steps/s, ETA 0 s$", err, re.M), err
    assert "[train] registered " in err and "as models:/emo/1" in err


def test_train_init_from_a_model_uri_starts_from_that_version(registered):
    # stage 2 started from the local copy of models:/emo/1 (its card names it)
    card = (registered["root"] / "stage2" / "README.md").read_text()
    assert "Started from: `" in card and "/emo/emo-v1`" in card, card


@pytest.mark.parametrize("form", ["version", "alias", "run"])
def test_every_model_uri_form_loads_the_registered_weights(registered, form):
    s1 = registered["s1"]
    uri = {"version": "models:/emo/1", "alias": "models:/emo@champion", "run": f"runs:/{s1['run_id']}/stage1"}[form]
    local = resolve_checkpoint(uri, registered["store"])
    assert (registered["root"] / "home" / "models").as_posix() in local
    registered["mp"].setenv("MLFLOW_TRACKING_URI", registered["store"])  # load_checkpoint resolves through it
    try:
        got, want = _head(load_checkpoint(uri)), _head(load_checkpoint(str(registered["root"] / "stage1")))
    finally:
        registered["mp"].delenv("MLFLOW_TRACKING_URI")
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_alias_is_pinned_to_its_version_when_resolved(registered):
    client, store = registered["client"], registered["store"]
    client.set_registered_model_alias("emo", "latest-good", "2")
    try:
        local = resolve_checkpoint("models:/emo@latest-good", store)
        assert local.endswith("emo-v2")
        assert json.loads((registered["root"] / "stage2" / "config.json").read_text()) == \
            json.loads(open(f"{local}/config.json").read())
    finally:
        client.delete_registered_model_alias("emo", "latest-good")


def test_serve_settings_resolve_a_model_uri(registered):
    from ray_emer.serve.settings import resolve_args

    cfg = resolve_args({"checkpoint": "models:/emo@champion", "tracking_uri": registered["store"]})
    assert cfg.checkpoint.endswith("emo-v1") and (registered["root"] / "home").as_posix() in cfg.checkpoint


@pytest.mark.parametrize("uri, says", [
    ("models:/emo/9", "Model Version (name=emo, version=9) not found"),
    ("models:/emo@nobody", "alias nobody not found"),
    ("models:/nothing/1", "nothing"),
    ("runs:/0123456789abcdef/stage1", "Run with id=0123456789abcdef not found"),
    ("models:/emo", "expected models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID/PATH"),
])
def test_a_bad_model_uri_fails_with_one_clear_line(registered, tmp_path, capsys, uri, says):
    rc = main(["label", "--input", str(registered["features"]), "--output", str(tmp_path / "labels"),
               "--checkpoint", uri, "--set", f"tracking.uri={registered['store']}"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"ray-emer label: {uri}: ") and says in err, err
    with pytest.raises(RegistryError, match=says.split(" (")[0].replace("(", r"\(").replace(")", r"\)")):
        resolve_checkpoint(uri, registered["store"])


def test_a_missing_artifact_path_fails_with_one_line(registered):
    with pytest.raises(RegistryError, match="nope") as info:
        resolve_checkpoint(f"runs:/{registered['s1']['run_id']}/nope", registered["store"])
    assert len(str(info.value).splitlines()) == 1


def test_register_needs_tracking(registered, tmp_path, capsys):
    rc = main(["train", "--features", str(registered["features"]), "--output", str(tmp_path / "x"),
               "--register", "emo", "--set", "tracking.enabled=false", "--set", "scaling.engine=local"])
    assert rc == 2 and "registering needs tracking" in capsys.readouterr().err


def test_checkpoint_has_a_model_card(registered, tmp_path):
    card = (registered["root"] / "stage1" / "README.md").read_text()
    s1 = registered["s1"]
    assert "Preset: `tiny`" in card and "Base LLM: randomly initialised" in card
    assert f"Data (feature shards): `{registered['features']}`" in card and "Optimizer steps: `3`" in card
    assert f"val_loss: {s1['metrics']['val_loss']:.4g}" in card and "rows of split 'val'" in card
    assert "## Intended use" in card and "## Limits" in card
    # the card is part of the registered version's files
    assert (registered["root"] / "home").exists()
    local = resolve_checkpoint("models:/emo/1", registered["store"])
    assert open(f"{local}/README.md").read() == card
    # a checkpoint written outside a stage says so
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.config import get_preset

    save_checkpoint(AffectGPT.build(get_preset("tiny")), str(tmp_path / "plain"))
    plain = (tmp_path / "plain" / "README.md").read_text()
    assert "Not recorded" in plain and "Not measured" in plain and "Preset: `tiny`" in plain


@pytest.mark.timeout(300)
def test_label_job_takes_a_model_uri(registered, ray_local, tmp_path):
    from ray_emer.data.label_job import LabelJobConfig, run_label
    from ray_emer.infer.labeller import LabellerConfig
    from ray_emer.tracking import TrackingConfig

    logs: list[str] = []
    summary = run_label(LabelJobConfig(input=str(registered["features"]), output=str(tmp_path / "labels"),
                                       checkpoint="models:/emo@champion", actor_cpus=0.5, progress=False,
                                       labeller=LabellerConfig(description_tokens=4, label_tokens=4, batch_size=12),
                                       tracking=TrackingConfig(uri=registered["store"], experiment="label")),
                        log=logs.append)
    assert summary["checkpoint"] == "models:/emo@champion" and summary["checkpoint_dir"].endswith("emo-v1")
    assert summary["model"].startswith("emo-v1@") and summary["rows"] == summary["clips"] == 12
    assert any("12/12 clips labelled" in m for m in logs), logs
