"""The frozen encoders of a model preset over decoded batches: a columnar batch in, arrays out.

``FeatureEncoder.encode_batch`` returns a columnar numpy batch (``features.columns``): the manifest columns of
each record, ``video_feats [N, T, Dv]`` / ``audio_feats [N, W, Da]`` as float16 (what the shards store, so a
served request computes on the same numbers a labelling job reads back), and the per-clip flags and timings.
It builds no Arrow: the shard writer does (``features.shards.write_features``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time

import numpy as np

from ray_emer.asr import AsrConfig, build_transcriber
from ray_emer.config import to_dict
from ray_emer.features.columns import objects
from ray_emer.media import SAMPLE_RATE, MediaConfig
from ray_emer.model.config import encoder_image_size, resolve_model_config
from ray_emer.schema import feature_schema
from ray_emer.tracking import home


def effective_media(preset: str, media: MediaConfig) -> MediaConfig:
    """``media.frame_size == 0`` means the encoder's input size (224 for CLIP ViT-L/14)."""
    if media.frame_size > 0:
        return media
    return dataclasses.replace(media, frame_size=encoder_image_size(resolve_model_config(preset)))


class FeatureEncoder:
    """Frozen encoders of a model config, turning decoded batches into feature arrays."""

    def __init__(self, preset: str, media: MediaConfig, device: str | None = None,
                 asr: AsrConfig | None = None, scripted: str | None = None) -> None:
        """``scripted``: a directory of traced towers (``scripted_encoders``) to load instead of building the
        transformers towers, on CPU only; ignored when it does not exist here (another node) or on a GPU."""
        # torch and the towers load here, not at import: a process that only decodes or lists never pays for them
        import torch

        from ray_emer.model.encoders import SCRIPTED_FILES, Encoders

        self.cfg = resolve_model_config(preset, [])
        self.name = self.cfg.preset if self.cfg.preset != "custom" else preset
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        if scripted and self.device == "cpu" and all(os.path.exists(os.path.join(scripted, f)) for f in SCRIPTED_FILES):
            self.encoders = Encoders.load_scripted(scripted, self.cfg)
        else:
            self.encoders = Encoders.build(self.cfg, self.device, dtype)
        self.media = media
        self.video_shape = (media.num_frames, self.cfg.video_dim)
        self.audio_shape = (media.num_audio_windows, self.cfg.audio_dim)
        self.schema = feature_schema(self.video_shape, self.audio_shape)
        # Whisper runs here, on the encoder's device, batched; the offline backend runs in decode_row
        self.transcriber = build_transcriber(asr, self.device) if asr and asr.enabled and asr.backend == "whisper" \
            else None

    def _encode(self, frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v, a = self.encoders.encode(frames, audio)
        v, a = v.cpu().numpy(), a.cpu().numpy()
        if not (np.isfinite(v).all() and np.isfinite(a).all()):
            raise FloatingPointError("non-finite features")
        return v, a

    def encode_batch(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A decoded columnar batch -> a feature batch (one row per input row, errors included)."""
        t0 = time.perf_counter()
        n = len(batch["record"])
        status, error = list(batch["status"]), list(batch["error"])
        video = np.zeros((n, *self.video_shape), np.float32)
        audio = np.zeros((n, *self.audio_shape), np.float32)
        ok = [i for i in range(n) if status[i] == "ok"]
        try:
            if ok:
                video[ok], audio[ok] = self._encode(batch["frames"][ok], batch["audio"][ok])
        except Exception:  # noqa: BLE001 - find the clip that breaks the batch, keep the rest
            for i in ok:
                try:
                    video[i], audio[i] = (x[0] for x in self._encode(batch["frames"][i:i + 1], batch["audio"][i:i + 1]))
                except Exception as exc:  # noqa: BLE001
                    status[i], error[i] = "error", f"encode_failed: {type(exc).__name__}: {exc}"
        records, source = [dict(r) for r in batch["record"]], [str(s) for s in batch["subtitle_source"]]
        if self.transcriber is not None:
            self._transcribe(batch, records, source, status, error)
        has_video = np.array([bool(batch["has_video"][i]) and status[i] == "ok" for i in range(n)])
        has_audio = np.array([bool(batch["has_audio"][i]) and status[i] == "ok" for i in range(n)])
        video[~has_video], audio[~has_audio] = 0.0, 0.0
        out = _record_columns(records)
        out.update(video_feats=video.astype(np.float16), audio_feats=audio.astype(np.float16),
                   has_video=has_video, has_audio=has_audio, status=objects(status), error=objects(error),
                   face_frames=np.asarray(batch["face_frames"], np.int32),
                   skipped_packets=np.asarray(batch["skipped_packets"], np.int32),
                   video_backend=objects([str(x) for x in batch["video_backend"]]),
                   duration_s=np.asarray(batch["duration_s"], np.float32),
                   decode_s=np.asarray(batch["decode_s"], np.float32),
                   encode_s=np.full(n, (time.perf_counter() - t0) / max(n, 1), np.float32),
                   encoder=objects([self.name] * n), subtitle_source=objects(source))
        return out

    def _transcribe(self, batch: dict[str, np.ndarray], records: list[dict], source: list[str], status: list,
                    error: list) -> None:
        """Whisper on the rows whose audio the decode step handed on: ``subtitle`` and ``subtitle_source``
        filled in where it recognised something; a clip it fails on becomes an error row."""
        todo = [i for i in range(len(records)) if status[i] == "ok" and len(batch["asr_wave"][i])]
        waves = [np.frombuffer(batch["asr_wave"][i], np.float16).astype(np.float32) for i in todo]
        try:
            texts = self.transcriber.transcribe_batch(waves)
        except Exception:  # noqa: BLE001 - find the clip that breaks the batch, keep the rest
            texts = []
            for i, wave in zip(todo, waves, strict=True):
                try:
                    texts.append(self.transcriber.transcribe(wave))
                except Exception as exc:  # noqa: BLE001
                    status[i], error[i] = "error", f"asr_failed: {type(exc).__name__}: {exc}"
                    texts.append("")
        for i, text in zip(todo, texts, strict=True):
            if text.strip():
                records[i]["subtitle"] = text.strip()
                source[i] = "asr"


def _record_columns(records: list[dict]) -> dict[str, np.ndarray]:
    """The manifest records as columns: every key any record has, in first-seen order (None where absent)."""
    return {name: objects([r.get(name) for r in records]) for name in dict.fromkeys(k for r in records for k in r)}


def scripted_encoders(preset: str, media: MediaConfig) -> str:
    """The encoders of ``preset`` traced to TorchScript once per machine, under ``$RAY_EMER_HOME/cache/encoders/``
    (keyed by the encoder settings, the input sizes and the torch/transformers versions); -> the directory.

    Extraction workers load these with torch alone: building the transformers towers first imports transformers'
    model modules (torch._dynamo among them), seconds of start-up per worker. The traces compute the same thing.
    """
    cfg = resolve_model_config(preset, [])
    window = int(round(media.audio_window_s * SAMPLE_RATE))
    enc = to_dict(cfg.encoders)
    sources = [enc["vision_name"], enc["audio_name"]] if cfg.init == "pretrained" else []
    # versions from the package metadata: a cache hit imports no torch in the driver (seconds on a small machine)
    key = json.dumps({"encoders": enc, "init": cfg.init, "image_size": encoder_image_size(cfg), "window": window,
                      "local": {p: os.path.getmtime(p) for p in sources if p and os.path.exists(p)},
                      "torch": importlib.metadata.version("torch"),
                      "transformers": importlib.metadata.version("transformers")}, sort_keys=True)
    out = os.path.join(home(), "cache", "encoders", hashlib.sha256(key.encode()).hexdigest()[:20])
    if os.path.exists(os.path.join(out, "key.json")):  # written last; the directory appears whole (rename)
        return out
    import torch  # a cache miss only: the trace is made here

    from ray_emer.model.encoders import SCRIPTED_FILES, Encoders

    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(out))
    try:
        Encoders.build(cfg, "cpu", torch.float32).export_scripted(tmp, window)
        with open(os.path.join(tmp, "key.json"), "w") as fh:
            fh.write(key)
        try:
            os.rename(tmp, out)  # atomic: a concurrent run that got there first wins, with the same content
        except OSError:
            if not all(os.path.exists(os.path.join(out, f)) for f in SCRIPTED_FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
