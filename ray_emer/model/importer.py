"""Import the published AffectGPT weights (ICML'25 release) into a ray_emer checkpoint directory.

The published training runner (``my_affectgpt/runners/runner_base.py``, ``_save_checkpoint``) writes
``torch.save({"model", "optimizer", "config", "scaler", "epoch"})`` where ``"model"`` is the model's
``state_dict()`` minus every frozen parameter (the head and the LoRA tensors of the LLM). This module reads
that file without unpickling arbitrary objects (``torch.load(weights_only=True)``, or a flat safetensors
file), has ``published.py`` map and check it against the preset's architecture, and writes ``config.json``,
``head.safetensors``, the PEFT ``adapter/`` and ``tokenizer/`` (see ``checkpoint.py``), staged so that a
failed import leaves nothing behind. Optimizer and scaler state are for resuming the published trainer:
reported, dropped.

No network: the layout comes from the preset's architecture on the meta device, the tokenizer from
``tokenizer=PATH`` or a local copy (a folder, the Hugging Face cache). Without one, ``tokenizer/`` is left
out and resolved where the checkpoint is loaded (where the base LLM must be anyway).
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
from ray_emer.model.tokenizer import TokenizerError, build_tokenizer


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
    # PEFT writes the adapter as it does for a trained model (names without ".default", adapter_config.json);
    # the file holds no embedding weights, so PEFT need not look the base model up (on the Hub) to decide
    llm.save_pretrained(str(path / "adapter"), state_dict={k: v.contiguous() for k, v in mapped["lora"].items()},
                        save_embedding_layers=False)
    if tokenizer is not None:
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


def _tokenizer(cfg: AffectGPTConfig, path: str | None):
    """``(tokenizer or None, report)``: from ``path`` (which must hold one), else a local copy of the preset's;
    None (``tokenizer/`` left out, resolved at load) when there is none here. Never the network."""
    if path is not None:
        if storage.is_remote(path) or not Path(path).is_dir():
            raise CheckpointError(f"--tokenizer {path}: not a local folder")
        try:
            return build_tokenizer(cfg, path=path), {"written": True, "from": path}
        except TokenizerError as exc:
            raise CheckpointError(f"--tokenizer {path}: {exc}") from exc
    name = "tiny" if cfg.tokenizer == "tiny" else cfg.tokenizer or cfg.llm_name
    try:
        return build_tokenizer(cfg, local_only=True), {"written": True, "from": name}
    except TokenizerError as exc:
        if Path(name).is_dir():  # a local folder is what loading would read too: it lacks the tokenizer
            raise CheckpointError(f"cannot load the tokenizer for tokenizer/ from the preset's folder {name}: "
                                  f"{exc}") from exc
        return None, {"written": False, "from": name,
                      "why": f"{exc}; loading the checkpoint resolves it (or import again with --tokenizer PATH)"}


def _vocab_size(cfg: AffectGPTConfig, tokenizer) -> int:
    """The LLM's vocabulary for the meta model: the preset's ``llm_config.vocab_size``, else the tokenizer's."""
    if "vocab_size" in cfg.llm_config:
        return int(cfg.llm_config["vocab_size"])
    if tokenizer is None:
        raise CheckpointError(f"the preset's llm_config has no vocab_size and its tokenizer is not here "
                              f"({cfg.tokenizer or cfg.llm_name!r}); set llm_config.vocab_size or give "
                              "--tokenizer PATH")
    return len(tokenizer)


def import_published(file: str, out: str, preset: str | AffectGPTConfig = "affectgpt-qwen2.5-7b",
                     tokenizer: str | None = None) -> dict:
    """The published AffectGPT checkpoint ``file`` -> a ray_emer checkpoint directory ``out``.

    ``preset``: a preset name, a checkpoint directory (its ``config.json``) or a config; its LLM must be a
    pretrained one named in the config (the file holds LoRA deltas, not the base weights). ``tokenizer``: a
    local tokenizer folder for ``tokenizer/`` (default: the preset's, when a local copy exists). Returns a
    JSON-able report: what was mapped, what was ignored, the tokenizer, and where ray_emer computes something
    else.
    """
    cfg = resolve_model_config(preset) if isinstance(preset, str) else dataclasses.replace(preset)
    if cfg.init != "pretrained":
        raise CheckpointError(f"preset {cfg.preset!r} builds a random LLM (init={cfg.init}); the published file "
                              "holds LoRA deltas for a named pretrained LLM, so import needs a pretrained preset")
    _check_out_free(out)
    tok, tok_report = _tokenizer(cfg, tokenizer)
    found = read_published(file)
    source = check_source(found.config, cfg)
    head, llm = meta_model(cfg, _vocab_size(cfg, tok))
    layout = published_layout(head, llm)
    mapped = map_published(found.state, layout)
    nonfinite = sorted(k for part in mapped.values() for k, v in part.items() if not torch.isfinite(v).all())
    if nonfinite:
        raise CheckpointError(f"{file}: {len(nonfinite)} tensors hold NaN or inf, e.g. {nonfinite[:3]}")
    with _staging(out) as tmp:
        _write(tmp, cfg, mapped, llm, tok)
    dtypes = Counter(str(t.dtype).removeprefix("torch.") for t in found.state.values())
    return {
        "out": out, "preset": cfg.preset, "llm": cfg.llm_name,
        "source": {"file": file, "container": found.container, "epoch": found.epoch, "tensors": len(found.state),
                   "dtypes": dict(dtypes), **source},
        "mapped": {part: len(v) for part, v in mapped.items()} | {
            "params": sum(t.numel() for part in mapped.values() for t in part.values())},
        "ignored": found.ignored,
        "tokenizer": tok_report,
        "differences": fusion_differences(mapped["head"], cfg.fusion_weights) if cfg.fusion == "attention" else [],
        "files": checkpoint_files(out),
    }
