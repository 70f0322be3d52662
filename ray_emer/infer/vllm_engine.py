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
vLLM spawns its engine core: scripts that build one need a ``__main__`` guard. ``stream_embeds`` streams one
prompt's tokens from the same engine (delta outputs), so the endpoint streams with either engine.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from ray_emer.infer.engine import EngineError, GenerationConfig, Generation, TextDeltas, check_embeds, trim


@dataclasses.dataclass
class VLLMSettings:
    dtype: str = "auto"  # auto: bfloat16 on GPUs, float32 on CPU (exact agreement with HF there)
    gpu_memory_utilization: float = 0.85  # GPUs: the share of GPU memory vLLM may take
    kv_cache_mb: int = 0  # >0: a fixed KV cache (skips the memory-share check); 0: 512 on CPU, the share on GPUs
    max_model_len: int = 2048  # prompt + answer tokens
    max_num_seqs: int = 64
    enforce_eager: bool = False  # CPU always runs eager
    seed: int = 0


def resolve_dtype(name: str) -> str:
    if name != "auto":
        return name
    return "bfloat16" if torch.cuda.is_available() else "float32"


class VLLMEngine:
    """vLLM's offline ``LLM`` over a model directory. The engine core runs in its own process (vLLM's
    default): after a failure it answers every call with an error instead of hanging (the in-process
    mode hangs on the next call), and ``generate_embeds`` then starts a fresh engine once."""

    name = "vllm"

    def __init__(self, model_dir: str, cfg: GenerationConfig | None = None,
                 settings: VLLMSettings | None = None) -> None:
        self.cfg, self.settings, self.model_dir = cfg or GenerationConfig(), settings or VLLMSettings(), model_dir
        conf = json.loads((Path(model_dir) / "config.json").read_text())
        self.hidden_size = int(conf["hidden_size"])
        self.dtype = getattr(torch, resolve_dtype(self.settings.dtype))
        self.llm = self._start()
        self.tokenizer = self.llm.get_tokenizer()
        self._lock = threading.Lock()  # one caller steps the engine at a time (a stream, or a batch)
        self._streams = itertools.count()

    def _start(self):
        # vLLM logs to stdout by default; a job's stdout carries its JSON summary, so vLLM logs go to stderr
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        from vllm import LLM

        s, gpu = self.settings, torch.cuda.is_available()
        kv_mb = s.kv_cache_mb or (0 if gpu else 512)
        memory = {"kv_cache_memory_bytes": kv_mb * 2**20} if kv_mb else {"gpu_memory_utilization": s.gpu_memory_utilization}
        return LLM(model=self.model_dir, tokenizer=self.model_dir, enable_prompt_embeds=True,
                   dtype=resolve_dtype(s.dtype), max_model_len=s.max_model_len, max_num_seqs=s.max_num_seqs,
                   enforce_eager=s.enforce_eager or not gpu, seed=s.seed,
                   generation_config="vllm",  # never the model's defaults: penalties crash prompt embeds
                   **memory)

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
        try:
            with self._lock:
                outs = self.llm.generate([{"prompt_embeds": e} for e in embeds],
                                         self.sampling_params(max_new_tokens), use_tqdm=False)
        except Exception as exc:  # noqa: BLE001 - a dead engine stays dead: start a fresh one for what follows
            if type(exc).__name__ == "EngineDeadError":
                self.llm = self._start()
            raise EngineError(f"vLLM failed on a batch of {len(embeds)}: {type(exc).__name__}: {exc}") from exc
        stop = self._stop_ids()
        result = []
        for o in outs:
            kept = trim(o.outputs[0].token_ids, stop)
            result.append(Generation(self.tokenizer.decode(kept, skip_special_tokens=True).strip(), kept))
        return result

    def stream_embeds(self, embed: torch.Tensor, max_new_tokens: int | None = None) -> Iterator[str]:
        """One prompt's embeddings ``[L, H]`` -> text deltas as vLLM generates them (joined: ``generate_embeds``'s
        text). The request goes to this same engine with delta outputs (``RequestOutputKind.DELTA``) and the engine
        is stepped here, holding the lock, as ``LLM.generate`` steps it: no second engine, no second copy of the
        weights or the KV cache. A consumer that stops early aborts the request."""
        from vllm.sampling_params import RequestOutputKind

        (e,) = [x.detach().cpu() for x in check_embeds([embed], self.hidden_size, self.dtype)]
        n = max_new_tokens or self.cfg.max_new_tokens
        if e.shape[0] + n > self.settings.max_model_len:
            raise EngineError(f"the prompt plus the answer exceed max_model_len={self.settings.max_model_len}")
        params = self.sampling_params(n)
        params.output_kind = RequestOutputKind.DELTA
        deltas = TextDeltas(lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True), self._stop_ids())
        engine, rid, finished = self.llm.llm_engine, f"ray_emer-stream-{next(self._streams)}", False
        with self._lock:
            try:
                engine.add_request(rid, self.llm._preprocess_cmpl_one({"prompt_embeds": e}), params)
                while not finished and engine.has_unfinished_requests():
                    for out in engine.step():
                        if out.request_id != rid:
                            continue
                        if delta := deltas.add(out.outputs[0].token_ids):
                            yield delta
                        finished = out.finished
            except Exception as exc:  # noqa: BLE001 - as generate_embeds: a dead engine is started again
                if type(exc).__name__ == "EngineDeadError":
                    self.llm = self._start()
                raise EngineError(f"vLLM failed on a stream: {type(exc).__name__}: {exc}") from exc
            finally:
                if not finished:
                    try:
                        engine.abort_request([rid])
                    except Exception:  # noqa: BLE001 - an engine that died has nothing to abort
                        pass
        if rest := deltas.finish():
            yield rest

    def generate(self, prompts: list[str]) -> list[str]:
        texts = prompts
        if self.cfg.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                        add_generation_prompt=True) for p in prompts]
        with self._lock:
            outs = self.llm.generate(texts, self.sampling_params(), use_tqdm=False)
        return [o.outputs[0].text.strip() for o in outs]
