"""Import the published AffectGPT weights (ICML'25 release) into a ray_emer checkpoint directory.

The published training runner (``my_affectgpt/runners/runner_base.py``, ``_save_checkpoint``) writes
``torch.save({"model", "optimizer", "config", "scaler", "epoch"})`` where ``"model"`` is the model's
``state_dict()`` minus every frozen parameter (the head and the LoRA tensors of the LLM). This module reads
that file without unpickling arbitrary objects (``torch.load(weights_only=True)``, or a flat safetensors
file), has ``published.py`` map and check it against the preset's architecture, and writes ``config.json``,
``head.safetensors``, the PEFT ``adapter/`` and ``tokenizer/`` (see ``checkpoint.py``), staged so that a
failed import leaves nothing behind. Optimizer and scaler state are for resuming the published trainer:
reported, dropped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import shutil
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ray_emer import storage
from ray_emer.model.checkpoint import CheckpointError, checkpoint_files
from ray_emer.model.config import AffectGPTConfig, resolve_model_config
from ray_emer.model.published import (check_source, fusion_differences, map_published, meta_model,
                                      published_layout)
from ray_emer.model.tokenizer import build_tokenizer


# ---------------------------------------------------------------- reading the file
def _refusal(exc: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused (e.g. the blocked global)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file an issue"))]
    return useful[0] if useful else (lines[0] if lines else type(exc).__name__)


def _torch_load(path: str, name: str):
    with open(path, "rb") as fh:
        legacy = fh.read(1) == b"\x80"  # torch.save before 1.6 wrote a bare pickle (protocol 2+)
    if not (legacy or zipfile.is_zipfile(path)):
        raise CheckpointError(f"{name}: not a readable torch checkpoint (neither a torch.save archive nor a pickle)")
    try:  # mmap: the optimizer state (twice the weights) is never read into memory; legacy files cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True, mmap=not legacy)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{name}: refusing to unpickle: the file holds objects other than tensors and plain "
                              f"values, and only those are loaded (torch.load weights_only=True: "
                              f"{_refusal(exc)})") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{name}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from exc


def _describe(value) -> str:
    """A short description of an ignored entry: tensor counts for state dicts, the value for scalars."""
    tensors: list[torch.Tensor] = []

    def walk(v):
        if isinstance(v, torch.Tensor):
            tensors.append(v)
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)

    walk(value)
    if tensors:
        return f"{len(tensors)} tensors, {sum(t.numel() for t in tensors):,} values"
    if isinstance(value, dict):
        return f"dict with {len(value)} keys"
    return repr(value)


IGNORED_WHY = {"optimizer": "optimizer state, for resuming the published trainer",
               "scaler": "AMP grad-scaler state, for resuming the published trainer",
               "config": "the published training config (read for the checks below, not stored)",
               "epoch": "training epoch"}


@dataclasses.dataclass
class Published:
    """What a published file holds: model weights, its training config, and what the import leaves out."""

    state: dict[str, torch.Tensor]
    container: str  # "training checkpoint" | "state dict" | "safetensors"
    config: dict | None = None
    epoch: int | None = None
    ignored: dict[str, str] = dataclasses.field(default_factory=dict)


def read_published(file: str) -> Published:
    """The published runner's dict (``"model"`` + optimizer/scaler/config/epoch), a bare state dict, or a
    flat ``.safetensors`` file; every top-level entry that is not model weights is described in ``ignored``."""
    with storage.local_copy(file) as path:
        if path.endswith(".safetensors"):
            try:
                return Published(load_file(path), "safetensors")
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from exc
        obj = _torch_load(path, file)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        config = obj.get("config") if isinstance(obj.get("config"), dict) else None
        epoch = obj.get("epoch") if isinstance(obj.get("epoch"), int) else None
        ignored = {k: f"{IGNORED_WHY.get(k, 'not model weights')}: {_describe(v)}"
                   for k, v in obj.items() if k != "model"}
        found = Published(obj["model"], "training checkpoint", config, epoch, ignored)
    elif isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = Published(obj, "state dict")
    else:
        raise CheckpointError(f"{file}: unknown container {type(obj).__name__}: expected the published runner's "
                              "dict with a 'model' state dict, or a state dict of tensors")
    bad = sorted(str(k) for k, v in found.state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{file}: 'model' holds non-tensor entries {bad[:5]}")
    return found


# ---------------------------------------------------------------- writing the checkpoint
def _write(path: Path, cfg: AffectGPTConfig, mapped: dict, llm, tokenizer) -> None:
    (path / "config.json").write_text(cfg.to_json())
    save_file({k: v.contiguous() for k, v in mapped["head"].items()}, str(path / "head.safetensors"))
    llm.peft_config["default"].base_model_name_or_path = cfg.llm_name or None
    # PEFT writes the adapter as it does for a trained model (names without ".default", adapter_config.json)
    llm.save_pretrained(str(path / "adapter"), state_dict={k: v.contiguous() for k, v in mapped["lora"].items()})
    tokenizer.save_pretrained(str(path / "tokenizer"))


def _check_out_free(out: str) -> None:
    if storage.is_remote(out):
        taken = storage.exists(out) and bool(storage.list_files(out))
    else:
        taken = Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir()))
    if taken:
        raise CheckpointError(f"{out}: exists and is not empty; import into a new directory")


@contextlib.contextmanager
def _staging(out: str):
    """A local folder to write into; moved to ``out`` (or uploaded to an s3:// ``out``) only when complete."""
    parent = None if storage.is_remote(out) else Path(out).resolve().parent
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=parent))
    try:
        yield tmp
        if storage.is_remote(out):
            for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
                storage.write_bytes(storage.join(out, file.relative_to(tmp).as_posix()), file.read_bytes())
        else:
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(out)  # an empty directory (checked above) gives way to the finished one
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer(cfg: AffectGPTConfig):
    try:
        return build_tokenizer(cfg)
    except (OSError, ValueError) as exc:
        name = cfg.tokenizer or cfg.llm_name
        raise CheckpointError(f"cannot load the tokenizer of {name!r} for tokenizer/ (the checkpoint needs it): "
                              f"{exc}. Point the preset at a local copy of the LLM or make it reachable.") from exc


def import_published(file: str, out: str, preset: str | AffectGPTConfig = "affectgpt-qwen2.5-7b") -> dict:
    """The published AffectGPT checkpoint ``file`` -> a ray_emer checkpoint directory ``out``.

    ``preset``: a preset name, a checkpoint directory (its ``config.json``) or a config; its LLM must be a
    pretrained one named in the config (the file holds LoRA deltas, not the base weights). Returns a
    JSON-able report: what was mapped, what was ignored, and where ray_emer computes something else.
    """
    cfg = resolve_model_config(preset) if isinstance(preset, str) else dataclasses.replace(preset)
    if cfg.init != "pretrained":
        raise CheckpointError(f"preset {cfg.preset!r} builds a random LLM (init={cfg.init}); the published file "
                              "holds LoRA deltas for a named pretrained LLM, so import needs a pretrained preset")
    _check_out_free(out)
    found = read_published(file)
    source = check_source(found.config, cfg)
    head, llm = meta_model(cfg)
    layout = published_layout(head, llm)
    mapped = map_published(found.state, layout)
    nonfinite = sorted(k for part in mapped.values() for k, v in part.items() if not torch.isfinite(v).all())
    if nonfinite:
        raise CheckpointError(f"{file}: {len(nonfinite)} tensors hold NaN or inf, e.g. {nonfinite[:3]}")
    tokenizer = _tokenizer(cfg)
    with _staging(out) as tmp:
        _write(tmp, cfg, mapped, llm, tokenizer)
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in found.state.values())
    return {
        "out": out, "preset": cfg.preset, "llm": cfg.llm_name,
        "source": {"file": file, "container": found.container, "epoch": found.epoch, "tensors": len(found.state),
                   "dtypes": dict(dtypes), **source},
        "mapped": {part: len(v) for part, v in mapped.items()} | {
            "params": sum(t.numel() for part in mapped.values() for t in part.values())},
        "ignored": found.ignored,
        "differences": fusion_differences(mapped["head"], cfg.fusion_weights) if cfg.fusion == "attention" else [],
        "files": checkpoint_files(out),
    }
