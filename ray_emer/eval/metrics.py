"""MER-UniBench and EMER scores over plain Python mappings (name -> labels/values).

Owns the arithmetic only: hit rate (basic emotions), weighted F1 + accuracy on
non-zero valence (sentiment), EW-based precision/recall/F (fine-grained OV), and the
EMER set metrics with synonym groups. File formats and the CLI live elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

from ray_emer.eval.wheel import NUM_WHEELS, EmotionWheels


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def hit_rate(gold: Mapping[str, str], pred: Mapping[str, Sequence[str]], wheels: EmotionWheels,
             level: int = 1) -> dict:
    """Basic-emotion sets: per wheel, the share of samples whose gold class is among the
    predicted classes (samples whose gold label maps to nothing are skipped), then the
    mean over the 5 wheels."""
    per_wheel, scored = [], set()
    for w in range(NUM_WHEELS):
        hits = []
        for name, label in gold.items():
            cls = wheels.map_label(label, w, level)
            if cls is None:
                continue
            scored.add(name)
            hits.append(cls in wheels.map_labels(pred.get(name, []), w, level))
        per_wheel.append(_mean(hits))
    return {"score": _mean(per_wheel), "per_wheel": per_wheel, "n_scored": len(scored),
            "n_skipped": len(gold) - len(scored)}


def sentiment_scores(valence: Mapping[str, float], sentiment: Mapping[str, str]) -> dict:
    """Sentiment sets: samples with non-zero valence; y_true = valence > 0,
    y_pred = (prediction == 'positive'); weighted F1 is the score, accuracy beside it."""
    names = [n for n, v in valence.items() if v != 0]
    y_true = [valence[n] > 0 for n in names]
    y_pred = [str(sentiment.get(n, "")).strip().lower() == "positive" for n in names]
    if not names:
        return {"score": 0.0, "accuracy": 0.0, "n_scored": 0, "n_skipped": len(valence)}
    return {"score": float(f1_score(y_true, y_pred, average="weighted")),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "n_scored": len(names), "n_skipped": len(valence) - len(names)}


def ov_fscore(gold: Mapping[str, Sequence[str]], pred: Mapping[str, Sequence[str]], wheels: EmotionWheels,
              level: int = 1) -> dict:
    """Fine-grained OV sets: per wheel, EW-map G and P; per sample precision |G&P|/|P| and
    recall |G&P|/|G| (skip empty G; empty P gives 0 and 0); corpus means P, R;
    F = 2PR/(P+R); F, P and R averaged over the 5 wheels."""
    fs, ps, rs, scored = [], [], [], set()
    for w in range(NUM_WHEELS):
        prec, rec = [], []
        for name, labels in gold.items():
            g = wheels.map_labels(labels, w, level)
            if not g:
                continue
            scored.add(name)
            p = wheels.map_labels(pred.get(name, []), w, level)
            prec.append(len(g & p) / len(p) if p else 0.0)
            rec.append(len(g & p) / len(g))
        p_w, r_w = _mean(prec), _mean(rec)
        ps.append(p_w)
        rs.append(r_w)
        fs.append(2 * p_w * r_w / (p_w + r_w) if p_w + r_w else 0.0)
    return {"score": _mean(fs), "precision": _mean(ps), "recall": _mean(rs), "per_wheel": fs,
            "n_scored": len(scored), "n_skipped": len(gold) - len(scored)}


def _grouper(clusters: Sequence[Sequence[str]]):
    def group(label: str) -> str:
        for cluster in clusters:
            if label in cluster:  # group words are matched exactly as written
                return str(cluster[0]).lower()
        return label

    return group


def emer_set_metrics(gold: Mapping[str, Sequence[str]], pred: Mapping[str, Sequence[str]],
                     groups: Mapping[str, Sequence[Sequence[str]]]) -> dict:
    """EMER paper: per sample, replace each (lower-cased) label by the first member of
    its synonym cluster; Accuracy_s = mean |G&P|/|P| (0 if P empty), Recall_s = mean
    |G&P|/|G|; avg is their mean. Samples with no gold label are skipped."""
    accs, recs = [], []
    for name, labels in gold.items():
        group = _grouper(groups.get(name, []))
        g = {group(str(x).lower()) for x in labels}
        p = {group(str(x).lower()) for x in pred.get(name, [])}
        if not g:
            continue
        accs.append(len(g & p) / len(p) if p else 0.0)
        recs.append(len(g & p) / len(g))
    acc, rec = _mean(accs), _mean(recs)
    return {"accuracy_s": acc, "recall_s": rec, "avg": (acc + rec) / 2, "n_scored": len(accs),
            "n_skipped": len(gold) - len(accs)}


def emer_wheel_metrics(gold: Mapping[str, Sequence[str]], pred: Mapping[str, Sequence[str]],
                       wheels: EmotionWheels, level: int = 1) -> dict:
    """EMER set metrics with the emotion wheel as the grouping (no LLM): per wheel,
    labels become EW classes; Accuracy_s/Recall_s averaged over the 5 wheels."""
    out = ov_fscore(gold, pred, wheels, level)
    acc, rec = out["precision"], out["recall"]
    return {"accuracy_s": acc, "recall_s": rec, "avg": (acc + rec) / 2, "n_scored": out["n_scored"],
            "n_skipped": out["n_skipped"]}
