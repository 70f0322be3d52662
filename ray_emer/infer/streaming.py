"""Streaming a description (plain Python): the gate that holds back its conclusion while its labels are not
known yet (the engines' text deltas are ``engine.TextDeltas``).

``ConclusionGate``: a description's text as it grows -> the part that is final already. A labeller that
states its labels (``Labeller._state_labels``) may decode the description again from the first emotion
its conclusion names (``eval.consistency.conclusion_slot``); that offset is never before the first
concluding cue nor before the first emotion word of the text, so what lies before both is final. The
last words are held too: a cue of several words, or a word not complete yet, may still start there.
"""

from __future__ import annotations

import re

from ray_emer.eval.extract import CONCLUSION, TOKEN, LexiconExtractor
from ray_emer.infer.engine import EngineError

WORD = re.compile(r"\S+")
OPEN_WORDS = 3  # the longest concluding cue ("in conclusion", "to sum up") has 3 words


def final_prefix(text: str, stater: LexiconExtractor) -> int:
    """How much of a growing (stripped) description is final while its conclusion may be decoded again."""
    words = list(WORD.finditer(text))
    bound = words[-OPEN_WORDS].start() if len(words) >= OPEN_WORDS else 0
    cue = CONCLUSION.search(text)
    if cue is not None:
        bound = min(bound, cue.start())
    for match in TOKEN.finditer(text[:bound].lower().replace("’", "'")):
        if stater.label(match.group()) is not None:
            bound = min(bound, match.start())
            break
    return len(text[:bound].rstrip())


class ConclusionGate:
    """Deltas of a description -> the deltas that are final (all of them when there is no ``stater``);
    ``finish(description)`` sends the rest of the description as it ended (its conclusion fixed, maybe)."""

    def __init__(self, stater: LexiconExtractor | None) -> None:
        self.stater = stater
        self.text = ""
        self.sent = 0

    def add(self, delta: str) -> str:
        self.text += delta
        upto = len(self.text) if self.stater is None else final_prefix(self.text, self.stater)
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:upto], upto
        return out

    def finish(self, description: str) -> str:
        sent = self.text[:self.sent]
        if not description.startswith(sent):
            raise EngineError(f"the description changed where it was streamed already: {sent[-40:]!r}")
        return description[len(sent):]
