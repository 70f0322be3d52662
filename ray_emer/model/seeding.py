"""Seeded random initialisation that leaves the caller's random state alone.

Each randomly initialised part of the model draws from its own seed: the frozen random
encoders from ``encoders.seed``; the head and a random LLM from ``init_seed``; LoRA adapters
from a seed derived from ``init_seed`` (``sub_seed(seed, "lora")``), so their draws are not
a replay of the head's. Initialisation runs on the CPU (models are built there and moved
after), so only the CPU generator is seeded and restored: a CUDA seed the caller set (the
training seed, for dropout) is neither replaced nor consumed.
"""

from __future__ import annotations

import contextlib
import hashlib

import torch


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block with torch's CPU generator at ``seed``; the caller's generator state is restored after."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


def sub_seed(seed: int, part: str) -> int:
    """A seed for ``part`` derived from ``seed``: same inputs, same seed; another part, an unrelated stream."""
    digest = hashlib.sha256(f"{int(seed)}:{part}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # < 2**63: fits torch's seed range
