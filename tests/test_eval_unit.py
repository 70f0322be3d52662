"""Metric arithmetic on hand-made cases; extractors; text overlap; reports; MLflow."""

import json
from pathlib import Path

import pandas as pd
import pytest

from ray_emer import storage
from ray_emer.eval.extract import LexiconExtractor, LLMExtractor, LLMSentiment, lexicon_sentiment
from ray_emer.eval.metrics import emer_set_metrics, hit_rate, ov_fscore, sentiment_scores
from ray_emer.eval.text_overlap import text_overlap
from ray_emer.eval.unibench import (EvalInputError, convert_outputs, read_csv, read_json, score_checkpoints,
                                    score_files)
from ray_emer.eval.wheel import EmotionWheels, Wheel, WheelError


@pytest.fixture(scope="module")
def tiny_wheel_dir(tmp_path_factory):
    """Five identical 2-class wheels written as CSV, with forms and synonyms."""
    d = tmp_path_factory.mktemp("wheels")
    rows = "level1,level2,level3\nHappy,Joyful,Delighted\n,Content,Calm\nSad,Lonely,Isolated\nSad,Hurt,\n"
    for i in range(1, 6):
        (d / f"wheel{i}.csv").write_text(rows.replace(",Hurt,\n", ",Hurt,Wounded\n"))
    (d / "format.csv").write_text('name,format\nhappy,"happy,happiness,happily"\nsad,"sad,sadness"\n'
                                  'glad,"glad,gladness"\nlonely,"lonely,loneliness"\nneutral,neutral\n')
    (d / "synonym.csv").write_text('word_run1,synonym_run1,word_run2,synonym_run2\nhappy,"glad, cheerful",'
                                   'joyful,glad\nsad,"unhappy",lonely,\n')
    return d


@pytest.fixture(scope="module")
def tiny_wheels(tiny_wheel_dir):
    return EmotionWheels.load(tiny_wheel_dir)


def test_wheel_mapping_rules(tiny_wheels):
    w = tiny_wheels
    assert w.candidates("Gladness ") == ["happy", "joyful"]  # form -> base -> synonym map, sorted
    assert w.map_label("glad", 0) == "happy"  # blank cell filled from the row above
    assert w.map_label("loneliness", 0) == "sad"
    assert w.map_label("lonely", 0, level=2) == "lonely"
    assert w.map_label("happy", 0, level=2) == "content"  # level-1 word -> alphabetically first child
    assert w.map_label("neutral", 0) is None and w.map_label("unknown", 0) is None


def test_later_row_wins_for_words_listed_twice():
    w = Wheel.from_rows([("a", "x", "dup"), ("b", "y", "dup")])
    assert w.level1["dup"] == "b" and w.level2["dup"] == "y"


def test_missing_tables_are_named(tmp_path):
    with pytest.raises(WheelError, match="does not exist"):
        EmotionWheels.load(tmp_path / "nope")
    with pytest.raises(WheelError, match="wheel1.xlsx"):
        EmotionWheels.load(tmp_path)
    for i in range(1, 6):
        (tmp_path / f"wheel{i}.csv").write_text("a,b\n1,2\n")
    with pytest.raises(WheelError, match="missing column"):
        EmotionWheels.load(tmp_path)


def test_hit_rate_and_ov_fscore(tiny_wheels):
    gold = {"a": "happy", "b": "sad", "c": "neutral"}
    pred = {"a": ["glad", "lonely"], "b": ["cheerful"], "c": ["sad"]}
    r = hit_rate(gold, pred, tiny_wheels)
    assert r["score"] == 0.5 and r["n_scored"] == 2 and r["n_skipped"] == 1
    ov = ov_fscore({"a": ["happy", "sad"], "b": ["sad"], "c": ["neutral"]}, {"a": ["glad"], "b": []}, tiny_wheels)
    # a: P=1, R=.5 ; b: empty P -> 0, 0 ; c skipped (gold maps to nothing)
    assert ov["precision"] == pytest.approx(0.5) and ov["recall"] == pytest.approx(0.25)
    assert ov["score"] == pytest.approx(2 * 0.5 * 0.25 / 0.75) and ov["n_skipped"] == 1


def test_sentiment_scores_skip_zero_valence():
    r = sentiment_scores({"a": 1.2, "b": -0.4, "c": 0.0, "d": 2.0}, {"a": "positive", "b": "Negative", "d": "mixed"})
    assert r["n_scored"] == 3 and r["n_skipped"] == 1
    assert r["accuracy"] == pytest.approx(2 / 3)


def test_emer_set_metrics_groups():
    groups = {"s": [["joyful", "happy"], ["sad"]]}
    out = emer_set_metrics({"s": ["Happy", "sad"]}, {"s": ["JOYFUL", "angry"]}, groups)
    # labels lower-cased: gold {joyful, sad}; pred {joyful, angry} -> acc .5, recall .5
    assert out["accuracy_s"] == 0.5 and out["recall_s"] == 0.5 and out["avg"] == 0.5
    # group words are matched exactly as written: "Happy" in a group does not catch "happy"
    out = emer_set_metrics({"s": ["happy"]}, {"s": ["joyful"]}, {"s": [["joyful", "Happy"]]})
    assert out["recall_s"] == 0.0


def _ov_files(d):
    """Gold and predictions where the rules differ: 'sad; lonely' is one (unknown) label when published."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "L.csv").write_text('name,openset\na,"[\'sad\']"\nb,"[\'happy\']"\n')
    (d / "P.csv").write_text('name,openset\na,sad; lonely\nb,"[], [\'Happy\']"\n')
    return d / "P.csv", d / "L.csv"


def test_unibench_parsing_rules_give_different_scores(tiny_wheels, tmp_path):
    pred, gold = _ov_files(tmp_path)
    published = score_files("ov", str(pred), str(gold), tiny_wheels)
    proper = score_files("ov", str(pred), str(gold), tiny_wheels, parsing="proper")
    assert published["parsing"] == "published" and proper["parsing"] == "proper"
    assert proper["score"] == pytest.approx(1.0)  # a: {sad, lonely} -> sad; b: happy
    assert published["precision"] == pytest.approx(0.5) and published["score"] < proper["score"]  # a: nothing
    frames = {"1": pd.read_csv(pred, dtype=str)}
    gold_lists = {"a": ["sad"], "b": ["happy"]}
    ckpt = {rule: score_checkpoints("ov", gold_lists, frames, tiny_wheels, parsing=rule)
            for rule in ("published", "proper")}
    assert ckpt["proper"]["parsing"] == "proper" and ckpt["published"]["parsing"] == "published"
    assert ckpt["published"]["best_on_test"]["score"] == pytest.approx(published["score"])
    assert ckpt["proper"]["best_on_test"]["score"] == pytest.approx(1.0)
    with pytest.raises(EvalInputError, match="--parsing"):
        score_files("ov", str(pred), str(gold), tiny_wheels, parsing="loose")


def test_unibench_cli_uses_the_published_rule_by_default_and_offers_the_proper_one(tiny_wheel_dir, tmp_path, capsys):
    import json

    from ray_emer.cli import main

    pred, gold = _ov_files(tmp_path / "files")
    base = ["evaluate", "unibench", "--kind", "ov", "--predictions", str(pred), "--labels", str(gold),
            "--wheel-dir", str(tiny_wheel_dir)]
    assert main(base) == 0
    default = json.loads(capsys.readouterr().out)
    assert main([*base, "--parsing", "proper"]) == 0
    proper = json.loads(capsys.readouterr().out)
    assert default["parsing"] == "published" and proper["parsing"] == "proper"
    assert proper["score"] == pytest.approx(1.0) and default["score"] < proper["score"]


def test_missing_and_malformed_inputs_name_the_uri(tmp_path):
    for reader in (lambda u: read_csv(u, ("name",)), read_json):
        with pytest.raises(EvalInputError, match=f"{tmp_path / 'nope.csv'}: file not found"):
            reader(str(tmp_path / "nope.csv"))
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(EvalInputError, match="bad.json: not valid JSON"):
        read_json(str(tmp_path / "bad.json"))
    (tmp_path / "g.json").write_text('{"a": [["x", "y"]]}')
    assert read_json(tmp_path / "g.json") == {"a": [["x", "y"]]}


@pytest.mark.integration
def test_scoring_reads_every_input_from_s3(tiny_wheels, tmp_path, s3_bucket):
    """Predictions, labels, groups, published outputs and a wheel dir (.xlsx and .csv tables) on S3 score
    exactly as the same files on disk."""
    pred, gold = _ov_files(tmp_path / "local")
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    for name in ("wheel2", "wheel3", "wheel4", "wheel5", "format", "synonym"):
        (wheel_dir / f"{name}.csv").write_bytes((Path(tiny_wheels.source) / f"{name}.csv").read_bytes())
    pd.read_csv(Path(tiny_wheels.source) / "wheel1.csv", dtype=str).to_excel(wheel_dir / "wheel1.xlsx", index=False)
    (tmp_path / "local" / "groups.json").write_text('{"a": [["sad", "lonely"]]}')
    (tmp_path / "local" / "outputs.csv").write_text("epoch,name,extracted_openset\n1,a,[sad]\n2,a,[happy]\n")
    remote = {}
    for path in [*wheel_dir.iterdir(), *(tmp_path / "local").iterdir()]:
        remote[path] = f"{s3_bucket}/{path.parent.name}/{path.name}"
        storage.write_bytes(remote[path], path.read_bytes())
    s3_wheels = EmotionWheels.load(f"{s3_bucket}/wheels", f"{s3_bucket}/wheels/format.csv")
    local_wheels = EmotionWheels.load(wheel_dir)
    assert s3_wheels.forms == local_wheels.forms == tiny_wheels.forms and s3_wheels.source == f"{s3_bucket}/wheels"
    assert [w.level1 for w in s3_wheels.wheels] == [w.level1 for w in tiny_wheels.wheels]
    for rule in ("published", "proper"):
        assert score_files("ov", remote[pred], remote[gold], s3_wheels, parsing=rule) == \
            score_files("ov", str(pred), str(gold), local_wheels, parsing=rule)
    assert read_json(f"{s3_bucket}/local/groups.json") == {"a": [["sad", "lonely"]]}
    assert {k: v.to_dict("list") for k, v in convert_outputs(f"{s3_bucket}/local/outputs.csv").items()} == \
        {k: v.to_dict("list") for k, v in convert_outputs(tmp_path / "local" / "outputs.csv").items()}
    with pytest.raises(EvalInputError, match=f"{s3_bucket}/local/missing.csv: file not found"):
        score_files("ov", f"{s3_bucket}/local/missing.csv", remote[gold], s3_wheels)
    with pytest.raises(EvalInputError, match=f"{s3_bucket}/nope.json: file not found"):
        read_json(f"{s3_bucket}/nope.json")
    with pytest.raises(WheelError, match="does not exist"):
        EmotionWheels.load(f"{s3_bucket}/no-wheels")
    for i in range(2, 6):
        storage.write_bytes(f"{s3_bucket}/partial/wheel{i}.csv", (wheel_dir / f"wheel{i}.csv").read_bytes())
    storage.write_bytes(f"{s3_bucket}/partial/wheel1.xlsx", (wheel_dir / "wheel1.xlsx").read_bytes())
    with pytest.raises(WheelError, match="partial: missing synonym.xlsx"):
        EmotionWheels.load(f"{s3_bucket}/partial", f"{s3_bucket}/wheels/format.csv")
    with pytest.raises(WheelError, match=f"format table {s3_bucket}/nope.csv does not exist"):
        EmotionWheels.load(f"{s3_bucket}/wheels", f"{s3_bucket}/nope.csv")


def test_lexicon_extractor_negation_lemmas_and_focus(tiny_wheels):
    ex = LexiconExtractor(tiny_wheels)
    assert ex.extract_one("She was not happy, she felt lonely.") == ["lonely"]
    assert ex.extract_one("His sadness showed.") == ["sad"]  # lemma/form -> base word
    text = "He looks glad at first. Therefore, he is most likely sad."
    assert ex.extract_one(text) == ["sad"]
    assert LexiconExtractor(tiny_wheels, focus="all").extract_one(text) == ["glad", "sad"]
    assert ex.extract_one("Nothing emotional here.") == []


class FakeEngine:
    def __init__(self, answers):
        self.answers, self.prompts = answers, []

    def generate(self, prompts):
        self.prompts += prompts
        return self.answers[: len(prompts)]


def test_llm_extractor_and_sentiment_through_an_engine():
    eng = FakeEngine(["Joyful, Excited.\nextra line", "none", ""])
    assert LLMExtractor(eng).extract(["d1", "d2", "d3"]) == [["joyful", "excited"], [], []]
    assert "Description: d1" in eng.prompts[0]
    assert LLMSentiment(FakeEngine(["Negative.", "it is POSITIVE"])).classify([["sad"], ["happy"]]) == \
        ["negative", "positive"]
    assert LLMExtractor(FakeEngine(["Emotions: calm; relaxed"])).extract(["d"]) == [["calm", "relaxed"]]


def test_lexicon_sentiment():
    assert lexicon_sentiment(["happy", "relaxed"]) == "positive"
    assert lexicon_sentiment(["angry", "sad", "happy"]) == "negative"
    assert lexicon_sentiment([]) == "neutral" and lexicon_sentiment(["neutral"]) == "neutral"


def test_text_overlap_known_cases():
    gold = {"a": "the man is very angry today", "b": "she smiles happily at her friend"}
    same = text_overlap(gold, gold)
    assert same["bleu_1"] == pytest.approx(1.0) and same["bleu_4"] == pytest.approx(1.0)
    assert same["rouge_l"] == pytest.approx(1.0) and same["meteor"] > 0.99
    none = text_overlap(gold, {})
    assert none["rouge_l"] == 0.0 and none["meteor"] == 0.0 and none["cider"] == 0.0 and none["bleu_1"] < 1e-6
    part = text_overlap(gold, {"a": "the man is angry", "b": "completely different words"})
    assert 0 < part["bleu_1"] < 1 and 0 < part["rouge_l"] < 1 and part["bleu_1"] > part["bleu_4"]


def test_report_files_and_mlflow(tmp_path):
    import mlflow

    from ray_emer.eval.report import write_report
    from ray_emer.tracking import make_tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = make_tracker(uri, "ray_emer-test")
    tracker.log_params({"dataset": "x", "nested": {"k": 1}})
    result = {"score": 0.5, "precision": 0.4, "recall": 0.6, "per_wheel": [0.5] * 5, "n_scored": 3}
    paths = write_report(result, tmp_path / "rep", tracker=tracker)
    tracker.close()
    assert json.loads(open(paths["json"]).read())["score"] == 0.5 and "| score |" in open(paths["markdown"]).read()
    mlflow.set_tracking_uri(uri)
    run = mlflow.search_runs(experiment_names=["ray_emer-test"], output_format="list")[0]
    assert run.data.metrics["score"] == 0.5 and run.data.params["nested.k"] == "1"
    arts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id)}
    assert arts == {"report.json", "report.md", "report.png"}


def test_honest_selection_on_a_case_whose_answer_is_known(tiny_wheels):
    """Checkpoint A is right on the whole selection half and on one report clip; B is right on two selection
    clips and the whole report half. Best on test picks B (7/10 vs 6/10); the honest pick is A (chosen on the
    selection half) and is reported on the other half only (1/5), not on the clips that chose it."""
    from ray_emer.eval.unibench import split_names

    names = [f"n{i}" for i in range(10)]
    select, report = split_names(names, 0.5, seed=4)
    assert select.isdisjoint(report) and select | report == set(names) and len(select) == 5
    assert split_names(reversed(names), 0.5, seed=4) == (select, report)  # fixed by the seed, not the order
    assert any(split_names(names, 0.5, seed=s)[0] != select for s in range(5, 10))
    sel, rep = sorted(select), sorted(report)

    def frame(right: set[str]) -> pd.DataFrame:
        return pd.DataFrame({"name": names, "openset": ["happy" if n in right else "sad" for n in names]})

    gold = {n: "happy" for n in names}
    out = score_checkpoints("basic", gold, {"A": frame(set(sel) | {rep[0]}), "B": frame(set(sel[:2]) | set(rep))},
                            tiny_wheels, seed=4)
    assert out["best_on_test"] == {"checkpoint": "B", "score": pytest.approx(0.7)}
    honest = out["honest"]
    assert honest["checkpoint"] == "A" and honest["score"] == pytest.approx(0.2)
    assert honest["best_on_test_same_half"] == pytest.approx(1.0) and honest["n_report"] == 5
