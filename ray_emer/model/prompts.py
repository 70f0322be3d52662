"""The prompt builder: it owns the placeholder tokens, their order and their count.

Order (as published): fused token, audio token, video token (image token for a still
image), then the subtitle, then the question. A modality that is missing drops its
placeholder (and the fused token needs both audio and video), so video-only,
audio-only and text-only clips get prompts that say only what is there. The model
checks that the placeholders it finds match the feature rows it has (rule 5).
"""

from __future__ import annotations

import dataclasses
import random

from ray_emer.labels import parse_answer
from ray_emer.model.config import PromptSettings

QUESTIONS = {
    "description": "Please infer the person's emotional state and explain your reasoning from the clues.",
    "ov_labels": "Please recognize all possible emotional states of the character.",
}
TASKS = tuple(QUESTIONS)
OV_PREFIX = "The character's emotional state is"


def format_ov_labels(labels: list[str]) -> str:
    """``["happy", "excited"]`` -> ``"The character's emotional state is happy, excited."``"""
    return f"{OV_PREFIX} {', '.join(labels)}."


def parse_ov_answer(text: str) -> list[str]:
    """Inverse of :func:`format_ov_labels` (the proper rule after the prefix), tolerant of a missing prefix."""
    return parse_answer(text, OV_PREFIX)


@dataclasses.dataclass
class Modalities:
    has_video: bool = True
    has_audio: bool = True
    has_image: bool = False


class PromptBuilder:
    def __init__(self, settings: PromptSettings, fusion: bool = True, tokenizer=None) -> None:
        self.s, self.fusion, self.tokenizer = settings, fusion, tokenizer

    def placeholders(self, m: Modalities) -> list[str]:
        """The placeholder tokens for one clip, in prompt order."""
        out = []
        if self.fusion and m.has_video and m.has_audio:
            out.append(self.s.fused_token)
        if m.has_audio:
            out.append(self.s.audio_token)
        if m.has_video:
            out.append(self.s.video_token)
        if m.has_image:
            out.append(self.s.image_token)
        return out

    def prompt(self, subtitle: str | None, task: str, m: Modalities) -> str:
        """The user turn (placeholders, subtitle, question), rendered in the configured style."""
        if task not in QUESTIONS:
            raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
        names = {self.s.fused_token: "Fused audio-visual clues", self.s.audio_token: "Audio",
                 self.s.video_token: "Video", self.s.image_token: "Image"}
        parts = [f"{names[t]}: {t}." for t in self.placeholders(m)]
        sub = (subtitle or "").strip()
        parts.append(f'The subtitle is: "{sub}".' if sub else "There is no subtitle.")
        seen = [k for k, on in (("seen", m.has_video or m.has_image), ("heard", m.has_audio)) if on]
        parts.append(f"Based on what you have {' and '.join(seen + ['read'])}, answer. {QUESTIONS[task]}")
        return self.render(" ".join(parts))

    def render(self, user_text: str) -> str:
        if self.s.style == "chat":
            if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
                raise ValueError("prompt style 'chat' needs a tokenizer with a chat template")
            return self.tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                                      add_generation_prompt=True)
        return user_text + "\n"

    @staticmethod
    def target(task: str, description: str | None, labels: list[str] | None) -> str:
        if task == "description":
            if not description:
                raise ValueError("task 'description' needs a description")
            return description.strip()
        if not labels:
            raise ValueError("task 'ov_labels' needs labels")
        return format_ov_labels(labels)

    @staticmethod
    def hybrid_task(rng: random.Random, description: str | None, labels: list[str] | None) -> str:
        """Training picks one of the two targets at random per sample (among those it has)."""
        choices = [t for t, ok in (("description", bool(description)), ("ov_labels", bool(labels))) if ok]
        if not choices:
            raise ValueError("a training sample needs a description or labels")
        return rng.choice(choices)
