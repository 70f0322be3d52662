"""FSDP2 as a function applied to a plain ``AffectGPT`` (rule 7), plus distributed state dicts.

``shard_model`` wraps every LLM decoder block, then the root (head, embeddings, final
norm, lm_head) with ``fully_shard``. It needs an initialised process group (gloo on
CPU, NCCL on GPUs) and nothing from Ray. ``full_state_dict`` gathers the unsharded
weights on rank 0 for the exported checkpoint; ``sharded_state`` / ``load_sharded_state``
are the per-rank model + optimizer state that torch.distributed.checkpoint writes.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ray_emer.model.affectgpt import AffectGPT


def decoder_layers(model: AffectGPT) -> list[nn.Module]:
    """The LLM's decoder blocks, LoRA-wrapped or not."""
    llm = model.llm.get_base_model() if model.has_lora else model.llm
    layers = getattr(getattr(llm, "model", llm), "layers", None)
    if layers is None:
        raise ValueError(f"cannot find decoder layers in {type(llm).__name__}")
    return list(layers)


def shard_model(model: AffectGPT, param_dtype: torch.dtype | None = None) -> AffectGPT:
    """Apply FSDP2 in place: each decoder block is one unit, the root holds the rest."""
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    for layer in decoder_layers(model):
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    return model


def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)}


def load_sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_model_state_dict(model, state["model"])
    set_optimizer_state_dict(model, optimizer, state["optim"])


def full_state_dict(model: nn.Module) -> dict:
    """Unsharded CPU state dict on rank 0 (a collective: every rank must call it)."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def state_fingerprint(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> dict:
    """This rank's training state in a few numbers (float64 sums of its parameter and optimizer-moment shards,
    the optimizer's step counts, the scheduler's position): equal before a save and after a load, or the
    resume did not restore what was saved."""
    params = [_local(p).double() for p in model.parameters()]
    moments, steps = 0.0, []
    for st in optimizer.state.values():
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                moments += float(_local(st[key]).double().sum())
        if "step" in st:
            steps.append(float(_local(st["step"])))
    return {"params": float(sum(p.sum() for p in params)), "params_abs": float(sum(p.abs().sum() for p in params)),
            "moments": moments, "optimizer_steps": sorted(set(steps)), "scheduler_epoch": int(scheduler.last_epoch),
            "lr": float(scheduler.get_last_lr()[0])}
