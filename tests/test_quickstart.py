"""The quickstart chain in small: archives -> features -> stage 1 -> stage 2 -> labels -> scores -> report,
one Ray session, MLflow parent and child runs, the report page in a headless browser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ray_emer.infer.labeller import LabellerConfig
from ray_emer.quickstart import QuickstartConfig, _synth, run_quickstart
from ray_emer.tracking import TrackingConfig
from ray_emer.train.grpo import GRPOConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _quick_cfg(out) -> QuickstartConfig:
    return QuickstartConfig(out=str(out), coarse=_synth(24, 21, True, [1.0, 0.0, 0.0]),
                            clean=_synth(24, 22, False, [0.8, 0.2, 0.0]), heldout=_synth(8, 23, False, [0.0, 0.0, 1.0]),
                            stage1_steps=6, stage2_steps=6, stage3_steps=3, worker_cpus=0.5, gallery=3,
                            grpo=GRPOConfig(group_size=2, max_new_tokens=8),
                            labeller=LabellerConfig(description_tokens=16, label_tokens=12, batch_size=8),
                            tracking=TrackingConfig(experiment="ray_emer-quickstart", register_as="quick-emo"))


@pytest.fixture(scope="module")
def quick(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("quickstart")
    logs: list[str] = []
    return run_quickstart(_quick_cfg(out), log=logs.append), logs, out


def test_chain_summary_labels_and_report(quick):
    summary, logs, out = quick
    assert {"report", "labels", "scores", "stages", "mlflow", "wall_s"} <= set(summary)
    assert 0.0 <= summary["scores"]["accuracy"] <= 1.0 and summary["scores"]["n_gold_labels"] == 8
    assert set(summary["wall_s"]) >= {"feature extraction (Ray Data)", "stage 1: coarse data (Ray Train)",
                                      "stage 2: clean data (Ray Train)", "stage 3: GRPO on clean data (Ray Train)",
                                      "labelling the held-out clips (Ray Data)", "total"}
    assert (Path(summary["stages"]["stage2"]) / "config.json").is_file()
    # stage 3 ran in the chain (GRPO from stage 2's export) and its export labelled the held-out clips
    stage3 = summary["stages"]["training"]["stage3"]
    assert stage3["steps"] == 3 and stage3["reward_first"] is not None and stage3["kl_last"] is not None
    label_summary = json.loads((Path(summary["labels"]) / "_summary.json").read_text())
    assert label_summary["checkpoint"] == summary["stages"]["stage3"]
    labels = json.loads((Path(summary["labels"]) / "_summary.json").read_text())
    assert labels["rows"] == 8 and labels["scores"]["accuracy"] == summary["scores"]["accuracy"]
    # labels and descriptions agree, scored with the archives' vocabulary (wheel tables beside them)
    assert labels["scores"]["consistency"] == summary["scores"]["consistency"] is not None
    assert labels["scores"]["consistency_rows"]["grouping"] == "wheel" and (out / "wheel" / "wheel1.csv").is_file()
    page = Path(summary["report"]).read_text()
    assert "Scores on the held-out clips" in page and page.count("class='card'") == 3
    assert f"<td>consistency</td><td>{summary['scores']['consistency']:.4f}</td>" in page
    report = Path(summary["report"]).parent
    for name in ("loss_curves.png", "confusion.png"):
        assert (report / name).stat().st_size > 5000
    matrix = json.loads((report / "confusion.json").read_text())["matrix"]
    assert sum(map(sum, matrix)) == 8  # every held-out clip counted once
    assert len(list((report / "frames").glob("*.jpg"))) == 3
    assert any("labels:" in m for m in logs) and "held-out accuracy" in logs[-1]


def test_mlflow_parent_run_with_a_child_per_stage(quick):
    import mlflow

    summary, _, out = quick
    assert summary["mlflow"] == f"sqlite:///{out / 'mlflow.db'}"
    client = mlflow.MlflowClient(summary["mlflow"])
    exp = client.get_experiment_by_name("ray_emer-quickstart")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "quickstart"]
    assert len(parents) == 1 and parents[0].data.metrics["accuracy"] == summary["scores"]["accuracy"]
    assert parents[0].info.artifact_uri.startswith(str(out / "mlartifacts"))  # beside the job, not in the cwd
    assert "index.html" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    names = sorted(r.info.run_name for r in children)
    assert names == ["extract", "extract", "extract", "label", "stage1", "stage2", "stage3"], names
    stage3 = next(r for r in children if r.info.run_name == "stage3")
    assert len(client.get_metric_history(stage3.info.run_id, "reward")) == 3  # every GRPO step
    stage1 = next(r for r in children if r.info.run_name == "stage1")
    assert stage1.data.params["world_size"] == "1" and stage1.data.params["preset"] == "tiny"  # logged by rank 0
    # tracking.register_as: stage 2's export is version 1 of the model, linked to stage 2's run (Ray engine)
    assert summary["registered"] == {"stage2": "models:/quick-emo/1"}
    version = client.get_model_version("quick-emo", "1")
    assert version.run_id == next(r for r in children if r.info.run_name == "stage2").info.run_id
    assert version.tags["steps"] == "6" and version.tags["init"] == summary["stages"]["stage1"]
    card = (Path(summary["stages"]["stage2"]) / "README.md").read_text()
    assert "Optimizer steps: `6`" in card and "Engine: `ray`" in card
    assert "README.md" in {a.path.split("/")[-1] for a in client.list_artifacts(version.run_id, "stage2")}


def test_report_page_renders_in_a_browser(quick, chrome, tmp_path):
    chrome.get(Path(quick[0]["report"]).as_uri())
    widths = chrome.execute_script("return [...document.images].map(i => i.naturalWidth)")
    chrome.save_screenshot(str(tmp_path / "report.png"))
    assert len(widths) == 2 + 3 and all(w > 0 for w in widths)  # curves, confusion, 3 frame strips all loaded
    assert (tmp_path / "report.png").stat().st_size > 20_000


def test_stage_config_takes_packing_from_the_quickstart_config():
    from ray_emer.quickstart import stage_config

    args = ("/f", "/o", 5, "", "train", "stage1")
    assert stage_config(QuickstartConfig(), *args).data.packing is False  # the quickstart's default (tiny, CPU)
    assert stage_config(QuickstartConfig(packing=True), *args).data.packing is True
    assert stage_config(QuickstartConfig(), *args).data.batch_size == QuickstartConfig().batch_size
