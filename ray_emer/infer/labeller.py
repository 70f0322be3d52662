"""The labeller (plain Python, no Ray): checkpoint + engine + feature rows -> label rows.

Per clip: the description from the reasoning prompt; the labels from the model's own
open-vocabulary prompt (``labels_from: model``) or extracted from the description
(``lexicon`` with the emotion-wheel vocabulary, or ``llm`` with a text LLM); the
sentiment from the labels. With the model's labels and a vocabulary (``wheel_dir``), the description
states them (``state_labels``): where its conclusion names emotions of other wheel classes, it is decoded
again from there with the first label in place (labels first, then a description that states them), so
label and explanation agree (``eval.consistency``) and the labels are those of the OV prompt. Prompt
embeddings are built next to the engine (the processor + the head), never shipped between processes.

Nothing is lost: a row that failed extraction stays an error row with its reason; when
the engine fails on a batch, its clips are retried one by one and only the clip that
fails becomes an error row (``engine_failed: ...``). Rows in == rows out.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
import torch

from ray_emer.eval.consistency import agrees, conclusion_slot
from ray_emer.eval.extract import LexiconExtractor, LLMExtractor, lexicon_sentiment
from ray_emer.eval.wheel import EmotionWheels
from ray_emer.infer.engine import GenerationConfig, HFEngine, stream_of
from ray_emer.infer.streaming import ConclusionGate
from ray_emer.infer.vllm_engine import VLLMEngine, VLLMSettings
from ray_emer.model.prompts import parse_ov_answer


@dataclasses.dataclass
class LabellerConfig:
    engine: Literal["hf", "vllm"] = "hf"
    labels_from: Literal["model", "lexicon", "llm"] = "model"  # the model's OV prompt, or from the description
    wheel_dir: str = ""  # lexicon: the emotion-wheel tables (wheel1..5, synonym, format)
    extractor_model: str = ""  # llm: a text LLM (name or local path) run with the HF engine
    description_tokens: int = 160  # max new tokens of a description
    label_tokens: int = 32  # max new tokens of the OV-labels answer (and of a conclusion decoded again)
    # labels_from model: the description's conclusion states the labels. auto: when wheel_dir gives the
    # vocabulary that finds the emotions a description states; on: needs wheel_dir; off: as generated
    state_labels: Literal["auto", "on", "off"] = "auto"
    batch_size: int = 16  # clips per engine call
    device: str = "auto"  # auto: cuda when present, else cpu
    dtype: str = "auto"  # auto: bfloat16 on cuda, float32 on cpu
    vllm: VLLMSettings = dataclasses.field(default_factory=VLLMSettings)


def _device(cfg: LabellerConfig) -> str:
    return cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def _dtype(cfg: LabellerConfig, device: str) -> torch.dtype:
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def _error_text(exc: BaseException) -> str:
    return f"engine_failed: {type(exc).__name__}: {str(exc)[:300]}"


class Labeller:
    def __init__(self, checkpoint: str, cfg: LabellerConfig | None = None, model_id: str | None = None) -> None:
        # the model modules (transformers, peft) load with a labeller, not with its config (read by light parsers)
        from ray_emer.model.checkpoint import checkpoint_id, export_llm, load_checkpoint

        self.cfg = cfg or LabellerConfig()
        device = _device(self.cfg)
        model = load_checkpoint(checkpoint, dtype=_dtype(self.cfg, device), device=device).eval()
        self.model_id = model_id or checkpoint_id(checkpoint)
        self.processor, self.tokenizer = model.processor, model.tokenizer
        gen = GenerationConfig(batch_size=self.cfg.batch_size)
        if self.cfg.engine == "hf":
            self.embed, self.engine = model.prompt_embeddings, HFEngine(model.llm, model.tokenizer, gen)
            self.token_embed = model.llm.get_input_embeddings()
        elif self.cfg.engine == "vllm":
            self._engine_dir = tempfile.TemporaryDirectory(prefix="ray_emer-engine-")
            export_llm(model, self._engine_dir.name)  # LoRA merged: the engine serves a plain model
            self.embed = model.prompt_embedder()  # head + embedding table; the decoder lives in vLLM only
            self.token_embed = self.embed.embed_tokens
            del model
            self.engine = VLLMEngine(self._engine_dir.name, gen, self.cfg.vllm)
        else:
            raise ValueError(f"unknown engine {self.cfg.engine!r}; known: hf, vllm")
        self.wheels = EmotionWheels.load(self.cfg.wheel_dir) if self.cfg.wheel_dir else None
        self.extractor = self._extractor()
        self.stater = self._stater()

    def _stater(self) -> LexiconExtractor | None:
        """What finds the emotions a description states, when its conclusion is to state the labels."""
        if self.cfg.state_labels not in ("auto", "on", "off"):
            raise ValueError(f"unknown state_labels {self.cfg.state_labels!r}; known: auto, on, off")
        if self.cfg.state_labels == "off" or self.cfg.labels_from != "model":
            return None
        if self.wheels is None:
            if self.cfg.state_labels == "on":
                raise ValueError("state_labels: on needs wheel_dir (the vocabulary that finds the emotions a "
                                 "description states)")
            return None
        return LexiconExtractor(self.wheels)

    def _extractor(self):
        if self.cfg.labels_from == "lexicon":
            if self.wheels is None:
                raise ValueError("labels_from: lexicon needs wheel_dir (the emotion-wheel tables)")
            return LexiconExtractor(self.wheels)
        if self.cfg.labels_from == "llm":
            if not self.cfg.extractor_model:
                raise ValueError("labels_from: llm needs extractor_model (a text LLM name or local path)")
            return LLMExtractor(HFEngine.from_pretrained(self.cfg.extractor_model))
        if self.cfg.labels_from != "model":
            raise ValueError(f"unknown labels_from {self.cfg.labels_from!r}; known: model, lexicon, llm")
        return None

    # ------------------------------------------------------------ rows
    def _row(self, clip_id: str, status: str = "ok", error: str = "", description: str = "",
             labels: list[str] | None = None, timings: dict | None = None, tokens: int = 0) -> dict:
        labels = labels or []
        return {"clip_id": clip_id, "description": description if status == "ok" else "", "labels": labels,
                "sentiment": lexicon_sentiment(labels) if status == "ok" else "", "status": status, "error": error,
                "model": self.model_id, "engine": self.engine.name,
                "timings": timings or {"prompt_s": 0.0, "generate_s": 0.0, "labels_s": 0.0, "total_s": 0.0},
                "generated_tokens": tokens}

    def _generate(self, batch: dict, task: str, max_new_tokens: int):
        mb = self.processor.from_rows(batch, task, with_targets=False)
        t0 = time.perf_counter()
        embeds = self.embed(mb)
        t1 = time.perf_counter()
        gens = self.engine.generate_embeds(embeds, max_new_tokens)
        return gens, t1 - t0, time.perf_counter() - t1, embeds

    def _state_labels(self, prompts: list[torch.Tensor], descs: list[str], labels: list[list[str]]) -> list[int]:
        """Descriptions (edited in place) whose conclusion names emotions that share no wheel class with the
        labels are decoded again from their first stated emotion on, the first label forced there; returns
        the tokens generated per clip."""
        n_wheels = len(self.wheels.wheels)
        redo = []
        for i, (desc, labs) in enumerate(zip(descs, labels, strict=True)):
            stated = self.stater.extract_one(desc)
            if not labs or all(agrees(labs, stated, self.wheels, w) for w in range(n_wheels)):
                continue
            slot = conclusion_slot(desc, self.stater)
            if slot is not None:
                redo.append((i, f"{desc[:slot].rstrip()} {labs[0]}"))
        tokens = [0] * len(descs)
        if not redo:
            return tokens
        embeds = []
        for i, forced in redo:
            ids = torch.tensor(self.tokenizer(forced, add_special_tokens=False)["input_ids"],
                               device=self.token_embed.weight.device)
            with torch.no_grad():
                embeds.append(torch.cat([prompts[i], self.token_embed(ids).to(prompts[i])]))
        for (i, forced), gen in zip(redo, self.engine.generate_embeds(embeds, self.cfg.label_tokens), strict=True):
            descs[i] = (forced + self.tokenizer.decode(gen.token_ids, skip_special_tokens=True)).strip()
            tokens[i] = gen.num_tokens
        return tokens

    def _label(self, batch: dict) -> list[dict]:
        """Feature rows that decoded -> label rows (raises when the engine fails)."""
        t0 = time.perf_counter()
        desc, prompt_s, gen_s, prompts = self._generate(batch, "description", self.cfg.description_tokens)
        t1 = time.perf_counter()
        tokens = [g.num_tokens for g in desc]
        texts = [g.text for g in desc]
        if self.extractor is None:
            answers, p2, g2, _ = self._generate(batch, "ov_labels", self.cfg.label_tokens)
            prompt_s, gen_s = prompt_s + p2, gen_s + g2
            labels = [parse_ov_answer(a.text) for a in answers]
            tokens = [t + a.num_tokens for t, a in zip(tokens, answers, strict=True)]
            if self.stater is not None:
                t2 = time.perf_counter()
                tokens = [t + x for t, x in zip(tokens, self._state_labels(prompts, texts, labels), strict=True)]
                gen_s += time.perf_counter() - t2
        else:
            labels = self.extractor.extract(texts)
        n, total = len(desc), time.perf_counter() - t0
        labels_s = total - (t1 - t0) if self.extractor is not None else 0.0
        timings = {"prompt_s": prompt_s / n, "generate_s": gen_s / n, "labels_s": labels_s / n, "total_s": total / n}
        return [self._row(str(batch["clip_id"][i]), description=texts[i], labels=labels[i], timings=timings,
                          tokens=tokens[i]) for i in range(n)]

    def stream_one(self, batch: dict) -> Iterator[str | dict]:
        """A feature batch of one row -> the description's text deltas as they are generated, then its label row
        (as ``label_batch``'s). The deltas joined are the row's description: with a stater, its conclusion is
        held back until the labels are known (``ConclusionGate``) and sent as it ended, fixed or not."""
        if len(batch["clip_id"]) != 1:
            raise ValueError(f"stream_one takes a batch of one row, got {len(batch['clip_id'])}")
        clip_id = str(batch["clip_id"][0])
        if str(batch["status"][0]) != "ok":
            yield self._row(clip_id, "error", str(batch["error"][0] or "error"))
            return
        gate, text = ConclusionGate(self.stater), ""
        try:
            t0 = time.perf_counter()
            mb = self.processor.from_rows(batch, "description", with_targets=False)
            (prompt,) = self.embed(mb)
            t1 = time.perf_counter()
            first = None
            for delta in stream_of(self.engine, prompt, self.cfg.description_tokens):
                text += delta
                if out := gate.add(delta):
                    first = first or time.perf_counter() - t0
                    yield out
            t2 = time.perf_counter()
            texts, labels, labels_s, gen_s = [text], None, 0.0, t2 - t1
            if self.extractor is None:
                answers, p2, g2, _ = self._generate(batch, "ov_labels", self.cfg.label_tokens)
                labels, gen_s = [parse_ov_answer(answers[0].text)], gen_s + p2 + g2
                if self.stater is not None:
                    self._state_labels([prompt], texts, labels)
                    gen_s += time.perf_counter() - t2 - p2 - g2
            else:
                labels = self.extractor.extract(texts)
                labels_s = time.perf_counter() - t2
            if rest := gate.finish(texts[0]):
                first = first or time.perf_counter() - t0
                yield rest
        except Exception as exc:  # noqa: BLE001 - the engine's failure is this clip's error row, as in a batch
            yield self._row(clip_id, "error", _error_text(exc))
            return
        timings = {"prompt_s": t1 - t0, "generate_s": gen_s, "labels_s": labels_s,
                   "total_s": time.perf_counter() - t0, "first_text_s": first or 0.0}
        yield self._row(clip_id, description=texts[0], labels=labels[0], timings=timings)

    def label_batch(self, batch: dict) -> list[dict]:
        """A columnar feature batch (as ``features.shards.table_columns`` / Ray Data yield it) -> one label row per input row."""
        n = len(batch["clip_id"])
        status = [str(s) for s in batch["status"]]
        rows: list[dict | None] = [None] * n
        for i in range(n):
            if status[i] != "ok":
                rows[i] = self._row(str(batch["clip_id"][i]), "error", str(batch["error"][i] or "error"))
        ok = [i for i in range(n) if status[i] == "ok"]
        if ok:
            for i, row in zip(ok, self._label_safely({k: np.asarray(v)[ok] for k, v in batch.items()}), strict=True):
                rows[i] = row
        for i, row in enumerate(rows):  # where in its recording (a segment's span; a clip is its own recording)
            rid = batch["recording_id"][i] if "recording_id" in batch else None
            row["recording_id"] = str(rid) if rid is not None else row["clip_id"]
            for key in ("start_s", "end_s"):
                value = batch[key][i] if key in batch else None
                row[key] = float(value) if value is not None and value == value else None
        return rows  # type: ignore[return-value]

    def _label_safely(self, batch: dict) -> list[dict]:
        try:
            return self._label(batch)
        except Exception:  # noqa: BLE001 - find the clip that breaks the batch, keep the rest
            out = []
            for j in range(len(batch["clip_id"])):
                one = {k: v[j:j + 1] for k, v in batch.items()}
                try:
                    out.extend(self._label(one))
                except Exception as exc:  # noqa: BLE001 - one clip's failure is its own error row
                    out.append(self._row(str(one["clip_id"][0]), "error", _error_text(exc)))
            return out
