"""MER-UniBench files: the CLI's CSV contract, converters from the published layouts,
and checkpoint selection (best on test, as published, and an honest held-out choice).

Contract: predictions ``P.csv`` = ``name, openset[, sentiment]``; labels ``L.csv`` =
``name`` + ``emotion`` (basic) | ``valence`` (sentiment) | ``openset`` (ov). Every input is a URI
(local path or ``s3://``) read through :mod:`ray_emer.storage`; label lists are parsed by a named
rule of :mod:`ray_emer.labels` (``published`` by default, for parity with the published scores).
"""

from __future__ import annotations

import io
import json
import os
import random

import pandas as pd

from ray_emer import storage
from ray_emer.eval.metrics import hit_rate, ov_fscore, sentiment_scores
from ray_emer.eval.wheel import EmotionWheels
from ray_emer.errors import RayEmerError
from ray_emer.labels import PARSING_RULES, parse_labels

KINDS = ("basic", "sentiment", "ov")
LABEL_COLUMN = {"basic": "emotion", "sentiment": "valence", "ov": "openset"}
# published index orders of the index-coded corpora
EMO_ORDERS = {
    "meld": ["anger", "joy", "sadness", "neutral", "disgust", "fear", "surprise"],
    "iemocap": ["happy", "sad", "neutral", "anger"],
}
DATASET_KIND = {"mer2023": "basic", "mer2024": "basic", "meld": "basic", "iemocap": "basic",
                "cmumosi": "sentiment", "cmumosei": "sentiment", "sims": "sentiment", "simsv2": "sentiment",
                "ovmerd": "ov"}
TABLE_COLUMNS = ["mer2023", "mer2024", "meld", "iemocap", "cmumosi", "cmumosei", "sims", "simsv2", "ovmerd"]


class EvalInputError(RayEmerError, ValueError):
    """An evaluation input file is missing, empty or malformed."""


def read_input(uri: str | os.PathLike) -> bytes:
    """The bytes of an input file (any URI); a missing or unreadable file is an :class:`EvalInputError`."""
    try:
        return storage.read_bytes(str(uri))
    except storage.StorageError as exc:
        raise EvalInputError(f"{uri}: file not found") from exc
    except OSError as exc:
        raise EvalInputError(f"{uri}: cannot be read ({exc})") from exc


def read_json(uri: str | os.PathLike):
    """A JSON input (e.g. the ``--groups`` synonym groups of ``evaluate emer``)."""
    try:
        return json.loads(read_input(uri))
    except ValueError as exc:
        raise EvalInputError(f"{uri}: not valid JSON ({exc})") from exc


def read_csv(uri: str | os.PathLike, required: tuple[str, ...], unique_names: bool = True) -> pd.DataFrame:
    """A CSV of strings with the ``required`` columns; ``unique_names=False`` allows a name
    per checkpoint (the published outputs files)."""
    data = read_input(uri)
    if not data.strip():
        raise EvalInputError(f"{uri}: empty file")
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"{uri}: not a readable CSV ({exc})") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise EvalInputError(f"{uri}: missing column(s) {missing}; have {list(df.columns)}")
    if df.empty:
        raise EvalInputError(f"{uri}: no rows")
    if unique_names and df["name"].duplicated().any():
        raise EvalInputError(f"{uri}: name {df.loc[df['name'].duplicated(), 'name'].iloc[0]!r} appears twice")
    return df


def _rule(parsing: str) -> str:
    if parsing not in PARSING_RULES:
        raise EvalInputError(f"--parsing must be one of {PARSING_RULES}, not {parsing!r}")
    return parsing


def read_labels(path: str | os.PathLike, kind: str, parsing: str = "published") -> dict:
    col = LABEL_COLUMN[kind]
    df = read_csv(path, ("name", col))
    if kind == "basic":
        return dict(zip(df["name"], df[col]))
    if kind == "ov":
        return {n: parse_labels(v, _rule(parsing)) for n, v in zip(df["name"], df[col])}
    try:
        return {n: float(v) for n, v in zip(df["name"], df[col])}
    except ValueError as exc:
        raise EvalInputError(f"{path}: column valence must be numeric ({exc})") from exc


def read_predictions(path: str | os.PathLike, kind: str, known: set[str],
                     parsing: str = "published") -> tuple[dict, dict]:
    """-> (name -> labels parsed by rule ``parsing``, name -> sentiment). Names absent from the labels are an error."""
    rule = _rule(parsing)
    required = ("name", "openset", "sentiment") if kind == "sentiment" else ("name", "openset")
    df = read_csv(path, required)
    unknown = sorted(set(df["name"]) - known)
    if unknown:
        raise EvalInputError(f"{path}: {len(unknown)} name(s) not in the labels, e.g. {unknown[:3]}")
    labels = {n: parse_labels(v, rule) for n, v in zip(df["name"], df["openset"])}
    sentiment = dict(zip(df["name"], df["sentiment"])) if "sentiment" in df.columns else {}
    return labels, sentiment


def score_files(kind: str, predictions: str, labels: str, wheels: EmotionWheels | None, level: int = 1,
                parsing: str = "published") -> dict:
    """Score ``P.csv`` against ``L.csv`` (any URIs), label lists parsed by rule ``parsing``."""
    if kind not in KINDS:
        raise EvalInputError(f"--kind must be one of {KINDS}")
    gold = read_labels(labels, kind, _rule(parsing))
    pred, sentiment = read_predictions(predictions, kind, set(gold), parsing)
    return score(kind, gold, pred, sentiment, wheels, level) | {"n_missing_predictions": len(set(gold) - set(pred)),
                                                                "parsing": parsing}


def score(kind: str, gold: dict, pred: dict, sentiment: dict, wheels: EmotionWheels | None, level: int = 1) -> dict:
    if kind == "sentiment":
        return sentiment_scores(gold, sentiment)
    if wheels is None:
        raise EvalInputError(f"--kind {kind} needs --wheel-dir")
    return hit_rate(gold, pred, wheels, level) if kind == "basic" else ov_fscore(gold, pred, wheels, level)


# ---------------------------------------------------------------- published layouts
def test_rows(df: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Test rows of a published ``merbench_*_label*.csv`` (columns split,name,emo,val)."""
    if dataset == "mer2023":
        return df[df["split"] == "test1_corpus"]
    if dataset == "iemocap":
        return df[(df["split"] == "whole_corpus") & (df["name"].str[4] == "5")]
    return df[df["split"] == "test_corpus"]


def convert_labels(path: str | os.PathLike, dataset: str) -> pd.DataFrame:
    """Published label file -> the ``L.csv`` contract for ``dataset``'s kind."""
    df = read_csv(path, ("split", "name", "emo", "val"))
    rows = test_rows(df, dataset)
    kind = DATASET_KIND.get(dataset)
    if kind is None:
        raise EvalInputError(f"unknown dataset {dataset!r}; known: {sorted(DATASET_KIND)}")
    if kind == "sentiment":
        return pd.DataFrame({"name": rows["name"], "valence": rows["val"].astype(float)})
    emo = rows["emo"]
    if dataset in EMO_ORDERS:
        order = EMO_ORDERS[dataset]
        emo = emo.map(lambda v: order[int(float(v))])
    return pd.DataFrame({"name": rows["name"], "emotion": emo})


def convert_outputs(path: str | os.PathLike) -> dict[str, pd.DataFrame]:
    """Published AffectGPT outputs (dataset,epoch,name,model_output,extracted_openset,
    openset_to_sentiment) -> one ``P.csv`` frame per checkpoint (epoch)."""
    df = read_csv(path, ("epoch", "name", "extracted_openset"), unique_names=False)
    out = {}
    for epoch, g in df.groupby("epoch", sort=False):
        frame = pd.DataFrame({"name": g["name"], "openset": g["extracted_openset"]})
        if "openset_to_sentiment" in g.columns:
            frame["sentiment"] = g["openset_to_sentiment"]
        out[str(epoch)] = frame
    return out


# ---------------------------------------------------------------- checkpoint selection
def split_names(names, fraction: float = 0.5, seed: int = 0) -> tuple[set[str], set[str]]:
    """Disjoint (selection, report) halves of the sample names, deterministic for a seed."""
    ordered = sorted(names)
    random.Random(seed).shuffle(ordered)
    k = int(round(len(ordered) * fraction))
    return set(ordered[:k]), set(ordered[k:])


def score_checkpoints(kind: str, gold: dict, per_ckpt: dict[str, pd.DataFrame], wheels: EmotionWheels | None,
                      level: int = 1, seed: int = 0, parsing: str = "published") -> dict:
    """Score every checkpoint and pick one both ways.

    - ``best_on_test`` (the paper's way): the checkpoint with the highest full-test score.
    - ``honest``: choose on a seeded half of the test names (``selection``), report the
      chosen checkpoint's score on the other half (``report``), which played no part
      in the choice. With real validation predictions, pass them as the selection set.
    """
    rule = _rule(parsing)
    select, report = split_names(gold, 0.5, seed)
    rows = []
    for ckpt, frame in per_ckpt.items():
        pred = {n: parse_labels(v, rule) for n, v in zip(frame["name"], frame["openset"])}
        senti = dict(zip(frame["name"], frame["sentiment"])) if "sentiment" in frame else {}
        full = score(kind, gold, pred, senti, wheels, level)
        sel = score(kind, {n: gold[n] for n in select}, pred, senti, wheels, level)
        rep = score(kind, {n: gold[n] for n in report}, pred, senti, wheels, level)
        rows.append({"checkpoint": ckpt, "score": full["score"], "selection_score": sel["score"],
                     "report_score": rep["score"], "detail": full})
    best = max(rows, key=lambda r: r["score"])
    chosen = max(rows, key=lambda r: r["selection_score"])
    return {
        "kind": kind,
        "parsing": rule,
        "checkpoints": rows,
        "best_on_test": {"checkpoint": best["checkpoint"], "score": best["score"]},
        "honest": {"checkpoint": chosen["checkpoint"], "score": chosen["report_score"],
                   "best_on_test_same_half": max(r["report_score"] for r in rows),
                   "n_selection": len(select), "n_report": len(report), "seed": seed},
    }


def unibench_table(scores: dict[str, float]) -> dict:
    """The 9-column MER-UniBench row (percent) and its mean over the datasets present."""
    row = {c: round(100 * scores[c], 2) for c in TABLE_COLUMNS if c in scores}
    row["mean"] = round(sum(row.values()) / len(row), 2) if row else 0.0
    return row
