"""The inference core without Ray: processor, engines over prompt embeddings, the labeller."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from ray_emer.infer.engine import EngineError, GenerationConfig, HFEngine, check_embeds
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.config import get_preset
from ray_emer.model.processing import IGNORE
from ray_emer.schema import LABEL_SCHEMA, label_table


@pytest.fixture(scope="module")
def model() -> AffectGPT:
    torch.manual_seed(0)
    m = AffectGPT.build(get_preset("tiny"))
    with torch.no_grad():  # a non-trivial adapter, so that the LoRA path matters
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return m.eval()


def feature_batch(n: int, seed: int = 0, status=None, has_video=None, has_audio=None) -> dict:
    rng = np.random.default_rng(seed)
    subs = ["I won the prize!", None, "", "Where were you last night?", "Fine."]
    return {"clip_id": np.array([f"c{i}" for i in range(n)], dtype=object),
            "status": np.array(status or ["ok"] * n, dtype=object),
            "error": np.array(["" if s == "ok" else "truncated: half a file" for s in (status or ["ok"] * n)],
                              dtype=object),
            "subtitle": np.array([subs[i % len(subs)] for i in range(n)], dtype=object),
            "description": np.array([f"In the video, clue {i}. The state is happy." for i in range(n)], dtype=object),
            "labels": np.array([["happy", "joyful"]] * n + [None], dtype=object)[:n],
            "has_video": np.array(has_video if has_video is not None else [True] * n),
            "has_audio": np.array(has_audio if has_audio is not None else [True] * n),
            "video_feats": rng.standard_normal((n, 8, 48)).astype(np.float16),
            "audio_feats": rng.standard_normal((n, 8, 32)).astype(np.float16)}


# ---------------------------------------------------------------- processor
def test_processor_pads_right_for_training_and_left_for_generation(model):
    proc = model.processor
    rows = feature_batch(3)
    train = proc.from_rows(rows, "hybrid", random.Random(0))
    assert train.attention_mask[:, 0].all() and train.labels is not None
    gen = proc.from_rows(rows, "description", with_targets=False)
    assert gen.left_padded and gen.labels is None and gen.tasks == ["description"] * 3
    tok = model.tokenizer
    for i in range(3):  # the loss covers exactly the target and end-of-answer, nothing of the prompt
        answer = tok(train.targets[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert train.labels[i][train.labels[i] != IGNORE].tolist() == answer
        prompt_ids = tok(train.prompts[i], add_special_tokens=False)["input_ids"]
        assert train.input_ids[i, : len(prompt_ids)].tolist() == prompt_ids
    # the same prompt, tokenised once: generation ids are the training ids minus the answer
    n = int(gen.attention_mask[0].sum())
    assert gen.input_ids[0, -n:].tolist() == proc.tokenize([gen.prompts[0]])["input_ids"][0].tolist()


def test_processor_counts_placeholders_per_modality(model):
    rows = feature_batch(3, has_video=[True, False, True], has_audio=[True, True, False])
    mb = model.processor.from_rows(rows, "ov_labels", with_targets=False)
    ids = model.processor.placeholder_ids
    per_row = [{k: int((mb.input_ids[i] == tid).sum()) for k, tid in ids.items()} for i in range(3)]
    assert per_row[0] == {"fused": 1, "audio": 1, "video": 1, "image": 0}
    assert per_row[1] == {"fused": 0, "audio": 1, "video": 0, "image": 0}
    assert per_row[2] == {"fused": 0, "audio": 0, "video": 1, "image": 0}
    drop = model.processor.from_rows(rows, "ov_labels", drop=("video",), with_targets=False)
    assert not any(drop.has_video) and int((drop.input_ids == ids["video"]).sum()) == 0
    with pytest.raises(ValueError, match="generation needs a left-padded batch"):
        model.generate(model.processor.from_rows(rows, "ov_labels", padding_side="right", with_targets=False))


# ---------------------------------------------------------------- engines
def test_hf_engine_over_prompt_embeddings_equals_model_generate(model):
    mb = model.processor.from_rows(feature_batch(5), "ov_labels", with_targets=False)
    expected = model.generate(mb, max_new_tokens=10)
    engine = HFEngine(model.llm, model.tokenizer, GenerationConfig(batch_size=2))
    gens = engine.generate_embeds(model.prompt_embeddings(mb), max_new_tokens=10)
    assert [g.text for g in gens] == expected and any(expected)
    assert all(0 < g.num_tokens <= 10 for g in gens)
    # batching (left padding) does not change an answer
    single = engine.generate_embeds(model.prompt_embeddings(mb)[3:4], max_new_tokens=10)
    assert single[0].token_ids == gens[3].token_ids
    # the decoder-free embedder gives the same embeddings as the model
    embedder = model.prompt_embedder()
    for a, b in zip(embedder(mb), model.prompt_embeddings(mb), strict=True):
        assert torch.equal(a, b)


def test_embeddings_are_checked_before_any_engine_sees_them():
    ok = check_embeds([torch.zeros(1, 4, 8, dtype=torch.float32)], 8, torch.bfloat16)
    assert ok[0].shape == (4, 8) and ok[0].dtype == torch.bfloat16
    with pytest.raises(EngineError, match=r"prompt embeddings 1 have shape \[4, 6\].*\[L, 8\]"):
        check_embeds([torch.zeros(3, 8), torch.zeros(4, 6)], 8, torch.float32)
    with pytest.raises(EngineError, match="not finite"):
        check_embeds([torch.full((2, 8), float("nan"))], 8, torch.float32)
    with pytest.raises(EngineError, match="L >= 1"):
        check_embeds([torch.zeros(0, 8)], 8, torch.float32)


def test_hf_engine_ignores_penalties_in_the_model_generation_config(model):
    mb = model.processor.from_rows(feature_batch(2), "description", with_targets=False)
    embeds = model.prompt_embeddings(mb)
    engine = HFEngine(model.llm, model.tokenizer, GenerationConfig())
    plain = engine.generate_embeds(embeds, max_new_tokens=12)
    gc = model.llm.generation_config
    saved = (gc.repetition_penalty, gc.do_sample, gc.temperature)
    gc.repetition_penalty, gc.do_sample, gc.temperature = 5.0, True, 3.0  # what a hub model may ship
    try:
        assert [g.token_ids for g in engine.generate_embeds(embeds, max_new_tokens=12)] == \
            [g.token_ids for g in plain]
    finally:
        gc.repetition_penalty, gc.do_sample, gc.temperature = saved


# ---------------------------------------------------------------- labeller
@pytest.fixture(scope="module")
def labeller(model, tmp_path_factory):
    from ray_emer.infer.labeller import Labeller, LabellerConfig
    from ray_emer.model.checkpoint import save_checkpoint

    ckpt = tmp_path_factory.mktemp("ckpt") / "stage"
    save_checkpoint(model, str(ckpt))
    return Labeller(str(ckpt), LabellerConfig(description_tokens=12, label_tokens=8, batch_size=4))


def test_labeller_rows_in_equal_rows_out_with_reasons(labeller, model):
    batch = feature_batch(5, status=["ok", "error", "ok", "ok", "ok"])
    batch["video_feats"][3] = np.nan  # corrupt features: the engine check fails on this clip only
    rows = labeller.label_batch(batch)
    assert [r["clip_id"] for r in rows] == [f"c{i}" for i in range(5)]
    assert rows[1]["status"] == "error" and rows[1]["error"] == "truncated: half a file"
    assert rows[3]["status"] == "error" and rows[3]["error"].startswith("engine_failed: EngineError: ")
    assert "not finite" in rows[3]["error"]
    good = [rows[i] for i in (0, 2, 4)]
    assert all(r["status"] == "ok" and r["error"] == "" and r["engine"] == "hf" for r in good)
    assert all(r["model"].startswith("stage@") and len(r["model"]) == len("stage@") + 12 for r in rows)
    assert all(r["sentiment"] in ("positive", "negative", "neutral") and r["generated_tokens"] > 0 for r in good)
    # the labeller's answers are the model's own greedy answers for the same rows
    ok_rows = {k: v[[0, 2, 4]] for k, v in batch.items()}
    desc = model.generate(model.processor.from_rows(ok_rows, "description", with_targets=False), max_new_tokens=12)
    assert [r["description"] for r in good] == desc
    table = label_table(rows)
    assert table.schema.equals(LABEL_SCHEMA, check_metadata=False) and table.num_rows == 5


def test_labels_from_the_description_with_the_lexicon(model, tmp_path, reference_dir):
    from ray_emer.infer.labeller import Labeller, LabellerConfig
    from ray_emer.model.checkpoint import save_checkpoint

    save_checkpoint(model, str(tmp_path / "ck"))
    lab = Labeller(str(tmp_path / "ck"), LabellerConfig(labels_from="lexicon", description_tokens=6,
                                                        wheel_dir=str(reference_dir / "emotion_wheel_csv")))
    lab.embed = lambda mb: [torch.zeros(3, 64) for _ in range(len(mb))]
    lab.engine.generate_embeds = lambda embeds, n: [  # a fixed description per clip: what the extractor reads
        __import__("ray_emer.infer.engine", fromlist=["Generation"]).Generation(t, [1])
        for t in ("She smiles; she is happy and excited.", "He is not angry, just tired.")][: len(embeds)]
    rows = lab.label_batch(feature_batch(2))
    assert rows[0]["labels"] == ["happy", "excited"] and rows[0]["sentiment"] == "positive"
    assert "angry" not in rows[1]["labels"]
    with pytest.raises(ValueError, match="wheel_dir"):
        Labeller(str(tmp_path / "ck"), LabellerConfig(labels_from="lexicon"))


# ---------------------------------------------------------------- scores of a labelled set
def test_label_scores_match_the_benchmark_metrics_on_published_ovmerd(reference_dir):
    """Label rows built from the published OV-MERD example predictions score as `evaluate unibench --kind ov`
    and `evaluate emer --wheel-dir` score the same files."""
    import pandas as pd
    import pyarrow as pa

    from ray_emer.eval.labelled import gold_from_features, score_labels
    from ray_emer.eval.metrics import emer_wheel_metrics
    from ray_emer.eval.unibench import score_files
    from ray_emer.eval.wheel import EmotionWheels
    from ray_emer.labels import parse_labels

    d = reference_dir / "ovmerd"
    gt_path, pred_path = d / "ovmerd332_gt_openset_labels_mer2024_check.csv", \
        d / "ovmerd332_example_predicted_openset_mer2024.csv"
    wheels = EmotionWheels.load(reference_dir / "emotion_wheel")
    gt, pred = pd.read_csv(gt_path), pd.read_csv(pred_path)
    features = pa.table({"clip_id": gt["name"], "labels": [parse_labels(x) for x in gt["openset"]],
                         "description": [""] * len(gt)})
    labels = pd.DataFrame({"clip_id": pred["name"], "status": "ok", "labels": [parse_labels(x) for x in pred["openset"]],
                           "sentiment": "neutral", "description": ""})
    scores = score_labels(labels, gold_from_features(features), wheels)
    ov = score_files("ov", str(pred_path), str(gt_path), wheels)
    assert scores["ov"]["score"] == pytest.approx(ov["score"], abs=1e-12) and 0.3 < ov["score"] < 0.9
    assert scores["ov"]["precision"] == pytest.approx(ov["precision"], abs=1e-12)
    gold_sets = {n: parse_labels(v) for n, v in zip(gt["name"], gt["openset"], strict=True)}
    pred_sets = {n: parse_labels(v) for n, v in zip(pred["name"], pred["openset"], strict=True)}
    assert scores["emer"] == pytest.approx(emer_wheel_metrics(gold_sets, pred_sets, wheels))
    assert scores["n_gold_labels"] == len(gt) and scores["emer_grouping"] == "wheel"
    # an error row counts as an empty prediction: scores can only fall
    worse = labels.copy()
    worse.loc[worse.index[:50], "status"] = "error"
    lower = score_labels(worse, gold_from_features(features), wheels)
    assert lower["ov"]["score"] < scores["ov"]["score"] and lower["n_error"] == 50


def test_label_scores_without_a_wheel_use_exact_labels():
    import pandas as pd
    import pyarrow as pa

    from ray_emer.eval.labelled import gold_from_features, score_labels

    features = pa.table({"clip_id": ["a", "b", "c", "d"], "labels": [["happy", "joyful"], ["sad"], ["angry"], None],
                         "description": ["d1", "d2", "d3", ""], "emotion": ["happy", "sad", "angry", None]})
    labels = pd.DataFrame({"clip_id": ["a", "b", "c", "d"], "status": ["ok", "ok", "error", "ok"],
                           "labels": [["joyful", "happy"], ["angry", "sad"], [], ["calm"]],
                           "sentiment": ["positive", "negative", "", "neutral"],
                           "description": ["d1", "Therefore, sad.", "", "y"]})
    s = score_labels(labels, gold_from_features(features))
    assert s["n_gold"] == 3 and s["n_gold_labels"] == 3 and s["n_error"] == 1  # d carries no gold
    assert s["accuracy"] == pytest.approx(1 / 3) and s["hit_rate"] == pytest.approx(2 / 3)
    assert s["emer"]["accuracy_s"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert s["emer"]["recall_s"] == pytest.approx((1 + 1 + 0) / 3)
    assert s["per_emotion"]["sad"] == {"n": 1, "correct": 0, "accuracy": 0.0}
    assert s["text"]["n"] == 3
    # consistency: b's description states sad, one of its labels; a and d state nothing (c is an error row)
    assert s["consistency"] == pytest.approx(1 / 3) and s["consistency_rows"]["n"] == 3
    assert s["consistency_rows"]["grouping"] == "exact"
