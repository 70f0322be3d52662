"""The output directory contract of every job: ``part-*.parquet`` shards under a folder or ``s3://`` prefix.

Feature shards (extraction) and label shards (labelling) follow it alike: each batch is written as one shard,
atomically, named after its clip ids (a batch written again replaces its own shard); ``pyarrow.dataset`` over
the folder reads them (names starting with ``_`` are left out); a rerun skips the clip ids already written.
This module is the only place a feature batch becomes Arrow (``feature_table``) and Arrow becomes numpy
again (``table_columns``).
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ray_emer import storage
from ray_emer.features.columns import to_columns
from ray_emer.schema import FEATURE_REQUIRED, conform, tensor_array

TENSOR_COLUMNS = ("video_feats", "audio_feats")


def _extra_value(v):
    """A manifest column outside the schema is kept as a string (JSON for anything that is not one)."""
    if v is None or isinstance(v, str):
        return v
    v = json.loads(json.dumps(v, default=str))  # numpy scalars, dates, ...: their JSON value
    return v if isinstance(v, str) else json.dumps(v)


def feature_table(columns: dict[str, np.ndarray], schema: pa.Schema) -> pa.Table:
    """A feature batch (``FeatureEncoder.encode_batch``) -> a table in ``schema`` (``schema.feature_schema``)."""
    cols: dict[str, pa.Array] = {}
    for name, values in columns.items():
        if name in TENSOR_COLUMNS:
            cols[name] = tensor_array(values, tuple(schema.field(name).type.shape))
        elif name in schema.names:
            cols[name] = pa.array(list(values) if values.dtype == object else values, type=schema.field(name).type)
        else:
            cols[name] = pa.array([_extra_value(v) for v in values], pa.string())
    return conform(pa.table(cols), schema, FEATURE_REQUIRED)


def table_columns(table: pa.Table) -> dict[str, np.ndarray]:
    """A shard table -> one columnar numpy batch (what a Ray Data batch looks like): ``video_feats`` /
    ``audio_feats`` as ``[N, T, D]`` arrays, other columns as object arrays."""
    out = {c: feature_arrays(table, c) for c in TENSOR_COLUMNS if c in table.column_names}
    rest = table.drop([c for c in TENSOR_COLUMNS if c in table.column_names])
    if not rest.num_rows:
        return {**out, **{c: np.empty(0, dtype=object) for c in rest.column_names}}
    return {**out, **to_columns(rest.to_pylist())}


def write_shard(table: pa.Table, output: str) -> str:
    """Write one Parquet shard atomically under ``output``; returns its URI. The name follows from the clip ids
    (the first one and a hash of all), so a batch written again (a task Ray retried after its worker died) replaces
    its own shard instead of adding a second copy of its rows."""
    buf = io.BytesIO()
    pq.write_table(table, buf)
    ids = [str(c) for c in table.column("clip_id").to_pylist()]
    first = ids[0] if ids else "empty"
    digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:8] if ids else uuid.uuid4().hex[:8]
    uri = storage.join(output, f"part-{first}-{digest}.parquet")
    storage.write_bytes(uri, buf.getvalue())
    return uri


def write_features(columns: dict[str, np.ndarray], schema: pa.Schema, output: str) -> pa.Table:
    """A feature batch -> one shard under ``output``; returns the table written."""
    table = feature_table(columns, schema)
    write_shard(table, output)
    return table


def part_files(output: str) -> list[str]:
    """The ``part-*.parquet`` shards directly under ``output`` (features or labels), [] if none."""
    if not storage.exists(output):
        return []
    try:
        files = storage.list_files(output, suffixes=[".parquet"], recursive=False)
    except storage.StorageError:
        return []
    return [f for f in files if storage.basename(f).startswith("part-")]


def _dataset(output: str) -> pads.Dataset | None:
    files = part_files(output)
    if not files:
        return None
    fs, _ = storage.arrow_filesystem(output)
    return pads.dataset([storage.arrow_filesystem(f)[1] for f in files], format="parquet", filesystem=fs)


def written_clip_ids(output: str) -> list[str]:
    """The clip id of every row in the shards under ``output``, as written (a clip written twice: twice)."""
    ds = _dataset(output)
    return [] if ds is None else [str(c) for c in ds.to_table(columns=["clip_id"]).column("clip_id").to_pylist()]


def done_clip_ids(output: str) -> set[str]:
    """Clip ids already written under ``output`` (ok or error): a rerun skips them."""
    return set(written_clip_ids(output))


def read_shards(output: str, columns: list[str] | None = None, filter=None) -> pa.Table:
    """Rows of the shards under ``output`` (features or labels), optionally some columns / a
    ``pyarrow.dataset`` filter, one per clip id (the first written wins)."""
    ds = _dataset(output)
    if ds is None:
        raise storage.StorageError(f"{output}: no part-*.parquet shards")
    table = ds.to_table(columns=columns, filter=filter)
    ids = table.column("clip_id").to_pylist()
    seen: dict[str, int] = {}
    keep = [seen.setdefault(c, i) == i for i, c in enumerate(ids)]
    return table if all(keep) else table.filter(pa.array(keep))


def feature_arrays(table: pa.Table, column: str) -> np.ndarray:
    """A fixed-shape tensor column -> ``[N, ...]`` numpy array."""
    return table.column(column).combine_chunks().to_numpy_ndarray()
