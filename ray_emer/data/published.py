"""The published EMER / MER layouts (reasons, open-set labels, subtitles) matched to videos by name, train/val
splits, and ``ray-emer manifest`` (``build_manifest``), which writes the joined manifest.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ray_emer import storage
from ray_emer.data.manifest import VIDEO_SUFFIXES, ManifestError, read_manifest, read_table_file
from ray_emer.labels import parse_labels
from ray_emer.schema import MANIFEST_REQUIRED, MANIFEST_SCHEMA, conform

# ---------------------------------------------------------------- published layouts
# The published EMER / MER releases ship one CSV per kind of annotation, keyed on the clip's name:
#   OV-MERD and MER-Caption+ (MER2025): track3_train_*.csv ``name,reason``; track2_train_*.csv ``name,openset``;
#   subtitle_chieng.csv ``name,chinese,english`` (the English subtitle); OV-MERD's descriptions file
#   ``name,chinese,english`` (the English description); EMER v1 one file ``names,emotions,subtitles,reasons``.
PUBLISHED_NAME_COLUMNS = ("name", "names")
PUBLISHED_COLUMNS = {  # manifest column <- the first of these columns a published file has
    "subtitle": ("english", "subtitle", "subtitles"),
    "description": ("reason", "reasons", "description", "english"),
    "labels": ("openset",),
}
EXAMPLES = 5  # names shown in a result; the full lists go to the unmatched file beside the output
_ABSENT = object()


def name_key(name) -> str:
    """How a published name meets a video file: surrounding whitespace and a video extension dropped
    (``" sample_1.MP4"`` -> ``sample_1``); case is compared exactly first, then folded (``NameIndex``)."""
    name = str(name).strip()
    stem, ext = os.path.splitext(name)
    return stem if ext.lower() in VIDEO_SUFFIXES else name


class NameIndex:
    """Values by name. ``get`` tries the exact ``name_key``, then the case-folded one when exactly one name
    has it; a case-only tie (``A.mp4`` and ``a.mp4`` for ``a``) is an error, never a guess."""

    def __init__(self, items, source: str) -> None:
        self.source = source
        self.exact: dict[str, tuple[str, object]] = {}
        self.folded: dict[str, list[str]] = {}
        for name, value in items:
            key = name_key(name)
            if key in self.exact:
                raise ManifestError(f"{source}: {self.exact[key][0]!r} and {name!r} are the same name")
            self.exact[key] = (name, value)
            self.folded.setdefault(key.casefold(), []).append(key)

    def get(self, name, default=_ABSENT):
        key = name_key(name)
        if key in self.exact:
            return self.exact[key][1]
        keys = self.folded.get(key.casefold(), [])
        if len(keys) > 1:
            raise ManifestError(f"{self.source}: {name!r} matches {', '.join(repr(self.exact[k][0]) for k in keys)} "
                                "only up to case; rename one")
        return self.exact[keys[0]][1] if keys else default


def _text(value) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    return str(value).strip() or None


def read_published(uri: str, column: str) -> tuple[dict[str, object], int]:
    """One published file -> ``{name: value}`` in file order for manifest ``column`` (``subtitle``,
    ``description`` or ``labels``: label lists parsed with the proper rule), and how many repeated rows were
    merged. A name repeated with another value, or an empty name, is an error."""
    df = read_table_file(uri)
    name_col = next((c for c in PUBLISHED_NAME_COLUMNS if c in df.columns), None)
    value_col = next((c for c in PUBLISHED_COLUMNS[column] if c in df.columns), None)
    if name_col is None or value_col is None:
        raise ManifestError(f"{uri}: expected a name column ({' or '.join(PUBLISHED_NAME_COLUMNS)}) and a {column} "
                            f"column ({' or '.join(PUBLISHED_COLUMNS[column])}); have {list(df.columns)}")
    out: dict[str, object] = {}
    spelled: dict[str, str] = {}  # name_key -> the name as first written
    repeated = 0
    for i, (raw, cell) in enumerate(zip(df[name_col], df[value_col]), start=1):
        name = _text(raw)
        if name is None:
            raise ManifestError(f"{uri}: data row {i} has an empty {name_col}")
        value = parse_labels(cell) if column == "labels" else _text(cell)
        key = name_key(name)
        if key in spelled:
            if out[spelled[key]] != value:
                raise ManifestError(f"{uri}: {name!r} appears more than once with different {value_col} values")
            repeated += 1
            continue
        spelled[key] = name
        out[name] = value
    return out, repeated


def join_published(videos: pa.Table, subtitles: str | None = None, reasons: str | None = None,
                   openset: str | None = None, keep_unmatched: bool = True) -> tuple[pa.Table, dict]:
    """A video table (``read_manifest`` of a folder / prefix / manifest) + the published layouts -> a manifest
    and a match report.

    With ``reasons`` (descriptions) and/or ``openset`` (labels), the published names are the rows, in file order:
    each is matched to a video by ``name_key`` (exact, then up to case), keeps the published name as ``clip_id``
    and takes ``description``/``labels`` from the files (a file without the name keeps the video row's value).
    A name with no video stays a row with an empty ``video_uri`` (extraction makes it an error row
    ``not_found``: rows in == rows out) unless ``keep_unmatched=False``; either way it is reported. Videos no
    published name matched are not rows, and are reported. ``subtitles`` (e.g. ``subtitle_chieng.csv``, which
    covers far more clips than one training set) only fills ``subtitle``: a non-empty published subtitle wins
    over a sidecar ``.txt``. With only ``subtitles``, the videos are the rows.

    The report: ``matched``, ``unmatched_names`` and ``videos_without_row`` (lists, in order), ``repeated_rows``.
    """
    video_rows = videos.to_pylist()
    subs, repeated = read_published(subtitles, "subtitle") if subtitles else ({}, 0)
    sub_index = NameIndex(subs.items(), subtitles or "")
    sides: dict[str, NameIndex] = {}
    names: dict[str, str] = {}  # name_key -> published name, union of the files in order
    for column, uri in (("description", reasons), ("labels", openset)):
        if uri:
            values, n = read_published(uri, column)
            repeated += n
            sides[column] = NameIndex(values.items(), uri)
            for name in values:
                names.setdefault(name_key(name), name)

    def with_subtitle(row: dict, name: str) -> dict:
        sub = sub_index.get(name, None)
        return {**row, "subtitle": sub or row.get("subtitle")}

    if not sides:
        rows = [with_subtitle(r, r["clip_id"]) for r in video_rows]
        return _rows_table(rows, videos.schema), {"matched": len(rows), "unmatched_names": [],
                                                  "videos_without_row": [], "repeated_rows": repeated}
    video_index = NameIndex(((r["clip_id"], r) for r in video_rows), "videos")
    rows, unmatched, used = [], [], set()
    for name in names.values():
        video = video_index.get(name, None)
        if video is None:
            unmatched.append(name)
            if not keep_unmatched:
                continue
            row = {"clip_id": name, "video_uri": ""}
        else:
            used.add(video["clip_id"])
            row = {**video, "clip_id": name}
        for column, index in sides.items():
            value = index.get(name)
            if value is not _ABSENT:
                row[column] = value
        rows.append(with_subtitle(row, name))
    if names and not used:
        sample = ", ".join(list(names.values())[:EXAMPLES])
        have = ", ".join(r["clip_id"] for r in video_rows[:EXAMPLES])
        raise ManifestError(f"none of the {len(names)} published names ({sample}, ...) matches one of the "
                            f"{len(video_rows)} videos ({have}, ...): wrong video folder?")
    without = [r["clip_id"] for r in video_rows if r["clip_id"] not in used]
    return _rows_table(rows, videos.schema), {"matched": len(used), "unmatched_names": unmatched,
                                              "videos_without_row": without, "repeated_rows": repeated}


def _rows_table(rows: list[dict], video_schema: pa.Schema) -> pa.Table:
    """Row dicts -> a manifest table; the video table's column types are kept (rows may lack columns)."""
    names = list(dict.fromkeys([*video_schema.names, *(k for r in rows for k in r)]))
    types = {f.name: f.type for f in (*video_schema, *MANIFEST_SCHEMA)}
    cols = {n: pa.array([r.get(n) for r in rows], type=types.get(n)) for n in names}
    return conform(pa.table(cols), MANIFEST_SCHEMA, MANIFEST_REQUIRED)


VAL_SPLIT = "val"  # what TrainConfig.data.val_split reads by default


def assign_splits(table: pa.Table, split: str | None = None, val_fraction: float = 0.0, seed: int = 0) -> pa.Table:
    """Set ``split``: every row ``split`` (default ``train`` when a val share is asked for), and
    ``round(val_fraction * n)`` of the n rows with a video (at least 1, at most n - 1) ``val``: the rows whose
    sha256 of ``"<seed>:<clip_id>"`` sorts first, so the draw depends on the seed and the names only, not on
    row order. Rows without a video keep the main split (they never reach training). Neither given: the
    table's own splits stay."""
    if not 0.0 <= val_fraction < 1.0:
        raise ManifestError(f"val_fraction must be in [0, 1); got {val_fraction}")
    if not split and not val_fraction:
        return table
    ids, uris = table.column("clip_id").to_pylist(), table.column("video_uri").to_pylist()
    candidates = [c for c, u in zip(ids, uris, strict=True) if u]
    k = round(val_fraction * len(candidates))
    if val_fraction and len(candidates) >= 2:
        k = min(max(k, 1), len(candidates) - 1)
    order = sorted(candidates, key=lambda c: hashlib.sha256(f"{seed}:{c}".encode()).hexdigest())
    val = set(order[:k])
    main = split or "train"
    values = pa.array([VAL_SPLIT if c in val else main for c in ids], pa.string())
    return table.set_column(table.schema.get_field_index("split"), "split", values)


def unmatched_list_uri(output: str) -> str:
    """``M.parquet`` -> ``M.unmatched.csv`` beside it."""
    base = storage.basename(output)
    stem = base.rsplit(".", 1)[0] if "." in base else base
    return output[: len(output) - len(base)] + stem + ".unmatched.csv"


def build_manifest(input: str, subtitles: str | None = None, reasons: str | None = None,
                   openset: str | None = None, output: str | None = None, split: str | None = None,
                   val_fraction: float = 0.0, seed: int = 0, drop_unmatched: bool = False) -> dict:
    """``ray-emer manifest``: read a folder / prefix / CSV / Parquet, optionally join the published layouts
    (``join_published``) and set splits (``assign_splits``), optionally write the manifest as Parquet (any URI)
    and, when any name went unmatched, ``<output stem>.unmatched.csv`` (``name,problem,video_uri``; problem
    ``no_video`` or ``no_published_row``) beside it. Returns counts and a few examples of each unmatched kind."""
    videos = read_manifest(input)
    if subtitles or reasons or openset:
        table, found = join_published(videos, subtitles, reasons, openset, keep_unmatched=not drop_unmatched)
    else:
        table, found = videos, {"matched": videos.num_rows, "unmatched_names": [], "videos_without_row": [],
                                "repeated_rows": 0}
    table = assign_splits(table, split, val_fraction, seed)
    unmatched, without = found["unmatched_names"], found["videos_without_row"]
    listed = None
    if output:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(output, buf.getvalue())
        if unmatched or without:
            listed = unmatched_list_uri(output)
            uris = dict(zip(videos.column("clip_id").to_pylist(), videos.column("video_uri").to_pylist(), strict=True))
            lines = pd.DataFrame([*({"name": n, "problem": "no_video", "video_uri": ""} for n in unmatched),
                                  *({"name": c, "problem": "no_published_row", "video_uri": uris[c]} for c in without)])
            storage.write_text(listed, lines.to_csv(index=False))
    rows = table.select(["description", "labels", "subtitle", "split"]).to_pylist()
    return {
        "rows": table.num_rows,
        "matched": found["matched"],
        "unmatched_names": {"count": len(unmatched), "examples": unmatched[:EXAMPLES],
                            "in_manifest": bool(unmatched) and not drop_unmatched},
        "videos_without_row": {"count": len(without), "examples": without[:EXAMPLES]},
        "repeated_rows": found["repeated_rows"],
        "with_description": sum(bool(r["description"]) for r in rows),
        "with_labels": sum(bool(r["labels"]) for r in rows),
        "with_subtitle": sum(bool(r["subtitle"]) for r in rows),
        "splits": dict(collections.Counter(r["split"] or "" for r in rows)),
        "columns": table.column_names,
        "output": output,
        "unmatched_list": listed,
    }
