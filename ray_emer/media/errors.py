"""The one error type of the media layer: which file, which reason, what detail."""

from __future__ import annotations

from ray_emer.errors import RayEmerError

REASONS = (
    "not_found",
    "zero_bytes",
    "not_a_media_file",
    "truncated",
    "damaged",  # packets failed to decode and less than media.min_decoded_share of a stream was left
    "no_video_stream",
    "unsupported_codec",
    "too_long",
    "decode_failed",
)


class MediaError(RayEmerError):
    """A clip cannot be decoded. ``reason`` is one of ``REASONS``; ``str()`` is for people."""

    exit_code = 1  # ray-emer decode: this file is bad

    def __init__(self, path: str, reason: str, detail: str = "") -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown media error reason {reason!r}")
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        msg = f"{self.path}: {reason.replace('_', ' ')}"
        super().__init__(f"{msg}: {detail}" if detail else msg)
