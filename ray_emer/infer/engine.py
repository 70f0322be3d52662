"""The ``Engine`` protocol and the transformers implementation.

An engine generates from text prompts (the LLM label extractors, sentiment mapping) and
from prompt embeddings (``[L, H]`` per sample, from ``AffectGPT.prompt_embeddings``:
the labeller and the server), so callers switch between HF ``generate`` and vLLM
without changing. Generation is greedy by default, with neutral penalties spelled out:
engines must not pick up sampling or repetition settings from a model's
``generation_config`` (and vLLM crashes on penalties with prompt embeddings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import torch

from ray_emer.errors import RayEmerError


@dataclasses.dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    do_sample: bool = False  # greedy: labels must not vary run to run
    temperature: float = 1.0  # sampling only
    batch_size: int = 8  # HF: prompts per generate call
    use_chat_template: bool = True  # text prompts only


@dataclasses.dataclass
class Generation:
    text: str
    token_ids: list[int]  # generated ids, end-of-sequence and padding excluded

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class EngineError(RayEmerError, RuntimeError):
    """An engine cannot run a request (bad prompt embeddings, a dead engine, ...)."""


class Engine(Protocol):
    name: str

    def generate(self, prompts: list[str]) -> list[str]: ...

    def generate_embeds(self, embeds: Sequence[torch.Tensor], max_new_tokens: int | None = None) -> list[Generation]: ...


def check_embeds(embeds: Sequence[torch.Tensor], hidden_size: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Each prompt as ``[L, hidden_size]`` in ``dtype`` (a ``[1, L, H]`` tensor is squeezed); a wrong shape
    raises ``EngineError`` naming the prompt and both sizes, before anything reaches an engine."""
    out = []
    for i, e in enumerate(embeds):
        if not isinstance(e, torch.Tensor):
            raise EngineError(f"prompt embeddings {i}: expected a tensor, got {type(e).__name__}")
        if e.ndim == 3 and e.shape[0] == 1:
            e = e[0]
        if e.ndim != 2 or e.shape[1] != hidden_size or e.shape[0] == 0:
            raise EngineError(f"prompt embeddings {i} have shape {list(e.shape)}; this engine's model expects "
                              f"[L, {hidden_size}] with L >= 1")
        if not torch.is_floating_point(e) or not torch.isfinite(e).all():
            raise EngineError(f"prompt embeddings {i} are not finite floating-point values")
        out.append(e.to(dtype))
    return out


def trim(ids: Sequence[int], stop_ids: set[int]) -> list[int]:
    """Generated ids up to (not including) the first end-of-sequence or padding id."""
    out = []
    for t in ids:
        if int(t) in stop_ids:
            break
        out.append(int(t))
    return out


class HFEngine:
    """Greedy (or sampled) generation with a transformers causal LM (a PEFT-wrapped one too) and its tokenizer."""

    name = "hf"

    def __init__(self, model, tokenizer, cfg: GenerationConfig | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.cfg = cfg or GenerationConfig()
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"  # decoder-only: pad on the left for batched generate

    @classmethod
    def from_pretrained(cls, name_or_path: str, cfg: GenerationConfig | None = None, **kwargs) -> HFEngine:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return cls(AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs),
                   AutoTokenizer.from_pretrained(name_or_path), cfg)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def _render(self, prompt: str) -> str:
        if self.cfg.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def _sampling(self, max_new_tokens: int | None) -> dict:
        kw = dict(max_new_tokens=max_new_tokens or self.cfg.max_new_tokens, do_sample=self.cfg.do_sample,
                  pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id,
                  repetition_penalty=1.0)
        if self.cfg.do_sample:
            kw["temperature"] = self.cfg.temperature
        else:  # greedy: nothing from the model's generation_config may turn sampling back on
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> list[str]:
        out: list[str] = []
        for i in range(0, len(prompts), self.cfg.batch_size):
            batch = [self._render(p) for p in prompts[i : i + self.cfg.batch_size]]
            enc = self.tokenizer(batch, return_tensors="pt", padding=True).to(self.device)
            ids = self.model.generate(**enc, **self._sampling(None))
            new = ids[:, enc["input_ids"].shape[1]:]
            out.extend(t.strip() for t in self.tokenizer.batch_decode(new, skip_special_tokens=True))
        return out

    @torch.no_grad()
    def generate_embeds(self, embeds: Sequence[torch.Tensor], max_new_tokens: int | None = None) -> list[Generation]:
        """Prompt embeddings ``[L_i, H]`` -> generations; batched, left padded with zero vectors."""
        embeds = check_embeds(embeds, self.hidden_size, self.dtype)
        stop = {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id}
        out: list[Generation] = []
        for i in range(0, len(embeds), self.cfg.batch_size):
            chunk = embeds[i : i + self.cfg.batch_size]
            width = max(e.shape[0] for e in chunk)
            x = torch.zeros(len(chunk), width, self.hidden_size, dtype=self.dtype, device=self.device)
            mask = torch.zeros(len(chunk), width, dtype=torch.long, device=self.device)
            for j, e in enumerate(chunk):
                x[j, width - e.shape[0]:] = e.to(self.device)
                mask[j, width - e.shape[0]:] = 1
            ids = self.model.generate(inputs_embeds=x, attention_mask=mask, **self._sampling(max_new_tokens))
            for row in ids.tolist():  # with inputs_embeds only, generate returns the new tokens alone
                kept = trim(row, stop)
                out.append(Generation(self.tokenizer.decode(kept, skip_special_tokens=True).strip(), kept))
        return out
