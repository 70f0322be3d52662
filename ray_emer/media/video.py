"""Video frames: uniform sampling as published, decord first, PyAV as the fallback.

decord is fast but cannot read AV1 and raises plain ``RuntimeError`` on garbage or on
a packet it cannot decode, so every decord failure falls through to PyAV, and only
PyAV's verdict becomes a ``MediaError``. PyAV decodes packet by packet as a player
does: a packet the decoder rejects is skipped and counted (``VideoSample.stats``), and
frames are sampled from the ones that decoded. Frames are resized (shorter side to ``size``, centre crop) right after
decoding, so no full-resolution frame leaves this module.
"""

from __future__ import annotations

import dataclasses

import av
import cv2
import numpy as np

from ray_emer.media.errors import MediaError
from ray_emer.media.packets import (MIN_DECODED_SHARE, DecodeStats, check_decoded_share, damage_reason,
                                    decode_packets)
from ray_emer.media.probe import check_file, open_container


@dataclasses.dataclass
class VideoSample:
    frames: list[np.ndarray]  # the sampled frames, RGB uint8 at their own resolution
    backend: str  # decord | pyav
    total: int  # frames in the clip (PyAV: frames that decoded)
    # PyAV: video packets read / skipped. decord reports no packets: ``packets`` is the frame count and
    # ``skipped`` 0, since a packet decord cannot decode sends the clip to PyAV, which counts.
    stats: DecodeStats


def frame_indices(num_frames_in_clip: int, num_samples: int = 8) -> list[int]:
    """Published sampling: ``floor(i*n/T)``; a clip shorter than T repeats its last frame."""
    n = num_frames_in_clip
    if n <= 0:
        raise ValueError("a clip with no frames has no indices")
    if n < num_samples:
        return list(range(n)) + [n - 1] * (num_samples - n)
    return [(i * n) // num_samples for i in range(num_samples)]


def resize_square(frame: np.ndarray, size: int) -> np.ndarray:
    """``[H, W, 3]`` -> ``[size, size, 3]``: shorter side to ``size``, then centre crop."""
    h, w = frame.shape[:2]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    resized = cv2.resize(frame, (nw, nh), interpolation=interp)
    top, left = (nh - size) // 2, (nw - size) // 2
    return np.ascontiguousarray(resized[top : top + size, left : left + size])


def _decord_frames(path: str, num_samples: int) -> tuple[np.ndarray, int]:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
    n = len(reader)
    batch = reader.get_batch(frame_indices(n, num_samples)).asnumpy()
    return batch, n


def _count_video_packets(path: str) -> int:
    count = 0
    with open_container(path) as container:
        try:
            for packet in container.demux(container.streams.video[0]):
                count += packet.size > 0
        except av.error.FFmpegError:  # the demuxer gave up: count what it read, as decoding will
            pass
    return count


def _pyav_frames(path: str, num_samples: int) -> VideoSample:
    with open_container(path) as container:
        if not container.streams.video:
            raise MediaError(path, "no_video_stream", "the file has no video track")
        stream = container.streams.video[0]
        if stream.codec_context is None:  # a codec id no decoder knows (damaged header)
            raise MediaError(path, "unsupported_codec", "no decoder for the video stream")
        try:
            av.codec.Codec(stream.codec_context.name, "r")
        except Exception as exc:  # PyAV raises several types for unknown decoders
            raise MediaError(path, "unsupported_codec", str(exc)) from exc
        total = stream.frames or _count_video_packets(path)
    wanted = frame_indices(max(total, 1), num_samples)
    got, decoded, stats = _pyav_pass(path, wanted)
    if decoded == 0:
        raise MediaError(path, damage_reason(stats), f"no decodable video frame ({stats.describe('video')})")
    if decoded != total:  # header count off, packets skipped or the file cut short: sample what decoded
        wanted = frame_indices(decoded, num_samples)
        got, _, _ = _pyav_pass(path, wanted)
    return VideoSample([_nearest(got, i) for i in wanted], "pyav", decoded, stats)


def _pyav_pass(path: str, wanted: list[int]) -> tuple[dict[int, np.ndarray], int, DecodeStats]:
    """Decode every packet of the video stream once -> (the ``wanted`` frames by decode index,
    frames decoded, packet stats)."""
    need, got, count, stats = set(wanted), {}, 0, DecodeStats()
    with open_container(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for count, frame in enumerate(decode_packets(container, stream, stats), start=1):
            if count - 1 in need:
                got[count - 1] = frame.to_ndarray(format="rgb24")
    return got, count, stats


def _nearest(got: dict[int, np.ndarray], idx: int) -> np.ndarray:
    """Frame ``idx``, else the last decoded one before it (what a player shows), else the first after it."""
    if idx in got:
        return got[idx]
    before = [i for i in got if i < idx]
    return got[max(before)] if before else got[min(got)]


def sample_video(path: str, num_frames: int = 8, backend: str = "auto") -> VideoSample:
    """Sample ``num_frames`` frames at their own resolution, with the backend used and packet stats.

    ``backend``: ``auto`` (decord, then PyAV), ``decord`` or ``pyav``. The share of packets that
    decoded is not checked here (see :func:`ray_emer.media.packets.check_decoded_share`).
    """
    check_file(path)
    if backend in ("auto", "decord"):
        try:
            raw, total = _decord_frames(path, num_frames)
            return VideoSample(list(raw), "decord", total, DecodeStats(packets=total))
        except Exception as exc:  # decord raises bare RuntimeError/DECORDError on bad input
            if backend == "decord":
                raise MediaError(path, "decode_failed", f"decord: {exc}") from exc
    return _pyav_frames(path, num_frames)


def sample_raw_frames(path: str, num_frames: int = 8, backend: str = "auto",
                      min_decoded_share: float = MIN_DECODED_SHARE) -> tuple[list[np.ndarray], str, int]:
    """Sample ``num_frames`` frames at their own resolution -> (frames, backend, frames in clip).

    Only for callers that crop before resizing (face crops); everything else uses
    :func:`decode_video_frames`, which resizes at once. Less than ``min_decoded_share`` of the
    video packets decoding is a ``MediaError`` (``damaged``).
    """
    sample = sample_video(path, num_frames, backend)
    check_decoded_share(path, "video", sample.stats, min_decoded_share)
    return sample.frames, sample.backend, sample.total


def decode_video_frames(
    path: str, num_frames: int = 8, size: int = 224, backend: str = "auto",
    min_decoded_share: float = MIN_DECODED_SHARE,
) -> tuple[np.ndarray, str, int]:
    """Sample ``num_frames`` frames of ``path`` -> (``[T, size, size, 3]`` uint8, backend, n).

    ``backend``: ``auto`` (decord, then PyAV), ``decord`` or ``pyav``.
    """
    raw, used, total = sample_raw_frames(path, num_frames, backend, min_decoded_share)
    return resize_frames(raw, size), used, total


def resize_frames(raw: list[np.ndarray], size: int) -> np.ndarray:
    """Raw frames -> ``[T, size, size, 3]`` uint8 (:func:`resize_square` each)."""
    return np.stack([resize_square(f, size) for f in raw]).astype(np.uint8)
