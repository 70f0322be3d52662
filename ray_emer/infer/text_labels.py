"""``ray-emer evaluate extract``: descriptions -> open-vocabulary labels (+ lexicon sentiment) as a published
``P.csv`` (``name,openset,sentiment``), with the emotion-wheel lexicon or a text LLM run by the HF engine.

It lives above ``eval`` (which scores and extracts without any engine) because the LLM method runs one.
"""

from __future__ import annotations

import io

import pandas as pd

from ray_emer import storage
from ray_emer.eval.extract import LexiconExtractor, LLMExtractor, lexicon_sentiment
from ray_emer.eval.flows import load_wheels
from ray_emer.eval.unibench import EvalInputError, read_csv


def extract_labels(descriptions: str, out: str, column: str = "description", method: str = "lexicon",
                   focus: str = "conclusion", model: str | None = None, wheel_dir: str | None = None,
                   format_file: str | None = None) -> dict:
    """Descriptions -> open-vocabulary labels (+ lexicon sentiment) as ``P.csv`` (name, openset, sentiment)."""
    df = read_csv(descriptions, ("name", column))
    if method == "llm":
        if not model:
            raise EvalInputError("--method llm needs --model (a model name or local path)")
        from ray_emer.infer.engine import HFEngine  # torch and transformers: only when an LLM runs

        extractor = LLMExtractor(HFEngine.from_pretrained(model))
    else:
        extractor = LexiconExtractor(load_wheels(wheel_dir, format_file), focus=focus)
    labels = extractor.extract(list(df[column]))
    frame = pd.DataFrame({"name": df["name"], "openset": [", ".join(ls) for ls in labels],
                          "sentiment": [lexicon_sentiment(ls) for ls in labels]})
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    storage.write_text(out, buf.getvalue())
    return {"rows": len(frame), "out": out, "method": method}
