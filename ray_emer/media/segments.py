"""Where a long recording is cut into segments: speech pauses (Silero VAD) and shot cuts (PySceneDetect).

A recording longer than ``SegmentConfig.max_s`` is labelled segment by segment, each ``min_s`` to ``max_s``
seconds long. Cuts are made online, while the recording streams through the decoder once (``media.recording``),
so nothing but the open segment is held:

- ``Cutter``: boundary candidates in time order (a pause in speech, a shot cut) -> cuts. A candidate at least
  ``min_s`` after the last cut becomes a cut; with none for ``max_s``, the segment is cut at ``max_s``. A last
  segment shorter than ``min_s`` joins the one before (split in two halves when together they pass ``max_s``).
- ``PauseFinder``: 16 kHz audio in any chunk sizes -> boundaries where speech stops (Silero VAD's streaming
  iterator; the model ships in the ``silero-vad`` wheel): half of ``pause_s`` after the end of speech, inside the
  pause it waited for (the end of a sentence, a speaker handing over).
- ``ShotFinder``: small frames -> the times of shot cuts (PySceneDetect's ``ContentDetector``, fed the frames
  this decode pass already has: no second pass over the file, as its own video backends would make).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from ray_emer.config import ConfigError

VAD_RATE = 16000
VAD_CHUNK = 512  # samples per Silero VAD step at 16 kHz
# a candidate is confirmed this long after its time at most (VAD: the silence it waits for, a chunk); forced cuts
# wait as long, so that a late pause before ``max_s`` still wins over a cut in the middle of a word
CONFIRM_LAG_S = 1.0


@dataclasses.dataclass
class SegmentConfig:
    mode: Literal["auto", "off"] = "auto"  # auto: segment recordings longer than max_s; off: one clip per file
    min_s: float = 2.0
    max_s: float = 12.0
    speech_threshold: float = 0.5  # Silero VAD's speech probability
    pause_s: float = 0.3  # silence that ends a stretch of speech
    shot_threshold: float = 27.0  # ContentDetector's score for a cut (its default)

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "off"):
            raise ConfigError(f"segment.mode: {self.mode!r} is not one of auto, off")
        if not (0 < self.min_s and self.max_s >= 2 * self.min_s):
            raise ConfigError(f"segment: need 0 < min_s and max_s >= 2 * min_s; got min_s={self.min_s}, "
                              f"max_s={self.max_s}")

    def segments(self, duration_s: float) -> bool:
        """Is a recording of ``duration_s`` cut into segments (else it stays one clip, as before)?"""
        return self.mode == "auto" and duration_s > self.max_s


def segment_id(recording_id: str, start_s: float, end_s: float) -> str:
    """``<recording_id>@<start_ms>-<end_ms>``: a segment's clip id."""
    return f"{recording_id}@{int(round(start_s * 1000))}-{int(round(end_s * 1000))}"


class Cutter:
    """Boundary candidates (in the order they are confirmed) -> cuts; ``segments()`` once the end is known."""

    def __init__(self, cfg: SegmentConfig) -> None:
        self.cfg = cfg
        self.cuts: list[float] = []  # cut times, increasing; the recording starts at 0

    @property
    def last(self) -> float:
        return self.cuts[-1] if self.cuts else 0.0

    def candidate(self, t: float) -> bool:
        """A boundary at ``t`` (a pause or a shot cut): a cut when it is ``min_s`` past the last one."""
        if t - self.last >= self.cfg.min_s:
            self.cuts.append(t)
            return True
        return False

    def advance(self, now: float) -> list[float]:
        """Everything up to ``now`` has been seen: segments that reached ``max_s`` with no candidate are cut at
        ``max_s`` (once no candidate can still come for them); returns the cuts made."""
        made = []
        while now - self.last > self.cfg.max_s + CONFIRM_LAG_S:
            self.cuts.append(self.last + self.cfg.max_s)
            made.append(self.cuts[-1])
        return made

    def finish(self, duration_s: float) -> list[tuple[float, float]]:
        """The segments of a recording of ``duration_s``: the cuts before its end, a short tail joined on."""
        while self.cuts and self.cuts[-1] >= duration_s - 1e-3:
            self.cuts.pop()
        while duration_s - self.last > self.cfg.max_s:  # the end came before the lag let advance() cut
            self.cuts.append(self.last + self.cfg.max_s)
        bounds = [0.0, *self.cuts, duration_s]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < self.cfg.min_s:
            bounds.pop(-2)  # the short tail joins the segment before
            if bounds[-1] - bounds[-2] > self.cfg.max_s:  # together too long: two halves, each >= min_s
                bounds.insert(-1, (bounds[-2] + bounds[-1]) / 2)
        return list(zip(bounds[:-1], bounds[1:], strict=True))


class PauseFinder:
    """16 kHz mono audio -> the times where speech stops (Silero VAD, streaming: one chunk at a time)."""

    def __init__(self, cfg: SegmentConfig) -> None:
        import torch
        from silero_vad import VADIterator, load_silero_vad

        torch.set_num_threads(1)  # a 32 ms chunk gains nothing from threads; the decode tasks own the cores
        self._torch = torch
        self.vad = VADIterator(load_silero_vad(), threshold=cfg.speech_threshold, sampling_rate=VAD_RATE,
                               min_silence_duration_ms=int(cfg.pause_s * 1000), speech_pad_ms=30)
        self._rest = np.zeros(0, np.float32)
        self.in_speech, self.pause_s = False, cfg.pause_s

    def feed(self, wave: np.ndarray) -> list[float]:
        """More audio (float32, any length) -> the ends of speech found in it (seconds from the start)."""
        data = np.concatenate([self._rest, wave.astype(np.float32, copy=False)])
        ends = []
        full = len(data) // VAD_CHUNK * VAD_CHUNK
        with self._torch.no_grad():
            for i in range(0, full, VAD_CHUNK):
                event = self.vad(self._torch.from_numpy(data[i:i + VAD_CHUNK]), return_seconds=True,
                                 time_resolution=3)
                if event and "start" in event:
                    self.in_speech = True
                elif event and "end" in event:  # the pause has lasted pause_s by now: cut inside it
                    self.in_speech = False
                    ends.append(float(event["end"]) + self.pause_s / 2)
        self._rest = data[full:].copy()
        return ends


class ShotFinder:
    """Small RGB frames with their times -> the times of shot cuts (PySceneDetect's ContentDetector)."""

    SIZE = 48  # the detector compares mean HSV changes: a thumbnail keeps the score and costs little

    def __init__(self, cfg: SegmentConfig, fps: float) -> None:
        from scenedetect.detectors import ContentDetector

        self.fps = float(fps) if fps > 0 else 25.0
        self.detector = ContentDetector(threshold=cfg.shot_threshold, min_scene_len=1)

    def feed(self, t: float, frame: np.ndarray) -> list[float]:
        """One RGB frame (any size; ``SIZE`` square is what it needs) at ``t`` seconds -> cut times found."""
        import cv2
        from scenedetect import FrameTimecode

        if frame.shape[0] != self.SIZE or frame.shape[1] != self.SIZE:
            frame = cv2.resize(frame, (self.SIZE, self.SIZE), interpolation=cv2.INTER_AREA)
        cuts = self.detector.process_frame(FrameTimecode(float(t), fps=self.fps),
                                           np.ascontiguousarray(frame[..., ::-1]))  # it reads BGR, as OpenCV
        return [float(c.seconds) for c in cuts]
