"""Checkpoint directories: save and load an ``AffectGPT`` without Ray, in safe formats only.

Layout (docs/architecture.md, "Checkpoint directory")::

    config.json                  AffectGPTConfig (architecture, encoder and LLM names, dims, prompts)
    head.safetensors             pooling, pre-fusion and projector weights
    adapter/                     LoRA adapter in the PEFT layout (adapter_config.json + safetensors)
    llm/                         full LLM weights, only when they cannot be named: a randomly
                                 initialised base, a fully trained LLM, or a LoRA-merged export
    tokenizer/                   tokenizer files, placeholder tokens included

A pretrained base named in ``config.json`` is not copied: it is loaded by name or path.
Loading refuses directories holding pickle-based weight files (``.bin``, ``.pt``, ...).
``uri`` may be a local path, ``s3://`` (through a local temp copy), or a model URI (``models:/NAME/VERSION``,
``models:/NAME@ALIAS``, ``runs:/RUN_ID/PATH``: downloaded once through the tracking store, ``registry.py``).
Every checkpoint also gets a model card, ``README.md`` (``model/card.py``).
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile
from pathlib import Path

import torch

from ray_emer import storage
from ray_emer.model.affectgpt import AffectGPT, build_llm
from ray_emer.model.config import AffectGPTConfig, TrainableConfig
from ray_emer.model.card import card_text
from ray_emer.model.head import MultimodalHead
from ray_emer.model.tokenizer import build_tokenizer
from ray_emer.errors import RayEmerError
from ray_emer.registry import is_model_uri, resolve_checkpoint

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class CheckpointError(RayEmerError, ValueError):
    """A checkpoint directory is missing a part or holds an unsafe file."""


def _plain_llm(model: AffectGPT, merge_lora: bool):
    """The LLM as a plain transformers model (LoRA merged or removed), leaving ``model`` untouched."""
    llm = copy.deepcopy(model.llm)
    if model.has_lora:
        llm = llm.merge_and_unload() if merge_lora else llm.unload()
    return llm


def _save_local(model: AffectGPT, path: Path, merge_lora: bool, card: dict | None) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(model.cfg.to_json())
    (path / "README.md").write_text(card_text(model.cfg, card))
    save_file({k: v.detach().contiguous().cpu() for k, v in model.head.state_dict().items()},
              str(path / "head.safetensors"))
    model.tokenizer.save_pretrained(str(path / "tokenizer"))
    full = model.cfg.trainable.llm == "full" or model.cfg.init == "random"
    if model.has_lora and not merge_lora:
        model.llm.save_pretrained(str(path / "adapter"))
    if full or (merge_lora and model.has_lora):
        _plain_llm(model, merge_lora=merge_lora).save_pretrained(str(path / "llm"))


def save_checkpoint(model: AffectGPT, uri: str, merge_lora: bool = False, card: dict | None = None) -> str:
    """Write the checkpoint directory to ``uri``; ``merge_lora`` exports one plain LLM for an engine. ``card``:
    what the model card tells besides the config (``card.card_text``: data, steps, scores, ...)."""
    if is_model_uri(uri):
        raise CheckpointError(f"{uri}: a model URI is read-only; export to a directory and register it")
    if not storage.is_remote(uri):
        _save_local(model, Path(uri), merge_lora, card)
        return uri
    with tempfile.TemporaryDirectory() as tmp:
        _save_local(model, Path(tmp), merge_lora, card)
        for file in sorted(Path(tmp).rglob("*")):
            if file.is_file():
                storage.write_bytes(storage.join(uri, file.relative_to(tmp).as_posix()), file.read_bytes())
    return uri


@contextlib.contextmanager
def _local_dir(uri: str):
    """The checkpoint as a local directory: a model URI resolved (downloaded once), ``s3://`` copied."""
    with storage.local_tree(resolve_checkpoint(uri)) as path:
        yield path


def _check_safe(path: Path) -> None:
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path}: no config.json, not an AffectGPT checkpoint directory")
    unsafe = [str(p.relative_to(path)) for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    if unsafe:
        raise CheckpointError(f"{path}: refusing pickle-based files {unsafe}; only safetensors/JSON are loaded")


def load_checkpoint(uri: str, dtype: torch.dtype = torch.float32, trainable: TrainableConfig | None = None,
                    device: str | torch.device = "cpu", seed: int | None = None) -> AffectGPT:
    """Rebuild the model a checkpoint describes; ``trainable`` overrides the saved setting (stage 2).

    Saved weights come back as saved whatever the seeds, and loading leaves the caller's random state
    alone. ``seed`` only matters when ``trainable`` asks for LoRA on a checkpoint without an adapter:
    the new adapter is initialised from it (default: the saved ``init_seed``), see ``set_trainable``.
    """
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    with _local_dir(uri) as path:
        _check_safe(path)
        cfg = AffectGPTConfig.from_json((path / "config.json").read_text())
        tokenizer = build_tokenizer(cfg, path=str(path / "tokenizer"))
        with torch.random.fork_rng(devices=[]):  # throwaway draws (the head before its weights load)
            if (path / "llm").is_dir():
                llm = AutoModelForCausalLM.from_pretrained(str(path / "llm"), dtype=dtype, use_safetensors=True)
            else:
                llm = build_llm(cfg, len(tokenizer), dtype)
            if (path / "adapter").is_dir():
                llm = PeftModel.from_pretrained(llm, str(path / "adapter"), is_trainable=True)
            head = MultimodalHead(cfg)
        head.load_state_dict(load_file(str(path / "head.safetensors")))
        model = AffectGPT(cfg, llm, tokenizer, head.to(dtype))
    model.set_trainable(trainable or cfg.trainable, seed=seed)
    return model.to(device)


def checkpoint_files(uri: str) -> list[str]:
    """Relative paths of the files in a checkpoint directory (for reports and tests)."""
    with _local_dir(uri) as path:
        return sorted(os.path.relpath(p, path) for p in path.rglob("*") if p.is_file())


def export_llm(model: AffectGPT, out_dir: str) -> str:
    """The LLM alone as a plain transformers model directory (LoRA merged) with the tokenizer: what an
    external engine (vLLM) serves. The head stays outside: it builds the prompt embeddings."""
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    _plain_llm(model, merge_lora=True).save_pretrained(str(path))
    model.tokenizer.save_pretrained(str(path))
    return str(path)


def checkpoint_id(uri: str) -> str:
    """``<name>@<sha256[:12]>`` of the files that define a checkpoint's weights (config, head, adapter):
    label rows name the exact model that wrote them. A model URI is resolved first (``NAME-vVERSION@...``)."""
    import hashlib

    uri = resolve_checkpoint(uri)
    digest = hashlib.sha256()
    for rel in ("config.json", "head.safetensors", "adapter/adapter_model.safetensors"):
        target = storage.join(uri, rel)
        if storage.exists(target):
            digest.update(rel.encode() + storage.read_bytes(target))
    return f"{storage.basename(uri)}@{digest.hexdigest()[:12]}"


def random_checkpoint(uri: str, preset: str = "tiny", seed: int = 0) -> str:
    """A checkpoint of ``preset`` with random weights (seeded): what benchmarks and tests run when no trained one
    is given. Returns its URI."""
    from ray_emer.model.config import get_preset

    torch.manual_seed(seed)
    return save_checkpoint(AffectGPT.build(get_preset(preset)), uri)
