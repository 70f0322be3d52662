"""One manifest record -> decoded arrays and flags, never raising: a bad clip is an error row.

The decoded row carries the manifest record itself (``record``, a dict, updated when speech recognition fills
in a subtitle), the frames ``[T, S, S, 3]`` uint8, the audio windows ``[W, samples]`` float16 and the
per-clip flags and timings the feature shards keep.
"""

from __future__ import annotations

import time

import numpy as np

from ray_emer import storage
from ray_emer.asr import AsrConfig, AsrError, build_transcriber, has_subtitle
from ray_emer.media import SAMPLE_RATE, MediaConfig, MediaError, decode_uri


def error_text(exc: BaseException) -> str:
    """``"<reason>: <detail>"`` for a clip that could not be decoded."""
    if isinstance(exc, MediaError):
        return f"{exc.reason}: {exc.detail or exc.path}"
    if isinstance(exc, storage.StorageError):
        return f"storage_error: {exc}"
    if isinstance(exc, AsrError):
        return f"asr_failed: {exc}"
    return f"decode_failed: {type(exc).__name__}: {exc}"


def decode_row(rec: dict, media: MediaConfig, asr: AsrConfig | None = None) -> dict:
    """One manifest record -> arrays + flags; errors become ``status="error"`` with zeros.

    With ``asr.enabled``, a clip with audio and no subtitle is transcribed here (offline backend) or its
    whole 16 kHz audio is handed on as ``asr_wave`` (float16 bytes) to the encoder's Whisper."""
    t0 = time.perf_counter()
    win = int(round(media.audio_window_s * SAMPLE_RATE))
    out = {"record": dict(rec), "status": "ok", "error": "", "face_frames": -1, "skipped_packets": -1,
           "video_backend": "", "duration_s": 0.0, "has_video": False, "has_audio": False,
           "subtitle_source": "given" if has_subtitle(rec.get("subtitle")) else "none"}
    if asr is not None and asr.enabled and asr.backend == "whisper":
        out["asr_wave"] = b""
    try:
        clip = decode_uri(rec["video_uri"], rec.get("audio_uri"), media)
        # audio travels as float16: half the bytes through the object store, and what the encoders
        # compute in on a GPU anyway (the CPU path upcasts to float32)
        out.update(frames=clip.frames, audio=clip.audio.astype(np.float16), has_video=clip.has_video,
                   has_audio=clip.has_audio, face_frames=clip.face_frames, video_backend=clip.video_backend,
                   duration_s=float(clip.probe.duration_s), skipped_packets=clip.skipped_packets)
        if asr is not None and asr.enabled and clip.has_audio and out["subtitle_source"] == "none":
            _asr_in_decode(out, asr, clip.wave)
    except Exception as exc:  # noqa: BLE001 - one bad clip must never end the job
        out.update(status="error", error=error_text(exc),
                   frames=np.zeros((media.num_frames, media.frame_size, media.frame_size, 3), np.uint8),
                   audio=np.zeros((media.num_audio_windows, win), np.float16))
    out["decode_s"] = time.perf_counter() - t0
    return out


def _asr_in_decode(out: dict, asr: AsrConfig, wave: np.ndarray) -> None:
    """The clip's whole audio track (as decoding read it): transcribed now by the offline backend (CPU work,
    spread over the decode tasks), or handed to the encoder, where Whisper is loaded once."""
    if asr.backend == "whisper":
        out["asr_wave"] = wave.astype(np.float16).tobytes()
        return
    try:
        text = build_transcriber(asr).transcribe(wave)
    except AsrError:
        raise
    except Exception as exc:  # noqa: BLE001 - the clip's row says why
        raise AsrError(f"{type(exc).__name__}: {exc}") from exc
    if text.strip():
        out["record"]["subtitle"] = text.strip()
        out["subtitle_source"] = "asr"
