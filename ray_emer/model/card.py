"""The model card of a checkpoint directory (``README.md``), as Hugging Face model repositories carry one.

It tells, from the checkpoint's own config: the preset, the base LLM and the encoders, what was trained and how
the weights are stored; and from the stage that wrote it (``info``, when given): the data, the starting
checkpoint, the steps, and the scores on rows held out of training when there were any. Then the intended
use and the limits. ``save_checkpoint`` writes it beside ``config.json``; nothing reads it back.
"""

from __future__ import annotations

from ray_emer.model.config import AffectGPTConfig

CARD_FILE = "README.md"

INTENDED_USE = (
    "Describing the emotional cues of short video clips (facial expression, voice, words) and naming "
    "open-vocabulary emotion labels and a sentiment, with the reasoning given as text: research on explainable "
    "multimodal emotion recognition, dataset annotation with human review, and as a baseline.")
LIMITS = (
    "- The labels say how a clip appears, not what a person feels; do not use them to judge, screen, or make "
    "decisions about people (employment, education, policing, health).\n"
    "- The model reflects its training data (language, culture, recording conditions, the annotators' vocabulary); "
    "scores on other data may be far lower than the ones below.\n"
    "- Descriptions can state cues that are not in the clip; check them before reuse.\n"
    "- A checkpoint trained on synthetic clips (the quickstart, the tests) demonstrates the pipeline only.")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def card_text(cfg: AffectGPTConfig, info: dict | None = None) -> str:
    """The card's Markdown. ``info`` (all optional): ``data`` (features the stage read), ``init`` (the checkpoint it
    started from), ``steps``, ``train_rows``, ``scores`` (``{name: value}`` on held-out rows), ``scores_on``
    (which rows), ``engine``, ``seed``."""
    info = dict(info or {})
    base = "randomly initialised (no pretrained weights)" if cfg.init == "random" else f"`{cfg.llm_name}`"
    weights = {"lora": "LoRA adapter in `adapter/` (the base loads by name)", "full": "full LLM weights in `llm/`",
               "frozen": "the base LLM unchanged (loads by name)"}[cfg.trainable.llm]
    if cfg.init == "random":
        weights = "full LLM weights in `llm/` (a random base cannot be named)"
    lines = [f"# AffectGPT checkpoint ({cfg.preset})", "",
             "An explainable multimodal emotion recognition model in the ray_emer checkpoint layout "
             "(`config.json`, `head.safetensors`, `tokenizer/`, and `adapter/` or `llm/`). Load it with "
             "`ray_emer.model.checkpoint.load_checkpoint`, or name it to `ray-emer label --checkpoint` and "
             "`ray-emer serve --checkpoint`.", "",
             "## Model", "",
             f"- Preset: `{cfg.preset}`",
             f"- Base LLM: {base}",
             f"- Encoders (frozen): video `{cfg.encoders.vision_name}`, audio `{cfg.encoders.audio_name}`",
             f"- Trained: head `{cfg.trainable.head}`, LLM `{cfg.trainable.llm}`; weights: {weights}",
             f"- Fusion: `{cfg.fusion}`; prompt style `{cfg.prompts.style}`", "",
             "## Training", ""]
    if not info:
        lines.append("- Not recorded (this directory was written outside a training stage).")
    else:
        for key, label in (("data", "Data (feature shards)"), ("train_rows", "Training rows"),
                           ("init", "Started from"), ("steps", "Optimizer steps"), ("engine", "Engine"),
                           ("seed", "Seed")):
            if info.get(key) not in (None, ""):
                lines.append(f"- {label}: `{info[key]}`")
    lines += ["", "## Scores", ""]
    scores = {k: v for k, v in (info.get("scores") or {}).items() if isinstance(v, (int, float))}
    if scores:
        lines.append(f"On {info.get('scores_on') or 'rows held out of training'}:")
        lines.append("")
        lines += [f"- {k}: {_fmt(v)}" for k, v in sorted(scores.items())]
    else:
        lines.append("Not measured: no held-out rows were scored when this directory was written "
                     "(`ray-emer label --evaluate` scores a labelled set).")
    lines += ["", "## Intended use", "", INTENDED_USE, "", "## Limits", "", LIMITS, ""]
    return "\n".join(lines)
