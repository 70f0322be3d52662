"""Regenerate ``ray_emer/assets/tiny_tokenizer.json``, the tiny preset's byte-level BPE tokenizer.

    python tools/make_tiny_tokenizer.py            # rewrite the shipped file
    python tools/make_tiny_tokenizer.py --check    # exit 1 if training now gives other bytes

The model package only reads the shipped file (``ray_emer.model.tokenizer.tiny_tokenizer``); training
lives here because its corpus comes from the synthetic-data generator, which the model package must
not import. The file is frozen on purpose: token ids of every tiny checkpoint come from it, so a
changed corpus (new synthetic descriptions, questions) makes ``--check`` and
tests/test_tokenizer.py fail instead of silently changing ids. Rewrite it only deliberately.
Training takes about 0.1 s (0.6 s with the transformers import) on one core.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "ray_emer" / "assets" / "tiny_tokenizer.json"
VOCAB_SIZE = 1024  # an upper bound: the corpus yields 779 tokens (3 specials + 256 bytes + merges)


def tiny_corpus() -> list[str]:
    """The task questions plus descriptions and subtitles of 300 synthetic clips (seeds 0 and 1)."""
    from ray_emer.model.prompts import QUESTIONS
    from ray_emer.synthetic import SynthConfig, make_spec

    specs = [make_spec(SynthConfig(seed=seed), i) for seed in (0, 1) for i in range(150)]
    return list(QUESTIONS.values()) + [s.description for s in specs] + [s.subtitle for s in specs]


def train_tiny_tokenizer_json(vocab_size: int = VOCAB_SIZE) -> str:
    """The tokenizer JSON (``Tokenizer.to_str()``) trained on ``tiny_corpus()``: deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from ray_emer.model.tokenizer import TINY_SPECIALS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(tiny_corpus(), trainer)
    return tok.to_str()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the shipped file, write nothing")
    args = ap.parse_args(argv)
    data = train_tiny_tokenizer_json().encode("utf-8")
    if args.check:
        same = SHIPPED.is_file() and SHIPPED.read_bytes() == data
        print(f"{SHIPPED.relative_to(REPO)}: {'up to date' if same else 'DIFFERS from a fresh training run'}")
        return 0 if same else 1
    SHIPPED.parent.mkdir(parents=True, exist_ok=True)
    SHIPPED.write_bytes(data)
    print(f"wrote {SHIPPED.relative_to(REPO)} ({len(data)} bytes)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # run from a checkout without installing
    sys.exit(main())
