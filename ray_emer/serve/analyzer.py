"""One clip in, the explanation and the emotions out, in plain Python (the Serve deployments wrap it).

- ``decode_media``: uploaded bytes (or an allowed URI) -> a decoded row (never raises: a
  bad file is ``status="error"`` with ``"<reason>: <detail>"``, as in extraction)
- ``ClipModel``: frozen encoders + the labeller of a checkpoint; decoded rows (a batch)
  -> ``{"description", "labels", "sentiment", "timings"}`` per row; or one decoded row -> the
  description's text deltas as they are generated, then that analysis (``stream``)
Both reuse the extraction and labelling code, so a served answer equals the bulk job's.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from collections.abc import Iterator

import cv2
import numpy as np

from ray_emer.features.columns import to_columns
from ray_emer.features.decode import decode_row, decode_rows
from ray_emer.features.encoder import FeatureEncoder
from ray_emer.infer.labeller import Labeller, LabellerConfig
from ray_emer.media import MediaConfig, probe
from ray_emer.media.segments import SegmentConfig


@contextlib.contextmanager
def _upload_files(video: bytes | str, suffix: str, audio: bytes | None, audio_suffix: str):
    """The upload's bytes as temporary files (an allowed URI is used as it is) -> (video path, audio path)."""
    with tempfile.TemporaryDirectory(prefix="ray_emer-upload-") as tmp:
        if isinstance(video, bytes):
            path = os.path.join(tmp, "clip" + (suffix if suffix.startswith(".") else "." + suffix))
            with open(path, "wb") as fh:
                fh.write(video)
        else:
            path = video
        audio_path = None
        if audio is not None:
            audio_path = os.path.join(tmp, "audio" + audio_suffix)
            with open(audio_path, "wb") as fh:
                fh.write(audio)
        yield path, audio_path


def _is_recording(path: str, media: MediaConfig, seg: SegmentConfig | None) -> bool:
    """Longer than ``seg.max_s`` and within ``media.max_duration_s`` (else the clip path answers, or says why)."""
    if seg is None or seg.mode == "off":
        return False
    try:
        duration = probe(path).duration_s
    except Exception:  # noqa: BLE001 - decode_row names what is wrong with the file
        return False
    return seg.segments(duration) and duration <= media.max_duration_s


def decode_media(video: bytes | str, suffix: str = ".mp4", audio: bytes | None = None, audio_suffix: str = ".wav",
                 subtitle: str | None = None, media: MediaConfig | None = None,
                 seg: SegmentConfig | None = None) -> dict:
    """Bytes of an upload (or an already-allowed URI) -> a decoded row with ``status``/``error``; an upload longer
    than ``seg.max_s`` is not decoded here: ``{"status": "recording"}`` (its segments come from
    ``decode_segments``)."""
    media = media or MediaConfig()
    with _upload_files(video, suffix, audio, audio_suffix) as (path, audio_path):
        if _is_recording(path, media, seg):
            return {"status": "recording", "error": ""}
        rec = {"clip_id": "request", "video_uri": path, "audio_uri": audio_path, "subtitle": subtitle or None}
        return decode_row(rec, media)


def decode_segments(video: bytes | str, suffix: str, audio: bytes | None, audio_suffix: str, media: MediaConfig,
                    seg: SegmentConfig) -> Iterator[dict]:
    """A long upload -> its decoded segment rows, each as soon as it is cut (one streamed decode). A whole-file
    subtitle cannot be placed in time: segments go without one."""
    with _upload_files(video, suffix, audio, audio_suffix) as (path, audio_path):
        rec = {"clip_id": "request", "video_uri": path, "audio_uri": audio_path, "subtitle": None}
        yield from decode_rows(rec, media, None, seg)


def thumbnails(frames: np.ndarray, size: int = 96) -> list[str]:
    """``[T, S, S, 3]`` uint8 -> JPEG data URLs (what the demo page shows)."""
    out = []
    for f in frames:
        small = cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR))
        if ok:
            out.append("data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode())
    return out


@dataclasses.dataclass
class Analysis:
    description: str
    labels: list[str]
    sentiment: str
    timings: dict
    status: str = "ok"
    error: str = ""


class ClipModel:
    """The model step: frozen encoders and the labeller of one checkpoint, loaded once."""

    def __init__(self, checkpoint: str, labeller: LabellerConfig | None = None, media: MediaConfig | None = None):
        self.media = media or MediaConfig()
        self.encoder = FeatureEncoder(checkpoint, self.media)
        self.labeller = Labeller(checkpoint, labeller)

    def analyze(self, rows: list[dict]) -> list[Analysis]:
        """Decoded rows (from ``decode_media``) -> one ``Analysis`` each; a batch shares the engine calls."""
        t0 = time.perf_counter()
        features = self.encoder.encode_batch(to_columns(rows))  # arrays, no Arrow: a request stays in numpy
        t1 = time.perf_counter()
        labelled = self.labeller.label_batch(features)
        t2 = time.perf_counter()
        out = []
        for row, lab in zip(rows, labelled, strict=True):
            timings = {"decode_s": round(float(row["decode_s"]), 4), "encode_s": round((t1 - t0) / len(rows), 4),
                       "generate_s": round(float(lab["timings"]["generate_s"]), 4),
                       "model_s": round((t2 - t0) / len(rows), 4), "batch": len(rows)}
            out.append(Analysis(lab["description"], list(lab["labels"]), lab["sentiment"], timings, lab["status"],
                                lab["error"]))
        return out

    def stream(self, row: dict) -> Iterator[dict]:
        """One decoded row -> ``{"delta": text}`` events as the description is generated (joined: the
        description; a stater holds its conclusion until the labels are known), then ``{"result": Analysis}``
        as a dict, its timings with ``first_text_s`` (from the row's arrival to the first delta)."""
        t0 = time.perf_counter()
        features = self.encoder.encode_batch(to_columns([row]))
        t1 = time.perf_counter()
        lab = None
        for item in self.labeller.stream_one(features):
            if isinstance(item, str):
                yield {"delta": item}
            else:
                lab = item
        t2 = time.perf_counter()
        first = lab["timings"].get("first_text_s", 0.0)
        timings = {"decode_s": round(float(row["decode_s"]), 4), "encode_s": round(t1 - t0, 4),
                   "generate_s": round(float(lab["timings"]["generate_s"]), 4), "model_s": round(t2 - t0, 4),
                   "batch": 1, "first_text_s": round(t1 - t0 + first, 4) if first else None}
        yield {"result": dataclasses.asdict(Analysis(lab["description"], list(lab["labels"]), lab["sentiment"],
                                                     timings, lab["status"], lab["error"]))}
