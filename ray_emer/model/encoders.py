"""The frozen side of the model: CLIP vision tower and HuBERT, pixels/samples in, features out.

``Encoders`` is always in eval mode with gradients off; it is the only part of the model
that sees pixels or waveforms. Everything after it (``AffectGPT``) consumes the feature
rows it produces, so features can be computed once and cached (docs/architecture.md).

- video: uint8 frames ``[B, T, S, S, 3]`` -> ``[B, T, Dv]`` (CLIP projected image
  embeddings; face crops go through the same tower)
- audio: 16 kHz windows ``[B, W, N]`` -> ``[B, W, Da]`` (per window, the time mean of the
  average of the last ``audio_layers`` hidden layers)
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ray_emer.model.config import AffectGPTConfig, encoder_image_size
from ray_emer.model.seeding import seeded

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_tensor(x, dtype: torch.dtype, device) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return x.to(device=device, dtype=dtype)


class VisionTower(nn.Module):
    """CLIP pixels ``[N, 3, S, S]`` (normalised) -> projected image embeddings ``[N, Dv]``."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip(pixel_values=pixel_values).image_embeds


class AudioTower(nn.Module):
    """HuBERT windows ``[N, samples]`` -> the time mean of the average of the last ``layers`` hidden layers ``[N, Da]``."""

    def __init__(self, hubert: nn.Module, layers: int) -> None:
        super().__init__()
        self.hubert, self.layers = hubert, int(layers)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        out = self.hubert(input_values=input_values, output_hidden_states=True)
        return torch.stack(out.hidden_states[-self.layers:], 0).mean(0).mean(1)


SCRIPTED_FILES = ("vision.pt", "audio.pt")


class Encoders(nn.Module):
    """``vision``/``audio``: the transformers towers; or, loaded with ``load_scripted``, their TorchScript
    traces (the same computation, no transformers import: an extraction actor starts in about a second)."""

    def __init__(self, vision: nn.Module, audio: nn.Module, cfg: AffectGPTConfig, scripted: bool = False) -> None:
        super().__init__()
        self.vision, self.audio, self.cfg, self.scripted = vision, audio, cfg, scripted
        towers = (vision, audio) if scripted else (VisionTower(vision), AudioTower(audio, cfg.encoders.audio_layers))
        object.__setattr__(self, "_towers", towers)  # not registered: the parameters keep their vision./audio. names
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

    def export_scripted(self, directory: str, window_samples: int) -> str:
        """Trace both towers (fp32 on CPU) into ``directory`` (``vision.pt``, ``audio.pt``); ``load_scripted``
        brings them back with torch alone."""
        if self.scripted:
            raise ValueError("these encoders are already scripted")
        os.makedirs(directory, exist_ok=True)
        s = self.image_size
        examples = (torch.zeros(2, 3, s, s, dtype=self._param.dtype, device=self._param.device),
                    torch.zeros(2, int(window_samples), dtype=self._param.dtype, device=self._param.device))
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shape checks frozen: the inputs' sizes are fixed
            for name, tower, example in zip(SCRIPTED_FILES, self._towers, examples, strict=True):
                torch.jit.save(torch.jit.trace(tower, example, check_trace=False), os.path.join(directory, name))
        return directory

    @classmethod
    def load_scripted(cls, directory: str, cfg: AffectGPTConfig) -> Encoders:
        """The towers ``export_scripted`` wrote, on CPU in fp32 (no transformers import)."""
        vision, audio = (torch.jit.load(os.path.join(directory, f), map_location="cpu") for f in SCRIPTED_FILES)
        return cls(vision, audio, cfg, scripted=True)

    @property
    def image_size(self) -> int:
        return encoder_image_size(self.cfg)

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
        emb = self._towers[0](x)  # [B*T, Dv]
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
        return self._towers[1](x.to(p.dtype)).float().reshape(b, w, -1)

    def encode(self, frames, windows) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encode_video(frames), self.encode_audio(windows)
