"""Media decoding: pure functions from a file to arrays. No Ray, no model.

- ``probe``: duration, fps, resolution, codec, has_audio.
- ``decode_video_frames``: ``[T, S, S, 3]`` uint8 frames sampled uniformly (decord, PyAV fallback).
- ``load_audio`` / ``audio_windows``: 16 kHz mono float32 and the ``[8, 32000]`` windows.
- ``decode_clip``: all of the above for one clip, as a ``DecodedClip``; ``decode_uri`` for local/S3 URIs.
Packets the decoder rejects are skipped and counted (``DecodedClip.skipped_packets``, ``DecodeStats``), as
players do; less than ``MediaConfig.min_decoded_share`` of a stream decoding is a failure (``damaged``).
Every failure raises ``MediaError`` with the file and a reason code.
"""

from ray_emer.media.audio import SAMPLE_RATE, AudioTrack, audio_windows, decode_audio, load_audio
from ray_emer.media.clip import DecodedClip, MediaConfig, decode_clip, decode_summary, decode_uri
from ray_emer.media.errors import MediaError
from ray_emer.media.packets import DecodeStats
from ray_emer.media.probe import Probe, probe
from ray_emer.media.video import VideoSample, decode_video_frames, frame_indices, sample_video

__all__ = [
    "SAMPLE_RATE",
    "AudioTrack",
    "DecodeStats",
    "DecodedClip",
    "MediaConfig",
    "MediaError",
    "VideoSample",
    "Probe",
    "audio_windows",
    "decode_audio",
    "decode_clip",
    "decode_summary",
    "decode_uri",
    "decode_video_frames",
    "frame_indices",
    "load_audio",
    "probe",
    "sample_video",
]
