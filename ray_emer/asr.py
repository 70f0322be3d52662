"""Speech recognition for clips without a subtitle: one small interface, two backends.

- ``Transcriber.transcribe(wave_16k) -> str`` (and ``transcribe_batch``): 16 kHz mono float audio in, text
  out ("" when nothing was recognised).
- ``offline``: PocketSphinx with the US-English acoustic model, language model and dictionary that its PyPI
  wheel ships, so it works with nothing downloaded. English only, and weak on anything but clear read
  speech; a fallback, not a substitute for Whisper. Speech is cut into utterances by PocketSphinx's own
  voice-activity segmenter first, so silence, noise and tones give "" instead of invented words.
- ``whisper``: a Whisper checkpoint through ``transformers`` (``openai/whisper-large-v3`` by default, or a
  local directory): multilingual (Chinese included), on the GPU when there is one; audio longer than
  Whisper's 30 s window is transcribed in consecutive 30 s pieces whose texts are joined.

Where extraction runs them (``features/decode.py``, ``features/encoder.py``): the offline backend in the decode
step, on the audio just decoded (CPU work spread over the decode tasks); Whisper in the encoder step, where the
model is loaded once per encoder and batched on the encoder's GPU.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from typing import Literal

import numpy as np

from ray_emer.errors import RayEmerError

SAMPLE_RATE = 16_000
SUBTITLE_SOURCES = ("given", "asr", "none")  # the feature rows' subtitle_source
DEFAULT_WHISPER = "openai/whisper-large-v3"


class AsrError(RayEmerError):
    """Speech recognition cannot run as configured (unknown model, unsupported language) or failed on a clip."""


@dataclasses.dataclass
class AsrConfig:
    enabled: bool = False  # transcribe the clips that have no subtitle (ray-emer extract --asr)
    backend: Literal["offline", "whisper"] = "offline"  # offline: PocketSphinx's bundled English model
    model: str = ""  # whisper: hub name or local directory ("" = openai/whisper-large-v3); offline: must be ""
    language: str = ""  # whisper: "" = detect per clip, or a code/name (zh, en, chinese); offline: "" or en
    batch_size: int = 8  # whisper: 30 s pieces per generate call


def has_subtitle(subtitle) -> bool:
    """Whether a manifest subtitle counts as given (a non-blank string)."""
    return isinstance(subtitle, str) and bool(subtitle.strip())


def check_config(cfg: AsrConfig) -> None:
    """Fail early, in the driver, on a backend/model/language combination that cannot work."""
    if cfg.backend == "offline":
        if cfg.model:
            raise AsrError(f"asr.model={cfg.model!r}: the offline backend has one model, PocketSphinx's bundled "
                           "US-English one (leave asr.model empty, or use asr.backend=whisper)")
        if cfg.language.lower() not in ("", "en", "english"):
            raise AsrError(f"asr.language={cfg.language!r}: the offline backend (PocketSphinx's bundled model) "
                           "recognises English only; use asr.backend=whisper for other languages")
        try:
            import pocketsphinx  # noqa: F401
        except ImportError as exc:
            raise AsrError(f"the offline ASR backend needs the pocketsphinx package: {exc}") from exc
    elif cfg.backend == "whisper":
        if cfg.batch_size < 1:
            raise AsrError(f"asr.batch_size={cfg.batch_size}: must be at least 1")
    else:
        raise AsrError(f"asr.backend={cfg.backend!r}: one of offline, whisper")


class Transcriber:
    """16 kHz mono float audio -> text ("" when nothing was recognised). A backend overrides
    ``transcribe`` (one clip at a time) or ``transcribe_batch`` (batched); each default uses the other."""

    def transcribe(self, wave_16k: np.ndarray) -> str:
        return self.transcribe_batch([wave_16k])[0]

    def transcribe_batch(self, waves: list[np.ndarray]) -> list[str]:
        return [self.transcribe(w) for w in waves]


def _pcm16(wave: np.ndarray) -> bytes:
    return (np.clip(np.asarray(wave, np.float32), -1.0, 1.0) * 32767).astype("<i2").tobytes()


class PocketSphinxTranscriber(Transcriber):
    """PocketSphinx's bundled US-English model; each voiced segment decoded as one utterance."""

    def __init__(self) -> None:
        from pocketsphinx import Decoder

        self.decoder = Decoder(samprate=SAMPLE_RATE, loglevel="FATAL")

    def transcribe(self, wave_16k: np.ndarray) -> str:
        from pocketsphinx import Segmenter

        words = []
        # each clip from a clean state: the decoder's feature computation (noise and cepstral-mean estimates)
        # and the segmenter's voice-activity state would otherwise carry over from the clips before it, and a
        # clip's text would depend on which clips the same worker happened to decode first
        self.decoder.reinit_feat()
        for segment in Segmenter(sample_rate=SAMPLE_RATE).segment(io.BytesIO(_pcm16(wave_16k))):
            self.decoder.start_utt()
            self.decoder.process_raw(segment.pcm, full_utt=True)
            self.decoder.end_utt()
            hyp = self.decoder.hyp()
            if hyp is not None and hyp.hypstr.strip():
                words.append(hyp.hypstr.strip())
        return " ".join(words)


class WhisperTranscriber(Transcriber):
    """A Whisper checkpoint (hub name or directory) through ``transformers``; batched ``generate``."""

    def __init__(self, model: str = "", language: str = "", device: str | None = None, batch_size: int = 8) -> None:
        import torch
        from transformers import WhisperForConditionalGeneration, WhisperProcessor

        name = model or DEFAULT_WHISPER
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        try:
            self.processor = WhisperProcessor.from_pretrained(name)
            self.model = WhisperForConditionalGeneration.from_pretrained(name, dtype=dtype).to(self.device).eval()
        except (OSError, ValueError) as exc:  # not found / not a valid hub name or directory
            raise AsrError(f"cannot load the Whisper model {name!r} (a hub name needs the hub or its cache; "
                           f"a directory needs config.json, weights and the processor files): {exc}") from exc
        self.dtype, self.batch_size = dtype, batch_size
        self.piece = self.processor.feature_extractor.n_samples  # Whisper's window: 30 s at 16 kHz
        gen = self.model.generation_config
        self.kwargs: dict = {}
        if getattr(gen, "is_multilingual", False):
            self.kwargs["task"] = "transcribe"
            if language:
                self.kwargs["language"] = language
        elif language.lower() not in ("", "en", "english"):
            raise AsrError(f"{name} is an English-only Whisper model; asr.language={language!r} needs a "
                           "multilingual one (e.g. openai/whisper-large-v3)")

    def _generate(self, pieces: list[np.ndarray]) -> list[str]:
        import torch

        feats = self.processor.feature_extractor(pieces, sampling_rate=SAMPLE_RATE, return_tensors="pt")
        with torch.inference_mode():
            ids = self.model.generate(feats.input_features.to(self.device, self.dtype), **self.kwargs)
        return self.processor.tokenizer.batch_decode(ids, skip_special_tokens=True)

    def transcribe_batch(self, waves: list[np.ndarray]) -> list[str]:
        owner, pieces = [], []
        for i, wave in enumerate(waves):
            wave = np.asarray(wave, np.float32)
            for start in range(0, wave.shape[0], self.piece):
                owner.append(i)
                pieces.append(wave[start:start + self.piece])
        texts: list[list[str]] = [[] for _ in waves]
        for start in range(0, len(pieces), self.batch_size):
            chunk = pieces[start:start + self.batch_size]
            for i, text in zip(owner[start:start + len(chunk)], self._generate(chunk), strict=True):
                if text.strip():
                    texts[i].append(text.strip())
        return [" ".join(t) for t in texts]


@functools.cache
def _cached(backend: str, model: str, language: str, device: str | None, batch_size: int) -> Transcriber:
    if backend == "offline":
        return PocketSphinxTranscriber()
    return WhisperTranscriber(model, language, device, batch_size)


def build_transcriber(cfg: AsrConfig, device: str | None = None) -> Transcriber:
    """The configured backend, built once per process (a decode worker or an encoder keeps its model)."""
    check_config(cfg)
    return _cached(cfg.backend, cfg.model, cfg.language, device, cfg.batch_size)
