"""Feature extraction with Ray Data: rows in == rows out, error reasons, resume, S3, schema, CLI, MLflow."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from conftest import BAD_MEDIA_EXPECTED, BAD_MEDIA_MAX_DURATION_S
from ray_emer.cli import main
from ray_emer.data.features import ExtractConfig, extract_sequential, feature_arrays, read_features
from ray_emer.media import MediaConfig
from ray_emer.media.faces import face_frames

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def mixed_manifest(synth_archive, bad_media, tmp_path_factory):
    """12 synthetic clips + the 11-file bad-media corpus in one manifest (23 rows)."""
    synth = pd.read_csv(synth_archive / "manifest.csv")
    synth["video_uri"] = [str(synth_archive / u) if not os.path.isabs(u) else u for u in synth["video_uri"]]
    bad = pd.DataFrame({"clip_id": [f"bad_{n.split('.')[0]}" for n in sorted(BAD_MEDIA_EXPECTED)],
                        "video_uri": [str(bad_media / n) for n in sorted(BAD_MEDIA_EXPECTED)]})
    path = tmp_path_factory.mktemp("mixed") / "manifest.csv"
    pd.concat([synth, bad], ignore_index=True).to_csv(path, index=False)
    return path


def _cfg(inp, out, **kw) -> ExtractConfig:
    media = MediaConfig(frame_size=0, max_duration_s=BAD_MEDIA_MAX_DURATION_S)
    return ExtractConfig(input=str(inp), output=str(out), media=media, progress=False, encode_batch_size=4, **kw)


@pytest.fixture(scope="module")
def extracted(ray_local, mixed_manifest, tmp_path_factory):
    from ray_emer.data.pipeline import run_extract

    out = tmp_path_factory.mktemp("features")
    logs = []
    summary = run_extract(_cfg(mixed_manifest, out), log=logs.append)
    return out, summary, logs


def test_rows_in_equal_rows_out_with_reasons(extracted, mixed_manifest):
    out, summary, logs = extracted
    n_in = len(pd.read_csv(mixed_manifest))
    assert summary["clips"] == summary["processed"] == n_in == 23
    table = read_features(str(out))
    assert table.num_rows == n_in and len(set(table.column("clip_id").to_pylist())) == n_in
    rows = {r["clip_id"]: r for r in table.drop(["video_feats", "audio_feats"]).to_pylist()}
    for name, (kind, expect) in BAD_MEDIA_EXPECTED.items():
        row = rows[f"bad_{name.split('.')[0]}"]
        if kind == "error":
            assert row["status"] == "error" and row["error"].startswith(expect + ":"), row
            assert not row["has_video"] and not row["has_audio"]
        else:
            assert row["status"] == "ok", row
            for key in ("has_video", "has_audio"):
                if key in expect:
                    assert row[key] == expect[key], (name, row)
    assert summary["error"] == sum(k == "error" for k, _ in BAD_MEDIA_EXPECTED.values())
    assert summary["ok"] == n_in - summary["error"]
    assert any("23/23 clips" in m for m in logs) and "done" in logs[-1]
    assert json.loads((out / "_summary.json").read_text())["ok"] == summary["ok"]


def test_features_follow_the_documented_schema_with_plain_pyarrow(extracted):
    out, _, _ = extracted
    table = pads.dataset(str(out), format="parquet").to_table()  # no Ray, no ray_emer
    for col in ("clip_id", "status", "error", "video_feats", "audio_feats", "has_video", "has_audio",
                "subtitle", "labels", "split", "decode_s", "encode_s"):
        assert col in table.column_names, col
    video, audio = feature_arrays(table, "video_feats"), feature_arrays(table, "audio_feats")
    assert video.shape == (23, 8, 48) and audio.shape == (23, 8, 32)
    assert video.dtype == np.float16 and audio.dtype == np.float16
    ok = np.array([s == "ok" for s in table.column("status").to_pylist()])
    hv = np.array(table.column("has_video").to_pylist())
    assert np.abs(video[ok & hv]).sum(axis=(1, 2)).min() > 0 and np.abs(video[~hv]).max() == 0
    assert np.isfinite(video.astype(np.float32)).all()


def test_pipeline_features_equal_the_sequential_loop(extracted, synth_archive, tmp_path):
    out, summary, _ = extracted
    assert summary["scripted_encoders"]  # the CPU actors ran the traced towers; the loop below builds transformers
    seq = extract_sequential(_cfg(synth_archive / "manifest.csv", tmp_path / "seq"), limit=3)
    assert seq["processed"] == 3
    a, b = read_features(str(tmp_path / "seq")), read_features(str(out))
    ids = a.column("clip_id").to_pylist()
    bmap = {c: i for i, c in enumerate(b.column("clip_id").to_pylist())}
    va, vb = feature_arrays(a, "video_feats"), feature_arrays(b, "video_feats")
    aa, ab = feature_arrays(a, "audio_feats"), feature_arrays(b, "audio_feats")
    for i, c in enumerate(ids):
        np.testing.assert_allclose(va[i].astype(np.float32), vb[bmap[c]].astype(np.float32), atol=2e-2, rtol=1e-2)
        np.testing.assert_allclose(aa[i].astype(np.float32), ab[bmap[c]].astype(np.float32), atol=2e-2, rtol=1e-2)


def test_interrupted_run_resumes_with_exactly_one_row_per_clip(ray_local, mixed_manifest, tmp_path):
    from ray_emer.data.pipeline import run_extract

    out = tmp_path / "resume"
    first = run_extract(_cfg(mixed_manifest, out), log=lambda m: None)
    shards = sorted(out.glob("part-*.parquet"))
    assert len(shards) >= 3 and first["processed"] == 23
    # simulate a run killed part-way: half of the shards never landed, plus a half-written temp file
    lost = shards[: len(shards) // 2]
    lost_rows = sum(pads.dataset(str(p)).count_rows() for p in lost)
    for p in lost:
        p.unlink()
    (out / ".tmp-crashed").write_bytes(b"PAR1 half a shard")
    second = run_extract(_cfg(mixed_manifest, out), log=lambda m: None)
    assert second["skipped"] == 23 - lost_rows and second["processed"] == lost_rows
    table = read_features(str(out))
    ids = pads.dataset(str(out), format="parquet").to_table(columns=["clip_id"]).column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)) == table.num_rows == 23
    third = run_extract(_cfg(mixed_manifest, out), log=lambda m: None)
    assert third["processed"] == 0 and third["skipped"] == 23
    # time to the first written shard: within the run, after the start; none when nothing was to do
    assert 0 < first["first_shard_s"] <= first["wall_s"] + 5 and third["first_shard_s"] is None


def test_s3_in_and_out(ray_local, s3_bucket):
    from ray_emer.data.pipeline import run_extract
    from ray_emer.synthetic import SynthConfig, write_archive

    manifest = write_archive(f"{s3_bucket}/archive", SynthConfig(clips=5, seed=3))
    summary = run_extract(_cfg(manifest, f"{s3_bucket}/features"), log=lambda m: None)
    assert summary["ok"] == 5
    table = read_features(f"{s3_bucket}/features")
    assert table.num_rows == 5 and set(table.column("status").to_pylist()) == {"ok"}
    assert feature_arrays(table, "audio_feats").shape == (5, 8, 32)


def test_cli_extract_prints_progress_and_summary(ray_local, synth_archive, tmp_path, capsys):
    db = tmp_path / "mlflow.db"
    rc = main(["extract", "--input", str(synth_archive), "--output", str(tmp_path / "f"), "--set", "progress=false",
               "--set", f"tracking.uri=sqlite:///{db}"])
    cap = capsys.readouterr()
    assert rc == 0
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["clips"] == 12 and summary["ok"] == 12
    assert "[extract] 12/12 clips" in cap.err
    assert "manifest.csv: reading the clips through it" in cap.err  # the folder's labels are kept
    assert all(read_features(str(tmp_path / "f"), columns=["clip_id", "labels"]).column("labels").to_pylist())
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    runs = mlflow.search_runs(experiment_names=["ray_emer-extract"])
    assert len(runs) == 1 and runs.iloc[0]["metrics.ok"] == 12 and runs.iloc[0]["metrics.clips_per_s"] > 0
    assert runs.iloc[0]["params.preset"] == "tiny"
    assert main(["extract", "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "g")]) == 2


def test_face_crops_fall_back_to_the_whole_frame():
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(4)]
    boxes = iter([(40, 30, 40, 40), None, (0, 0, 20, 30), None])
    frames, found = face_frames(raw, 32, detector=lambda f: next(boxes))
    assert frames.shape == (4, 32, 32, 3) and found == 2
    whole, none_found = face_frames(raw, 32, detector=lambda f: None)
    assert none_found == 0 and np.array_equal(whole[1], frames[1])
    assert not np.array_equal(whole[0], frames[0])


def test_face_crop_option_records_faces(synth_archive):
    from ray_emer.media import decode_clip

    import numpy as np

    for clip in sorted((synth_archive / "clips").glob("*.mp4"))[:1]:  # (synth_00001: the detector finds none)
        decoded = decode_clip(str(clip), None, MediaConfig(frame_size=32, face_crop=True))
        whole = decode_clip(str(clip), None, MediaConfig(frame_size=32))
        # the drawn face is found in every frame, and the crop is not the whole frame resized
        assert decoded.frames.shape == (8, 32, 32, 3) and decoded.face_frames == 8, (clip.name, decoded.face_frames)
        assert whole.face_frames == -1
    # the drawn face fills most of its 128 px frame (box ~104 px), so its crop with margin is the whole frame;
    # placed small in a larger scene, the real detector finds it there and the crop is the face, not the scene
    from ray_emer.media.faces import detect_face
    from ray_emer.media.video import sample_raw_frames

    raw, _, _ = sample_raw_frames(str(clip), 8, "auto")
    scenes = []
    for frame in raw:
        scene = np.full((384, 384, 3), 90, np.uint8)
        scene[200:328, 40:168] = frame
        scenes.append(scene)
    boxes = [detect_face(f) for f in scenes]
    assert all(b is not None and 180 <= b[1] <= 230 and 20 <= b[0] <= 70 for b in boxes), boxes
    crops, found = face_frames(scenes, 32)
    whole, none = face_frames(scenes, 32, detector=lambda f: None)
    assert found == 8 and none == 0
    assert np.abs(crops.astype(np.int16) - whole.astype(np.int16)).mean() > 10


def test_traced_encoders_compute_exactly_what_the_transformers_towers_compute(synth_archive):
    from ray_emer.data.features import FeatureEncoder, decode_row, effective_media, scripted_encoders, stack_rows
    from ray_emer.data.manifest import read_manifest

    cfg = _cfg(synth_archive / "manifest.csv", "unused")
    media = effective_media(cfg)
    decoded = stack_rows([decode_row(r, media) for r in read_manifest(cfg.input).to_pylist()[:5]])
    traced_dir = scripted_encoders("tiny", media)
    assert scripted_encoders("tiny", media) == traced_dir  # cached: traced once per machine and config
    assert traced_dir.startswith(os.environ["RAY_EMER_HOME"])
    eager, traced = FeatureEncoder("tiny", media), FeatureEncoder("tiny", media, scripted=traced_dir)
    assert not eager.encoders.scripted and traced.encoders.scripted
    frames, audio = decoded["frames"], decoded["audio"]
    for (ve, ae), (vt, at) in [(eager._encode(frames, audio), traced._encode(frames, audio)),
                               (eager._encode(frames[:2], audio[:2]), traced._encode(frames[:2], audio[:2]))]:
        np.testing.assert_array_equal(ve, vt)
        np.testing.assert_array_equal(ae, at)
    assert np.abs(ve).sum() > 0 and np.abs(ae).sum() > 0
    # another node (no cache there) or a GPU: the towers are built as before
    assert not FeatureEncoder("tiny", media, scripted="/nonexistent").encoders.scripted


def test_an_actor_with_traced_encoders_never_imports_transformers(synth_archive):
    """What makes the encoder actors start fast: loading the traces needs torch alone (no transformers model
    modules, no torch._dynamo), checked in a fresh interpreter."""
    import subprocess
    import sys

    from ray_emer.data.features import effective_media, scripted_encoders

    traced_dir = scripted_encoders("tiny", effective_media(_cfg(synth_archive / "manifest.csv", "unused")))
    code = ("import sys\n"
            "from ray_emer.data.features import FeatureEncoder\n"
            "from ray_emer.media import MediaConfig\n"
            f"enc = FeatureEncoder('tiny', MediaConfig(frame_size=32), scripted={traced_dir!r})\n"
            "print(enc.encoders.scripted, 'transformers' in sys.modules, 'torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False", "False"], out.stdout
