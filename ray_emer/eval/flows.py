"""Evaluation flows behind ``ray-emer evaluate ...``: each takes plain arguments (URIs, names, options),
reads its inputs through ``storage`` (local paths or ``s3://``), and returns one JSON-able result.

The CLI maps its flags onto these functions one to one; notebooks and jobs call them directly.
"""

from __future__ import annotations

import io
import json
import os

from ray_emer import storage
from ray_emer.eval.metrics import emer_set_metrics, emer_wheel_metrics
from ray_emer.eval.report import write_report
from ray_emer.eval.text_overlap import text_overlap
from ray_emer.eval.unibench import (
    DATASET_KIND,
    EvalInputError,
    convert_labels,
    convert_outputs,
    read_csv,
    read_json,
    read_predictions,
    score_checkpoints,
    score_files,
)
from ray_emer.eval.wheel import EmotionWheels
from ray_emer.labels import parse_labels
from ray_emer.tracking import make_tracker


def load_wheels(wheel_dir: str | None, format_file: str | None = None):
    """The emotion wheels of a published wheel folder (None without one)."""
    return EmotionWheels.load(wheel_dir, format_file) if wheel_dir else None


def emit(result: dict, output: str | None) -> dict:
    """Also write ``result`` as JSON to ``output`` (any URI) when given."""
    if output:
        storage.write_text(output, json.dumps(result, default=str) + "\n")
    return result


def report(result: dict, report_dir: str | None, mlflow_uri: str | None, experiment: str, params: dict) -> None:
    """report.json/.md/.png into ``report_dir`` (default ./report) and into an MLflow run on ``mlflow_uri``
    (default ``$MLFLOW_TRACKING_URI`` when set); nothing when neither a folder nor a URI is asked for."""
    if not (report_dir or mlflow_uri):
        return
    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
    tracker = make_tracker(uri, experiment) if uri else None
    try:
        if tracker is not None:
            tracker.log_params(params)
        write_report(result, report_dir or "report", tracker=tracker)
    finally:
        if tracker is not None:
            tracker.close()


def unibench(kind: str, predictions: str, labels: str, wheel_dir: str | None = None, format_file: str | None = None,
             level: int = 1, parsing: str = "published", output: str | None = None, report_dir: str | None = None,
             mlflow_uri: str | None = None) -> dict:
    """One MER-UniBench dataset: hit rate (basic) | weighted F1 (sentiment) | EW F_s (ov)."""
    result = score_files(kind, predictions, labels, load_wheels(wheel_dir, format_file), level, parsing=parsing)
    emit(result, output)
    report(result, report_dir, mlflow_uri, "ray_emer-eval",
           {"kind": kind, "predictions": predictions, "labels": labels, "wheel_dir": wheel_dir, "parsing": parsing})
    return result


def emer(predictions: str, labels: str, groups: str | None = None, wheel_dir: str | None = None,
         format_file: str | None = None, level: int = 1, parsing: str | None = None,
         output: str | None = None) -> dict:
    """EMER set metrics (accuracy_s, recall_s, avg) with cached synonym groups or the emotion wheels."""
    if bool(groups) == bool(wheel_dir):
        raise EvalInputError("give exactly one of --groups or --wheel-dir")
    rule = parsing or ("published" if groups else "proper")
    table = read_csv(labels, ("name", "openset"))
    gold = {n: parse_labels(v, rule) for n, v in zip(table["name"], table["openset"])}
    pred, _ = read_predictions(predictions, "ov", set(gold), parsing=rule)
    if groups:
        result = emer_set_metrics(gold, pred, read_json(groups))
    else:
        result = emer_wheel_metrics(gold, pred, load_wheels(wheel_dir, format_file))
    return emit(result | {"parsing": rule}, output)


def convert(dataset: str, out_dir: str, labels: str | None = None, outputs: str | None = None) -> dict:
    """Published MER-UniBench files -> the ``L.csv`` / ``P.csv`` contract (one P.csv per checkpoint)."""
    written = []

    def write(frame, name: str) -> None:
        uri = storage.join(out_dir, name)
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        storage.write_text(uri, buf.getvalue())
        written.append(uri)

    if labels:
        write(convert_labels(labels, dataset), f"labels_{dataset}.csv")
    if outputs:
        for ckpt, frame in convert_outputs(outputs).items():
            write(frame, f"predictions_{dataset}_{ckpt}.csv")
    if not written:
        raise EvalInputError("give --labels and/or --outputs")
    return {"written": written}


def checkpoints(dataset: str, outputs: str, labels: str, wheel_dir: str | None = None,
                format_file: str | None = None, level: int = 1, seed: int = 0, parsing: str = "published",
                output: str | None = None, report_dir: str | None = None, mlflow_uri: str | None = None) -> dict:
    """Score every checkpoint of a published outputs file: the paper's best-on-test pick and an honest one."""
    if dataset not in DATASET_KIND:
        raise EvalInputError(f"unknown dataset {dataset!r}; one of {sorted(DATASET_KIND)}")
    kind = DATASET_KIND[dataset]
    table = convert_labels(labels, dataset)
    col = table.columns[1]
    gold = dict(zip(table["name"], table[col].astype(float) if kind == "sentiment" else table[col]))
    result = score_checkpoints(kind, gold, convert_outputs(outputs), load_wheels(wheel_dir, format_file), level,
                               seed, parsing=parsing)
    result["title"] = f"MER-UniBench {dataset}: checkpoint selection"
    report(result, report_dir, mlflow_uri, "ray_emer-eval",
           {"dataset": dataset, "outputs": outputs, "wheel_dir": wheel_dir, "seed": seed, "parsing": parsing})
    for row in result["checkpoints"]:
        row.pop("detail")
    return emit(result, output)


def text(predictions: str, labels: str, column: str = "description", output: str | None = None) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr between predicted and gold descriptions."""
    gold = read_csv(labels, ("name", column))
    pred = read_csv(predictions, ("name", column))
    unknown = sorted(set(pred["name"]) - set(gold["name"]))
    if unknown:
        raise EvalInputError(f"{predictions}: names not in the labels, e.g. {unknown[:3]}")
    return emit(text_overlap(dict(zip(gold["name"], gold[column])), dict(zip(pred["name"], pred[column]))), output)
