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
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
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

    # optional: text deltas of one prompt as they are generated (joined: ``generate_embeds([embed])[0].text``);
    # an engine without it streams the whole text at once (``stream_of``)


def stream_of(engine, embed: torch.Tensor, max_new_tokens: int | None = None) -> Iterator[str]:
    """The engine's ``stream_embeds`` when it has one, else its whole generation as one delta."""
    if hasattr(engine, "stream_embeds"):
        yield from engine.stream_embeds(embed, max_new_tokens)
        return
    text = engine.generate_embeds([embed], max_new_tokens)[0].text
    if text:
        yield text


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


class TextDeltas:
    """Feed the ids of one generation as they come (``add``), read the text they add; ``finish`` gives the
    rest. Stops taking ids at the first end-of-sequence or padding id (``done``)."""

    def __init__(self, decode: Callable[[list[int]], str], stop_ids: set[int]) -> None:
        self.decode, self.stop_ids = decode, stop_ids
        self.ids: list[int] = []
        self.sent = ""
        self.done = False

    def add(self, ids: Iterable[int]) -> str:
        if self.done:
            return ""
        new = [int(i) for i in ids]
        kept = trim(new, self.stop_ids)
        self.done = len(kept) < len(new)
        self.ids.extend(kept)
        text = self.decode(self.ids).strip()
        if text.endswith("\ufffd"):  # a character whose bytes are not all generated yet
            text = text[:-1].rstrip()
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self) -> str:
        """The rest of the text (what was held back); raises when the text no longer extends what was sent."""
        text = self.decode(self.ids).strip()
        if not text.startswith(self.sent):
            raise EngineError(f"streamed text {self.sent[-40:]!r} is not a prefix of the generation {text[-60:]!r}")
        delta, self.sent = text[len(self.sent):], text
        return delta


class _Ids:
    """A transformers streamer that queues the ids ``generate`` makes (its first ``put`` is the prompt: skipped)."""

    def __init__(self) -> None:
        self.queue: queue.Queue = queue.Queue()
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.queue.put(value.reshape(-1).tolist())

    def end(self) -> None:
        pass


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
        self._lock = threading.Lock()  # one generate at a time (a stream generates in a thread of its own)

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
            with self._lock:
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
            with self._lock:
                ids = self.model.generate(inputs_embeds=x, attention_mask=mask, **self._sampling(max_new_tokens))
            for row in ids.tolist():  # with inputs_embeds only, generate returns the new tokens alone
                kept = trim(row, stop)
                out.append(Generation(self.tokenizer.decode(kept, skip_special_tokens=True).strip(), kept))
        return out

    def stream_embeds(self, embed: torch.Tensor, max_new_tokens: int | None = None) -> Iterator[str]:
        """One prompt's embeddings ``[L, H]`` -> text deltas as the tokens are generated (greedy as
        ``generate_embeds``; joined they are its text). ``generate`` runs in a thread and hands its ids over
        through a streamer; a consumer that stops early leaves it to finish (at most ``max_new_tokens``)."""
        (e,) = check_embeds([embed], self.hidden_size, self.dtype)
        x = e.to(self.device)[None]
        ids, failed = _Ids(), []

        def run() -> None:
            try:
                with self._lock, torch.no_grad():
                    self.model.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long,
                                                                                   device=self.device),
                                        streamer=ids, **self._sampling(max_new_tokens))
            except BaseException as exc:  # noqa: BLE001 - raised again in the consumer's thread
                failed.append(exc)
            finally:
                ids.queue.put(None)

        threading.Thread(target=run, name="ray_emer-stream", daemon=True).start()
        deltas = TextDeltas(lambda t: self.tokenizer.decode(t, skip_special_tokens=True),
                            {self.tokenizer.eos_token_id, self.tokenizer.pad_token_id})
        while (new := ids.queue.get()) is not None:
            if delta := deltas.add(new):
                yield delta
        if failed:
            raise EngineError(f"generation failed: {type(failed[0]).__name__}: {failed[0]}") from failed[0]
        if rest := deltas.finish():
            yield rest
