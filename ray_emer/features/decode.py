"""One manifest record -> decoded arrays and flags, never raising: a bad clip is an error row; a long
recording (``decode_rows``) -> one decoded row per segment, cut while it streams through the decoder.

The decoded row carries the manifest record itself (``record``, a dict, updated when speech recognition fills
in a subtitle), the frames ``[T, S, S, 3]`` uint8, the audio windows ``[W, samples]`` float16 and the
per-clip flags and timings the feature shards keep.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np

from ray_emer import storage
from ray_emer.asr import AsrConfig, AsrError, build_transcriber, has_subtitle
from ray_emer.media import SAMPLE_RATE, MediaConfig, MediaError, decode_uri, probe
from ray_emer.media.recording import stream_segments
from ray_emer.media.segments import SegmentConfig, segment_id
from ray_emer.subtitles import SubtitleError, read_cues, text_between


def error_text(exc: BaseException) -> str:
    """``"<reason>: <detail>"`` for a clip that could not be decoded."""
    if isinstance(exc, MediaError):
        return f"{exc.reason}: {exc.detail or exc.path}"
    if isinstance(exc, storage.StorageError):
        return f"storage_error: {exc}"
    if isinstance(exc, AsrError):
        return f"asr_failed: {exc}"
    return f"decode_failed: {type(exc).__name__}: {exc}"


def decode_row(rec: dict, media: MediaConfig, asr: AsrConfig | None = None) -> dict:
    """One manifest record -> arrays + flags; errors become ``status="error"`` with zeros.

    With ``asr.enabled``, a clip with audio and no subtitle is transcribed here (offline backend) or its
    whole 16 kHz audio is handed on as ``asr_wave`` (float16 bytes) to the encoder's Whisper."""
    t0 = time.perf_counter()
    win = int(round(media.audio_window_s * SAMPLE_RATE))
    out = {"record": dict(rec), "status": "ok", "error": "", "face_frames": -1, "skipped_packets": -1,
           "video_backend": "", "duration_s": 0.0, "has_video": False, "has_audio": False,
           "subtitle_source": "given" if has_subtitle(rec.get("subtitle")) else "none"}
    if asr is not None and asr.enabled and asr.backend == "whisper":
        out["asr_wave"] = b""
    try:
        clip = decode_uri(rec["video_uri"], rec.get("audio_uri"), media)
        # audio travels as float16: half the bytes through the object store, and what the encoders
        # compute in on a GPU anyway (the CPU path upcasts to float32)
        out.update(frames=clip.frames, audio=clip.audio.astype(np.float16), has_video=clip.has_video,
                   has_audio=clip.has_audio, face_frames=clip.face_frames, video_backend=clip.video_backend,
                   duration_s=float(clip.probe.duration_s), skipped_packets=clip.skipped_packets)
        if asr is not None and asr.enabled and clip.has_audio and out["subtitle_source"] == "none":
            _asr_in_decode(out, asr, clip.wave)
    except Exception as exc:  # noqa: BLE001 - one bad clip must never end the job
        out.update(status="error", error=error_text(exc),
                   frames=np.zeros((media.num_frames, media.frame_size, media.frame_size, 3), np.uint8),
                   audio=np.zeros((media.num_audio_windows, win), np.float16))
    out["decode_s"] = time.perf_counter() - t0
    return out


def _asr_in_decode(out: dict, asr: AsrConfig, wave: np.ndarray) -> None:
    """The clip's whole audio track (as decoding read it): transcribed now by the offline backend (CPU work,
    spread over the decode tasks), or handed to the encoder, where Whisper is loaded once."""
    if asr.backend == "whisper":
        out["asr_wave"] = wave.astype(np.float16).tobytes()
        return
    try:
        text = build_transcriber(asr).transcribe(wave)
    except AsrError:
        raise
    except Exception as exc:  # noqa: BLE001 - the clip's row says why
        raise AsrError(f"{type(exc).__name__}: {exc}") from exc
    if text.strip():
        out["record"]["subtitle"] = text.strip()
        out["subtitle_source"] = "asr"


def decode_rows(rec: dict, media: MediaConfig, asr: AsrConfig | None = None, seg: SegmentConfig | None = None,
                skip: frozenset[str] | set[str] = frozenset(), segment_ids: list[str] | None = None) -> Iterator[dict]:
    """One manifest record -> its decoded rows: the clip (``decode_row``), or, for a recording longer than
    ``seg.max_s`` (``seg.mode`` auto), one row per segment as the stream is cut (``media.recording``), with
    ``clip_id`` = ``<recording_id>@<start_ms>-<end_ms>``. Every row's record carries ``recording_id``,
    ``start_s``, ``end_s`` (a clip: itself, 0, its duration). A file over ``media.max_duration_s`` is an error row
    (``too_long``) in either mode. Segments in ``skip`` are cut but not yielded (a
    resumed job); ``segment_ids`` receives every segment's id. A recording that breaks part-way ends with an
    error row for the rest, with the reason."""
    if rec.get("subtitle_uri") and not has_subtitle(rec.get("subtitle")):
        rec = {**rec, "subtitle": _whole_text(rec["subtitle_uri"])}
    if seg is None or seg.mode == "off" or not rec.get("video_uri"):
        yield _as_clip(decode_row(rec, media, asr))
        return
    try:
        with storage.local_copy(rec["video_uri"]) as video:
            info = probe(video)
            if not seg.segments(info.duration_s) or info.duration_s > media.max_duration_s:  # a clip, or too_long
                yield _as_clip(decode_row({**rec, "video_uri": video}, media, asr), rec["video_uri"])
                return
            with _audio_copy(rec.get("audio_uri")) as audio:
                yield from _decode_recording(rec, video, audio, info, media, asr, seg, skip, segment_ids)
    except Exception:  # noqa: BLE001 - not even probed: the clip path says why, as an error row
        yield _as_clip(decode_row(rec, media, asr))


def _whole_text(uri: str) -> str | None:
    """A clip's timed subtitle as one text (None when it cannot be read: the clip keeps no subtitle)."""
    try:
        return " ".join(c.text for c in read_cues(uri)) or None
    except (SubtitleError, storage.StorageError):
        return None


def _as_clip(row: dict, video_uri: str | None = None) -> dict:
    record = row["record"]
    if video_uri is not None:
        record["video_uri"] = video_uri
    record.update(recording_id=record["clip_id"], start_s=0.0, end_s=float(row["duration_s"]), thumbnail=None)
    return row


@contextlib.contextmanager
def _audio_copy(uri: str | None):
    if not uri:
        yield None
        return
    with storage.local_copy(uri) as path:
        yield path


def _decode_recording(rec: dict, video: str, audio: str | None, info, media: MediaConfig, asr: AsrConfig | None,
                      seg: SegmentConfig, skip, segment_ids: list[str] | None) -> Iterator[dict]:
    rid, t0, last_end = str(rec["clip_id"]), time.perf_counter(), 0.0
    base = {"status": "ok", "error": "", "video_backend": "pyav", "subtitle_source": "none"}
    try:
        cues = read_cues(rec["subtitle_uri"]) if rec.get("subtitle_uri") else None
        for s in stream_segments(video, info, media, seg, audio):
            sid, last_end = segment_id(rid, s.start_s, s.end_s), s.end_s
            if segment_ids is not None:
                segment_ids.append(sid)
            if sid in skip:
                t0 = time.perf_counter()
                continue
            subtitle = text_between(cues, s.start_s, s.end_s) if cues else None
            record = {**rec, "clip_id": sid, "recording_id": rid, "start_s": round(s.start_s, 3),
                      "end_s": round(s.end_s, 3), "subtitle": subtitle, "thumbnail": s.thumbnail}
            out = {**base, "record": record, "frames": s.frames, "audio": s.audio.astype(np.float16),
                   "has_video": s.has_video, "has_audio": s.has_audio, "face_frames": s.face_frames,
                   "skipped_packets": s.skipped_packets, "duration_s": s.end_s - s.start_s,
                   "subtitle_source": "given" if has_subtitle(subtitle) else "none"}
            if asr is not None and asr.enabled and asr.backend == "whisper":
                out["asr_wave"] = b""
            if asr is not None and asr.enabled and s.has_audio and out["subtitle_source"] == "none":
                try:
                    _asr_in_decode(out, asr, s.wave)
                except AsrError as exc:
                    out.update(status="error", error=error_text(exc))
            out["decode_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            yield out
    except Exception as exc:  # noqa: BLE001 - the rest of the recording is one error row with the reason
        end = max(float(info.duration_s), last_end + 1e-3)
        record = {**rec, "clip_id": segment_id(rid, last_end, end), "recording_id": rid,
                  "start_s": round(last_end, 3), "end_s": round(end, 3), "thumbnail": None}
        out = decode_row({**rec, "video_uri": ""}, media)  # zero arrays and flags in the clip shape
        out.update(record=record, status="error", error=error_text(exc), decode_s=time.perf_counter() - t0)
        yield out
