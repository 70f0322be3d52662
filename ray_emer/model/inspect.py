"""Parameter tables without weights: a preset built on the ``meta`` device (no download, no memory).

This is the faithfulness check for the published setup: the trainable count of
``affectgpt-qwen2.5-7b`` (LoRA on every projection of Qwen2.5-7B plus the head) can be
compared with the paper's ~57 M without fetching a single weight.
"""

from __future__ import annotations

import dataclasses

import torch

from ray_emer.model.affectgpt import apply_trainable, build_llm, parameter_table
from ray_emer.model.config import AffectGPTConfig, TrainableConfig, get_preset, resolve_model_config
from ray_emer.model.encoders import Encoders
from ray_emer.model.head import MultimodalHead
from ray_emer.model.tokenizer import build_tokenizer


def _vocab_size(cfg: AffectGPTConfig) -> int:
    if "vocab_size" in cfg.llm_config:
        return int(cfg.llm_config["vocab_size"])
    return len(build_tokenizer(cfg))


def inspect_model(cfg: AffectGPTConfig | str, trainable: TrainableConfig | None = None,
                  encoders: bool = True) -> dict:
    """``{"preset", "total_params", "trainable_params", "components": {name: {params, trainable}}}``."""
    cfg = get_preset(cfg) if isinstance(cfg, str) else cfg
    random_cfg = dataclasses.replace(cfg, init="random")
    vocab = _vocab_size(cfg)
    with torch.device("meta"):
        llm = build_llm(random_cfg, vocab)
        head = MultimodalHead(cfg)
        llm = apply_trainable(llm, head, trainable or cfg.trainable, cfg.lora)
        named = [(f"head.{n}", p) for n, p in head.named_parameters()] + list(llm.named_parameters())
        if encoders:
            enc = Encoders.build(random_cfg, device="meta")
            named += [(f"encoders.{n}", p) for n, p in enc.named_parameters()]
    table = parameter_table(named)
    return {
        "preset": cfg.preset,
        "trainable_setting": dataclasses.asdict(trainable or cfg.trainable),
        "total_params": sum(r["params"] for r in table.values()),
        "trainable_params": sum(r["trainable"] for r in table.values()),
        "components": table,
    }


def format_table(report: dict) -> str:
    lines = [f"preset {report['preset']}  trainable setting {report['trainable_setting']}",
             f"{'component':<22}{'params':>16}{'trainable':>16}"]
    for name, row in sorted(report["components"].items()):
        lines.append(f"{name:<22}{row['params']:>16,}{row['trainable']:>16,}")
    lines.append(f"{'total':<22}{report['total_params']:>16,}{report['trainable_params']:>16,}")
    return "\n".join(lines)


def inspect_preset(preset: str, overrides: list[str] | None = None, encoders: bool = True) -> dict:
    """``ray-emer model inspect``: a preset name or checkpoint directory, with dotted config overrides."""
    return inspect_model(resolve_model_config(preset, overrides), encoders=encoders)
