"""Scores of a labelled set against the gold its input carries (the synthetic archive, OV-MERD layouts).

- ``accuracy``: the first predicted label is one of the gold labels (what the training
  validation and the learning benchmark report); ``hit_rate``: the gold emotion (the
  ``emotion`` column, else the first gold label) is among the predicted labels
- ``sentiment_accuracy``: predicted sentiment == the sentiment of the gold labels
- ``emer``: EMER set metrics (``accuracy_s``, ``recall_s``, ``avg``), grouped by the
  emotion wheel when its tables are given, else by exact (lower-cased) label
- ``ov``: EW F_s with precision and recall (needs the wheel tables)
- ``text``: BLEU-1..4, METEOR, ROUGE-L, CIDEr of the descriptions against the gold ones
- ``consistency``: the share of ok rows whose labels agree with the emotions their own description
  states (``eval.consistency``; no gold needed), grouped by the emotion wheel when its tables are given,
  else by the word; ``consistency_rows``: rows scored, grouping and a few disagreeing rows

Error rows and clips without a label row count as wrong (empty predictions).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa

from ray_emer import storage
from ray_emer.eval.consistency import consistency
from ray_emer.eval.extract import lexicon_sentiment
from ray_emer.eval.metrics import emer_set_metrics, emer_wheel_metrics, hit_rate, ov_fscore
from ray_emer.eval.report import write_report
from ray_emer.eval.text_overlap import text_overlap
from ray_emer.eval.wheel import EmotionWheels


def _labels(value) -> list[str]:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    return [str(x).strip().lower() for x in list(value) if str(x).strip()]


def gold_from_features(table: pa.Table) -> dict[str, dict]:
    """clip_id -> ``{"labels", "description", "emotion"}`` for the rows that carry gold labels or a description."""
    cols = set(table.column_names)
    gold = {}
    for row in table.to_pylist():
        labels = _labels(row.get("labels")) if "labels" in cols else []
        desc = row.get("description") or ""
        if labels or desc:
            emotion = (row.get("emotion") or "").strip().lower() if "emotion" in cols else ""
            gold[row["clip_id"]] = {"labels": labels, "description": desc,
                                    "emotion": emotion or (labels[0] if labels else "")}
    return gold


def score_labels(labels: pd.DataFrame, gold: dict[str, dict], wheels: EmotionWheels | None = None) -> dict:
    """Label rows (``clip_id``, ``status``, ``labels``, ``sentiment``, ``description``) vs the gold."""
    ok = labels[labels["status"] == "ok"]
    pred = {c: _labels(ls) for c, ls in zip(ok["clip_id"], ok["labels"], strict=True)}
    sent = dict(zip(ok["clip_id"], ok["sentiment"], strict=True))
    desc = dict(zip(ok["clip_id"], ok["description"], strict=True))
    with_labels = {c: g for c, g in gold.items() if g["labels"]}
    out: dict = {"n_gold": len(gold), "n_gold_labels": len(with_labels),
                 "n_error": int(sum(c in gold for c in labels.loc[labels["status"] != "ok", "clip_id"]))}
    if with_labels:
        top1 = [bool(pred.get(c)) and pred[c][0] in set(g["labels"]) for c, g in with_labels.items()]
        hits = [g["emotion"] in set(pred.get(c, [])) for c, g in with_labels.items()]
        sents = [sent.get(c) == lexicon_sentiment(g["labels"]) for c, g in with_labels.items()]
        out.update(accuracy=float(np.mean(top1)), hit_rate=float(np.mean(hits)),
                   sentiment_accuracy=float(np.mean(sents)), score=float(np.mean(top1)))
        gold_sets = {c: g["labels"] for c, g in with_labels.items()}
        preds = {c: pred.get(c, []) for c in with_labels}
        if wheels is not None:
            out["emer"] = emer_wheel_metrics(gold_sets, preds, wheels)
            ov = ov_fscore(gold_sets, preds, wheels)
            out["ov"] = {k: ov[k] for k in ("score", "precision", "recall", "n_scored")}
            out["wheel_hit_rate"] = hit_rate({c: g["emotion"] for c, g in with_labels.items()}, preds, wheels)["score"]
        else:
            out["emer"] = emer_set_metrics(gold_sets, preds, {})
        out["emer_grouping"] = "wheel" if wheels is not None else "exact"
        out["per_emotion"] = _per_emotion(with_labels, pred)
    agree = consistency(ok[["clip_id", "labels", "description"]].to_dict("records"), wheels)
    out["consistency"] = agree.pop("consistency")
    out["consistency_rows"] = agree
    with_desc = {c: g["description"] for c, g in gold.items() if g["description"]}
    if with_desc:
        out["text"] = text_overlap(with_desc, {c: desc.get(c, "") or "" for c in with_desc})
    return out


def _per_emotion(gold: dict[str, dict], pred: dict[str, list[str]]) -> dict[str, dict]:
    """Per gold emotion: clips and top-1 accuracy (a confusion summary)."""
    table: dict[str, dict] = {}
    for c, g in gold.items():
        row = table.setdefault(g["emotion"], {"n": 0, "correct": 0})
        row["n"] += 1
        row["correct"] += int(bool(pred.get(c)) and pred[c][0] in set(g["labels"]))
    return {e: {**r, "accuracy": r["correct"] / r["n"]} for e, r in sorted(table.items())}


def write_label_report(scores: dict, out_dir: str) -> dict[str, str]:
    """``report.json``/``.md``/``.png`` under ``out_dir`` (local or ``s3://``); returns local or remote paths."""
    flat = {"title": "Labelled set vs gold", **{k: v for k, v in scores.items() if not isinstance(v, dict)}}
    for section in ("emer", "ov", "text"):
        for k, v in (scores.get(section) or {}).items():
            if isinstance(v, (int, float)):
                flat[f"{section}_{k}"] = v
    paths = write_report(flat, out_dir)
    storage.write_text(storage.join(out_dir, "scores.json"), json.dumps(scores, indent=2, default=str))
    return paths
