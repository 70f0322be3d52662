"""The trainable multimodal head: temporal attention pooling, the pre-fusion token, projectors.

Feature rows in, one LLM-sized token per modality out:
- ``video``: ``[B, T, Dv]`` -> pool -> Linear(Dv, H) -> ``[B, H]``
- ``audio``: ``[B, T, Da]`` -> pool -> Linear(Da, H) -> ``[B, H]``
- ``fused`` (pre-fusion, before the LLM): time means projected to the fusion space,
  2 weights from a linear head on their concatenation, weighted sum -> Linear(F, H)
- ``image`` (optional): a single image's embedding -> Linear(Dv, H)
"""

from __future__ import annotations

import torch
from torch import nn

from ray_emer.model.config import AffectGPTConfig


class AttentionPool(nn.Module):
    """``[B, T, D]`` -> ``[B, D]``: a linear score per step and the score-weighted sum.

    ``raw`` uses the scores as they are (the published weights were trained so);
    ``softmax`` normalises them over time first.
    """

    def __init__(self, dim: int, mode: str = "raw") -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.score(x)  # [B, T, 1]
        if self.mode == "softmax":
            s = s.softmax(dim=1)
        return (x * s).sum(dim=1)


class PreFusion(nn.Module):
    """Audio-video fusion in front of the LLM (the paper's attention variant)."""

    def __init__(self, video_dim: int, audio_dim: int, fusion_dim: int, llm_hidden: int,
                 weights: str = "raw") -> None:
        super().__init__()
        self.mode = weights  # "raw": the two fc_att outputs weigh v and a as they are (published); "softmax"
        self.video_in = nn.Linear(video_dim, fusion_dim)
        self.audio_in = nn.Linear(audio_dim, fusion_dim)
        self.attention = nn.Linear(2 * fusion_dim, fusion_dim)
        self.weights = nn.Linear(fusion_dim, 2)
        self.out = nn.Linear(fusion_dim, llm_hidden)

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        v, a = self.video_in(video.mean(1)), self.audio_in(audio.mean(1))  # [B, F] each
        w = self.weights(self.attention(torch.cat([v, a], dim=-1)))  # [B, 2]
        if self.mode == "softmax":
            w = w.softmax(dim=-1)
        return self.out(w[:, :1] * v + w[:, 1:] * a)  # [B, H]


class MultimodalHead(nn.Module):
    def __init__(self, cfg: AffectGPTConfig) -> None:
        super().__init__()
        h = cfg.llm_hidden
        self.video_pool = AttentionPool(cfg.video_dim, cfg.pooling)
        self.video_proj = nn.Linear(cfg.video_dim, h)
        self.audio_pool = AttentionPool(cfg.audio_dim, cfg.pooling)
        self.audio_proj = nn.Linear(cfg.audio_dim, h)
        self.fusion = (PreFusion(cfg.video_dim, cfg.audio_dim, cfg.fusion_dim, h, cfg.fusion_weights)
                       if cfg.fusion == "attention" else None)
        self.image_proj = nn.Linear(cfg.video_dim, h) if cfg.image_branch else None

    def forward(self, video: torch.Tensor, audio: torch.Tensor) -> dict[str, torch.Tensor]:
        """``video [B, T, Dv]``, ``audio [B, T, Da]`` -> ``{"fused"?, "audio", "video": [B, H]}``."""
        dtype = self.video_proj.weight.dtype
        video, audio = video.to(dtype), audio.to(dtype)
        tokens = {"video": self.video_proj(self.video_pool(video)), "audio": self.audio_proj(self.audio_pool(audio))}
        if self.fusion is not None:
            tokens["fused"] = self.fusion(video, audio)
        return tokens

    def image(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, Dv]`` image embedding -> ``[B, H]``."""
        if self.image_proj is None:
            raise ValueError("this model has no image branch (image_branch=false)")
        return self.image_proj(image.to(self.image_proj.weight.dtype))
