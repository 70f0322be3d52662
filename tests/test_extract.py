"""Feature extraction with Ray Data: rows in == rows out, error reasons, resume, S3, schema, CLI, MLflow."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pandas as pd
import pyarrow.dataset as pads
import pytest

from conftest import BAD_MEDIA_EXPECTED, BAD_MEDIA_MAX_DURATION_S
from ray_emer.cli import main
from ray_emer.data.extraction import ExtractConfig, extract_sequential
from ray_emer.features.shards import feature_arrays, read_shards
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
    table = read_shards(str(out))
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
    assert summary["layout"] == "fused"  # CPU only: actors decode, encode and write their own batches
    seq = extract_sequential(_cfg(synth_archive / "manifest.csv", tmp_path / "seq"), limit=3)
    assert seq["processed"] == 3 and seq["start_s"] > 0  # the benchmark counts the loop's start-up apart
    a, b = read_shards(str(tmp_path / "seq")), read_shards(str(out))
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
    progress: list[float] = []
    t_call = time.time()
    first = run_extract(_cfg(mixed_manifest, out),
                        log=lambda m: progress.append(time.time()) if "clips (ok" in m else None)
    shards = sorted(out.glob("part-*.parquet"))
    earliest_shard = min(p.stat().st_mtime for p in shards)
    assert len(shards) >= 3 and first["processed"] == 23
    # simulate a run killed part-way: half of the shards never landed, plus a half-written temp file
    lost = shards[: len(shards) // 2]
    lost_rows = sum(pads.dataset(str(p)).count_rows() for p in lost)
    for p in lost:
        p.unlink()
    (out / ".tmp-crashed").write_bytes(b"PAR1 half a shard")
    second = run_extract(_cfg(mixed_manifest, out), log=lambda m: None)
    assert second["skipped"] == 23 - lost_rows and second["processed"] == lost_rows
    table = read_shards(str(out))
    ids = pads.dataset(str(out), format="parquet").to_table(columns=["clip_id"]).column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)) == table.num_rows == 23
    third = run_extract(_cfg(mixed_manifest, out), log=lambda m: None)
    assert third["processed"] == 0 and third["skipped"] == 23
    # time to the first written shard, from the call: a shard file existed by then, and it was taken before the
    # first batch was reported (one report per task, a task writes one shard or more); none when nothing was to do
    assert 1 <= len(progress) <= len(shards) and third["first_shard_s"] is None
    assert earliest_shard - 0.05 <= t_call + first["first_shard_s"] <= progress[0] + 0.05, \
        (earliest_shard - t_call, first["first_shard_s"], progress[0] - t_call)


def test_s3_in_and_out(ray_local, s3_bucket):
    from ray_emer.data.pipeline import run_extract
    from ray_emer.synthetic import SynthConfig, write_archive

    manifest = write_archive(f"{s3_bucket}/archive", SynthConfig(clips=5, seed=3))
    summary = run_extract(_cfg(manifest, f"{s3_bucket}/features"), log=lambda m: None)
    assert summary["ok"] == 5
    table = read_shards(f"{s3_bucket}/features")
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
    assert all(read_shards(str(tmp_path / "f"), columns=["clip_id", "labels"]).column("labels").to_pylist())
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
    from ray_emer.features.columns import to_columns
    from ray_emer.features.decode import decode_row
    from ray_emer.features.encoder import FeatureEncoder, effective_media, scripted_encoders
    from ray_emer.data.manifest import read_manifest

    cfg = _cfg(synth_archive / "manifest.csv", "unused")
    media = effective_media(cfg.preset, cfg.media)
    decoded = to_columns([decode_row(r, media) for r in read_manifest(cfg.input).to_pylist()[:5]])
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

    from ray_emer.features.encoder import effective_media, scripted_encoders

    traced_dir = scripted_encoders("tiny", effective_media("tiny", _cfg(synth_archive / "manifest.csv", "unused").media))
    code = ("import sys\n"
            "from ray_emer.features.encoder import FeatureEncoder\n"
            "from ray_emer.media import MediaConfig\n"
            f"enc = FeatureEncoder('tiny', MediaConfig(frame_size=32), scripted={traced_dir!r})\n"
            "print(enc.encoders.scripted, 'transformers' in sys.modules, 'torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False", "False"], out.stdout


def test_split_layout_writes_the_same_rows_as_the_fused_one(extracted, mixed_manifest, tmp_path):
    """``fused_cpu: false`` (the GPU layout, decode tasks -> encoder actors) on the same clips: the same rows,
    statuses, errors and features as the fused CPU tasks."""
    from ray_emer.data.pipeline import run_extract

    fused_out, fused, _ = extracted
    split = run_extract(_cfg(mixed_manifest, tmp_path / "split", fused_cpu=False), log=lambda m: None)
    assert split["layout"] == "split" and split["scripted_encoders"] and split["encoder_loads"] == 1  # one actor
    assert {k: split[k] for k in ("processed", "ok", "error")} == {k: fused[k] for k in ("processed", "ok", "error")}
    a, b = read_shards(str(fused_out)), read_shards(str(tmp_path / "split"))
    a, b = (t.sort_by("clip_id") for t in (a, b))
    for col in ("clip_id", "status", "error", "has_video", "has_audio", "subtitle_source"):
        assert a.column(col).to_pylist() == b.column(col).to_pylist(), col
    for col in ("video_feats", "audio_feats"):
        np.testing.assert_allclose(feature_arrays(a, col).astype(np.float32), feature_arrays(b, col).astype(np.float32),
                                   atol=1e-3, rtol=1e-3)


def test_fused_workers_keep_their_encoders_for_the_next_job(extracted, mixed_manifest, tmp_path):
    """Fused tasks run in Ray's pooled workers, which keep their loaded encoders: the session's next job loads
    them in fewer workers than it has tasks (each task would load them if nothing were kept), and with
    ``warm_keep_s: 0`` every task loads them again."""
    import ray

    from ray_emer.data.pipeline import _batches, _fused_tasks, run_extract

    _, fused, _ = extracted
    cfg = _cfg(mixed_manifest, tmp_path / "warm")
    tasks = len(_batches(23, cfg.encode_batch_size, _fused_tasks(cfg)))
    assert tasks > _fused_tasks(cfg) == int(ray.cluster_resources()["CPU"])  # more tasks than workers run at once
    assert 1 <= fused["encoder_loads"] <= _fused_tasks(cfg) < tasks  # the first job: one load per worker at most
    warm = run_extract(cfg, log=lambda m: None)
    assert warm["encoder_loads"] < tasks and warm["ok"] == fused["ok"]
    # other media settings (no worker holds encoders for them), nothing kept: each task loads its own
    cold_cfg = _cfg(mixed_manifest, tmp_path / "cold", warm_keep_s=0)
    cold_cfg.media.num_frames = 4
    cold = run_extract(cold_cfg, log=lambda m: None)
    assert cold["encoder_loads"] == tasks and cold["processed"] == 23


def test_a_worker_keeps_its_encoders_for_keep_s_then_drops_them(synth_archive):
    """The per-process encoder cache of the fused tasks, in this process: the same settings reuse one encoder,
    other settings replace it, a release comes ``keep_s`` after the last use (0: at once), and a use in between
    cancels a pending release."""
    from ray_emer.asr import AsrConfig
    from ray_emer.data import pipeline
    from ray_emer.features.encoder import effective_media, scripted_encoders

    media = effective_media("tiny", _cfg(synth_archive / "manifest.csv", "unused").media)
    traced = scripted_encoders("tiny", media)
    enc, loaded = pipeline._worker_encoder("tiny", media, AsrConfig(), traced)
    assert loaded and enc.encoders.scripted
    assert pipeline._worker_encoder("tiny", media, AsrConfig(), traced) == (enc, False)
    pipeline._release_after(0.3)
    time.sleep(0.1)
    assert pipeline._worker_encoder("tiny", media, AsrConfig(), traced) == (enc, False)  # cancels that release
    time.sleep(0.5)
    assert pipeline._WARM["encoder"] is enc  # the cancelled release did not fire
    pipeline._release_after(0.2)
    time.sleep(0.5)
    assert pipeline._WARM["encoder"] is None and pipeline._WARM["key"] is None
    other, loaded = pipeline._worker_encoder("tiny", media, AsrConfig(), None)  # other settings: built anew
    assert loaded and other is not enc and not other.encoders.scripted
    again, loaded = pipeline._worker_encoder("tiny", media, AsrConfig(), traced)
    assert loaded and again is not other
    pipeline._release_after(0)
    assert pipeline._WARM["encoder"] is None


def test_the_fused_task_starts_on_torch_alone(ray_local, synth_archive, tmp_path):
    """What makes extraction start fast on CPU: the pipeline's own fused task, run by Ray in a fresh worker
    process, writes its shard with the traced towers without importing transformers or torch._dynamo."""
    import ray

    from ray_emer.asr import AsrConfig
    from ray_emer.data.extraction import pending
    from ray_emer.features.encoder import effective_media, scripted_encoders
    from ray_emer.media.segments import SegmentConfig

    cfg = _cfg(synth_archive / "manifest.csv", tmp_path / "f")
    media = effective_media(cfg.preset, cfg.media)
    records = pending(cfg)[0].slice(0, 2)  # manifest rows as Arrow columns, as Ray Data hands them to the task

    def probe(batch, *args):
        import sys

        from ray_emer.data.pipeline import _decode_encode_write

        out = _decode_encode_write(batch, *args)
        heavy = sorted(m for m in sys.modules
                       if m == "transformers" or m.startswith(("transformers.", "torch._dynamo")))
        return list(out["status"]), bool(out["scripted"][0]), heavy

    # a runtime env of its own: Ray starts a new worker process for it (no pooled worker that ran other tests)
    task = ray.remote(num_cpus=0, runtime_env={"env_vars": {"RAY_EMER_TEST_FRESH_WORKER": "1"}})(probe)
    got = ray.get(task.remote(records, "tiny", media, str(tmp_path / "f"), AsrConfig(),
                              scripted_encoders("tiny", media), SegmentConfig(), 0.0, 1), timeout=120)
    assert got == (["ok", "ok"], True, [])
    assert len(list((tmp_path / "f").glob("part-*.parquet"))) == 2  # one shard per shard_rows (1) rows


def test_a_cached_trace_costs_the_driver_no_torch_import(synth_archive):
    """The driver finds the traced towers with the package versions alone (no torch import before the job)."""
    import subprocess
    import sys

    from ray_emer.features.encoder import effective_media, scripted_encoders

    traced_dir = scripted_encoders("tiny", effective_media("tiny", _cfg(synth_archive / "manifest.csv", "unused").media))
    code = ("import sys\n"
            "from ray_emer.features.encoder import scripted_encoders\n"
            "from ray_emer.media import MediaConfig\n"
            "print(scripted_encoders('tiny', MediaConfig(frame_size=32)), 'torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [traced_dir, "False"], out.stdout


def test_fused_blocks_cover_every_row_once_start_small_and_shrink_to_one_shard():
    """The fused tasks' blocks: every row once, in order; the first one per worker a quarter of a shard (each
    worker writes its first shard soon after it starts); then whole shards, at most 8 a block, never growing,
    down to one shard at the end (workers finish together); far fewer tasks than shards."""
    from ray_emer.data.pipeline import _batches

    for n, size, workers in [(23, 4, 4), (1000, 32, 2), (5, 16, 2), (1, 16, 2), (0, 16, 2), (70, 8, 3),
                             (10000, 16, 16)]:
        bounds = _batches(n, size, workers)
        assert [r for a, b in bounds for r in range(a, b)] == list(range(n))
        sizes = [b - a for a, b in bounds]
        head = max(1, size // 4)
        assert sizes[:workers] == [min(head, n - head * i) for i in range(min(workers, len(sizes)))]
        rest = sizes[workers:]
        assert all(s % size == 0 and s <= 8 * size for s in rest[:-1]) and all(0 < s <= 8 * size for s in rest)
        assert all(a >= b for a, b in zip(rest[:-1], rest[1:], strict=False))
        if n - head * workers > 4 * size * workers:
            assert rest[-1] <= size  # the last block: one shard or less
    sizes = [b - a for a, b in _batches(1000, 32, 2)]
    assert sizes[:3] == [8, 8, 256] and len(sizes) <= 12 < 1000 / 32


def test_a_batch_written_again_replaces_its_own_shard(tmp_path):
    """Shard names follow the clip ids: a retried batch (its worker died after writing) leaves one copy of its
    rows, and a different batch gets a shard of its own."""
    import pyarrow as pa

    from ray_emer.features.shards import write_shard

    t = pa.table({"clip_id": ["a", "b"], "status": ["ok", "ok"]})
    first = write_shard(t, str(tmp_path))
    assert write_shard(t, str(tmp_path)) == first
    other = write_shard(pa.table({"clip_id": ["a", "c"], "status": ["ok", "ok"]}), str(tmp_path))
    assert other != first and len(list(tmp_path.glob("part-*.parquet"))) == 2
    assert pads.dataset(str(tmp_path), format="parquet").count_rows() == 4


def test_a_fused_task_reserves_memory_for_its_towers(tmp_path):
    """Ray runs no more fused tasks on a node than their encoders fit: the reservation grows with the traced
    towers' size (a large preset's towers are GBs), unless encoder_memory_mb sets it."""
    from ray_emer.data.pipeline import _encoder_memory

    (tmp_path / "vision.pt").write_bytes(b"\0" * 3 * 2**20)
    (tmp_path / "audio.pt").write_bytes(b"\0" * 2**20)
    assert _encoder_memory(ExtractConfig(), str(tmp_path)) - _encoder_memory(ExtractConfig(), None) == 4 * 2**20
    assert _encoder_memory(ExtractConfig(encoder_memory_mb=100), str(tmp_path)) == 100 * 2**20


def test_the_driver_sees_each_shard_when_its_task_returns(ray_local):
    """run_extract's loop (``_as_returned``) gets a task's summary when that task returns, not when the next task
    is done as well (Ray Data's default prefetch): here the second task sleeps 5 s, the first returns at once."""
    import ray

    from ray_emer.data.pipeline import _as_returned

    def work(batch):
        if batch["id"][0] == 1:
            time.sleep(5)
        return batch

    ds = ray.data.from_items([{"id": i} for i in range(2)], override_num_blocks=2).map_batches(
        work, batch_size=None, compute=ray.data.TaskPoolStrategy(size=1), num_cpus=0.5)
    t0 = time.perf_counter()
    batches = iter(_as_returned(ds))
    first = next(batches)
    waited = time.perf_counter() - t0
    assert first["id"].tolist() == [0] and waited < 4, waited
    assert [b["id"].tolist() for b in batches] == [[1]]


def test_the_benchmark_times_a_new_driver_on_the_running_cluster(ray_local, synth_archive, tmp_path):
    """`benchmarks/extract.py`'s (b''): the job from a fresh driver process joined to this session's cluster writes
    every clip and reports its rate against the loop's two rates it was given."""
    import runpy
    from pathlib import Path

    new_driver_run = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "extract.py"))[
        "new_driver_run"]
    cfg = _cfg(synth_archive / "manifest.csv", tmp_path / "out")
    out = new_driver_run(cfg, 2.0, 1.0, ray_local.get_runtime_context().gcs_address)
    assert out["processed"] == 12 and out["first_shard_s"] > 0
    assert out["clips_per_s"] == pytest.approx(12 / out["wall_s"], rel=0.02)
    assert out["ratio"] == pytest.approx(out["clips_per_s"] / 2.0, rel=0.01)
    assert out["ratio_e2e"] == pytest.approx(out["clips_per_s"] / 1.0, rel=0.01)
    assert sorted(read_shards(str(tmp_path / "out")).column("clip_id").to_pylist()) == sorted(
        pd.read_csv(synth_archive / "manifest.csv")["clip_id"])
