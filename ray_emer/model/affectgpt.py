"""``AffectGPT``: the trainable head plus the LLM (optionally LoRA-wrapped), on feature rows.

It never sees pixels: a ``MultimodalBatch`` carries cached features, the flags saying
which modalities exist, prompt texts with placeholders (from ``PromptBuilder``) and,
for training, target texts. The same object serves training (``forward`` -> loss on
answer tokens only), labelling (``generate`` through HF ``inputs_embeds``) and external
engines (``prompt_embeddings`` -> ``[L, H]`` per sample for vLLM's prompt embeds).
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from ray_emer.model.config import AffectGPTConfig, LoRASettings, TrainableConfig
from ray_emer.model.head import MultimodalHead
from ray_emer.model.prompts import Modalities, PromptBuilder
from ray_emer.model.tokenizer import build_tokenizer

IGNORE = -100


@dataclasses.dataclass
class MultimodalBatch:
    video_feats: torch.Tensor  # [B, T, Dv] (rows of a missing modality are ignored)
    audio_feats: torch.Tensor  # [B, T, Da]
    has_video: list[bool]
    has_audio: list[bool]
    prompts: list[str]  # rendered prompt texts, placeholders included
    targets: list[str] | None = None
    image_feats: torch.Tensor | None = None  # [B, Dv]
    has_image: list[bool] | None = None

    def __len__(self) -> int:
        return len(self.prompts)

    def modalities(self, i: int) -> Modalities:
        return Modalities(self.has_video[i], self.has_audio[i], bool(self.has_image and self.has_image[i]))


def build_llm(cfg: AffectGPTConfig, vocab_size: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.init == "pretrained":
        return AutoModelForCausalLM.from_pretrained(cfg.llm_name, dtype=dtype)
    kwargs = dict(cfg.llm_config)
    kwargs.setdefault("vocab_size", vocab_size)
    conf = AutoConfig.for_model(kwargs.pop("model_type", "qwen2"), **kwargs)
    return AutoModelForCausalLM.from_config(conf, dtype=dtype)


def apply_trainable(llm: nn.Module, head: nn.Module, t: TrainableConfig, lora: LoRASettings) -> nn.Module:
    """Set ``requires_grad`` per component and return the LLM (LoRA-wrapped or merged as asked)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if t.head not in ("frozen", "full"):
        raise ValueError(f"head can be frozen or full, not {t.head!r}")
    head.requires_grad_(t.head == "full")
    if t.llm == "lora" and not isinstance(llm, PeftModel):
        llm = get_peft_model(llm, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM"))
    if t.llm == "full" and isinstance(llm, PeftModel):
        llm = llm.merge_and_unload()
    for name, param in llm.named_parameters():
        param.requires_grad = t.llm == "full" or (t.llm == "lora" and "lora_" in name)
    return llm


def parameter_table(named_parameters) -> dict[str, dict[str, int]]:
    """Per component (``head.<part>``, ``llm.base``, ``llm.lora``, ...): total and trainable counts."""
    rows: dict[str, dict[str, int]] = {}
    for name, param in named_parameters:
        parts = name.split(".")
        if parts[0] in ("head", "encoders"):
            comp = ".".join(parts[:2])
        else:
            comp = "llm.lora" if "lora_" in name else "llm.base"
        row = rows.setdefault(comp, {"params": 0, "trainable": 0})
        row["params"] += param.numel()
        row["trainable"] += param.numel() if param.requires_grad else 0
    return rows


class AffectGPT(nn.Module):
    def __init__(self, cfg: AffectGPTConfig, llm: nn.Module, tokenizer, head: MultimodalHead | None = None) -> None:
        super().__init__()
        self.cfg, self.llm, self.tokenizer = cfg, llm, tokenizer
        self.head = head if head is not None else MultimodalHead(cfg)
        self.prompts = PromptBuilder(cfg.prompts, fusion=cfg.fusion != "none", tokenizer=tokenizer)
        ids = tokenizer.convert_tokens_to_ids
        p = cfg.prompts
        self.placeholder_ids = {"fused": ids(p.fused_token), "audio": ids(p.audio_token),
                                "video": ids(p.video_token), "image": ids(p.image_token)}

    @classmethod
    def build(cls, cfg: AffectGPTConfig, dtype: torch.dtype = torch.float32, tokenizer=None) -> AffectGPT:
        """Tokenizer, LLM (pretrained or random from ``cfg.llm_config``), head; then ``cfg.trainable``."""
        tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.encoders.seed)
            llm = build_llm(cfg, len(tokenizer), dtype)
            head = MultimodalHead(cfg)
        if cfg.init == "random":
            cfg.llm_config.setdefault("vocab_size", llm.config.vocab_size)
        model = cls(cfg, llm, tokenizer, head)
        model.set_trainable(cfg.trainable)
        return model

    # ------------------------------------------------------------ trainable control
    @property
    def has_lora(self) -> bool:
        from peft import PeftModel

        return isinstance(self.llm, PeftModel)

    def set_trainable(self, t: TrainableConfig) -> None:
        """Apply ``frozen | full | lora`` per component; LoRA adapters are added when first asked for."""
        self.llm = apply_trainable(self.llm, self.head, t, self.cfg.lora)
        self.cfg.trainable = dataclasses.replace(t)

    def parameter_table(self) -> dict[str, dict[str, int]]:
        return parameter_table(self.named_parameters())

    # ------------------------------------------------------------ embeddings
    @property
    def device(self) -> torch.device:
        return self.head.video_proj.weight.device

    def _embed_layer(self) -> nn.Module:
        return self.llm.get_input_embeddings()

    def _token_rows(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        """Per modality, the head's tokens for the samples that have it: ``{kind: [N_kind, H]}``."""
        dev = self.device
        tokens = self.head(batch.video_feats.to(dev), batch.audio_feats.to(dev))
        present = {"video": list(batch.has_video), "audio": list(batch.has_audio),
                   "fused": [v and a for v, a in zip(batch.has_video, batch.has_audio, strict=True)]}
        rows = {k: tokens[k][torch.tensor(present[k], device=dev, dtype=torch.bool)] for k in tokens}
        if batch.image_feats is not None and batch.has_image is not None:
            mask = torch.tensor(batch.has_image, device=dev, dtype=torch.bool)
            rows["image"] = self.head.image(batch.image_feats.to(dev))[mask]
        return rows

    def _tokenize(self, batch: MultimodalBatch, with_targets: bool) -> tuple[list[list[int]], list[int]]:
        """Token ids per sample and the length of each prompt part (targets follow it)."""
        tok, max_len = self.tokenizer, self.cfg.prompts.max_length
        seqs, prompt_lens = [], []
        for i, prompt in enumerate(batch.prompts):
            ids = tok(prompt, add_special_tokens=False)["input_ids"]
            if len(ids) > max_len:
                raise ValueError(f"prompt {i} has {len(ids)} tokens, more than max_length={max_len}")
            prompt_lens.append(len(ids))
            if with_targets:
                if batch.targets is None:
                    raise ValueError("training needs batch.targets")
                ids = (ids + tok(batch.targets[i], add_special_tokens=False)["input_ids"]
                       + [tok.eos_token_id])[:max_len]
            seqs.append(ids)
        return seqs, prompt_lens

    def _assemble(self, batch: MultimodalBatch, with_targets: bool, left_pad: bool):
        """-> ``inputs_embeds [B, L, H]``, ``attention_mask [B, L]``, ``labels [B, L]`` or None."""
        seqs, prompt_lens = self._tokenize(batch, with_targets)
        width, pad = max(map(len, seqs)), self.tokenizer.pad_token_id
        ids = torch.full((len(seqs), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for i, (seq, n_prompt) in enumerate(zip(seqs, prompt_lens, strict=True)):
            start = width - len(seq) if left_pad else 0
            ids[i, start:start + len(seq)] = torch.tensor(seq)
            mask[i, start:start + len(seq)] = 1
            labels[i, start + n_prompt:start + len(seq)] = torch.tensor(seq[n_prompt:], dtype=torch.long)
        ids, mask, labels = ids.to(self.device), mask.to(self.device), labels.to(self.device)
        emb = self._splice(ids, self._token_rows(batch))
        return emb, mask, labels if with_targets else None

    def _splice(self, ids: torch.Tensor, rows: dict[str, torch.Tensor]) -> torch.Tensor:
        """Text embeddings with each placeholder position replaced by its modality row."""
        masks = {k: ids == tid for k, tid in self.placeholder_ids.items()}
        for kind, m in masks.items():
            n_slots, n_rows = int(m.sum()), int(rows[kind].shape[0]) if kind in rows else 0
            if n_slots != n_rows:
                raise ValueError(f"{n_slots} {kind} placeholder token(s) in the prompts but {n_rows} {kind} "
                                 f"feature row(s) in the batch")
        any_slot = torch.stack(list(masks.values())).any(0)
        emb = self._embed_layer()(ids.masked_fill(any_slot, self.tokenizer.pad_token_id))
        for kind, m in masks.items():
            if kind in rows and rows[kind].shape[0]:
                emb = emb.masked_scatter(m.unsqueeze(-1), rows[kind].to(emb.dtype))
        return emb

    # ------------------------------------------------------------ public API
    def forward(self, batch: MultimodalBatch):
        """Causal-LM output whose ``loss`` covers the answer tokens (and end-of-answer) only."""
        emb, mask, labels = self._assemble(batch, with_targets=True, left_pad=False)
        return self.llm(inputs_embeds=emb, attention_mask=mask, labels=labels)

    @contextlib.contextmanager
    def _gathered(self):
        """Under FSDP2 the root's own parameters (head, embeddings, lm_head) stay sharded outside
        ``forward``; generation and prompt embeddings gather them explicitly."""
        unshard = getattr(self, "unshard", None)
        if unshard is None:
            yield
            return
        unshard()
        try:
            yield
        finally:
            self.reshard()

    @torch.no_grad()
    def prompt_embeddings(self, batch: MultimodalBatch) -> list[torch.Tensor]:
        """Per sample, the full prompt embedding sequence ``[L_i, H]`` (no padding)."""
        with self._gathered():
            emb, mask, _ = self._assemble(batch, with_targets=False, left_pad=False)
        return [emb[i, : int(mask[i].sum())] for i in range(len(batch))]

    @torch.no_grad()
    def generate(self, batch: MultimodalBatch, max_new_tokens: int = 64, do_sample: bool = False,
                 **kwargs) -> list[str]:
        """Decode answers through HF ``generate(inputs_embeds=...)`` (left padded, greedy by default)."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        kwargs.setdefault("synced_gpus", distributed and torch.distributed.get_world_size() > 1)
        with self._gathered():
            emb, mask, _ = self._assemble(batch, with_targets=False, left_pad=True)
            out = self.llm.generate(inputs_embeds=emb, attention_mask=mask, max_new_tokens=max_new_tokens,
                                    do_sample=do_sample, pad_token_id=self.tokenizer.pad_token_id,
                                    eos_token_id=self.tokenizer.eos_token_id, **kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def make_batch(self, video_feats, audio_feats, subtitles: list[str | None], tasks: list[str],
                   has_video: list[bool] | None = None, has_audio: list[bool] | None = None,
                   targets: list[str] | None = None) -> MultimodalBatch:
        """Build prompts for feature rows with the model's own prompt builder."""
        b = len(subtitles)
        has_video = list(has_video) if has_video is not None else [True] * b
        has_audio = list(has_audio) if has_audio is not None else [True] * b
        prompts = [self.prompts.prompt(subtitles[i], tasks[i], Modalities(has_video[i], has_audio[i]))
                   for i in range(b)]
        return MultimodalBatch(torch.as_tensor(video_feats), torch.as_tensor(audio_feats), has_video, has_audio,
                               prompts, targets)
