"""Tokenizers: the LLM's own (real presets) or a small byte-level BPE shipped with the package (tiny).

Either way the multimodal placeholder tokens are registered as special tokens, so the
tokenizer never splits them and the model can find them by id. The tiny tokenizer is
byte-level (any text encodes, nothing is ``<unk>``), fixed (``ray_emer/assets/tiny_tokenizer.json``:
every tiny checkpoint's token ids come from it; ``tools/make_tiny_tokenizer.py`` trained it on the
synthetic vocabulary and can regenerate it), and has a Qwen-style chat template so the chat prompt
style is testable without a download.

A checkpoint directory without ``tokenizer/`` (an import made offline) gets the tokenizer its config
names where it is loaded, as the LLM named there is; what cannot be found fails in one line.
"""

from __future__ import annotations

import functools
import os

from ray_emer.errors import RayEmerError
from ray_emer.model.config import AffectGPTConfig


class TokenizerError(RayEmerError, OSError):
    """The tokenizer a config or checkpoint names cannot be loaded (absent locally, unreachable, malformed)."""

TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def placeholder_tokens(cfg: AffectGPTConfig) -> list[str]:
    p = cfg.prompts
    return [p.fused_token, p.audio_token, p.video_token, p.image_token]


TINY_TOKENIZER_ASSET = "assets/tiny_tokenizer.json"  # inside the ray_emer package (package-data)


@functools.cache
def tiny_tokenizer_json() -> str:
    """The shipped tiny tokenizer (``tokenizers`` JSON, read once per process)."""
    from importlib.resources import files

    return (files("ray_emer") / TINY_TOKENIZER_ASSET).read_bytes().decode("utf-8")


def tiny_tokenizer():
    """A fresh ``PreTrainedTokenizerFast`` of the shipped byte-level BPE (779 tokens, specials included)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tiny_tokenizer_json()),
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _from_pretrained(name: str, local_only: bool):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        where = "in the Hugging Face cache or as a local folder" if local_only else "locally or on the Hub"
        raise TokenizerError(f"tokenizer {name!r} not found {where} ({_first_line(exc)})") from exc


def build_tokenizer(cfg: AffectGPTConfig, path: str | None = None, local_only: bool = False):
    """The tokenizer for ``cfg``, placeholders registered: from ``path`` (a checkpoint's ``tokenizer/``) when
    that folder exists, else the one ``cfg`` names. ``local_only``: never the network (local folders and the
    Hugging Face cache only). Raises ``TokenizerError`` with one line naming what is missing."""
    if path is not None and os.path.isdir(path):
        tok = _from_pretrained(path, local_only=True)
    elif cfg.tokenizer == "tiny":
        tok = tiny_tokenizer()
    else:
        tok = _from_pretrained(cfg.tokenizer or cfg.llm_name, local_only)
    missing = [t for t in placeholder_tokens(cfg) if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
