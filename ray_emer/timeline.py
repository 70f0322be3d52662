"""Emotion timelines of long recordings: label rows of segments -> per recording JSON, WebVTT and a summary.

A timeline is ``{"recording_id", "duration_s", "segments": [{"start_s", "end_s", "description", "labels",
"sentiment", "subtitle"}]}`` in time order (a segment that failed also has ``error``). ``ray-emer label`` writes
one per segmented recording as ``OUT/_timelines/<recording_id>.json`` and ``.vtt`` (cues with the labels and the
sentiment: any video player shows them as captions); the endpoint answers a long upload with its segments and
a summary of the whole (``summarize``); ``eval.timeline_view`` draws it.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable

from ray_emer import storage
from ray_emer.subtitles import Cue, to_webvtt

VALENCE = {"positive": 1.0, "neutral": 0.0, "negative": -1.0}
FOLDER = "_timelines"


def _value(row: dict, key: str, default=None):
    value = row.get(key, default)
    if isinstance(value, float) and value != value:  # NaN (pandas' missing) -> default
        return default
    return default if value is None else value


def segment_entry(row: dict) -> dict:
    """A label row (with ``start_s``, ``end_s``, ``subtitle``) -> a timeline segment."""
    entry = {"start_s": round(float(row["start_s"]), 3), "end_s": round(float(row["end_s"]), 3),
             "description": str(_value(row, "description", "")), "labels": [str(x) for x in _value(row, "labels", [])],
             "sentiment": str(_value(row, "sentiment", "")), "subtitle": _value(row, "subtitle")}
    if _value(row, "status", "ok") != "ok":
        entry["error"] = str(_value(row, "error", ""))
    return entry


def timelines(rows: Iterable[dict]) -> dict[str, dict]:
    """Label rows -> ``{recording_id: timeline}`` for the recordings that were cut into segments (a clip, its own
    recording in one row, has none)."""
    by_recording: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        rid = _value(row, "recording_id")
        if rid is not None and str(rid) != str(row["clip_id"]) and _value(row, "start_s") is not None:
            by_recording[str(rid)].append(segment_entry(row))
    out = {}
    for rid, segments in by_recording.items():
        segments.sort(key=lambda s: s["start_s"])
        out[rid] = {"recording_id": rid, "duration_s": max(s["end_s"] for s in segments), "segments": segments}
    return out


def cue_text(segment: dict) -> str:
    """What a player shows over a segment: its labels and sentiment."""
    if "error" in segment:
        return "(not labelled)"
    labels = ", ".join(segment["labels"]) or "no emotion found"
    return f"{labels} ({segment['sentiment']})" if segment["sentiment"] else labels


def to_vtt(timeline: dict) -> str:
    """A timeline -> WebVTT text: one cue per segment."""
    return to_webvtt([Cue(s["start_s"], s["end_s"], cue_text(s)) for s in timeline["segments"]])


def write_timelines(found: dict[str, dict], output: str) -> dict[str, str]:
    """``OUTPUT/_timelines/<id>.json`` and ``.vtt`` for each timeline; returns ``{id: json path}``."""
    paths = {}
    for rid, timeline in found.items():
        base = storage.join(output, FOLDER, rid)
        storage.write_text(base + ".json", json.dumps(timeline, indent=1))
        storage.write_text(base + ".vtt", to_vtt(timeline))
        paths[rid] = base + ".json"
    return paths


def summarize(segments: list[dict], top: int = 3) -> dict:
    """The whole recording in one answer: the labels that hold longest (their share of the labelled time), the
    sentiment that holds longest, and a description that says it is a summary."""
    time_of: dict[str, float] = defaultdict(float)
    mood: dict[str, float] = defaultdict(float)
    labelled = [s for s in segments if "error" not in s]
    for s in labelled:
        span = s["end_s"] - s["start_s"]
        for label in dict.fromkeys(s["labels"]):
            time_of[label] += span
        if s["sentiment"]:
            mood[s["sentiment"]] += span
    total = sum(s["end_s"] - s["start_s"] for s in labelled) or 1.0
    ranked = sorted(time_of, key=lambda k: (-time_of[k], k))[:top]
    sentiment = max(sorted(mood), key=lambda k: mood[k]) if mood else ""
    shares = ", ".join(f"{k} {time_of[k] / total:.0%}" for k in ranked) or "none"
    description = (f"Summary of {len(segments)} segments over {segments[-1]['end_s'] if segments else 0:.0f} s: the "
                   f"emotions that hold longest are {shares} of the labelled time; the prevailing sentiment is "
                   f"{sentiment or 'unknown'}. Each segment's own explanation is in the timeline.")
    return {"description": description, "labels": ranked, "sentiment": sentiment}
