"""``VLLMEngine``: the ``Engine`` protocol on vLLM, generating from prompt embeddings (the only vllm import).

It serves a plain transformers model directory: for AffectGPT, the LLM of a checkpoint
with its LoRA adapter merged (``export_engine_model``). Merging is the simple path: a
LoRA on ``embed_tokens`` would never touch rows given as embeddings anyway, the head
(pooling, pre-fusion, projectors) runs outside vLLM to build the embeddings, and a
merged model runs at base-model speed with no adapter bookkeeping per request.

Guards against two vLLM 0.29 traps: offline prompt embeddings are not checked (a wrong
hidden size kills the engine, a wrong dtype is cast silently), so shapes are checked and
cast here; and penalties together with prompt embeddings can crash the engine (vLLM
issue 57719) while a model's ``generation_config`` would bring its own, so the engine
ignores the model's defaults (``generation_config="vllm"``) and sets neutral penalties.
vLLM spawns its engine core: scripts that build one need a ``__main__`` guard.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ray_emer.infer.engine import EngineError, GenerationConfig, Generation, check_embeds, trim


@dataclasses.dataclass
class VLLMSettings:
    dtype: str = "auto"  # auto: bfloat16 on GPUs, float32 on CPU (exact agreement with HF there)
    gpu_memory_utilization: float = 0.85  # on the CPU backend: the share of *CPU* memory it reserves
    max_model_len: int = 2048  # prompt + answer tokens
    max_num_seqs: int = 64
    enforce_eager: bool = False
    cpu_kvcache_gb: int = 1  # CPU backend only (VLLM_CPU_KVCACHE_SPACE)
    seed: int = 0


def resolve_dtype(name: str) -> str:
    if name != "auto":
        return name
    return "bfloat16" if torch.cuda.is_available() else "float32"


class VLLMEngine:
    name = "vllm"

    def __init__(self, model_dir: str, cfg: GenerationConfig | None = None,
                 settings: VLLMSettings | None = None) -> None:
        self.cfg, self.settings = cfg or GenerationConfig(), settings or VLLMSettings()
        conf = json.loads((Path(model_dir) / "config.json").read_text())
        self.hidden_size = int(conf["hidden_size"])
        dtype = resolve_dtype(self.settings.dtype)
        self.dtype = getattr(torch, dtype)
        if not torch.cuda.is_available():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.settings.cpu_kvcache_gb))
        from vllm import LLM

        self.llm = LLM(model=model_dir, tokenizer=model_dir, enable_prompt_embeds=True, dtype=dtype,
                       gpu_memory_utilization=self.settings.gpu_memory_utilization,
                       max_model_len=self.settings.max_model_len, max_num_seqs=self.settings.max_num_seqs,
                       enforce_eager=self.settings.enforce_eager, seed=self.settings.seed,
                       generation_config="vllm")  # never the model's defaults (penalties crash prompt embeds)
        self.tokenizer = self.llm.get_tokenizer()

    def sampling_params(self, max_new_tokens: int | None = None):
        from vllm import SamplingParams

        return SamplingParams(max_tokens=max_new_tokens or self.cfg.max_new_tokens,
                              temperature=self.cfg.temperature if self.cfg.do_sample else 0.0,
                              repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                              seed=self.settings.seed if self.cfg.do_sample else None)

    def _stop_ids(self) -> set[int]:
        return {i for i in (self.tokenizer.eos_token_id, self.tokenizer.pad_token_id) if i is not None}

    def generate_embeds(self, embeds: Sequence[torch.Tensor], max_new_tokens: int | None = None) -> list[Generation]:
        """Prompt embeddings ``[L_i, H]`` -> generations (checked and cast to the engine dtype first)."""
        embeds = [e.detach().cpu() for e in check_embeds(embeds, self.hidden_size, self.dtype)]
        too_long = [i for i, e in enumerate(embeds)
                    if e.shape[0] + (max_new_tokens or self.cfg.max_new_tokens) > self.settings.max_model_len]
        if too_long:
            raise EngineError(f"prompt(s) {too_long[:5]} plus the answer exceed max_model_len="
                              f"{self.settings.max_model_len}")
        outs = self.llm.generate([{"prompt_embeds": e} for e in embeds], self.sampling_params(max_new_tokens),
                                 use_tqdm=False)
        stop = self._stop_ids()
        result = []
        for o in outs:
            kept = trim(o.outputs[0].token_ids, stop)
            result.append(Generation(self.tokenizer.decode(kept, skip_special_tokens=True).strip(), kept))
        return result

    def generate(self, prompts: list[str]) -> list[str]:
        texts = prompts
        if self.cfg.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                        add_generation_prompt=True) for p in prompts]
        outs = self.llm.generate(texts, self.sampling_params(), use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]
