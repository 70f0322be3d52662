"""Do a clip's labels agree with the description written for it? The ``consistency`` score.

A description closes with the emotions it infers ("... the person's emotional state is most likely
worried"); a reader who sees the labels "happy, pleased" beside it trusts neither. Per row, the emotions
the description states are those ``LexiconExtractor`` finds in its conclusion (the whole text when it has
none), and the row agrees when its labels and those emotions share a class of the emotion wheel (level 1):
``happy, pleased`` agrees with "most likely joyful", not with "most likely worried". A row whose
description states no emotion, or that has no labels, does not agree.

``consistency`` is the share of agreeing rows, averaged over the wheels, as the published EW metrics are
(with one wheel, or wheels that group the words alike, it is exactly the share of rows). Without the wheel
tables, labels are grouped by the word itself (``grouping: exact``), over the vocabulary of the labels
being scored: then "joyful" and "happy" do not agree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ray_emer.eval.extract import TOKEN, LexiconExtractor, conclusion
from ray_emer.eval.wheel import EmotionWheels, Wheel


def exact_wheels(words: Iterable[str]) -> EmotionWheels:
    """A wheel in which every word is its own class (the grouping when no wheel tables are given)."""
    vocab = sorted({w.strip().lower() for w in words if w and w.strip()})
    return EmotionWheels([Wheel.from_rows([(w, w, w) for w in vocab])], {w: {w} for w in vocab},
                         {w: {w} for w in vocab}, source="exact")


def agrees(labels: Sequence[str], stated: Sequence[str], wheels: EmotionWheels, wheel: int, level: int = 1) -> bool:
    """``labels`` and ``stated`` share a class on ``wheel`` (0-based)."""
    return bool(wheels.map_labels(labels, wheel, level) & wheels.map_labels(stated, wheel, level))


def _labels(value) -> list[str]:
    """A label list, array or None (as label rows and Parquet give them) -> a list of strings."""
    return [] if value is None else [str(x) for x in list(value) if str(x).strip()]


def consistency(rows: Iterable[dict], wheels: EmotionWheels | None = None, level: int = 1,
                examples: int = 5) -> dict:
    """``rows``: dicts with ``labels`` (a list) and ``description``, the ok label rows of one set.

    Returns ``{"consistency", "n", "grouping", "inconsistent"}``: the score (None without rows), the rows
    scored, ``wheel`` or ``exact``, and up to ``examples`` disagreeing rows (``clip_id`` when the rows have
    one, ``labels``, ``stated``)."""
    rows = [{"clip_id": r.get("clip_id", ""), "labels": _labels(r.get("labels")),
             "description": str(r.get("description") or "")} for r in rows]
    grouping = "wheel" if wheels is not None else "exact"
    if wheels is None:
        wheels = exact_wheels(label for r in rows for label in r["labels"])
    extractor = LexiconExtractor(wheels)
    stated = extractor.extract([r["description"] for r in rows])
    n_wheels = len(wheels.wheels)
    per_row = [sum(agrees(r["labels"], s, wheels, w, level) for w in range(n_wheels)) / n_wheels
               for r, s in zip(rows, stated, strict=True)]
    bad = [{"clip_id": r["clip_id"], "labels": r["labels"], "stated": s}
           for r, s, a in zip(rows, stated, per_row, strict=True) if a < 1]
    return {"consistency": sum(per_row) / len(rows) if rows else None, "n": len(rows), "grouping": grouping,
            "inconsistent": bad[:examples]}


def conclusion_slot(description: str, extractor: LexiconExtractor) -> int | None:
    """Where the description's conclusion starts naming emotions: the offset of the first emotion word
    ``extractor`` finds in ``conclusion(description)``, or None when the conclusion names none (a labeller
    decodes the conclusion again from there to state its labels)."""
    tail = conclusion(description)
    start = len(description) - len(tail)
    tokens = list(TOKEN.finditer(tail.lower().replace("’", "'")))
    words = [t.group() for t in tokens]
    for i, match in enumerate(tokens):
        label = extractor.label(match.group())
        if label is None or extractor.negated(words, i):
            continue
        return start + match.start()
    return None
