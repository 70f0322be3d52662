"""The featurizer package: the one rows <-> columns pair, the typed hand-off (manifest rows as Arrow columns into
the job's tasks, no JSON per row; arrays out of the encoder; Arrow built by the shard writer alone), and a served
request that never goes through Arrow."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from ray_emer.data.extraction import ExtractConfig, pending
from ray_emer.features import shards
from ray_emer.features.columns import to_columns, to_rows
from ray_emer.features.decode import decode_row
from ray_emer.features.encoder import FeatureEncoder, effective_media
from ray_emer.media import MediaConfig


def test_rows_and_columns_round_trip_every_kind_of_value():
    rows = [{"clip_id": "a", "frames": np.ones((2, 3), np.uint8), "labels": ["happy", "calm"], "ok": True,
             "wave": b"\x01\x00", "rec": {"x": 1}, "n": None},
            {"clip_id": "b", "frames": np.zeros((2, 3), np.uint8), "labels": ["sad", "tired"], "ok": False,
             "wave": b"\x00\x00\x00", "rec": {"x": 2}, "n": 3}]
    cols = to_columns(rows)
    assert cols["frames"].shape == (2, 2, 3) and cols["frames"].dtype == np.uint8  # arrays are stacked
    assert cols["labels"].dtype == object and cols["labels"][1] == ["sad", "tired"]  # lists of one length stay lists
    assert cols["wave"][1] == b"\x00\x00\x00"  # trailing zero bytes kept
    back = to_rows(cols)
    for a, b in zip(rows, back, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k]
    assert to_columns([]) == {} and to_rows({}) == []


@pytest.fixture(scope="module")
def decoded(synth_archive):
    cfg = ExtractConfig(input=str(synth_archive / "manifest.csv"), output="/nonexistent", progress=False)
    media = effective_media(cfg.preset, MediaConfig(frame_size=32))
    todo, _, _ = pending(cfg)
    return media, todo.slice(0, 3)


def test_encoder_returns_arrays_and_the_shard_writer_alone_builds_arrow(decoded, monkeypatch, tmp_path):
    media, todo = decoded
    enc = FeatureEncoder("tiny", media)
    batch = to_columns([decode_row(r, media) for r in todo.to_pylist()])
    out = enc.encode_batch(batch)
    assert all(isinstance(v, np.ndarray) for v in out.values())
    assert out["video_feats"].dtype == np.float16 and out["video_feats"].shape == (3, *enc.video_shape)
    assert list(out["clip_id"]) == todo.column("clip_id").to_pylist()
    table = shards.write_features(out, enc.schema, str(tmp_path))
    back = shards.table_columns(shards.read_shards(str(tmp_path)))
    np.testing.assert_array_equal(back["video_feats"], out["video_feats"])  # float16 in, the same float16 back
    np.testing.assert_array_equal(back["audio_feats"], out["audio_feats"])
    assert table.schema.field("video_feats").type == enc.schema.field("video_feats").type


def test_the_fused_task_takes_arrow_rows_and_serialises_none(decoded, monkeypatch, tmp_path):
    """The job's own task, in this process: it gets manifest rows as an Arrow table and never writes a record
    as JSON text on the way to its shard (the hand-off used to be one JSON string per row)."""
    from ray_emer.asr import AsrConfig
    from ray_emer.data import pipeline
    from ray_emer.media.segments import SegmentConfig

    media, todo = decoded

    def no_json(*a, **kw):
        raise AssertionError("a record went through JSON")

    pipeline._worker_encoder("tiny", media, AsrConfig(), None)  # loaded first: transformers' lazy imports use json
    monkeypatch.setattr(json, "dumps", no_json)
    monkeypatch.setattr(json, "loads", no_json)
    out = pipeline._decode_encode_write(todo, "tiny", media, str(tmp_path), AsrConfig(), None, SegmentConfig(), 0.0, 2)
    monkeypatch.undo()
    assert list(out["status"]) == ["ok"] * 3 and {len(v) for v in out.values()} == {3}  # two shards, one summary
    table = shards.read_shards(str(tmp_path))
    assert sorted(table.column("clip_id").to_pylist()) == sorted(todo.column("clip_id").to_pylist())
    assert table.column("labels").to_pylist() == [r["labels"] for r in sorted(todo.to_pylist(),
                                                                                key=lambda r: r["clip_id"])]


def test_a_served_request_never_goes_through_arrow(synth_archive, tmp_path, monkeypatch):
    """The endpoint's model step (decode -> encode -> label) in one process: features stay numpy arrays."""
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import get_preset
    from ray_emer.infer.labeller import LabellerConfig
    from ray_emer.serve.analyzer import ClipModel, decode_media

    torch.manual_seed(0)
    save_checkpoint(AffectGPT.build(get_preset("tiny")), str(tmp_path / "ckpt"))
    model = ClipModel(str(tmp_path / "ckpt"), LabellerConfig(description_tokens=8, label_tokens=4),
                      MediaConfig(frame_size=32))
    clip = sorted((synth_archive / "clips").glob("*.mp4"))[0]
    row = decode_media(str(clip), media=model.media)

    def no_arrow(*a, **kw):
        raise AssertionError("a served request built an Arrow table")

    for name in ("table", "array", "concat_tables"):
        monkeypatch.setattr(pa, name, no_arrow)
    (analysis,) = model.analyze([row])
    assert analysis.status == "ok" and analysis.description
