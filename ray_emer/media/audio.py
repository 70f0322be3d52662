"""Audio: 16 kHz mono float32 from any container PyAV reads, and the published windows."""

from __future__ import annotations

import dataclasses

import av
import numpy as np

from ray_emer.media.errors import MediaError
from ray_emer.media.packets import MIN_DECODED_SHARE, DecodeStats, check_decoded_share, decode_packets
from ray_emer.media.probe import open_container

SAMPLE_RATE = 16_000


@dataclasses.dataclass
class AudioTrack:
    wave: np.ndarray  # [N] float32 mono at the requested rate (empty without audio)
    has_audio: bool  # the file has an audio stream
    stats: DecodeStats  # packets read / skipped


def decode_audio(path: str, sample_rate: int = SAMPLE_RATE) -> AudioTrack:
    """The first audio stream as mono float32 at ``sample_rate``; packets the decoder rejects are
    skipped and counted (``stats``), not fatal. No audio track is not an error (``has_audio=False``)."""
    stats = DecodeStats()
    with open_container(path) as container:
        if not container.streams.audio:
            return AudioTrack(np.zeros(0, dtype=np.float32), False, stats)
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # a codec id no decoder knows (damaged header)
            raise MediaError(path, "unsupported_codec", "no decoder for the audio stream")
        chunks: list[np.ndarray] = []
        resampler, setup = None, None
        for frame in decode_packets(container, stream, stats):
            # a damaged packet can decode to another layout or rate: a player reconfigures, so do we
            frame_setup = (frame.format.name, frame.layout.name, frame.sample_rate)
            if frame_setup != setup:
                chunks += _drain(resampler)
                resampler, setup = av.AudioResampler(format="flt", layout="mono", rate=sample_rate), frame_setup
            chunks += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
        chunks += _drain(resampler)
    if not chunks and stats.stopped and not stats.packets:
        raise MediaError(path, "truncated", f"audio reading stopped: {stats.stopped}")
    wave = np.concatenate(chunks).astype(np.float32, copy=False) if chunks else np.zeros(0, dtype=np.float32)
    return AudioTrack(wave, True, stats)


def _drain(resampler: av.AudioResampler | None) -> list[np.ndarray]:
    return [] if resampler is None else [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]


def load_audio(path: str, sample_rate: int = SAMPLE_RATE,
               min_decoded_share: float = MIN_DECODED_SHARE) -> tuple[np.ndarray, bool]:
    """-> (``[N]`` float32 mono at ``sample_rate``, has_audio). No audio track is not an error;
    less than ``min_decoded_share`` of the audio packets decoding is (``MediaError`` ``damaged``)."""
    track = decode_audio(path, sample_rate)
    check_decoded_share(path, "audio", track.stats, min_decoded_share)
    return track.wave, track.has_audio


def audio_windows(
    wave: np.ndarray, num_windows: int = 8, window_s: float = 2.0, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """``[N]`` -> ``[num_windows, window]``: evenly spaced windows over the whole signal.

    Audio shorter than one window is zero-padded to it; shorter than
    ``num_windows * window`` gives overlapping windows; longer gives gaps between them.
    """
    win = int(round(window_s * sample_rate))
    if wave.shape[0] < win:
        wave = np.pad(wave, (0, win - wave.shape[0]))
    starts = np.floor(np.linspace(0, wave.shape[0] - win, num_windows)).astype(np.int64)
    return np.stack([wave[s : s + win] for s in starts]).astype(np.float32, copy=False)
