"""Evaluation reports: a JSON result, a Markdown table and a PNG chart (per-checkpoint
or per-dataset bars, per-wheel breakdown), optionally logged to a tracker."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ray_emer import storage  # noqa: E402
from ray_emer.tracking import NullTracker, Tracker  # noqa: E402


def markdown(result: dict) -> str:
    lines = [f"# {result.get('title', 'Evaluation')}", ""]
    if "checkpoints" in result:
        lines += ["| checkpoint | score | selection half | report half |", "|---|---|---|---|"]
        for r in result["checkpoints"]:
            lines.append(f"| {r['checkpoint']} | {100 * r['score']:.2f} | {100 * r['selection_score']:.2f} | "
                         f"{100 * r['report_score']:.2f} |")
        b, h = result["best_on_test"], result["honest"]
        lines += ["", f"- best on test (published way): checkpoint {b['checkpoint']}, {100 * b['score']:.2f}",
                  f"- honest (chosen on a held-out half, scored on the other): checkpoint {h['checkpoint']}, "
                  f"{100 * h['score']:.2f} (best on that half: {100 * h['best_on_test_same_half']:.2f})"]
    else:
        keys = [k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {result[k]:.4f} |" for k in keys]
    if "per_wheel" in result:
        lines += ["", "| wheel | " + " | ".join(str(i + 1) for i in range(len(result["per_wheel"]))) + " |",
                  "|---|" + "---|" * len(result["per_wheel"]),
                  "| score | " + " | ".join(f"{100 * v:.2f}" for v in result["per_wheel"]) + " |"]
    return "\n".join(lines) + "\n"


def chart(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    if "checkpoints" in result:
        rows = result["checkpoints"]
        axes[0].bar([str(r["checkpoint"]) for r in rows], [100 * r["score"] for r in rows], color="#4c72b0")
        axes[0].set_title("score per checkpoint")
        wheels = max(rows, key=lambda r: r["score"])["detail"].get("per_wheel", [])
    else:
        axes[0].bar(["score"], [100 * result.get("score", 0.0)], color="#4c72b0")
        axes[0].set_title("score")
        wheels = result.get("per_wheel", [])
    axes[0].set_ylabel("%")
    if wheels:
        axes[1].bar([f"W{i + 1}" for i in range(len(wheels))], [100 * v for v in wheels], color="#55a868")
        axes[1].set_title("per wheel (best checkpoint)" if "checkpoints" in result else "per wheel")
    else:
        axes[1].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(result: dict, out_dir: str | Path, stem: str = "report", tracker: Tracker | None = None) -> dict:
    """Write ``stem.json``, ``stem.md`` and ``stem.png`` under ``out_dir`` (a folder or an ``s3://`` prefix); log
    them; returns their paths or URIs."""
    if storage.is_remote(str(out_dir)):  # drawn in a temp folder (logged from there), then uploaded
        with tempfile.TemporaryDirectory(prefix="ray_emer-report-") as tmp:
            local = write_report(result, tmp, stem, tracker)
            remote = {k: storage.join(str(out_dir), os.path.basename(v)) for k, v in local.items()}
            for k, uri in remote.items():
                with open(local[k], "rb") as fh:
                    storage.write_bytes(uri, fh.read())
            return remote
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(result, indent=2, default=str))
    paths["markdown"].write_text(markdown(result))
    chart(result, paths["png"])
    tracker = tracker or NullTracker()
    tracker.log_metrics({k: v for k, v in result.items() if k in ("score", "precision", "recall", "accuracy",
                                                                   "accuracy_s", "recall_s", "avg")})
    if "best_on_test" in result:
        tracker.log_metrics({"best_on_test": result["best_on_test"]["score"], "honest": result["honest"]["score"]})
    for p in paths.values():
        tracker.log_artifact(str(p))
    return {k: str(v) for k, v in paths.items()}
