"""Import the published AffectGPT weights (ICML'25 release) into a ray_emer checkpoint directory.

The published training runner (``my_affectgpt/runners/runner_base.py``, ``_save_checkpoint``) writes
``torch.save({"model", "optimizer", "config", "scaler", "epoch"})`` where ``"model"`` is the model's
``state_dict()`` minus every frozen parameter: the head (``my_affectgpt/models/affectgpt.py``, attention
fusion setup) and the PEFT LoRA tensors of the LLM. This module reads that file without unpickling
arbitrary objects (``torch.load(weights_only=True)``, or a flat safetensors file), checks it against the
preset's architecture built on the meta device (names and shapes, so the 7B LLM is never materialised),
and writes ``config.json``, ``head.safetensors``, the PEFT ``adapter/`` and ``tokenizer/``
(see ``checkpoint.py``). Optimizer and scaler state are for resuming the published trainer: reported, dropped.

Published name -> ray_emer name (``PUBLISHED_HEAD``; ``.weight``/``.bias`` keep their leaf)::

    video_attention_mlp  video_pool.score     affectgpt_proj    video_proj
    audio_attention_mlp  audio_pool.score     audio_llama_proj  audio_proj
    multi_video_embs     fusion.video_in      multi_audio_embs  fusion.audio_in
    attention_mlp        fusion.attention     fc_att            fusion.weights
    multi_llama_proj     fusion.out           image_llama_proj  image_proj
    llama_model.<peft name>                   <peft name> (adapter; saved without ".default")
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

from ray_emer import storage
from ray_emer.model.checkpoint import CheckpointError, checkpoint_files
from ray_emer.model.config import AffectGPTConfig, TrainableConfig, resolve_model_config

PUBLISHED_HEAD = {
    "video_attention_mlp": "video_pool.score", "affectgpt_proj": "video_proj",
    "audio_attention_mlp": "audio_pool.score", "audio_llama_proj": "audio_proj",
    "multi_video_embs": "fusion.video_in", "multi_audio_embs": "fusion.audio_in",
    "attention_mlp": "fusion.attention", "fc_att": "fusion.weights", "multi_llama_proj": "fusion.out",
    "image_llama_proj": "image_proj",
}
LLM_PREFIX = "llama_model."  # the published model holds the PEFT-wrapped LLM as ``llama_model``
PUBLISHED_LORA_ALPHA = 32  # hard-coded in the published LoraConfig (r comes from its config, dropout 0.05)
# The published config.py maps these names to local model folders; the preset must name the same models.
PUBLISHED_MODELS = {
    "llama_model": ("llm_name", {"Qwen25": "Qwen2.5-7B-Instruct"}),
    "visual_encoder": ("encoders.vision_name", {"CLIP_VIT_LARGE": "clip-vit-large-patch14"}),
    "acoustic_encoder": ("encoders.audio_name", {"HUBERT_LARGE": "chinese-hubert-large"}),
}
# Parts of published variants ray_emer's head cannot represent (named in the error for an unknown key).
VARIANTS = {
    "video_Qformer": "the video Q-Former (video_fusion_type: qformer)",
    "video_query_tokens": "the video Q-Former (video_fusion_type: qformer)",
    "video_frame_position_embedding": "the video Q-Former (video_fusion_type: qformer)",
    "audio_Qformer": "the audio Q-Former (audio_fusion_type: qformer)",
    "audio_query_tokens": "the audio Q-Former (audio_fusion_type: qformer)",
    "audio_position_embedding": "the audio Q-Former (audio_fusion_type: qformer)",
    "multi_Qformer": "the Q-Former pre-fusion (multi_fusion_type: qformer)",
    "multi_query_tokens": "the Q-Former pre-fusion (multi_fusion_type: qformer)",
    "multi_position_embedding": "the Q-Former pre-fusion (multi_fusion_type: qformer)",
    "visual_encoder": "trained encoder weights (ray_emer's encoders are frozen pretrained towers)",
    "acoustic_encoder": "trained encoder weights (ray_emer's encoders are frozen pretrained towers)",
    "llama_model": "LLM weights other than LoRA deltas for this preset's targets",
}
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
            from safetensors import SafetensorError
            from safetensors.torch import load_file

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


# ---------------------------------------------------------------- the layout the preset expects
def _meta_model(cfg: AffectGPTConfig):
    """The preset's head and LoRA-wrapped LLM on the meta device: names and shapes, no memory, no download."""
    from ray_emer.model.affectgpt import apply_trainable, build_llm
    from ray_emer.model.head import MultimodalHead
    from ray_emer.model.inspect import _vocab_size

    with torch.device("meta"):
        llm = build_llm(dataclasses.replace(cfg, init="random"), _vocab_size(cfg))
        head = MultimodalHead(cfg)
        llm = apply_trainable(llm, head, TrainableConfig(head="full", llm="lora"), cfg.lora)
    return head, llm


def published_layout(head, llm) -> dict[str, tuple[str, str, tuple[int, ...]]]:
    """Published key -> ``(part, ray_emer key, shape)``, part ``head`` or ``lora``, for one meta model."""
    ours = {v: k for k, v in PUBLISHED_HEAD.items()}
    layout = {}
    for name, p in head.named_parameters():
        module, leaf = name.rsplit(".", 1)
        if module not in ours:
            raise CheckpointError(f"head parameter {name!r} has no published counterpart")
        layout[f"{ours[module]}.{leaf}"] = ("head", name, tuple(p.shape))
    for name, p in llm.named_parameters():
        if "lora_" in name:
            layout[LLM_PREFIX + name] = ("lora", name, tuple(p.shape))
    return layout


def _why_unknown(key: str) -> str:
    for prefix, why in VARIANTS.items():
        if key.startswith(prefix):
            return f"{key} ({why})"
    return key


def map_published(state: dict[str, torch.Tensor], layout: dict) -> dict[str, dict[str, torch.Tensor]]:
    """``{"head": {...}, "lora": {...}}`` in ray_emer names; every key mapped, none missing, shapes equal."""
    extra = sorted(set(state) - set(layout))
    missing = sorted(set(layout) - set(state))
    shapes = [f"{k}: {tuple(state[k].shape)} in the file, {layout[k][2]} expected"
              for k in sorted(set(state) & set(layout)) if tuple(state[k].shape) != layout[k][2]]
    dtypes = [f"{k}: {state[k].dtype}" for k in sorted(set(state) & set(layout)) if state[k].dtype not in FLOAT_DTYPES]
    problems = []
    for what, items in (("keys with no counterpart in this preset", [_why_unknown(k) for k in extra]),
                        ("keys this preset needs that the file lacks", missing),
                        ("shape mismatches", shapes), ("non-float tensors", dtypes)):
        if items:
            problems.append(f"{len(items)} {what}: {'; '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
    if problems:
        raise CheckpointError("the file does not match the preset's published layout: " + " | ".join(problems))
    out: dict[str, dict[str, torch.Tensor]] = {"head": {}, "lora": {}}
    for key, (part, name, _) in layout.items():
        out[part][name] = state[key].to(torch.float32)
    return out


# ---------------------------------------------------------------- checks on what the weights cannot say
def _get(cfg: AffectGPTConfig, dotted: str) -> str:
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return str(value)


def check_source(config: dict | None, cfg: AffectGPTConfig) -> dict:
    """Compare the published ``config["model"]`` with the preset where shapes cannot tell them apart
    (Qwen2-7B and Qwen2.5-7B have equal shapes, for one); raise ``CheckpointError`` on a mismatch."""
    problems = []
    if cfg.lora.alpha != PUBLISHED_LORA_ALPHA:
        problems.append(f"lora.alpha is {cfg.lora.alpha}; the published LoRA was trained with {PUBLISHED_LORA_ALPHA}")
    if cfg.pooling != "raw":
        problems.append(f"pooling is {cfg.pooling!r}; the published pooling uses raw scores ('raw')")
    model = (config or {}).get("model") or {}
    for key, (field, known) in PUBLISHED_MODELS.items():
        if key in model:
            want, have = known.get(model[key]), _get(cfg, field).rstrip("/").rsplit("/", 1)[-1]
            if want is None or want.lower() != have.lower():
                problems.append(f"the file's {key} is {model[key]!r} ({want or 'unknown to this importer'}) "
                                f"but the preset's {field} is {_get(cfg, field)!r}")
    for kind in ("video", "audio", "multi"):
        if model.get(f"{kind}_fusion_type", "attention") != "attention":
            problems.append(f"{kind}_fusion_type is {model[f'{kind}_fusion_type']!r}; ray_emer has the attention one")
    for kind in ("video", "audio", "multi", "image"):
        n = model.get(f"num_{kind}_query_token", 1)
        if n != 1:
            problems.append(f"num_{kind}_query_token is {n}; ray_emer's prompts carry one token per modality")
    if "lora_r" in model and model["lora_r"] != cfg.lora.r:
        problems.append(f"the file's lora_r is {model['lora_r']} but the preset's lora.r is {cfg.lora.r}")
    if problems:
        raise CheckpointError("the published model and the preset differ: " + "; ".join(problems))
    datasets = (config or {}).get("datasets") or {}
    inputs = sorted({str(d["face_or_frame"]) for d in datasets.values()
                     if isinstance(d, dict) and "face_or_frame" in d})  # published: 'multiface_...' = face crops
    summary = {k: model[k] for k in ("arch", "llama_model", "visual_encoder", "acoustic_encoder", "lora_r")
               if k in model}
    return summary | ({"face_or_frame": inputs} if inputs else {})


def fusion_differences(head_weights: dict[str, torch.Tensor], mode: str = "raw") -> list[str]:
    """Where ray_emer's pre-fusion computes something else than the published formula on these weights.

    Published (``encode_multi_attention``): ``fc_att(attention_mlp([v; a]))`` gives two raw weights and the
    fused vector is ``w0 * v + w1 * a``. This probes our ``PreFusion`` with the imported fusion weights.
    """
    from ray_emer.model.head import PreFusion

    w = {k.removeprefix("fusion."): v for k, v in head_weights.items() if k.startswith("fusion.")}
    fusion = PreFusion(w["video_in.weight"].shape[1], w["audio_in.weight"].shape[1], w["video_in.weight"].shape[0],
                       w["out.weight"].shape[0], mode)
    fusion.load_state_dict(w)
    gen = torch.Generator().manual_seed(0)
    video = torch.randn(2, 8, fusion.video_in.in_features, generator=gen)
    audio = torch.randn(2, 8, fusion.audio_in.in_features, generator=gen)
    with torch.no_grad():
        v, a = fusion.video_in(video.mean(1)), fusion.audio_in(audio.mean(1))
        raw = fusion.weights(fusion.attention(torch.cat([v, a], dim=-1)))
        published = fusion.out(raw[:, :1] * v + raw[:, 1:] * a)
        ours = fusion(video, audio)
    if torch.allclose(ours, published, rtol=1e-4, atol=1e-5):
        return []
    return ["fused token: the published pre-fusion weighs the two projected vectors with the raw fc_att outputs; "
            "this config has fusion_weights: softmax (it normalises the two weights), so the fused token differs "
            "from the published one; set fusion_weights: raw (the affectgpt-qwen2.5-7b default) for the published "
            "token (the audio, video and image tokens and the LoRA deltas are the published ones)"]


# ---------------------------------------------------------------- writing the checkpoint
def _write(path: Path, cfg: AffectGPTConfig, mapped: dict, llm, tokenizer) -> None:
    from safetensors.torch import save_file

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
    from ray_emer.model.tokenizer import build_tokenizer

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
    head, llm = _meta_model(cfg)
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
