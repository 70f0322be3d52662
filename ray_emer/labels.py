"""Label lists: one parser with two named rules, for every place a list of emotion labels is read.

- ``proper`` (manifests, user files, model answers): a JSON/Python list literal (``["happy", "sad"]``),
  nested or comma-joined literals (``[], ["confused"]``), or ``,``/``;``/newline separated text; each
  label loses surrounding brackets, quotes, full stops and whitespace, is lower-cased, and appears once.
- ``published``: the published MER-UniBench scorer's ``string_to_list`` as it is: drop one leading ``[``
  and one trailing ``]``, split on ``'``, ``"`` and ``,``, strip, drop empties; lists pass through.
  ``"don't believe"`` -> ``don``, ``t believe``; case is kept.
"""

from __future__ import annotations

import ast
import json
import numbers
import re
from collections.abc import Iterator
from typing import Literal

PARSING_RULES = ("proper", "published")
Rule = Literal["proper", "published"]

_SEPARATORS = re.compile(r"[,;\n]")
_EDGES = " \t\r\n[](){}'\"`."
_ANSWER_LEAD = re.compile(r"^\s*(?:emotions?|labels?|answer)\s*:\s*", re.I)
_NONE_WORDS = {"none", "nothing", "n/a"}


def _missing(value) -> bool:
    if value is None or type(value).__name__ in ("NAType", "NaTType"):
        return True
    return isinstance(value, numbers.Number) and value != value  # NaN


def _as_list(value):
    """A list for list-likes (list, tuple, numpy/pyarrow arrays), else None."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, (str, bytes)) and hasattr(value, "tolist"):
        value = value.tolist()
        return value if isinstance(value, list) else None
    return None


def _literal(text: str):
    """``text`` as a list/tuple literal (JSON or Python), else None."""
    for load in (json.loads, ast.literal_eval):
        try:
            value = load(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        if isinstance(value, (list, tuple)):
            return value
    return None


def _pieces(value) -> Iterator[str]:
    if _missing(value):
        return
    items = _as_list(value)
    if items is None and str(value).strip().startswith(("[", "(")):
        items = _literal(str(value).strip())
    if items is not None:  # a list's strings are labels already; nested lists are flattened
        for item in items:
            yield from [item] if isinstance(item, str) else _pieces(item)
        return
    yield from _SEPARATORS.split(str(value))


def _proper(value) -> list[str]:
    labels = (re.sub(r"\s+", " ", p.strip(_EDGES)).lower() for p in _pieces(value))
    return [x for x in dict.fromkeys(labels) if x]


def _published(value) -> list[str]:
    if _missing(value):
        return []
    items = _as_list(value)
    if items is not None:
        return [str(x) for x in items]
    text = str(value)
    if text.startswith("["):
        text = text[1:]
    if text.endswith("]"):
        text = text[:-1]
    return [p.strip() for p in re.split(r"['\",]", text) if p.strip()]


def parse_labels(value, rule: Rule = "proper") -> list[str]:
    """A label list (string, list/array, None or NaN) -> labels, by ``rule`` (see the module doc)."""
    if rule == "proper":
        return _proper(value)
    if rule == "published":
        return _published(value)
    raise ValueError(f"unknown label parsing rule {rule!r}; one of {PARSING_RULES}")


def parse_answer(text, prefix: str | None = None) -> list[str]:
    """A generated answer -> labels (proper rule): the text after ``prefix`` (when present), its first
    non-empty line, less an ``Emotions:``-style lead-in; ``and`` also separates; "none" means no label."""
    text = "" if _missing(text) else str(text)
    if prefix and prefix in text:
        text = text.split(prefix, 1)[1]
    line = next((ln for ln in text.splitlines() if ln.strip()), "")
    line = re.sub(r"\s+and\s+", ",", _ANSWER_LEAD.sub("", line))
    return [x for x in _proper(line) if x not in _NONE_WORDS]
