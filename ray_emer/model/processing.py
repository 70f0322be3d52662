"""The processor: feature rows + subtitle + task (+ target) -> one model batch.

The only place where prompts become token ids (in the spirit of the transformers
multimodal processors). Training (hybrid targets, right padding, loss labels on answer
tokens only), labelling and serving (no targets, left padding for batched generation)
all build their ``MultimodalBatch`` here; ``AffectGPT`` only embeds and runs it.

- ``__call__``: tensors/arrays + per-sample subtitles and tasks (+ targets)
- ``from_rows``: a columnar feature batch (numpy dict, as ``features.shards.table_columns`` or a Ray Data
  shard yields it) with the hybrid task choice and modality dropping of training
- ``pack``: sequence packing for training: the samples of a batch share rows (``plan_rows``:
  longest first into the emptiest row), each with positions restarting at 0 and attention that never crosses into
  another sample, so almost no token the LLM computes is padding; the loss of every sample
  is unchanged (``AffectGPT.sample_losses``)
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence

import numpy as np
import torch

from ray_emer.model.config import AffectGPTConfig
from ray_emer.model.prompts import Modalities, PromptBuilder

IGNORE = -100  # loss label of prompt and padding positions


@dataclasses.dataclass
class PackedRows:
    """Where each sample's tokens sit when a batch is packed: ``R`` rows of ``C`` tokens.

    ``index`` points every packed position at its position in the flattened unpacked batch
    (``b * L + t``), -1 where the row is padding; ``sample`` is the sample a position belongs to
    (-1 for padding). ``position_ids`` restart at 0 for every sample (and for the padding block at a
    row's end), which is what tells the LLM's attention mask where one sample ends.
    """

    index: torch.Tensor  # [R, C] long
    position_ids: torch.Tensor  # [R, C] long
    labels: torch.Tensor  # [R, C] long, IGNORE at prompt and padding positions
    sample: torch.Tensor  # [R, C] long

    @property
    def tokens(self) -> int:
        return int(self.index.numel())

    @property
    def padding(self) -> int:
        return int((self.index < 0).sum())


def plan_rows(lengths: Sequence[int], row_length: int = 0) -> list[list[int]]:
    """Samples per packed row. ``row_length=0``: the whole batch in one row (no padding at all). Otherwise
    as many rows as ``row_length`` tokens each need (at least the longest sample), filled longest sample
    first into the emptiest row so the rows come out about equally long (their lengths set the padding).
    Samples keep their batch order inside a row."""
    if not lengths:
        return []
    total = sum(lengths)
    n_rows = 1 if row_length <= 0 else max(1, -(-total // max(row_length, max(lengths))))
    n_rows = min(n_rows, len(lengths))
    rows: list[list[int]] = [[] for _ in range(n_rows)]
    fill = [0] * n_rows
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        r = min(range(n_rows), key=lambda r: (fill[r], r))
        rows[r].append(i)
        fill[r] += lengths[i]
    return [sorted(r) for r in rows]


@dataclasses.dataclass
class MultimodalBatch:
    """What ``AffectGPT`` consumes: token ids with placeholder tokens, and the feature rows behind them."""

    input_ids: torch.Tensor  # [B, L] long; padding where attention_mask is 0
    attention_mask: torch.Tensor  # [B, L] long
    video_feats: torch.Tensor  # [B, T, Dv] (rows of a missing modality are ignored)
    audio_feats: torch.Tensor  # [B, T, Da]
    has_video: list[bool]
    has_audio: list[bool]
    labels: torch.Tensor | None = None  # [B, L] answer token ids, IGNORE elsewhere (training only)
    image_feats: torch.Tensor | None = None  # [B, Dv]
    has_image: list[bool] | None = None
    prompts: list[str] = dataclasses.field(default_factory=list)  # rendered prompt texts (logs, checks)
    tasks: list[str] = dataclasses.field(default_factory=list)
    targets: list[str] | None = None
    packed: PackedRows | None = None  # training batches packed into shared rows (see ``AffectGPTProcessor.pack``)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def padding_share(self) -> float:
        """Share of the token positions the LLM computes that are padding."""
        if self.packed is not None:
            return self.packed.padding / max(1, self.packed.tokens)
        return 1.0 - float(self.attention_mask.sum()) / max(1, self.attention_mask.numel())

    @property
    def real_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @property
    def left_padded(self) -> bool:
        """Every row ends with a real token (what batched generation needs)."""
        return bool(self.attention_mask[:, -1].all())


def label_list(value) -> list[str]:
    """A labels cell of a feature batch (list, numpy array or None) -> list of strings."""
    if value is None:
        return []
    return [str(x) for x in (value.tolist() if isinstance(value, np.ndarray) else value)]


def _text_or_none(value) -> str | None:
    return value if isinstance(value, str) and value else None


class AffectGPTProcessor:
    def __init__(self, cfg: AffectGPTConfig, tokenizer) -> None:
        self.cfg, self.tokenizer = cfg, tokenizer
        self.prompts = PromptBuilder(cfg.prompts, fusion=cfg.fusion != "none", tokenizer=tokenizer)
        p, ids = cfg.prompts, tokenizer.convert_tokens_to_ids
        self.placeholder_ids = {"fused": ids(p.fused_token), "audio": ids(p.audio_token),
                                "video": ids(p.video_token), "image": ids(p.image_token)}

    # ------------------------------------------------------------ tokens
    def _sequences(self, prompts: list[str], targets: list[str] | None) -> tuple[list[list[int]], list[int]]:
        """Token ids per sample (prompt, then target + end-of-answer) and each prompt's length."""
        tok, max_len = self.tokenizer, self.cfg.prompts.max_length
        seqs, prompt_lens = [], []
        for i, prompt in enumerate(prompts):
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) > max_len:
                raise ValueError(f"prompt {i} has {len(ids)} tokens, more than max_length={max_len}")
            prompt_lens.append(len(ids))
            if targets is not None:
                ids = (ids + tok(targets[i], add_special_tokens=False)["input_ids"] + [tok.eos_token_id])[:max_len]
            seqs.append(ids)
        return seqs, prompt_lens

    def tokenize(self, prompts: list[str], targets: list[str] | None = None,
                 padding_side: str | None = None) -> dict[str, torch.Tensor]:
        """-> ``input_ids``, ``attention_mask`` ``[B, L]`` (+ ``labels`` with targets). Padding: right
        with targets (training), left without (generation), unless ``padding_side`` says otherwise."""
        side = padding_side or ("right" if targets is not None else "left")
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be left or right, not {side!r}")
        seqs, prompt_lens = self._sequences(prompts, targets)
        width, pad = max(map(len, seqs)), self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for i, (seq, n_prompt) in enumerate(zip(seqs, prompt_lens, strict=True)):
            start = width - len(seq) if side == "left" else 0
            ids[i, start:start + len(seq)] = torch.tensor(seq)
            mask[i, start:start + len(seq)] = 1
            labels[i, start + n_prompt:start + len(seq)] = torch.tensor(seq[n_prompt:], dtype=torch.long)
        out = {"input_ids": ids, "attention_mask": mask}
        if targets is not None:
            out["labels"] = labels
        return out

    def pack(self, batch: MultimodalBatch, row_length: int = 0) -> MultimodalBatch:
        """The same batch with its samples packed into shared rows (``plan_rows``) for the LLM; the
        unpacked ids, mask and labels stay for the head and the embedding splice. Training only."""
        if batch.labels is None:
            raise ValueError("packing is for training batches (with targets)")
        if not bool(batch.attention_mask[:, 0].all()):
            raise ValueError("packing needs a right-padded batch")
        lengths = [int(n) for n in batch.attention_mask.sum(1)]
        width = int(batch.attention_mask.shape[1])
        rows = plan_rows(lengths, row_length)
        c = max(sum(lengths[i] for i in r) for r in rows)
        index = torch.full((len(rows), c), -1, dtype=torch.long)
        sample = torch.full_like(index, -1)
        pos = torch.zeros_like(index)
        labels = torch.full_like(index, IGNORE)
        for r, members in enumerate(rows):
            at = 0
            for i in members:
                n = lengths[i]
                index[r, at:at + n] = torch.arange(i * width, i * width + n)
                sample[r, at:at + n] = i
                pos[r, at:at + n] = torch.arange(n)
                labels[r, at:at + n] = batch.labels[i, :n]
                at += n
            pos[r, at:] = torch.arange(c - at)  # the padding block: its own "sample", after every real one
        return dataclasses.replace(batch, packed=PackedRows(index, pos, labels, sample))

    # ------------------------------------------------------------ batches
    def __call__(self, video_feats, audio_feats, subtitles: Sequence[str | None], tasks: Sequence[str],
                 has_video: Sequence[bool] | None = None, has_audio: Sequence[bool] | None = None,
                 targets: Sequence[str] | None = None, padding_side: str | None = None) -> MultimodalBatch:
        """Feature tensors ``[B, T, D]`` + per-sample subtitle and task (+ target) -> ``MultimodalBatch``."""
        b = len(subtitles)
        if len(tasks) != b or (targets is not None and len(targets) != b):
            raise ValueError(f"{b} subtitles but {len(tasks)} tasks"
                             + (f" and {len(targets)} targets" if targets is not None else ""))
        has_video = [bool(x) for x in has_video] if has_video is not None else [True] * b
        has_audio = [bool(x) for x in has_audio] if has_audio is not None else [True] * b
        prompts = [self.prompts.prompt(subtitles[i], tasks[i], Modalities(has_video[i], has_audio[i]))
                   for i in range(b)]
        targets = list(targets) if targets is not None else None
        enc = self.tokenize(prompts, targets, padding_side)
        return MultimodalBatch(enc["input_ids"], enc["attention_mask"],
                               torch.as_tensor(np.asarray(video_feats, np.float32)),
                               torch.as_tensor(np.asarray(audio_feats, np.float32)), has_video, has_audio,
                               enc.get("labels"), prompts=prompts, tasks=list(tasks), targets=targets)

    def from_rows(self, batch: dict, task: str = "hybrid", rng: random.Random | None = None,
                  drop: Sequence[str] = (), with_targets: bool = True,
                  padding_side: str | None = None, pack: bool = False, row_length: int = 0) -> MultimodalBatch:
        """A columnar feature batch -> ``MultimodalBatch``.

        ``task``: ``description`` | ``ov_labels`` | ``hybrid`` (one of the targets a row has,
        picked with ``rng``, as published training does); ``drop``: modalities to remove
        (ablations); ``with_targets=False`` for generation; ``pack`` packs the samples into shared
        rows of ``row_length`` tokens (training; see ``pack``).
        """
        n = len(batch["clip_id"])
        rng = rng or random.Random(0)
        has_video = [bool(v) and "video" not in drop for v in batch["has_video"]]
        has_audio = [bool(a) and "audio" not in drop for a in batch["has_audio"]]
        descs = [_text_or_none(d) for d in batch.get("description", [None] * n)]
        labels = [label_list(x) for x in batch.get("labels", [None] * n)]
        tasks = [PromptBuilder.hybrid_task(rng, descs[i], labels[i]) if task == "hybrid" else task
                 for i in range(n)]
        subs = [_text_or_none(s) for s in batch.get("subtitle", [None] * n)]
        targets = [PromptBuilder.target(tasks[i], descs[i], labels[i]) for i in range(n)] if with_targets else None
        out = self(batch["video_feats"], batch["audio_feats"], subs, tasks, has_video, has_audio, targets,
                   padding_side)
        return self.pack(out, row_length) if pack else out
