"""A long recording, decoded once and streamed: segments (frames + audio windows) as soon as each is cut.

``stream_segments`` reads the video and the audio of a file packet by packet (one decode of each stream, the two
in time order), cuts them with ``media.segments`` (shot cuts from the frames, pauses from the audio) and yields
each segment's ``num_frames`` frames and audio windows, sampled as a clip's are. Only the segment being cut and
the one before it (the last one may still take a short tail) are held: memory does not grow with the length.
Every frame is compared for shot cuts (as a small thumbnail); ``MAX_FPS`` frames a second are kept at the
encoder's size: the 8 frames sampled from a 2-12 s segment lose nothing a 30 fps source would show.
"""

from __future__ import annotations

import dataclasses
import heapq
import queue
import threading
from collections import deque
from collections.abc import Iterator

import av
import cv2
import numpy as np

from ray_emer.media.audio import SAMPLE_RATE, audio_windows
from ray_emer.media.errors import MediaError
from ray_emer.media.faces import face_frames
from ray_emer.media.packets import DecodeStats, decode_packets
from ray_emer.media.probe import Probe, open_container
from ray_emer.media.segments import Cutter, PauseFinder, SegmentConfig, ShotFinder
from ray_emer.media.video import frame_indices

MAX_FPS = 8.0
THUMB = 96


@dataclasses.dataclass
class SegmentMedia:
    start_s: float
    end_s: float
    frames: np.ndarray  # [T, S, S, 3] uint8 (zeros without video)
    audio: np.ndarray  # [W, window] float32 (zeros without audio)
    wave: np.ndarray | None  # the segment's 16 kHz audio (speech recognition), None without audio
    has_video: bool
    has_audio: bool
    thumbnail: bytes  # a JPEG of the middle frame (b"" without video)
    face_frames: int = -1
    skipped_packets: int = 0


def _scaled(frame: av.VideoFrame, size: int) -> np.ndarray:
    """Shorter side to ``size`` (swscale), centre crop: the clip path's ``resize_square`` on the decoder's frame."""
    scale = size / min(frame.width, frame.height)
    w, h = max(size, round(frame.width * scale)), max(size, round(frame.height * scale))
    img = frame.reformat(width=w, height=h, format="rgb24", interpolation="BILINEAR").to_ndarray()
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(img[top:top + size, left:left + size])


def _video_events(path: str, size: int, stats: DecodeStats, shots: ShotFinder) -> Iterator[tuple[float, int, tuple]]:
    """(t, 0, (the frame at ``size`` or None, shot cuts found)) per decoded frame: every frame is compared for
    cuts (as a thumbnail), ``MAX_FPS`` of them a second are kept for the segments."""
    with open_container(path) as container:
        stream = container.streams.video[0]
        if (stream.codec_context.width or 0) >= 640:  # frame threads pay off on large frames only
            stream.thread_type = "AUTO"
        start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        kept, last = -1.0, 0.0
        for frame in decode_packets(container, stream, stats):
            t = float(frame.time) - start if frame.time is not None else last + 1 / MAX_FPS
            last = t
            small = frame.reformat(width=ShotFinder.SIZE, height=ShotFinder.SIZE, format="rgb24",
                                   interpolation="BILINEAR").to_ndarray()
            keep = kept < 0 or t >= kept + 1 / MAX_FPS - 1e-6
            if keep:
                kept = t
            yield t, 0, (_scaled(frame, size) if keep else None, shots.feed(t, small))


def _audio_events(path: str, stats: DecodeStats, pauses: PauseFinder) -> Iterator[tuple[float, int, tuple]]:
    """(t, 1, (16 kHz mono samples, ends of speech found)) per resampled chunk."""
    with open_container(path) as container:
        if not container.streams.audio:
            return
        stream, resampler, setup, n = container.streams.audio[0], None, None, 0
        for frame in decode_packets(container, stream, stats):
            frame_setup = (frame.format.name, frame.layout.name, frame.sample_rate)
            if frame_setup != setup:  # a damaged packet can change the layout: reconfigure, as decode_audio does
                resampler, setup = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE), frame_setup
            for out in resampler.resample(frame):
                chunk = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                yield n / SAMPLE_RATE, 1, (chunk, pauses.feed(chunk))
                n += len(chunk)


def _ahead(events: Iterator, depth: int = 256) -> Iterator:
    """``events`` produced by a thread of their own, ``depth`` ahead at most: the video and the audio stream decode
    at once (PyAV and torch release the GIL while they compute), memory stays bounded."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done, stop = object(), threading.Event()

    def run() -> None:
        try:
            for item in events:
                while not stop.is_set():
                    try:
                        items.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as exc:  # noqa: BLE001 - raised again in the reading thread
            items.put((done, exc))

    thread = threading.Thread(target=run, daemon=True, name="ray_emer-decode")
    thread.start()
    try:
        while True:
            item = items.get()
            if item[0] is done:
                if item[1] is not None:
                    raise item[1]
                return
            yield item
    finally:
        stop.set()


class _Buffers:
    """Frames and audio from ``start`` on: what the held and the open segment need."""

    def __init__(self) -> None:
        self.frames: deque[tuple[float, np.ndarray]] = deque()
        self.chunks: deque[tuple[int, np.ndarray]] = deque()  # (first sample, samples)
        self.samples = 0

    def add_audio(self, chunk: np.ndarray) -> None:
        self.chunks.append((self.samples, chunk))
        self.samples += len(chunk)

    def drop_before(self, t: float) -> None:
        while len(self.frames) > 1 and self.frames[1][0] <= t:  # the frame showing at t stays
            self.frames.popleft()
        first = int(t * SAMPLE_RATE)
        while self.chunks and self.chunks[0][0] + len(self.chunks[0][1]) <= first:
            self.chunks.popleft()

    def frames_in(self, a: float, b: float) -> list[np.ndarray]:
        inside = [f for t, f in self.frames if a - 1e-6 <= t < b]
        if not inside:  # a segment between two kept frames shows the one before it
            before = [f for t, f in self.frames if t < a]
            inside = before[-1:]
        return inside

    def wave_in(self, a: float, b: float) -> np.ndarray:
        lo, hi = int(round(a * SAMPLE_RATE)), int(round(b * SAMPLE_RATE))
        parts = [c[max(0, lo - s):max(0, hi - s)] for s, c in self.chunks if s < hi and s + len(c) > lo]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _thumbnail(frame: np.ndarray) -> bytes:
    small = cv2.resize(frame, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else b""


def stream_segments(video_path: str, info: Probe, media, seg: SegmentConfig,
                    audio_path: str | None = None) -> Iterator[SegmentMedia]:
    """The segments of a recording, in time order, each as soon as it is cut (``media``: a ``MediaConfig``).

    Raises ``MediaError`` when neither stream decodes at all; a stream that stops part-way ends the recording
    there (what decoded is segmented)."""
    size, win = media.frame_size, int(round(media.audio_window_s * SAMPLE_RATE))
    vstats, astats = DecodeStats(), DecodeStats()
    audio_file = audio_path or video_path
    with open_container(audio_file) as probe_audio:
        has_audio_stream = bool(probe_audio.streams.audio)
    if not info.has_video and not media.allow_audio_only:
        raise MediaError(video_path, "no_video_stream", "the file has no video track")
    events = []  # each stream decodes (and is searched for cuts) in a thread of its own
    if info.has_video:
        events.append(_ahead(_video_events(video_path, size, vstats, ShotFinder(seg, info.fps or 25.0))))
    if has_audio_stream:
        events.append(_ahead(_audio_events(audio_file, astats, PauseFinder(seg))))
    cutter, buf = Cutter(seg), _Buffers()
    held: tuple[float, float] | None = None
    used, skipped_seen, now, last_video = 0, 0, 0.0, None

    def build(a: float, b: float) -> SegmentMedia:
        nonlocal skipped_seen
        raw = buf.frames_in(a, b)
        if raw:
            frames = np.stack([raw[i] for i in frame_indices(len(raw), media.num_frames)])
            faces = -1
            if media.face_crop:
                frames, faces = face_frames(list(frames), size)
            thumb = _thumbnail(frames[len(frames) // 2])
        else:
            frames, faces, thumb = np.zeros((media.num_frames, size, size, 3), np.uint8), -1, b""
        wave = buf.wave_in(a, b)
        has_audio = has_audio_stream and wave.size > 0
        windows = audio_windows(wave, media.num_audio_windows, media.audio_window_s) if has_audio else \
            np.zeros((media.num_audio_windows, win), np.float32)
        skipped = vstats.skipped + astats.skipped
        out = SegmentMedia(a, b, frames, windows, wave if has_audio else None, bool(raw), has_audio, thumb, faces,
                           skipped - skipped_seen)
        skipped_seen = skipped
        return out

    for t, kind, data in heapq.merge(*events, key=lambda e: (e[0], e[1])):
        now = t
        if kind == 0:
            last_video = t
            if data[0] is not None:
                buf.frames.append((t, data[0]))
        else:
            buf.add_audio(data[0])
        for c in data[1]:  # shot cuts, or ends of speech
            cutter.candidate(c)
        cutter.advance(now)
        while used < len(cutter.cuts):  # a new cut: the held segment is final, the one it closes is held
            start = cutter.cuts[used - 1] if used else 0.0
            if held is not None:
                yield build(*held)
                buf.drop_before(held[1])
            held, used = (start, cutter.cuts[used]), used + 1
    last_frame = last_video + 1 / (info.fps or 25.0) if last_video is not None else 0.0
    duration = max(last_frame, buf.samples / SAMPLE_RATE)
    if duration <= 0:
        raise MediaError(video_path, "decode_failed", "no decodable video frame or audio sample in the recording")
    first = held[0] if held is not None else 0.0
    for a, b in cutter.finish(duration):
        if a >= first - 1e-6:
            yield build(a, b)
