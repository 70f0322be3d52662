"""Manifests: one row per clip, from a folder/S3 prefix of videos or a CSV/Parquet file,
plus readers for the published EMER layouts (subtitles, reasons, open-set labels).

Folder mode pairs sidecar files by stem: ``clip.mp4`` + ``clip.wav`` (audio) +
``clip.txt`` (subtitle). The result is always an Arrow table in ``MANIFEST_SCHEMA``
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


class ManifestError(RayEmerError, ValueError):
    """An archive or manifest cannot be turned into manifest rows."""


def _read_table_file(uri: str) -> pd.DataFrame:
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
    df = _read_table_file(uri)
    missing = [c for c in MANIFEST_REQUIRED if c not in df.columns]
    if missing:
        raise ManifestError(f"{uri}: missing required column(s) {missing}; have {list(df.columns)}")
    base = uri.rsplit("/", 1)[0] if storage.is_remote(uri) else os.path.dirname(os.path.abspath(uri))
    df["video_uri"] = [_resolve(base, str(u)) for u in df["video_uri"]]
    if "audio_uri" in df.columns:
        df["audio_uri"] = [_resolve(base, str(u)) if u else None for u in df["audio_uri"]]
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
        rows.append({"clip_id": clip_id, "video_uri": v, "audio_uri": audio,
                     "subtitle": storage.read_text(sub).strip() if sub else None})
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


def _name_table(uri: str, value_col: str, out_col: str) -> pd.DataFrame:
    df = _read_table_file(uri)
    name_col = next((c for c in ("name", "names") if c in df.columns), None)
    if name_col is None or value_col not in df.columns:
        raise ManifestError(f"{uri}: expected columns name,{value_col}; have {list(df.columns)}")
    return df[[name_col, value_col]].rename(columns={name_col: "clip_id", value_col: out_col})


def join_published(
    manifest: pa.Table,
    subtitles: str | None = None,
    reasons: str | None = None,
    openset: str | None = None,
) -> pa.Table:
    """Fill ``subtitle``/``description``/``labels`` from the published CSV layouts
    (``name,english`` subtitles; ``name,reason`` descriptions; ``name,openset`` lists),
    joined on ``name == clip_id``. Clips missing from a file keep their value."""
    df = manifest.to_pandas()
    for uri, value_col, out_col in ((subtitles, "english", "subtitle"), (reasons, "reason", "description"),
                                    (openset, "openset", "labels")):
        if uri is None:
            continue
        side = _name_table(uri, value_col, out_col).set_index("clip_id")[out_col]
        if out_col == "labels":
            side = side.map(parse_labels)
        df[out_col] = [side.get(cid, cur) for cid, cur in zip(df["clip_id"], df[out_col])]
    return conform(pa.Table.from_pandas(df, preserve_index=False), MANIFEST_SCHEMA, MANIFEST_REQUIRED)


def build_manifest(input: str, subtitles: str | None = None, reasons: str | None = None,
                   openset: str | None = None, output: str | None = None) -> dict:
    """``ray-emer manifest``: read a folder / prefix / CSV / Parquet, optionally join the published layouts,
    optionally write the manifest as Parquet (any URI)."""
    table = read_manifest(input)
    if subtitles or reasons or openset:
        table = join_published(table, subtitles, reasons, openset)
    if output:
        import io

        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(output, buf.getvalue())
    return {"rows": table.num_rows, "columns": table.column_names, "output": output}
