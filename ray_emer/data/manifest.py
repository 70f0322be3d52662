"""Manifests: one row per clip, from a folder/S3 prefix of videos or a CSV/Parquet file (the published EMER
layouts matched to videos by name, and train/val splits: ``data.published``).

Folder mode pairs sidecar files by stem: ``clip.mp4`` + ``clip.wav`` (audio) +
``clip.txt`` (subtitle) or ``clip.srt``/``clip.vtt`` (timed subtitles, ``subtitle_uri``: a long
recording's segments each get the words spoken in them). The result is always an Arrow table in ``MANIFEST_SCHEMA``
order (extra columns kept), so every later stage reads the same thing.
"""

from __future__ import annotations

import io
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ray_emer import storage
from ray_emer.labels import parse_labels
from ray_emer.schema import MANIFEST_REQUIRED, MANIFEST_SCHEMA, SchemaError, conform
from ray_emer.errors import RayEmerError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".m4v", ".mpg", ".mpeg")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg")
SUBTITLE_SUFFIXES = (".txt",)
TIMED_SUFFIXES = (".srt", ".vtt")


class ManifestError(RayEmerError, ValueError):
    """An archive or manifest cannot be turned into manifest rows."""


def read_table_file(uri: str) -> pd.DataFrame:
    data = storage.read_bytes(uri)
    if not data.strip():
        raise ManifestError(f"{uri}: empty file")
    if uri.lower().endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pandas()
    if uri.lower().endswith((".csv", ".tsv")):
        return pd.read_csv(io.BytesIO(data), sep="\t" if uri.lower().endswith(".tsv") else ",",
                           dtype=str, keep_default_na=False)
    raise ManifestError(f"{uri}: a manifest must be .csv, .tsv or .parquet")


def _resolve(base_dir: str, uri: str) -> str:
    if not uri or storage.is_remote(uri) or os.path.isabs(uri):
        return uri
    return storage.join(base_dir, uri)


def from_file(uri: str) -> pa.Table:
    """A CSV/Parquet manifest; relative ``video_uri``/``audio_uri`` are resolved against its folder."""
    df = read_table_file(uri)
    missing = [c for c in MANIFEST_REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{uri}: missing required column(s) {missing}; have {list(df.columns)}")
    base = uri.rsplit("/", 1)[0] if storage.is_remote(uri) else os.path.dirname(os.path.abspath(uri))
    # a Parquet null reads back as NaN (pandas string dtype): never the text "nan"
    df["video_uri"] = [_resolve(base, u) if isinstance(u, str) else None for u in df["video_uri"]]
    for col in ("audio_uri", "subtitle_uri"):
        if col in df.columns:
            df[col] = [_resolve(base, u) if isinstance(u, str) and u else None for u in df[col]]
    if "labels" in df.columns:
        df["labels"] = [parse_labels(v) for v in df["labels"]]
    for col in ("subtitle", "description", "split"):
        if col in df.columns:
            df[col] = [None if v == "" else v for v in df[col]]
    if df["clip_id"].duplicated().any():
        dup = df.loc[df["clip_id"].duplicated(), "clip_id"].iloc[0]
        raise ManifestError(f"{uri}: clip_id {dup!r} appears more than once")
    try:
        return conform(pa.Table.from_pandas(df, preserve_index=False), MANIFEST_SCHEMA, MANIFEST_REQUIRED)
    except SchemaError as exc:
        raise ManifestError(f"{uri}: {exc}") from exc


def from_folder(uri: str) -> pa.Table:
    """Every video under ``uri`` (recursive); sidecar audio/subtitle files by stem."""
    files = storage.list_files(uri)
    videos = [f for f in files if f.lower().endswith(VIDEO_SUFFIXES)]
    if not videos:
        raise ManifestError(f"{uri}: no video files ({', '.join(VIDEO_SUFFIXES)}) found")
    by_stem: dict[str, dict[str, str]] = {}
    for f in files:
        key = f.rsplit(".", 1)[0]
        by_stem.setdefault(key, {})[os.path.splitext(f)[1].lower()] = f
    rows, seen = [], set()
    for v in videos:
        side = by_stem[v.rsplit(".", 1)[0]]
        clip_id = storage.stem(v)
        if clip_id in seen:
            raise ManifestError(f"{uri}: two videos share the clip id {clip_id!r} ({v})")
        seen.add(clip_id)
        audio = next((side[s] for s in AUDIO_SUFFIXES if s in side), None)
        sub = side.get(".txt")
        timed = next((side[s] for s in TIMED_SUFFIXES if s in side), None)
        rows.append({"clip_id": clip_id, "video_uri": v, "audio_uri": audio,
                     "subtitle": storage.read_text(sub).strip() if sub else None, "subtitle_uri": timed})
    return conform(pa.Table.from_pylist(rows), MANIFEST_SCHEMA, MANIFEST_REQUIRED)


MANIFEST_NAMES = ("manifest.csv", "manifest.parquet", "manifest.tsv")


def folder_manifest(uri: str) -> str | None:
    """The manifest file a folder/prefix holds at its top level (as ``ray-emer synth`` writes), if any."""
    if uri.lower().endswith((".csv", ".tsv", ".parquet")):
        return None
    for name in MANIFEST_NAMES:
        candidate = storage.join(uri, name)
        if storage.exists(candidate):
            return candidate
    return None


def read_manifest(uri: str) -> pa.Table:
    """A .csv/.tsv/.parquet manifest file; a folder/prefix holding one is read through it (its subtitles,
    descriptions and labels would be lost otherwise); else every video of the folder/prefix."""
    if uri.lower().endswith((".csv", ".tsv", ".parquet")):
        return from_file(uri)
    manifest = folder_manifest(uri)
    return from_file(manifest) if manifest else from_folder(uri)
