"""``AffectGPT``: the trainable head plus the LLM (optionally LoRA-wrapped), on feature rows.

It never sees pixels or text: a ``MultimodalBatch`` (built by ``AffectGPTProcessor``,
the one place prompts become token ids) carries token ids with placeholder tokens, the
cached features and the flags saying which modalities exist, plus loss labels for
training. The same object serves training (``forward`` -> loss on answer tokens only),
labelling (``generate`` through HF ``inputs_embeds``) and external engines
(``prompt_embeddings`` -> ``[L, H]`` per sample for vLLM's prompt embeds).
``PromptEmbedder`` is the part that builds prompt embeddings (head + the LLM's input
embedding table) without the decoder, for engines that hold the LLM themselves.
"""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from torch import nn

from ray_emer.model.config import AffectGPTConfig, LoRASettings, TrainableConfig
from ray_emer.model.head import MultimodalHead
from ray_emer.model.processing import IGNORE, AffectGPTProcessor, MultimodalBatch
from ray_emer.model.seeding import seeded, sub_seed
from ray_emer.model.tokenizer import build_tokenizer

__all__ = ["IGNORE", "AffectGPT", "MultimodalBatch", "PromptEmbedder", "build_llm"]

def build_llm(cfg: AffectGPTConfig, vocab_size: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.init == "pretrained":
        return AutoModelForCausalLM.from_pretrained(cfg.llm_name, dtype=dtype)
    kwargs = dict(cfg.llm_config)
    kwargs.setdefault("vocab_size", vocab_size)
    conf = AutoConfig.for_model(kwargs.pop("model_type", "qwen2"), **kwargs)
    return AutoModelForCausalLM.from_config(conf, dtype=dtype)


def apply_trainable(llm: nn.Module, head: nn.Module, t: TrainableConfig, lora: LoRASettings,
                    seed: int | None = None) -> nn.Module:
    """Set ``requires_grad`` per component and return the LLM (LoRA-wrapped or merged as asked).

    LoRA adapters added here are initialised from ``sub_seed(seed, "lora")`` (from the caller's
    random state when ``seed`` is None, as on the meta device where nothing is drawn).
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if t.head not in ("frozen", "full"):
        raise ValueError(f"head can be frozen or full, not {t.head!r}")
    head.requires_grad_(t.head == "full")
    if t.llm == "lora" and not isinstance(llm, PeftModel):
        with seeded(sub_seed(seed, "lora")) if seed is not None else contextlib.nullcontext():
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


def token_rows(head: MultimodalHead, batch: MultimodalBatch, device: torch.device) -> dict[str, torch.Tensor]:
    """Per modality, the head's tokens for the samples that have it: ``{kind: [N_kind, H]}``."""
    tokens = head(batch.video_feats.to(device), batch.audio_feats.to(device))
    present = {"video": list(batch.has_video), "audio": list(batch.has_audio),
               "fused": [v and a for v, a in zip(batch.has_video, batch.has_audio, strict=True)]}
    rows = {k: tokens[k][torch.tensor(present[k], device=device, dtype=torch.bool)] for k in tokens}
    if batch.image_feats is not None and batch.has_image is not None:
        mask = torch.tensor(batch.has_image, device=device, dtype=torch.bool)
        rows["image"] = head.image(batch.image_feats.to(device))[mask]
    return rows


def splice(embed: nn.Module, ids: torch.Tensor, rows: dict[str, torch.Tensor], placeholder_ids: dict[str, int],
           pad_id: int) -> torch.Tensor:
    """Text embeddings ``[B, L, H]`` with each placeholder position replaced by its modality row.

    Fails with both numbers when the placeholders in the token ids and the feature rows disagree (rule 5).
    """
    masks = {k: ids == tid for k, tid in placeholder_ids.items()}
    for kind, m in masks.items():
        n_slots, n_rows = int(m.sum()), int(rows[kind].shape[0]) if kind in rows else 0
        if n_slots != n_rows:
            raise ValueError(f"{n_slots} {kind} placeholder token(s) in the prompts but {n_rows} {kind} "
                             f"feature row(s) in the batch")
    any_slot = torch.stack(list(masks.values())).any(0)
    emb = embed(ids.masked_fill(any_slot, pad_id))
    for kind, m in masks.items():
        if kind in rows and rows[kind].shape[0]:
            emb = emb.masked_scatter(m.unsqueeze(-1), rows[kind].to(emb.dtype))
    return emb


def unpadded(emb: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """``[B, L, H]`` + mask -> per sample ``[L_i, H]`` without padding (either side)."""
    return [emb[i][mask[i].bool()] for i in range(emb.shape[0])]


class AffectGPT(nn.Module):
    def __init__(self, cfg: AffectGPTConfig, llm: nn.Module, tokenizer, head: MultimodalHead | None = None) -> None:
        super().__init__()
        self.cfg, self.llm, self.tokenizer = cfg, llm, tokenizer
        self.head = head if head is not None else MultimodalHead(cfg)
        self.processor = AffectGPTProcessor(cfg, tokenizer)

    @classmethod
    def build(cls, cfg: AffectGPTConfig, dtype: torch.dtype = torch.float32, tokenizer=None,
              seed: int | None = None) -> AffectGPT:
        """Tokenizer, LLM (pretrained or random from ``cfg.llm_config``), head; then ``cfg.trainable``.

        The head, a random LLM and LoRA adapters are initialised from ``seed`` (training passes its
        own seed), recorded as ``cfg.init_seed``; ``seed=None`` uses ``cfg.init_seed``. Same seed, same
        weights, whatever the caller's random state; ``cfg.encoders.seed`` plays no part here.
        """
        if seed is not None:
            cfg.init_seed = int(seed)
        tokenizer = tokenizer if tokenizer is not None else build_tokenizer(cfg)
        with seeded(cfg.init_seed):
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

    def set_trainable(self, t: TrainableConfig, seed: int | None = None) -> None:
        """Apply ``frozen | full | lora`` per component; LoRA adapters are added when first asked for,
        initialised from ``seed`` (default ``cfg.init_seed``; an explicit seed that adds them is recorded
        there). Existing weights and adapters are never re-drawn."""
        adds_lora = t.llm == "lora" and not self.has_lora
        self.llm = apply_trainable(self.llm, self.head, t, self.cfg.lora,
                                   seed=self.cfg.init_seed if seed is None else seed)
        if adds_lora and seed is not None:
            self.cfg.init_seed = int(seed)
        self.cfg.trainable = dataclasses.replace(t)

    def parameter_table(self) -> dict[str, dict[str, int]]:
        return parameter_table(self.named_parameters())

    # ------------------------------------------------------------ embeddings
    @property
    def device(self) -> torch.device:
        return self.head.video_proj.weight.device

    def embed(self, batch: MultimodalBatch) -> torch.Tensor:
        """``inputs_embeds [B, L, H]``: token embeddings with the head's rows at the placeholders."""
        rows = token_rows(self.head, batch, self.device)
        return splice(self.llm.get_input_embeddings(), batch.input_ids.to(self.device), rows,
                      self.processor.placeholder_ids, self.tokenizer.pad_token_id)

    def llm_inputs(self, batch: MultimodalBatch) -> dict[str, torch.Tensor]:
        """What the LLM gets for a training batch: padded rows (``inputs_embeds``, ``attention_mask``,
        ``labels``), or, for a packed batch, the shared rows with ``position_ids`` restarting per sample and
        no attention mask (transformers then keeps attention inside each sample) and no KV cache."""
        if batch.labels is None:
            raise ValueError("training needs a batch with targets (processor(..., targets=...))")
        emb, dev = self.embed(batch), self.device
        if batch.packed is None:
            return {"inputs_embeds": emb, "attention_mask": batch.attention_mask.to(dev),
                    "labels": batch.labels.to(dev)}
        p = batch.packed
        index = p.index.to(dev)
        flat = emb.reshape(-1, emb.shape[-1])[index.clamp(min=0)]
        packed = torch.where((index >= 0).unsqueeze(-1), flat, torch.zeros((), dtype=flat.dtype, device=dev))
        return {"inputs_embeds": packed, "position_ids": p.position_ids.to(dev), "labels": p.labels.to(dev),
                "use_cache": False}

    # ------------------------------------------------------------ public API
    def forward(self, batch: MultimodalBatch):
        """Causal-LM output whose ``loss`` is the mean over the answer tokens (and end-of-answer) of every
        sample, the same whether the batch is padded or packed."""
        return self.llm(**self.llm_inputs(batch))

    def sample_losses(self, batch: MultimodalBatch) -> torch.Tensor:
        """Per sample, the mean loss over its own answer tokens ``[B]`` (padded or packed alike)."""
        inputs = self.llm_inputs(batch)
        labels = inputs.pop("labels")
        logits = self.llm(**inputs).logits.float()
        if batch.packed is None:
            owner = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
        else:
            owner = batch.packed.sample.to(labels.device)
        target, owner = labels[:, 1:], owner[:, 1:]  # position t predicts token t + 1
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), target.reshape(-1),
                                                ignore_index=IGNORE, reduction="none")
        keep = (target.reshape(-1) != IGNORE)
        who = owner.reshape(-1)[keep]
        n = len(batch)
        total = torch.zeros(n, device=nll.device).index_add(0, who, nll[keep])
        count = torch.zeros(n, device=nll.device).index_add(0, who, torch.ones_like(nll[keep]))
        return total / count.clamp(min=1)

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
            return unpadded(self.embed(batch), batch.attention_mask.to(self.device))

    @torch.no_grad()
    def generate(self, batch: MultimodalBatch, max_new_tokens: int = 64, do_sample: bool = False,
                 **kwargs) -> list[str]:
        """Decode answers through HF ``generate(inputs_embeds=...)`` (left padded, greedy by default)."""
        out = self.generate_ids(batch, max_new_tokens, do_sample, **kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    @torch.no_grad()
    def generate_ids(self, batch: MultimodalBatch, max_new_tokens: int = 64, do_sample: bool = False,
                     **kwargs) -> torch.Tensor:
        """The answer token ids ``[B, <= max_new_tokens]`` of ``generate`` (padding after end-of-answer)."""
        if not batch.left_padded:
            raise ValueError("generation needs a left-padded batch (the processor pads left without targets)")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        kwargs.setdefault("synced_gpus", distributed and torch.distributed.get_world_size() > 1)
        with self._gathered():
            out = self.llm.generate(inputs_embeds=self.embed(batch), attention_mask=batch.attention_mask.to(self.device),
                                    max_new_tokens=max_new_tokens, do_sample=do_sample,
                                    pad_token_id=self.tokenizer.pad_token_id,
                                    eos_token_id=self.tokenizer.eos_token_id, **kwargs)
        return out


    def prompt_embedder(self) -> PromptEmbedder:
        """A detached copy of the parts that build prompt embeddings (head + input embedding table)."""
        import copy

        embed = self.llm.get_input_embeddings()
        table = nn.Embedding.from_pretrained(embed.weight.detach().clone(), freeze=True)
        return PromptEmbedder(copy.deepcopy(self.head).requires_grad_(False), table, self.processor)


class PromptEmbedder(nn.Module):
    """Prompt embeddings without the decoder: for engines (vLLM) that hold the LLM in their own memory."""

    def __init__(self, head: MultimodalHead, embed: nn.Embedding, processor: AffectGPTProcessor) -> None:
        super().__init__()
        self.head, self.embed_tokens, self.processor = head, embed, processor

    @property
    def hidden_size(self) -> int:
        return int(self.embed_tokens.weight.shape[1])

    @torch.no_grad()
    def forward(self, batch: MultimodalBatch) -> list[torch.Tensor]:
        """Per sample ``[L_i, H]``, equal to ``AffectGPT.prompt_embeddings`` of the same batch."""
        dev = self.embed_tokens.weight.device
        rows = token_rows(self.head, batch, dev)
        emb = splice(self.embed_tokens, batch.input_ids.to(dev), rows, self.processor.placeholder_ids,
                     self.processor.tokenizer.pad_token_id)
        return unpadded(emb, batch.attention_mask.to(dev))
