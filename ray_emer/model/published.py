"""The published AffectGPT layout (ICML'25 release) against ray_emer's: names, shapes and the config checks.

The published training runner saves the model's ``state_dict()`` minus every frozen parameter: the head
(``my_affectgpt/models/affectgpt.py``, attention fusion setup) and the PEFT LoRA tensors of the LLM. This
module says where each of those tensors lives in ray_emer (checked by name and shape against the preset built
on the meta device, so the 7B LLM is never materialised) and what the weights cannot say (the named models,
the fusion type, LoRA alpha), and where ray_emer's pre-fusion computes something else on them. Reading the
file and writing the checkpoint is ``importer.py``'s.

Published name -> ray_emer name (``PUBLISHED_HEAD``; ``.weight``/``.bias`` keep their leaf)::

    video_attention_mlp  video_pool.score     affectgpt_proj    video_proj
    audio_attention_mlp  audio_pool.score     audio_llama_proj  audio_proj
    multi_video_embs     fusion.video_in      multi_audio_embs  fusion.audio_in
    attention_mlp        fusion.attention     fc_att            fusion.weights
    multi_llama_proj     fusion.out           image_llama_proj  image_proj
    llama_model.<peft name>                   <peft name> (adapter; saved without ".default")
"""

from __future__ import annotations

import dataclasses

import torch

from ray_emer.model.affectgpt import apply_trainable, build_llm
from ray_emer.model.checkpoint import CheckpointError
from ray_emer.model.config import AffectGPTConfig, TrainableConfig
from ray_emer.model.head import MultimodalHead, PreFusion

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


# ---------------------------------------------------------------- the layout the preset expects
def meta_model(cfg: AffectGPTConfig, vocab_size: int | None = None):
    """The preset's head and LoRA-wrapped LLM on the meta device: names and shapes, no memory, no download
    (``vocab_size``: needed only when the preset's ``llm_config`` has none)."""
    vocab = int(cfg.llm_config.get("vocab_size", vocab_size or 0))
    if not vocab:
        raise CheckpointError("the preset's llm_config has no vocab_size: give it, or the tokenizer's size")
    with torch.device("meta"):
        llm = build_llm(dataclasses.replace(cfg, init="random"), vocab)
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
