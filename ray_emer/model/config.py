"""``AffectGPTConfig``: the architecture that travels with the weights, and the named presets.

A config names its parts (encoder and LLM names or local paths) *and* carries their
architecture dicts, so a model can be built three ways from the same object: from
pretrained weights (``init="pretrained"``), randomly from the dicts (``init="random"``:
the tiny preset, benchmarks, the meta-device parameter count), or from a checkpoint
directory (whose ``config.json`` is this object).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from ray_emer import storage
from ray_emer.config import ConfigError, from_dict, load_config, to_dict

Setting = Literal["frozen", "full", "lora"]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclasses.dataclass
class LoRASettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = dataclasses.field(default_factory=lambda: list(LORA_TARGETS))


@dataclasses.dataclass
class TrainableConfig:
    """What a training stage updates: one setting per component (rule 6: stages are config)."""

    head: Setting = "full"  # pooling, pre-fusion and projectors: frozen | full
    llm: Setting = "lora"  # the decoder: frozen | full | lora


@dataclasses.dataclass
class EncoderSettings:
    vision_name: str = "openai/clip-vit-large-patch14"
    vision_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # CLIPVisionConfig kwargs
    audio_name: str = "TencentGameMate/chinese-hubert-large"
    audio_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # HubertConfig kwargs
    audio_layers: int = 4  # average of the last N hidden layers
    normalize_audio: bool = True  # zero-mean unit-variance per window, as HuBERT's feature extractor does
    seed: int = 0  # seeds the frozen random towers (init="random") only; never the head, LLM or LoRA


@dataclasses.dataclass
class PromptSettings:
    fused_token: str = "<FusedHere>"
    audio_token: str = "<AudioHere>"
    video_token: str = "<VideoHere>"
    image_token: str = "<ImageHere>"
    style: Literal["plain", "chat"] = "plain"  # chat: wrap in the tokenizer's chat template
    max_length: int = 1024


@dataclasses.dataclass
class AffectGPTConfig:
    preset: str = "custom"
    init: Literal["pretrained", "random"] = "pretrained"
    encoders: EncoderSettings = dataclasses.field(default_factory=EncoderSettings)
    video_dim: int = 768  # CLIP projected image embedding
    audio_dim: int = 1024  # HuBERT-large hidden size
    fusion_dim: int = 1024  # pre-fusion space: max(video_dim, audio_dim) as published
    pooling: Literal["raw", "softmax"] = "raw"  # published weights use raw attention scores
    fusion: Literal["attention", "none"] = "attention"  # the pre-fusion token (none = ablation)
    # how the pre-fusion weighs its two projected vectors: the raw fc_att outputs, as published, or a softmax of them
    fusion_weights: Literal["raw", "softmax"] = "raw"
    image_branch: bool = True  # single-image input gets its own projector, as in the published model
    llm_name: str = "Qwen/Qwen2.5-7B-Instruct"
    llm_config: dict[str, Any] = dataclasses.field(default_factory=dict)  # Qwen2Config kwargs
    tokenizer: str = ""  # empty: the LLM's tokenizer; "tiny": the shipped tiny BPE (see model/tokenizer.py)
    lora: LoRASettings = dataclasses.field(default_factory=LoRASettings)
    trainable: TrainableConfig = dataclasses.field(default_factory=TrainableConfig)
    prompts: PromptSettings = dataclasses.field(default_factory=PromptSettings)
    # Seed of the trainable side's random init: the head, a random LLM (init="random") and LoRA adapters
    # when first added. AffectGPT.build(cfg, seed=...) and set_trainable(..., seed=...) record the seed they
    # used here (training passes its own seed); independent of encoders.seed. Loading never re-draws weights.
    init_seed: int = 0

    @property
    def llm_hidden(self) -> int:
        if "hidden_size" not in self.llm_config:
            raise ConfigError("llm_config.hidden_size is needed to size the projectors")
        return int(self.llm_config["hidden_size"])

    def to_json(self) -> str:
        return json.dumps({"architecture": "AffectGPT", **to_dict(self)}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AffectGPTConfig:
        data = json.loads(text)
        if data.pop("architecture", "AffectGPT") != "AffectGPT":
            raise ConfigError("config.json does not describe an AffectGPT model")
        return from_dict(cls, data)


# Published Qwen2.5-7B-Instruct architecture (its config.json), so the preset can be
# built randomly or on the meta device without a download.
QWEN25_7B = dict(
    vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
    num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu",
    bos_token_id=151643, eos_token_id=151645,
)
# Qwen2.5-0.5B-Instruct (its config.json): the mid-size preset, small enough to train on a laptop CPU and
# wide enough that the LLM, not the plumbing around it, dominates a step
QWEN25_05B = dict(
    vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu",
    bos_token_id=151643, eos_token_id=151645,
)
CLIP_VIT_L14 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
)
HUBERT_LARGE = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
)


def _tiny() -> AffectGPTConfig:
    return AffectGPTConfig(
        preset="tiny", init="random",
        encoders=EncoderSettings(
            vision_name="", audio_name="",
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=32, patch_size=8, projection_dim=48),
            audio_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2,
                              # 3 conv layers (strides 20*4*4 = 320 samples per frame, as HuBERT's 7).
                              # Coarser frames (1280 samples) with 2 layers cost 1.3 instead of 7.3 ms
                              # per clip; one learning run with them did worse than without audio, but
                              # one run swings by ~10 points, so that is untested either way: kept as is
                              conv_dim=[8] * 3, conv_kernel=[20, 4, 4], conv_stride=[20, 4, 4],
                              num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
        ),
        video_dim=48, audio_dim=32, fusion_dim=48, image_branch=False,
        fusion_weights="softmax",  # what the tiny preset has always trained with (its measured numbers)
        llm_name="", tokenizer="tiny",
        # initializer_range 0.2 (HF default 0.02): a frozen random lm_head at 0.02 spans logits too narrow
        # for LoRA to ever make a token likely; at 0.2 the head + LoRA path overfits a handful of pairs.
        llm_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=False, initializer_range=0.2),
        lora=LoRASettings(r=8, alpha=16, dropout=0.0),
        prompts=PromptSettings(max_length=512),
    )


def _affectgpt_qwen25_7b() -> AffectGPTConfig:
    return AffectGPTConfig(
        preset="affectgpt-qwen2.5-7b", init="pretrained",
        encoders=EncoderSettings(vision_config=dict(CLIP_VIT_L14), audio_config=dict(HUBERT_LARGE)),
        llm_config=dict(QWEN25_7B),
    )


def _affectgpt_qwen25_05b() -> AffectGPTConfig:
    return AffectGPTConfig(
        preset="affectgpt-qwen2.5-0.5b", init="pretrained",
        encoders=EncoderSettings(vision_config=dict(CLIP_VIT_L14), audio_config=dict(HUBERT_LARGE)),
        llm_name="Qwen/Qwen2.5-0.5B-Instruct", llm_config=dict(QWEN25_05B),
    )


PRESETS = {"tiny": _tiny, "affectgpt-qwen2.5-0.5b": _affectgpt_qwen25_05b, "affectgpt-qwen2.5-7b": _affectgpt_qwen25_7b}


def get_preset(name: str) -> AffectGPTConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return PRESETS[name]()


def resolve_model_config(preset: str, overrides: list[str] | None = None) -> AffectGPTConfig:
    """A preset name or a checkpoint directory (its ``config.json``), then dotted overrides."""
    if preset in PRESETS:
        base = to_dict(get_preset(preset))
    elif storage.exists(storage.join(preset, "config.json")):
        base = to_dict(AffectGPTConfig.from_json(storage.read_text(storage.join(preset, "config.json"))))
    else:
        raise ConfigError(f"{preset!r} is neither a preset ({', '.join(sorted(PRESETS))}) nor a checkpoint directory")
    return load_config(AffectGPTConfig, None, overrides or [], base=base)


def encoder_image_size(cfg: AffectGPTConfig) -> int:
    """The frame size the vision tower consumes (decode straight to it: no larger frames travel)."""
    return int(cfg.encoders.vision_config.get("image_size", 224))
