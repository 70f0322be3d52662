"""One clip in, everything the encoders need out: ``DecodedClip``."""

from __future__ import annotations

import dataclasses

import numpy as np

from ray_emer import storage
from ray_emer.config import ConfigError
from ray_emer.media.audio import SAMPLE_RATE, audio_windows, decode_audio
from ray_emer.media.errors import MediaError
from ray_emer.media.faces import face_frames
from ray_emer.media.packets import MIN_DECODED_SHARE, check_decoded_share
from ray_emer.media.probe import Probe, probe
from ray_emer.media.video import resize_frames, sample_video


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
    # packets the decoder rejects are skipped (as ffmpeg and players do); a clip fails (MediaError "damaged")
    # only when less than this share of its video or of its audio packets decoded. 0 keeps whatever decodes.
    min_decoded_share: float = MIN_DECODED_SHARE

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_decoded_share <= 1.0:
            raise ConfigError(f"media.min_decoded_share: {self.min_decoded_share!r} is not a share in [0, 1]")


@dataclasses.dataclass
class DecodedClip:
    frames: np.ndarray  # [T, S, S, 3] uint8 (zeros when has_video is False)
    audio: np.ndarray  # [W, window_s * 16000] float32 (zeros when has_audio is False)
    has_video: bool
    has_audio: bool
    probe: Probe
    video_backend: str
    face_frames: int = -1  # frames where a face was found and cropped; -1 when face_crop is off
    skipped_packets: int = 0  # video + audio packets the decoder rejected and decoding skipped
    wave: np.ndarray | None = dataclasses.field(default=None, repr=False)  # the whole 16 kHz mono track (ASR)

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
            "skipped_packets": self.skipped_packets,
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
    size, faces, skipped = cfg.frame_size, -1, 0
    if info.has_video:
        sample = sample_video(video_path, cfg.num_frames, cfg.video_backend)
        check_decoded_share(video_path, "video", sample.stats, cfg.min_decoded_share)
        if cfg.face_crop:
            frames, faces = face_frames(sample.frames, size)
        else:
            frames = resize_frames(sample.frames, size)
        backend, skipped = sample.backend, sample.stats.skipped
    elif cfg.allow_audio_only and info.has_audio:
        frames, backend = np.zeros((cfg.num_frames, size, size, 3), np.uint8), "none"
    else:
        raise MediaError(video_path, "no_video_stream", "the file has no video track")
    track = decode_audio(audio_path or video_path)
    check_decoded_share(audio_path or video_path, "audio", track.stats, cfg.min_decoded_share)
    wave, has_audio, skipped = track.wave, track.has_audio, skipped + track.stats.skipped
    win = int(round(cfg.audio_window_s * SAMPLE_RATE))
    if has_audio and wave.size:
        windows = audio_windows(wave, cfg.num_audio_windows, cfg.audio_window_s)
    else:
        windows, has_audio = np.zeros((cfg.num_audio_windows, win), np.float32), False
    return DecodedClip(frames, windows, info.has_video, has_audio, info, backend, faces, skipped,
                       wave if has_audio else None)


def decode_summary(file: str, audio: str | None = None, num_frames: int = 8, size: int = 224,
                   max_duration: float = 600.0, backend: str = "auto",
                   min_decoded_share: float = MIN_DECODED_SHARE) -> dict:
    """``ray-emer decode``: decode one clip as the pipeline does and describe the result.

    A missing or unreadable file is a ``MediaError`` (``not_found``) like any other bad file."""
    cfg = MediaConfig(num_frames=num_frames, frame_size=size, max_duration_s=max_duration, video_backend=backend,
                      min_decoded_share=min_decoded_share)
    try:
        return decode_uri(file, audio, cfg).summary()
    except storage.StorageError as exc:
        raise MediaError(file, "not_found", str(exc)) from exc
