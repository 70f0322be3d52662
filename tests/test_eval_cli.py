"""Every `ray-emer evaluate` subcommand at the CLI level (in process), on the published reference files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ray_emer.cli import main


@pytest.fixture(scope="module")
def ref(reference_dir):
    return {"uni": reference_dir / "unibench", "ovmerd": reference_dir / "ovmerd",
            "wheels": str(reference_dir / "emotion_wheel"),
            "revised": str(reference_dir / "emotion_wheel_revised" / "format.csv")}


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_checkpoints_with_report_and_mlflow(ref, tmp_path, capsys):
    import mlflow

    db = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["evaluate", "checkpoints", "--dataset", "mer2023", "--wheel-dir", ref["wheels"],
                 "--outputs", str(ref["uni"] / "affectgpt_unibench_outputs_mer2023.csv"),
                 "--labels", str(ref["uni"] / "merbench_mer2023_label_6way.csv"),
                 "--report-dir", str(tmp_path / "rep"), "--mlflow-uri", db, "--output", str(tmp_path / "o.json")]) == 0
    out = _json(capsys)
    assert out["parsing"] == "published" and len(out["checkpoints"]) == 7
    assert round(out["best_on_test"]["score"], 4) == 0.7854  # the published best
    assert out["honest"]["score"] <= out["honest"]["best_on_test_same_half"]
    assert json.loads((tmp_path / "o.json").read_text()) == out
    client = mlflow.MlflowClient(db)
    run = client.search_runs([client.get_experiment_by_name("ray_emer-eval").experiment_id])[0]
    assert run.data.metrics["best_on_test"] == pytest.approx(out["best_on_test"]["score"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"report.json", "report.md", "report.png"}


def test_unibench_format_file_and_parsing_change_what_is_scored(ref, capsys):
    base = ["evaluate", "unibench", "--kind", "ov", "--wheel-dir", ref["wheels"],
            "--predictions", str(ref["ovmerd"] / "ovmerd332_example_predicted_openset_mer2024.csv"),
            "--labels", str(ref["ovmerd"] / "ovmerd332_gt_openset_labels_mer2024_check.csv")]
    assert main(base) == 0
    published = _json(capsys)
    assert main([*base, "--format-file", ref["revised"]]) == 0
    revised = _json(capsys)
    assert main([*base, "--parsing", "proper"]) == 0
    proper = _json(capsys)
    assert published["parsing"] == "published" and proper["parsing"] == "proper"
    assert 0 < published["score"] < 1 and revised["score"] != published["score"]  # the inflection table is used


def test_extract_lexicon_and_llm_then_text(ref, tmp_path, capsys):
    gt = pd.read_csv(ref["ovmerd"] / "emer_v1_100_gt_english.csv").head(12)
    desc = tmp_path / "d.csv"
    gt.rename(columns={"names": "name", "reasons": "description"})[["name", "description"]].to_csv(desc, index=False)
    assert main(["evaluate", "extract", "--descriptions", str(desc), "--wheel-dir", ref["wheels"],
                 "--out", str(tmp_path / "lex.csv")]) == 0
    assert _json(capsys) == {"rows": 12, "out": str(tmp_path / "lex.csv"), "method": "lexicon"}
    lex = pd.read_csv(tmp_path / "lex.csv", keep_default_na=False)
    gold = dict(zip(gt["names"], gt["emotions"]))
    # the lexicon reads the conclusion: most of these clips' gold emotion is among its labels
    hits = sum(gold[n] in labels for n, labels in zip(lex["name"], lex["openset"]))
    assert hits >= 6, lex  # 7 of 12 as written (the gold "angry" is often extracted as "anger")

    # the LLM method runs any local transformers model (a tiny random one here: the plumbing, not the quality)
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from ray_emer.model.tokenizer import tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                       num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
    llm.save_pretrained(tmp_path / "llm")
    tok.save_pretrained(tmp_path / "llm")
    assert main(["evaluate", "extract", "--descriptions", str(desc), "--method", "llm", "--model",
                 str(tmp_path / "llm"), "--out", str(tmp_path / "llm.csv")]) == 0
    assert _json(capsys)["rows"] == 12 and len(pd.read_csv(tmp_path / "llm.csv")) == 12
    assert main(["evaluate", "extract", "--descriptions", str(desc), "--method", "llm", "--out", "x.csv"]) == 2
    assert "--model" in capsys.readouterr().err

    # text overlap: a description against itself is perfect, against another clip's it is not
    shifted = pd.read_csv(desc)
    shifted["description"] = list(shifted["description"][1:]) + [shifted["description"][0]]
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    assert main(["evaluate", "text", "--predictions", str(desc), "--labels", str(desc)]) == 0
    same = _json(capsys)
    assert main(["evaluate", "text", "--predictions", str(tmp_path / "shifted.csv"), "--labels", str(desc)]) == 0
    other = _json(capsys)
    assert same["bleu_4"] == pytest.approx(1.0) and other["bleu_4"] < 0.5 and same["n"] == 12


def test_a_report_dir_on_s3_is_written_to_s3(s3_bucket, tmp_path, monkeypatch):
    """`--report-dir s3://...`: the report files land under the prefix (they used to go to a local folder named
    's3:/<bucket>/...' in the working directory)."""
    from ray_emer import storage
    from ray_emer.eval.report import write_report

    monkeypatch.chdir(tmp_path)
    paths = write_report({"title": "t", "score": 0.5}, f"{s3_bucket}/rep")
    assert sorted(paths.values()) == storage.list_files(f"{s3_bucket}/rep")
    assert [storage.basename(p) for p in sorted(paths.values())] == ["report.json", "report.md", "report.png"]
    assert json.loads(storage.read_text(paths["json"]))["score"] == 0.5
    assert list(tmp_path.iterdir()) == []
