"""Tokenizers: the LLM's own (real presets) or a small byte-level BPE trained on the fly (tiny).

Either way the multimodal placeholder tokens are registered as special tokens, so the
tokenizer never splits them and the model can find them by id. The tiny tokenizer is
byte-level (any text encodes, nothing is ``<unk>``), deterministic for its corpus, and
has a Qwen-style chat template so the chat prompt style is testable without a download.
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


def _tiny_corpus() -> list[str]:
    from ray_emer.model.prompts import QUESTIONS
    from ray_emer.synthetic import SynthConfig, make_spec

    specs = [make_spec(SynthConfig(seed=seed), i) for seed in (0, 1) for i in range(150)]
    return list(QUESTIONS.values()) + [s.description for s in specs] + [s.subtitle for s in specs]


@functools.lru_cache(maxsize=4)
def _tiny_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_tiny_corpus(), trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 1024):
    """A fresh ``PreTrainedTokenizerFast`` (byte-level BPE over the synthetic vocabulary)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json(vocab_size)),
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
