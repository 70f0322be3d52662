"""Arrow schemas and record types at every hand-off between stages.

The manifest row is the contract between an archive and everything downstream; the
feature and label rows (later stages) extend it. ``conform`` checks a table against a
schema and fills optional columns, so a producer's mistake fails at the hand-off.
"""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from ray_emer.errors import RayEmerError


class SchemaError(RayEmerError, ValueError):
    """A table does not carry the columns or types a stage hands over."""


MANIFEST_REQUIRED = ("clip_id", "video_uri")
MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("video_uri", pa.string(), nullable=False),
        pa.field("audio_uri", pa.string()),
        pa.field("subtitle", pa.string()),
        pa.field("description", pa.string()),
        pa.field("labels", pa.list_(pa.string())),
        pa.field("split", pa.string()),
    ]
)


@dataclasses.dataclass
class ManifestRow:
    clip_id: str
    video_uri: str
    audio_uri: str | None = None
    subtitle: str | None = None
    description: str | None = None
    labels: list[str] | None = None
    split: str | None = None


def conform(table: pa.Table, schema: pa.Schema, required: tuple[str, ...]) -> pa.Table:
    """Columns of ``schema`` first, cast to its types (missing optional ones as nulls),
    then any extra columns unchanged. Missing required columns raise ``SchemaError``."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise SchemaError(f"missing required column(s) {missing}; have {table.column_names}")
    cols, fields = [], []
    for field in schema:
        if field.name in table.column_names:
            col = table.column(field.name)
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise SchemaError(f"column {field.name}: cannot cast {col.type} to {field.type}: {exc}") from exc
        else:
            col = pa.nulls(table.num_rows, field.type)
        cols.append(col)
        fields.append(field.with_nullable(True) if field.name not in required else field)
    for name in table.column_names:
        if name not in schema.names:
            cols.append(table.column(name))
            fields.append(table.schema.field(name))
    out = pa.Table.from_arrays(cols, schema=pa.schema(fields))
    for name in required:
        if out.column(name).null_count:
            raise SchemaError(f"column {name} has {out.column(name).null_count} empty value(s)")
    return out


# ---------------------------------------------------------------- feature rows
FEATURE_REQUIRED = ("clip_id", "status")
FEATURE_COLUMNS = (
    # name, type; video_feats/audio_feats are added per shape by feature_schema()
    ("has_video", pa.bool_()),
    ("has_audio", pa.bool_()),
    ("status", pa.string()),  # ok | error
    ("error", pa.string()),  # "" when ok, else "<reason>: <detail>"
    ("face_frames", pa.int32()),  # frames with a face crop; -1 when face crops are off
    ("skipped_packets", pa.int32()),  # packets the decoder rejected and decoding skipped; -1 when decoding failed
    ("video_backend", pa.string()),
    ("duration_s", pa.float32()),
    ("decode_s", pa.float32()),
    ("encode_s", pa.float32()),
    ("encoder", pa.string()),  # the model preset / config whose frozen encoders made the features
    ("subtitle_source", pa.string()),  # given (manifest) | asr (extract --asr transcribed it) | none
    # a segment of a long recording: clip_id is <recording_id>@<start_ms>-<end_ms>; a clip is its own recording
    ("recording_id", pa.string()),
    ("start_s", pa.float32()),  # where the segment starts in its recording (a clip: 0)
    ("end_s", pa.float32()),  # where it ends (a clip: its duration)
    ("thumbnail", pa.binary()),  # a segment: a JPEG of its middle frame (the timeline view); a clip: null
)


def tensor_type(shape: tuple[int, ...]) -> pa.DataType:
    """Arrow's canonical fixed-shape tensor of float16 (readable by plain pyarrow, no Ray needed)."""
    return pa.fixed_shape_tensor(pa.float16(), list(shape))


def feature_schema(video_shape: tuple[int, int], audio_shape: tuple[int, int]) -> pa.Schema:
    """Feature row = manifest columns + ``video_feats [T, Dv]``, ``audio_feats [W, Da]`` + status columns.

    Error rows carry zero-filled feature tensors (Parquet cannot hold null fixed-shape
    tensors), ``has_video = has_audio = False`` and the reason in ``error``: filter on
    ``status == "ok"``.
    """
    fields = list(MANIFEST_SCHEMA)
    fields.append(pa.field("video_feats", tensor_type(video_shape)))
    fields.append(pa.field("audio_feats", tensor_type(audio_shape)))
    fields += [pa.field(n, t) for n, t in FEATURE_COLUMNS]
    return pa.schema(fields)


def tensor_array(values, shape: tuple[int, ...]) -> pa.ExtensionArray:
    """``[N, *shape]`` numpy -> fixed-shape float16 tensor array."""
    import numpy as np

    arr = np.ascontiguousarray(np.asarray(values, dtype=np.float16).reshape(-1, *shape))
    return pa.FixedShapeTensorArray.from_numpy_ndarray(arr)


# ---------------------------------------------------------------- label rows
LABEL_REQUIRED = ("clip_id", "status")
TIMINGS_TYPE = pa.struct([("prompt_s", pa.float32()), ("generate_s", pa.float32()), ("labels_s", pa.float32()),
                          ("total_s", pa.float32())])
LABEL_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("description", pa.string()),  # the generated explanation ("" on error rows)
        pa.field("labels", pa.list_(pa.string())),  # open-vocabulary emotion labels
        pa.field("sentiment", pa.string()),  # positive | negative | neutral ("" on error rows)
        pa.field("status", pa.string(), nullable=False),  # ok | error
        pa.field("error", pa.string()),  # "" when ok, else "<reason>: <detail>" (extraction's reason kept)
        pa.field("model", pa.string()),  # checkpoint id: <name>@<sha256 of config, head, adapter>
        pa.field("engine", pa.string()),  # hf | vllm
        pa.field("timings", TIMINGS_TYPE),  # seconds per clip (a batch's time shared by its clips)
        pa.field("generated_tokens", pa.int32()),
        pa.field("recording_id", pa.string()),  # the recording a segment belongs to (a clip: its own id)
        pa.field("start_s", pa.float32()),  # the segment's span in its recording, seconds
        pa.field("end_s", pa.float32()),
    ]
)


@dataclasses.dataclass
class LabelRow:
    clip_id: str
    description: str
    labels: list[str]
    sentiment: str
    status: str
    error: str
    model: str
    engine: str
    timings: dict
    generated_tokens: int = 0


def label_table(rows: list[dict]) -> pa.Table:
    """Label row dicts -> a table in ``LABEL_SCHEMA`` (a missing required column fails here)."""
    return conform(pa.Table.from_pylist(rows, schema=LABEL_SCHEMA), LABEL_SCHEMA, LABEL_REQUIRED)
