"""One clip in, everything the encoders need out: ``DecodedClip``."""

from __future__ import annotations

import dataclasses

import numpy as np

from ray_emer.media.audio import SAMPLE_RATE, audio_windows, load_audio
from ray_emer.media.errors import MediaError
from ray_emer.media.probe import Probe, probe
from ray_emer.media.faces import face_frames
from ray_emer.media.video import decode_video_frames, sample_raw_frames


@dataclasses.dataclass
class MediaConfig:
    num_frames: int = 8
    frame_size: int = 224
    num_audio_windows: int = 8
    audio_window_s: float = 2.0
    max_duration_s: float = 600.0
    video_backend: str = "auto"  # auto | decord | pyav
    allow_audio_only: bool = True  # a file with audio and no video decodes with has_video=False
    face_crop: bool = False  # largest Haar face per frame instead of the whole frame (fallback: whole frame)


@dataclasses.dataclass
class DecodedClip:
    frames: np.ndarray  # [T, S, S, 3] uint8 (zeros when has_video is False)
    audio: np.ndarray  # [W, window_s * 16000] float32 (zeros when has_audio is False)
    has_video: bool
    has_audio: bool
    probe: Probe
    video_backend: str
    face_frames: int = -1  # frames where a face was found and cropped; -1 when face_crop is off

    def summary(self) -> dict:
        return {
            "frames_shape": list(self.frames.shape),
            "audio_shape": list(self.audio.shape),
            "has_video": self.has_video,
            "has_audio": self.has_audio,
            "duration_s": round(self.probe.duration_s, 3),
            "fps": round(self.probe.fps, 3),
            "width": self.probe.width,
            "height": self.probe.height,
            "codec": self.probe.codec,
            "video_backend": self.video_backend,
            "face_frames": self.face_frames,
        }


def decode_clip(video_path: str, audio_path: str | None = None, cfg: MediaConfig | None = None) -> DecodedClip:
    """Decode frames and audio windows of one clip; raises ``MediaError`` on bad input.

    ``audio_path`` (a separate wav/m4a) overrides the audio track of the container.
    """
    try:
        return _decode_clip(video_path, audio_path, cfg or MediaConfig())
    except MediaError:
        raise
    except Exception as exc:  # a decoder bug must still name the file, not kill the job
        raise MediaError(video_path, "decode_failed", f"{type(exc).__name__}: {exc}") from exc


def decode_uri(video_uri: str, audio_uri: str | None = None, cfg: MediaConfig | None = None) -> DecodedClip:
    """:func:`decode_clip` for URIs (local paths or ``s3://``): remote files go through a local temp copy.

    Raises ``MediaError`` for a bad clip and ``storage.StorageError`` for a missing or unreadable URI.
    """
    from ray_emer import storage

    if not video_uri:  # a manifest row no video file matched (ray-emer manifest keeps such published names)
        raise MediaError("<empty video_uri>", "not_found", "no video file matched this clip (empty video_uri)")
    with storage.local_copy(video_uri) as video:
        if not audio_uri:
            return decode_clip(video, None, cfg)
        with storage.local_copy(audio_uri) as audio:
            return decode_clip(video, audio, cfg)


def _decode_clip(video_path: str, audio_path: str | None, cfg: MediaConfig) -> DecodedClip:
    info = probe(video_path)
    if info.duration_s > cfg.max_duration_s:
        raise MediaError(
            video_path, "too_long", f"{info.duration_s:.1f} s is over the limit of {cfg.max_duration_s:.1f} s"
        )
    size, faces = cfg.frame_size, -1
    if info.has_video and cfg.face_crop:
        raw, backend, _ = sample_raw_frames(video_path, cfg.num_frames, cfg.video_backend)
        frames, faces = face_frames(raw, size)
    elif info.has_video:
        frames, backend, _ = decode_video_frames(video_path, cfg.num_frames, size, cfg.video_backend)
    elif cfg.allow_audio_only and info.has_audio:
        frames, backend = np.zeros((cfg.num_frames, size, size, 3), np.uint8), "none"
    else:
        raise MediaError(video_path, "no_video_stream", "the file has no video track")
    wave, has_audio = load_audio(audio_path or video_path)
    win = int(round(cfg.audio_window_s * SAMPLE_RATE))
    if has_audio and wave.size:
        windows = audio_windows(wave, cfg.num_audio_windows, cfg.audio_window_s)
    else:
        windows, has_audio = np.zeros((cfg.num_audio_windows, win), np.float32), False
    return DecodedClip(frames, windows, info.has_video, has_audio, info, backend, faces)


def decode_summary(file: str, audio: str | None = None, num_frames: int = 8, size: int = 224,
                   max_duration: float = 600.0, backend: str = "auto") -> dict:
    """``ray-emer decode``: decode one clip as the pipeline does and describe the result.

    A missing or unreadable file is a ``MediaError`` (``not_found``) like any other bad file."""
    from ray_emer import storage

    cfg = MediaConfig(num_frames=num_frames, frame_size=size, max_duration_s=max_duration, video_backend=backend)
    try:
        return decode_uri(file, audio, cfg).summary()
    except storage.StorageError as exc:
        raise MediaError(file, "not_found", str(exc)) from exc
