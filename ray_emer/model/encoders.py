"""The frozen side of the model: CLIP vision tower and HuBERT, pixels/samples in, features out.

``Encoders`` is always in eval mode with gradients off; it is the only part of the model
that sees pixels or waveforms. Everything after it (``AffectGPT``) consumes the feature
rows it produces, so features can be computed once and cached (ARCHITECTURE.md).

- video: uint8 frames ``[B, T, S, S, 3]`` -> ``[B, T, Dv]`` (CLIP projected image
  embeddings; face crops go through the same tower)
- audio: 16 kHz windows ``[B, W, N]`` -> ``[B, W, Da]`` (per window, the time mean of the
  average of the last ``audio_layers`` hidden layers)
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ray_emer.model.config import AffectGPTConfig
from ray_emer.model.seeding import seeded

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_tensor(x, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device=device, dtype=dtype)


class Encoders(nn.Module):
    def __init__(self, vision: nn.Module, audio: nn.Module, cfg: AffectGPTConfig) -> None:
        super().__init__()
        self.vision, self.audio, self.cfg = vision, audio, cfg
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Encoders:  # frozen: stays in eval mode whatever the caller asks
        return super().train(False)

    @classmethod
    def build(cls, cfg: AffectGPTConfig, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32) -> Encoders:
        """Pretrained towers by name (``cfg.init == "pretrained"``), else random from the config dicts,
        seeded by ``cfg.encoders.seed`` alone."""
        from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, HubertConfig, HubertModel

        enc = cfg.encoders
        if cfg.init == "pretrained":
            vision = CLIPVisionModelWithProjection.from_pretrained(enc.vision_name, dtype=dtype)
            audio = HubertModel.from_pretrained(enc.audio_name, dtype=dtype)
        else:
            with seeded(enc.seed):  # the encoders' own seed: the head/LLM init (init_seed) is independent
                vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**enc.vision_config))
                audio = HubertModel(HubertConfig(**enc.audio_config))
        return cls(vision, audio, cfg).to(device=device, dtype=dtype)

    @property
    def image_size(self) -> int:
        return int(self.vision.config.image_size)

    @property
    def _param(self) -> torch.Tensor:
        return next(self.vision.parameters())

    @torch.no_grad()
    def encode_video(self, frames) -> torch.Tensor:
        """uint8 ``[B, T, S, S, 3]`` -> float32 ``[B, T, Dv]``."""
        p = self._param
        x = _as_tensor(frames, torch.float32, p.device)
        b, t = x.shape[:2]
        x = x.reshape(b * t, *x.shape[2:]).permute(0, 3, 1, 2) / 255.0  # [B*T, 3, S, S]
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                              align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=p.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=p.device).view(1, 3, 1, 1)
        x = ((x - mean) / std).to(p.dtype)
        emb = self.vision(pixel_values=x).image_embeds  # [B*T, Dv]
        return emb.float().reshape(b, t, -1)

    @torch.no_grad()
    def encode_audio(self, windows) -> torch.Tensor:
        """float ``[B, W, N]`` 16 kHz windows -> float32 ``[B, W, Da]``."""
        p = self._param
        x = _as_tensor(windows, torch.float32, p.device)
        b, w = x.shape[:2]
        x = x.reshape(b * w, -1)
        if self.cfg.encoders.normalize_audio:  # (x - mean) / sqrt(var + 1e-7) per window, as HuBERT's
            x = F.layer_norm(x, (x.shape[-1],), eps=1e-7)  # feature extractor; 7x faster than var_mean on CPU
        out = self.audio(input_values=x.to(p.dtype), output_hidden_states=True)
        k = self.cfg.encoders.audio_layers
        layers = torch.stack(out.hidden_states[-k:], 0).mean(0)  # [B*W, frames, Da]
        return layers.mean(1).float().reshape(b, w, -1)

    def encode(self, frames, windows) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_video(frames), self.encode_audio(windows)
