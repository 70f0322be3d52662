"""Container facts without decoding pixels: duration, fps, size, codec, audio presence."""

from __future__ import annotations

import dataclasses
import os

import av

from ray_emer.media.errors import MediaError


@dataclasses.dataclass(frozen=True)
class Probe:
    duration_s: float
    fps: float
    width: int
    height: int
    codec: str
    num_frames: int
    has_video: bool
    has_audio: bool


def check_file(path: str) -> None:
    """Raise ``MediaError`` for a missing or empty file before any decoder sees it."""
    if not os.path.exists(path):
        raise MediaError(path, "not_found")
    if os.path.getsize(path) == 0:
        raise MediaError(path, "zero_bytes", "the file is empty")


def has_container_signature(path: str) -> bool:
    """True when the first bytes are those of a known container (MP4/MOV, Matroska/WebM,
    AVI/WAV, FLV, MPEG-PS, Ogg): such a file that will not open was cut short or damaged."""
    with open(path, "rb") as fh:
        head = fh.read(12)
    return (
        head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide")
        or head.startswith((b"\x1aE\xdf\xa3", b"RIFF", b"FLV", b"\x00\x00\x01\xba", b"OggS"))
    )


def open_container(path: str) -> av.container.InputContainer:
    check_file(path)
    try:
        # damaged tags must not cost the clip (PyAV decodes metadata as strict UTF-8 by default)
        return av.open(path, metadata_errors="replace")
    except (av.error.FFmpegError, OSError) as exc:
        if has_container_signature(path):
            raise MediaError(path, "truncated", f"the container header is there but it cannot be read ({exc})") from exc
        raise MediaError(path, "not_a_media_file", str(exc)) from exc


def _duration(container, stream) -> float:
    if stream is not None and stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return 0.0


def probe(path: str) -> Probe:
    """Read the container header of ``path``; raises ``MediaError`` if it is not media."""
    with open_container(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        has_audio = bool(container.streams.audio)
        audio = container.streams.audio[0] if has_audio else None
        for stream in (video, audio):
            if stream is not None and stream.codec_context is None:  # a codec id no decoder knows (damaged header)
                raise MediaError(path, "unsupported_codec", f"no decoder for the {stream.type} stream")
        if video is None:
            return Probe(_duration(container, audio), 0.0, 0, 0, "", 0, False, has_audio)
        ctx = video.codec_context
        rate = video.average_rate or video.guessed_rate or 0
        duration = _duration(container, video)
        frames = video.frames or int(round(duration * float(rate)))
        return Probe(
            duration_s=duration,
            fps=float(rate),
            width=int(ctx.width or 0),
            height=int(ctx.height or 0),
            codec=ctx.name,
            num_frames=int(frames),
            has_video=True,
            has_audio=has_audio,
        )
