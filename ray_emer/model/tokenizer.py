"""Tokenizers: the LLM's own (real presets) or a small byte-level BPE shipped with the package (tiny).

Either way the multimodal placeholder tokens are registered as special tokens, so the
tokenizer never splits them and the model can find them by id. The tiny tokenizer is
byte-level (any text encodes, nothing is ``<unk>``), fixed (``ray_emer/assets/tiny_tokenizer.json``:
every tiny checkpoint's token ids come from it; ``tools/make_tiny_tokenizer.py`` trained it on the
synthetic vocabulary and can regenerate it), and has a Qwen-style chat template so the chat prompt
style is testable without a download.
"""

from __future__ import annotations

import functools

from ray_emer.model.config import AffectGPTConfig

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


def build_tokenizer(cfg: AffectGPTConfig, path: str | None = None):
    """The tokenizer for ``cfg`` (from ``path`` when loading a checkpoint), placeholders registered."""
    if path is not None:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
    elif cfg.tokenizer == "tiny":
        tok = tiny_tokenizer()
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.llm_name)
    missing = [t for t in placeholder_tokens(cfg) if t not in tok.get_vocab()]
    if missing:
        tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
