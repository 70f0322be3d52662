"""The published numbers, reproduced from ../shared/reference (skipped when it is absent)."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from conftest import REPO
from ray_emer.eval.metrics import emer_set_metrics
from ray_emer.eval.unibench import DATASET_KIND, convert_labels, convert_outputs, score_checkpoints
from ray_emer.eval.wheel import EmotionWheels
from ray_emer.labels import parse_labels


@pytest.fixture(scope="module")
def wheels(reference_dir):
    return EmotionWheels.load(reference_dir / "emotion_wheel")


def _reference_scores(reference_dir, dataset):
    ref = pd.read_csv(reference_dir / "unibench" / "reference_scores_by_epoch.csv")
    return ref[ref["dataset"] == dataset].set_index("epoch")


@pytest.mark.parametrize("dataset,labels", [("mer2023", "merbench_mer2023_label_6way.csv"),
                                            ("cmumosi", "merbench_cmumosi_label.csv")])
def test_every_published_checkpoint_score(reference_dir, wheels, dataset, labels):
    uni = reference_dir / "unibench"
    table = convert_labels(uni / labels, dataset)
    kind = DATASET_KIND[dataset]
    gold = dict(zip(table["name"], table.iloc[:, 1].astype(float) if kind == "sentiment" else table.iloc[:, 1]))
    result = score_checkpoints(kind, gold, convert_outputs(uni / f"affectgpt_unibench_outputs_{dataset}.csv"), wheels)
    ref = _reference_scores(reference_dir, dataset)
    assert len(result["checkpoints"]) == len(ref) == 7
    for row in result["checkpoints"]:
        expected = ref.loc[int(row["checkpoint"])]
        assert row["score"] == pytest.approx(expected["main_score"], abs=1e-6)
        if kind == "sentiment":
            assert row["detail"]["accuracy"] == pytest.approx(expected["secondary_score"], abs=1e-6)
    best = {"mer2023": 0.7854, "cmumosi": 0.8130}[dataset]
    assert round(result["best_on_test"]["score"], 4) == best
    assert result["honest"]["score"] <= result["honest"]["best_on_test_same_half"]


def test_csv_wheel_tables_equal_xlsx(reference_dir, wheels):
    csv = EmotionWheels.load(reference_dir / "emotion_wheel_csv")
    assert csv.forms == wheels.forms and csv.synonyms == wheels.synonyms
    assert [w.level1 for w in csv.wheels] == [w.level1 for w in wheels.wheels]


def test_known_quirk_and_revised_table(reference_dir, wheels):
    # 'fear' is a listed form of 'fearless' in the published format.csv, which reaches 'happy'-side words
    assert "fearless" in wheels.forms["fear"]
    revised = EmotionWheels.load(reference_dir / "emotion_wheel", reference_dir / "emotion_wheel_revised" / "format.csv")
    assert "fearless" not in revised.forms.get("fear", set())
    assert wheels.map_label("neutral", 0) is None  # neutral maps to nothing: those samples drop out
    assert wheels.map_label("Happy ", 0) == wheels.map_label("happy", 0) == "happy"
    assert wheels.map_label("no-such-word", 0) is None
    assert wheels.map_label("angry", 0, level=2) in wheels.wheels[0].classes(2)


def _ovmerd(reference_dir):
    d = reference_dir / "ovmerd"
    return (d / "ovmerd332_gt_openset_labels_mer2024_check.csv", d / "ovmerd332_example_predicted_openset_mer2024.csv",
            d / "ovmerd332_gpt35_synonym_groups_cache.json")


@pytest.mark.parametrize("rule,expected", [("published", (0.5818, 0.4978, 0.5398)),
                                            ("proper", (0.5803, 0.4963, 0.5383))])
def test_emer_set_metrics_with_cached_groups(reference_dir, rule, expected):
    gt_path, pred_path, groups_path = _ovmerd(reference_dir)
    gt, pr = pd.read_csv(gt_path), pd.read_csv(pred_path)
    gold = {n: parse_labels(v, rule) for n, v in zip(gt["name"], gt["openset"])}
    pred = {n: parse_labels(v, rule) for n, v in zip(pr["name"], pr["openset"])}
    out = emer_set_metrics(gold, pred, json.loads(groups_path.read_text()))
    assert (round(out["accuracy_s"], 4), round(out["recall_s"], 4), round(out["avg"], 4)) == expected


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ray_emer.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


@pytest.mark.integration
def test_cli_contract_on_published_files(reference_dir, tmp_path):
    uni, wheel_dir = reference_dir / "unibench", str(reference_dir / "emotion_wheel")
    conv = _cli("evaluate", "convert", "--dataset", "mer2023", "--labels", str(uni / "merbench_mer2023_label_6way.csv"),
                "--outputs", str(uni / "affectgpt_unibench_outputs_mer2023.csv"), "--out-dir", str(tmp_path))
    assert conv.returncode == 0, conv.stderr
    out = _cli("evaluate", "unibench", "--kind", "basic", "--predictions", str(tmp_path / "predictions_mer2023_50.csv"),
               "--labels", str(tmp_path / "labels_mer2023.csv"), "--wheel-dir", wheel_dir,
               "--output", str(tmp_path / "o.json"), "--report-dir", str(tmp_path / "rep"))
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert round(result["score"], 4) == 0.7854 and result["n_scored"] + result["n_skipped"] == 411
    assert json.loads((tmp_path / "o.json").read_text()) == result
    assert {p.name for p in (tmp_path / "rep").iterdir()} == {"report.json", "report.md", "report.png"}
    gt_path, pred_path, groups_path = _ovmerd(reference_dir)
    emer = _cli("evaluate", "emer", "--predictions", str(pred_path), "--labels", str(gt_path), "--groups", str(groups_path))
    assert emer.returncode == 0, emer.stderr
    e = json.loads(emer.stdout)
    assert (round(e["accuracy_s"], 4), round(e["recall_s"], 4), round(e["avg"], 4)) == (0.5818, 0.4978, 0.5398)
    ov = _cli("evaluate", "unibench", "--kind", "ov", "--predictions", str(pred_path), "--labels", str(gt_path),
              "--wheel-dir", wheel_dir)
    o = json.loads(ov.stdout)
    assert {"score", "precision", "recall", "n_scored", "n_skipped"} <= set(o) and 0 < o["score"] < 1


@pytest.mark.integration
def test_cli_errors_on_malformed_input(reference_dir, tmp_path):
    wheel_dir = str(reference_dir / "emotion_wheel")
    (tmp_path / "L.csv").write_text("name,emotion\na,happy\nb,sad\n")
    cases = {
        "empty": ("", "empty"),
        "nocol": ("name,labels\na,happy\n", "missing column"),
        "unknown": ("name,openset\na,happy\nzzz,sad\n", "not in the labels"),
    }
    for name, (text, needle) in cases.items():
        (tmp_path / f"{name}.csv").write_text(text)
        r = _cli("evaluate", "unibench", "--kind", "basic", "--predictions", str(tmp_path / f"{name}.csv"),
                 "--labels", str(tmp_path / "L.csv"), "--wheel-dir", wheel_dir)
        assert r.returncode == 2 and needle in r.stderr, (name, r.stderr)  # README: exit 2 on malformed input
    (tmp_path / "wheels").mkdir()
    r = _cli("evaluate", "unibench", "--kind", "basic", "--predictions", str(tmp_path / "L.csv"),
             "--labels", str(tmp_path / "L.csv"), "--wheel-dir", str(tmp_path / "wheels"))
    assert r.returncode == 2 and "wheel1.xlsx" in r.stderr


def test_lexicon_extractor_on_gold_descriptions(reference_dir, wheels):
    """The measured F_s of the model-free extractor on the 332 gold OV-MERD descriptions."""
    from ray_emer.eval.extract import LexiconExtractor
    from ray_emer.eval.metrics import ov_fscore

    d = pd.read_csv(reference_dir / "ovmerd" / "emer_v2_ovmerd332_descriptions_chi_eng.csv")
    gt = pd.read_csv(_ovmerd(reference_dir)[0])
    gold = {n: parse_labels(v) for n, v in zip(gt["name"], gt["openset"])}
    scores = {}
    for focus in ("conclusion", "all"):
        pred = dict(zip(d["name"], LexiconExtractor(wheels, focus).extract(list(d["english"]))))
        scores[focus] = ov_fscore(gold, pred, wheels)["score"]
    assert scores["conclusion"] == pytest.approx(0.6235, abs=5e-4)
    assert scores["all"] < scores["conclusion"]
