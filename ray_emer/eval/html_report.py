"""The quickstart's report page: one HTML file plus its PNGs, readable without a server.

Scores of the held-out set, the loss curves of the training stages, a per-emotion
confusion matrix (gold emotion vs the emotion of the first predicted label), and a
gallery of held-out clips: a strip of frames, the subtitle, the generated description
and labels beside the gold ones.
"""

from __future__ import annotations

import html
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def loss_curves(stages: dict[str, list[float]], path: str, rewards: dict[str, list[float]] | None = None) -> str:
    """The stages' loss curves in one panel (steps in stage order); ``rewards`` (a GRPO stage's mean reward per
    step) in a second panel beside it."""
    fig, axes = plt.subplots(1, 2 if rewards else 1, figsize=(12 if rewards else 7, 3.5), squeeze=False)
    ax = axes[0][0]
    offset = 0
    for name, losses in stages.items():
        ax.plot(range(offset + 1, offset + len(losses) + 1), losses, label=name)
        offset += len(losses)
    ax.set_xlabel("optimizer step (stages in order)")
    ax.set_ylabel("training loss")
    ax.legend()
    for name, values in (rewards or {}).items():
        axes[0][1].plot(range(1, len(values) + 1), values, label=name, color="tab:green")
        axes[0][1].set_xlabel("optimizer step")
        axes[0][1].set_ylabel("mean reward")
        axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion(gold: list[str], pred: list[str], classes: list[str], path: str) -> list[list[int]]:
    """Counts ``[gold][pred]`` over ``classes`` (+ "other" for predictions outside them); writes a PNG."""
    cols = classes + ["other"]
    m = np.zeros((len(classes), len(cols)), int)
    for g, p in zip(gold, pred, strict=True):
        if g in classes:
            m[classes.index(g), cols.index(p if p in classes else "other")] += 1
    fig, ax = plt.subplots(figsize=(6.5, 5))
    ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted (first label)")
    ax.set_ylabel("gold emotion")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return m.tolist()


def frame_strip(frames: np.ndarray, path: str) -> str:
    """``[T, S, S, 3]`` uint8 -> one JPEG strip."""
    import cv2

    cv2.imwrite(path, cv2.cvtColor(np.concatenate(list(frames), axis=1), cv2.COLOR_RGB2BGR))
    return path


def _esc(x) -> str:
    return html.escape(str(x))


def _score_rows(scores: dict) -> str:
    rows = []
    for key in ("accuracy", "hit_rate", "sentiment_accuracy", "consistency"):
        if isinstance(scores.get(key), float):
            rows.append((key, scores[key]))
    for section in ("emer", "ov", "text"):
        for k, v in (scores.get(section) or {}).items():
            if isinstance(v, float):
                rows.append((f"{section}.{k}", v))
    return "".join(f"<tr><td>{_esc(k)}</td><td>{v:.4f}</td></tr>" for k, v in rows)


def write_page(out_dir: str, title: str, scores: dict, stage_losses: dict[str, list[float]],
               gold_emotions: list[str], pred_emotions: list[str], classes: list[str], gallery: list[dict],
               summary_lines: list[str], rewards: dict[str, list[float]] | None = None) -> str:
    """``gallery`` items: ``clip_id, frames ([T,S,S,3]), subtitle, description, labels, sentiment,
    gold_description, gold_labels``. Returns the path of ``index.html``."""
    os.makedirs(os.path.join(out_dir, "frames"), exist_ok=True)
    loss_curves(stage_losses, os.path.join(out_dir, "loss_curves.png"), rewards)
    matrix = confusion(gold_emotions, pred_emotions, classes, os.path.join(out_dir, "confusion.png"))
    cards = []
    for item in gallery:
        strip = frame_strip(item["frames"], os.path.join(out_dir, "frames", f"{item['clip_id']}.jpg"))
        cards.append(
            f"<div class='card'><h3>{_esc(item['clip_id'])}</h3>"
            f"<img class='strip' src='frames/{_esc(os.path.basename(strip))}' alt='frames'>"
            f"<p><b>Subtitle:</b> {_esc(item['subtitle'] or '(none)')}</p>"
            f"<table><tr><th></th><th>generated</th><th>gold</th></tr>"
            f"<tr><td>description</td><td>{_esc(item['description'])}</td><td>{_esc(item['gold_description'])}</td></tr>"
            f"<tr><td>labels</td><td>{_esc(', '.join(item['labels']))} ({_esc(item['sentiment'])})</td>"
            f"<td>{_esc(', '.join(item['gold_labels']))}</td></tr></table></div>")
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2rem auto;max-width:62rem;color:#222}}
table{{border-collapse:collapse;margin:.5rem 0}}td,th{{border:1px solid #ddd;padding:.3rem .6rem;vertical-align:top}}
.card{{border:1px solid #ccc;border-radius:6px;padding:.6rem 1rem;margin:1rem 0}}.strip{{max-width:100%}}
.muted{{color:#777}}</style></head><body>
<h1>{_esc(title)}</h1>
<p class="muted">{'<br>'.join(_esc(x) for x in summary_lines)}</p>
<h2>Scores on the held-out clips</h2><table id="scores"><tr><th>metric</th><th>value</th></tr>{_score_rows(scores)}</table>
<h2>Training</h2><img src="loss_curves.png" alt="loss curves">
<h2>Per-emotion confusion</h2><img src="confusion.png" alt="confusion matrix">
<h2>Held-out clips</h2>{''.join(cards)}
</body></html>"""
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as fh:
        fh.write(page)
    with open(os.path.join(out_dir, "confusion.json"), "w") as fh:
        import json

        json.dump({"classes": classes, "columns": classes + ["other"], "matrix": matrix}, fh)
    return path
