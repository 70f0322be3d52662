"""Timed subtitles: ``.srt``/``.vtt`` sidecars read into cues, the words of a time span, and WebVTT written.

A recording's subtitle sidecar (``interview.srt`` beside ``interview.mp4``; ``subtitle_uri`` in a manifest) gives
each segment the words spoken in it: the cues whose middle falls inside the segment. Parsing and writing go
through ``webvtt-py`` (it reads SubRip too).
"""

from __future__ import annotations

import dataclasses
import io

from ray_emer import storage
from ray_emer.errors import RayEmerError

SUFFIXES = (".srt", ".vtt")


class SubtitleError(RayEmerError, ValueError):
    """A subtitle file that cannot be read as SubRip or WebVTT."""


@dataclasses.dataclass
class Cue:
    start_s: float
    end_s: float
    text: str


def read_cues(uri: str) -> list[Cue]:
    """The cues of an ``.srt`` or ``.vtt`` file (local or remote), in time order."""
    import webvtt

    if not uri.lower().endswith(SUFFIXES):
        raise SubtitleError(f"{uri}: timed subtitles must be .srt or .vtt")
    try:
        with storage.local_copy(uri) as path:
            doc = webvtt.from_srt(path) if uri.lower().endswith(".srt") else webvtt.read(path)
    except storage.StorageError:
        raise
    except Exception as exc:  # noqa: BLE001 - webvtt-py raises several types for malformed files
        raise SubtitleError(f"{uri}: not readable as {'SubRip' if uri.lower().endswith('.srt') else 'WebVTT'}: "
                            f"{exc}") from exc
    cues = [Cue(_seconds(c.start), _seconds(c.end), " ".join(c.text.split())) for c in doc.captions]
    return sorted(cues, key=lambda c: c.start_s)


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    return sum(float(p) * 60 ** i for i, p in enumerate(reversed(parts)))


def text_between(cues: list[Cue], start_s: float, end_s: float) -> str | None:
    """The words of the cues whose middle lies in ``[start_s, end_s)`` (None when none does)."""
    words = [c.text for c in cues if start_s <= (c.start_s + c.end_s) / 2 < end_s and c.text]
    return " ".join(words) or None


def stamp(t: float, sep: str = ".") -> str:
    """``HH:MM:SS.mmm`` (WebVTT; ``sep=","``: SubRip) of ``t`` seconds."""
    ms = int(round(max(0.0, t) * 1000))
    return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def to_webvtt(cues: list[Cue]) -> str:
    """Cues -> the text of a WebVTT file (what a video player shows as captions)."""
    import webvtt

    doc = webvtt.WebVTT(captions=[webvtt.Caption(stamp(c.start_s), stamp(c.end_s), c.text.split("\n"))
                                  for c in cues])
    buf = io.StringIO()
    doc.write(buf)
    return buf.getvalue()
