"""The labelling job with Ray Data: a trained model labels a held-out archive; rows in == rows out with
reasons; exports that `ray-emer evaluate` reads; a real kill and a rerun; S3 in and out; the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.dataset as pads
import pytest

from conftest import BAD_MEDIA_EXPECTED, BAD_MEDIA_MAX_DURATION_S
from ray_emer.cli import main
from ray_emer.data.extraction import ExtractConfig, extract_sequential
from ray_emer.features.shards import read_shards
from ray_emer.infer.labeller import LabellerConfig
from ray_emer.media import MediaConfig
from ray_emer.model.config import TrainableConfig
from ray_emer.synthetic import SynthConfig, write_archive
from ray_emer.tracking import TrackingConfig
from ray_emer.train.loop import OptimConfig, TrainConfig

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
CONTRACT = ["clip_id", "description", "labels", "sentiment", "status", "error", "model", "engine", "timings"]
HELD_OUT = 48


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny model trained briefly (local loop) on one synthetic archive, and the features of a held-out
    archive made with another seed."""
    from ray_emer.train.loop import DataConfig, ScalingConfig
    from ray_emer.train.run import run_stage

    root = tmp_path_factory.mktemp("label")
    paths = {}
    for name, synth in (("train", SynthConfig(clips=160, seed=31, split_fractions=[1.0, 0.0, 0.0])),
                        ("heldout", SynthConfig(clips=HELD_OUT, seed=32))):
        manifest = write_archive(str(root / name), synth)
        extract_sequential(ExtractConfig(input=manifest, output=str(root / f"{name}_features"), progress=False))
        paths[name] = str(root / f"{name}_features")
        paths[f"{name}_manifest"] = manifest
    # the tiny LLM is random, so it trains fully (LoRA on a random frozen base learns little: learning benchmark)
    cfg = TrainConfig(features=paths["train"], output=str(root / "ckpt"), max_steps=300, log_every=0, val_samples=0,
                      data=DataConfig(train_split="", batch_size=8), scaling=ScalingConfig(engine="local"),
                      trainable=TrainableConfig(llm="full"), optim=OptimConfig(lr=1e-3, warmup_steps=10))
    run_stage(cfg, log=lambda m: None)
    paths["checkpoint"] = cfg.output
    paths["root"] = str(root)
    return paths


def _cfg(inp: str, out: str, ckpt: str, **kw):
    from ray_emer.data.label_job import LabelJobConfig

    labeller = LabellerConfig(description_tokens=120, label_tokens=24, batch_size=kw.pop("batch_size", 8))
    return LabelJobConfig(input=inp, output=out, checkpoint=ckpt, labeller=labeller, actor_cpus=0.5, progress=False,
                          **kw)


def test_trained_model_labels_a_held_out_archive_far_above_chance(ray_local, trained, tmp_path):
    from ray_emer.data.label_job import run_label

    db = tmp_path / "mlflow.db"
    logs: list[str] = []
    summary = run_label(_cfg(trained["heldout"], str(tmp_path / "labels"), trained["checkpoint"], evaluate=True,
                             tracking=TrackingConfig(uri=f"sqlite:///{db}", experiment="ray_emer-label")),
                     log=logs.append)
    assert summary["rows"] == summary["ok"] == HELD_OUT and summary["error"] == 0
    scores = summary["scores"]
    # chance is 1/6 = 16.7% (six emotions); measured 50-60% after 300 steps on 160 clips
    assert scores["n_gold_labels"] == HELD_OUT and scores["accuracy"] >= 0.40, scores
    assert scores["emer"]["avg"] >= 0.25 and scores["text"]["bleu_4"] >= 0.3, scores
    assert summary["clips_per_s"] > 0 and summary["tokens_per_s"] > 0
    assert any(f"{HELD_OUT} clips labelled" in m for m in logs)
    assert (tmp_path / "labels" / "_report" / "report.md").is_file()
    on_disk = json.loads((tmp_path / "labels" / "_summary.json").read_text())
    assert on_disk["scores"]["accuracy"] == scores["accuracy"]
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{db}")
    run = mlflow.search_runs(experiment_names=["ray_emer-label"]).iloc[0]
    assert run["metrics.accuracy"] == pytest.approx(scores["accuracy"]) and run["metrics.tokens_per_s"] > 0
    assert run["params.labeller.engine"] == "hf"


@pytest.fixture(scope="module")
def mixed_features(trained, bad_media, tmp_path_factory) -> tuple[str, int]:
    """The held-out features plus the bad-media corpus extracted beside them (error rows with reasons)."""
    import shutil

    out = tmp_path_factory.mktemp("mixed") / "features"
    shutil.copytree(trained["heldout"], out)
    manifest = out.parent / "bad.csv"
    names = sorted(BAD_MEDIA_EXPECTED)
    pd.DataFrame({"clip_id": [f"bad_{n.split('.')[0]}" for n in names],
                  "video_uri": [str(bad_media / n) for n in names]}).to_csv(manifest, index=False)
    media = MediaConfig(frame_size=0, max_duration_s=BAD_MEDIA_MAX_DURATION_S)
    extract_sequential(ExtractConfig(input=str(manifest), output=str(out), media=media, progress=False))
    return str(out), HELD_OUT + len(names)


def test_rows_in_equal_rows_out_and_exports_feed_evaluate(ray_local, trained, mixed_features, tmp_path, capsys):
    from ray_emer.data.label_job import run_label

    features, n_in = mixed_features
    out = tmp_path / "labels"
    summary = run_label(_cfg(features, str(out), trained["checkpoint"], batch_size=16), log=lambda m: None)
    bad_errors = sum(k == "error" for k, _ in BAD_MEDIA_EXPECTED.values())
    assert summary["rows"] == summary["clips"] == n_in and summary["error"] == bad_errors
    table = pads.dataset(str(out), format="parquet").to_table()  # plain pyarrow, no ray_emer
    assert set(CONTRACT) <= set(table.column_names)
    assert table.num_rows == n_in and len(set(table.column("clip_id").to_pylist())) == n_in
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    for name, (kind, expect) in BAD_MEDIA_EXPECTED.items():
        row = rows[f"bad_{name.split('.')[0]}"]
        if kind == "error":  # extraction's reason, kept word for word
            assert row["status"] == "error" and row["error"].startswith(expect + ":") and row["description"] == ""
        else:
            assert row["status"] == "ok" and row["description"], row
    assert {r["engine"] for r in rows.values()} == {"hf"} and len({r["model"] for r in rows.values()}) == 1
    # the published layouts feed `ray-emer evaluate` as they are
    reason, openset = pd.read_csv(out / "_published" / "reason.csv"), pd.read_csv(out / "_published" / "openset.csv")
    assert list(reason.columns) == ["name", "reason"] and list(openset.columns) == ["name", "openset", "sentiment"]
    assert len(openset) == n_in - bad_errors
    gold = pd.read_csv(trained["heldout_manifest"])
    gold_csv = tmp_path / "gold.csv"
    pd.DataFrame({"name": gold["clip_id"], "openset": gold["labels"], "reason": gold["description"]}).to_csv(
        gold_csv, index=False)
    groups = tmp_path / "groups.json"
    groups.write_text("{}")
    capsys.readouterr()
    heldout_only = tmp_path / "openset_heldout.csv"
    openset[openset["name"].str.startswith("synth_")].to_csv(heldout_only, index=False)
    assert main(["evaluate", "emer", "--predictions", str(heldout_only), "--labels", str(gold_csv),
                 "--groups", str(groups), "--parsing", "proper"]) == 0
    emer = json.loads(capsys.readouterr().out)
    assert emer["n_scored"] == HELD_OUT and emer["avg"] > 0.25
    reason[reason["name"].str.startswith("synth_")].to_csv(tmp_path / "reason_heldout.csv", index=False)
    assert main(["evaluate", "text", "--predictions", str(tmp_path / "reason_heldout.csv"), "--labels",
                 str(gold_csv), "--column", "reason"]) == 0
    assert json.loads(capsys.readouterr().out)["bleu_1"] > 0.5


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_killed_job_reruns_with_exactly_one_row_per_clip(ray_local, trained, tmp_path):
    """A real kill (SIGKILL to the job and everything it started) part-way, then a rerun."""
    from ray_emer.data.label_job import run_label

    out = tmp_path / "labels"
    cmd = [str(Path(sys.executable).parent / "ray-emer"), "label", "--input", trained["heldout"],
           "--checkpoint", trained["checkpoint"], "--output", str(out), "--set", "labeller.batch_size=2",
           "--set", "labeller.description_tokens=160", "--set", "actor_cpus=0.5", "--set", "progress=false"]
    # its own local Ray (RAY_ADDRESS=local), which the kill takes down with it, whatever else runs on this machine
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_ADDRESS": "local"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 2 and proc.poll() is None:
            time.sleep(0.05)
        victims = [proc, *_children(proc.pid)]
        for p in victims:  # the driver and every process it started (its local Ray, the actors)
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        psutil.wait_procs([p for p in victims if isinstance(p, psutil.Process)], timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = pads.dataset(str(out), format="parquet").to_table(columns=["clip_id"]).column("clip_id").to_pylist() \
        if list(out.glob("part-*.parquet")) else []
    assert 0 < len(before) < HELD_OUT, f"the kill must land part-way ({len(before)} of {HELD_OUT} labelled)"
    assert len(before) == len(set(before))
    summary = run_label(_cfg(trained["heldout"], str(out), trained["checkpoint"]), log=lambda m: None)
    assert summary["skipped"] == len(before) and summary["processed"] == HELD_OUT - len(before)
    ids = pads.dataset(str(out), format="parquet").to_table(columns=["clip_id"]).column("clip_id").to_pylist()
    assert len(ids) == len(set(ids)) == HELD_OUT  # nothing lost, nothing generated twice
    again = run_label(_cfg(trained["heldout"], str(out), trained["checkpoint"]), log=lambda m: None)
    assert again["processed"] == 0 and again["skipped"] == HELD_OUT and again["rows"] == HELD_OUT


def test_labels_s3_in_and_out(ray_local, trained, s3_bucket):  # its own bucket (named after the test)
    from ray_emer.data.label_job import read_labels, run_label
    from ray_emer import storage

    table = read_shards(trained["heldout"])
    head = table.slice(0, 6)
    import io

    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(head, buf)
    storage.write_bytes(f"{s3_bucket}/features/part-a.parquet", buf.getvalue())
    summary = run_label(_cfg(f"{s3_bucket}/features", f"{s3_bucket}/labels", trained["checkpoint"], evaluate=True),
                        log=lambda m: None)
    assert summary["rows"] == summary["ok"] == 6
    labels = read_labels(f"{s3_bucket}/labels")
    assert sorted(labels["clip_id"]) == sorted(head.column("clip_id").to_pylist())
    assert storage.exists(f"{s3_bucket}/labels/_published/openset.csv") and storage.exists(f"{s3_bucket}/labels/_summary.json")
    assert storage.exists(f"{s3_bucket}/labels/_report/report.json")


def test_cli_label_extracts_an_archive_first(ray_local, trained, tmp_path, capsys):
    """An archive with good and broken clips: extraction first, then one label row per clip with reasons."""
    archive = tmp_path / "archive"
    write_archive(str(archive), SynthConfig(clips=4, seed=40))
    (archive / "clips" / "broken.mp4").write_bytes(b"not a video at all" * 20)
    with open(archive / "manifest.csv", "a") as fh:
        fh.write("broken,clips/broken.mp4,,,,,,,,,\n")
    out = tmp_path / "labels"
    rc = main(["label", "--input", str(archive / "manifest.csv"), "--checkpoint", trained["checkpoint"],
               "--output", str(out), "--set", "progress=false", "--set", "actor_cpus=0.5",
               "--set", "labeller.description_tokens=16", "--set", "labeller.label_tokens=12"])
    cap = capsys.readouterr()
    assert rc == 0, cap.err[-2000:]
    summary = json.loads(cap.out.strip().splitlines()[-1])
    assert summary["rows"] == 5 and summary["ok"] == 4 and summary["error"] == 1 and summary["extract"]["ok"] == 4
    assert summary["features"] == str(out / "_features") and read_shards(str(out / "_features")).num_rows == 5
    table = pads.dataset(str(out), format="parquet").to_table()  # the label shards alone
    assert table.num_rows == 5
    broken = [r for r in table.to_pylist() if r["clip_id"] == "broken"][0]
    assert broken["status"] == "error" and broken["error"].startswith("not_a_media_file:")
    assert "[label] 5/5 clips labelled" in cap.err and "extracting features" in cap.err
    assert main(["label", "--input", str(out / "_features"), "--checkpoint", str(tmp_path / "nope"),
                 "--output", str(tmp_path / "x")]) == 2
    assert "not a checkpoint directory" in capsys.readouterr().err
    assert main(["label", "--input", str(out / "_features"), "--output", str(tmp_path / "x")]) == 2


def test_a_rerun_with_another_checkpoint_refuses_the_labels_it_would_keep(ray_local, trained, tmp_path):
    """Resume skips clips already labelled; labels another checkpoint wrote there are refused with both model ids
    (not kept and scored as this model's), and the output is left as it was."""
    import shutil

    from ray_emer.config import ConfigError
    from ray_emer.data.label_job import run_label
    from ray_emer.model.checkpoint import checkpoint_id

    features = tmp_path / "features"
    features.mkdir()
    for part in sorted(Path(trained["heldout"]).glob("part-*.parquet"))[:3]:
        shutil.copy(part, features)
    out = tmp_path / "labels"
    first = run_label(_cfg(str(features), str(out), trained["checkpoint"]), log=lambda m: None)
    assert first["rows"] == 3
    other = tmp_path / "retrained"
    shutil.copytree(trained["checkpoint"], other)  # another name: another model id
    before = sorted(p.name for p in out.glob("part-*.parquet"))
    with pytest.raises(ConfigError, match="another model") as err:
        run_label(_cfg(str(features), str(out), str(other)), log=lambda m: None)
    assert checkpoint_id(trained["checkpoint"]) in str(err.value) and checkpoint_id(str(other)) in str(err.value)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == before
    again = run_label(_cfg(str(features), str(out), trained["checkpoint"]), log=lambda m: None)
    assert again["processed"] == 0 and again["rows"] == 3  # the same model still resumes


# ---------------------------------------------------------------- long recordings
@pytest.fixture(scope="module")
def recording_archive(tmp_path_factory) -> tuple[Path, dict]:
    """A folder with a 45 s recording (held-out-like clips of known emotions joined with pauses, its .srt beside
    it) and two short clips."""
    import shutil

    from ray_emer.synthetic_recording import write_recording

    root = tmp_path_factory.mktemp("recordings")
    folder = root / "archive"
    folder.mkdir()
    rec = write_recording(str(folder / "talk.mp4"), SynthConfig(seed=33, min_duration_s=2.5, max_duration_s=6.0), 45)
    clips = write_archive(str(root / "clips"), SynthConfig(clips=2, seed=34))
    for clip in sorted((Path(clips).parent / "clips").glob("*.mp4")):
        shutil.copy(clip, folder / clip.name)
    return folder, rec


def test_a_long_recording_becomes_a_timeline_of_labelled_segments(ray_local, trained, recording_archive, tmp_path):
    import webvtt

    from ray_emer.data.label_job import read_labels, run_label
    from ray_emer.synthetic import emotion_of

    folder, rec = recording_archive
    out = tmp_path / "labels"
    summary = run_label(_cfg(str(folder), str(out), trained["checkpoint"]), log=lambda m: None)
    features = read_shards(str(out / "_features")).to_pandas()
    labels = read_labels(str(out))
    assert summary["rows"] == len(labels) == len(features) and summary["error"] == 0  # rows in == rows out
    segments = labels[labels["recording_id"] == "talk"].sort_values("start_s")
    assert len(segments) >= 8 and set(labels["recording_id"]) == {"talk", "synth_00000", "synth_00001"}
    assert all(c == f"talk@{round(a * 1000)}-{round(b * 1000)}"
               for c, a, b in zip(segments["clip_id"], segments["start_s"], segments["end_s"], strict=True))
    clip = labels[labels["clip_id"] == "synth_00000"].iloc[0]  # a short clip stays one row, its own recording
    assert clip["start_s"] == 0.0 and clip["end_s"] > 1.0
    timeline = json.loads((out / "_timelines" / "talk.json").read_text())
    assert set(timeline) == {"recording_id", "duration_s", "segments"} and summary["timelines"] == {
        "talk": str(out / "_timelines" / "talk.json")}
    assert all(set(s) == {"start_s", "end_s", "description", "labels", "sentiment", "subtitle"}
               for s in timeline["segments"])
    starts = [s["start_s"] for s in timeline["segments"]]
    assert starts == sorted(starts) and timeline["duration_s"] == pytest.approx(rec["duration_s"], abs=0.2)
    found = sum(any(abs(s - j) <= 0.5 for s in starts[1:]) for j in rec["joins"]) / len(rec["joins"])
    assert found >= 0.8, (starts, rec["joins"])
    # each segment's labels against the clip under its middle: chance is 1/6; the model reads ~50% of clips
    hits = []
    for s in timeline["segments"]:
        mid = (s["start_s"] + s["end_s"]) / 2
        under = next(c for c in rec["spans"] if c["start_s"] <= mid < c["end_s"])
        hits.append(bool(s["labels"]) and emotion_of(s["labels"][0]) == under["emotion"])
    assert sum(hits) / len(hits) >= 0.3, hits
    assert sum(bool(s["subtitle"]) for s in timeline["segments"]) >= len(starts) * 0.7  # from talk.srt
    cues = webvtt.read(str(out / "_timelines" / "talk.vtt")).captions
    assert len(cues) == len(starts) and cues[0].text.startswith(", ".join(timeline["segments"][0]["labels"]))
    assert "Emotion timeline: talk" in (out / "_timelines" / "talk.html").read_text()


def test_a_job_killed_inside_a_recording_redoes_only_its_missing_segments(ray_local, trained, recording_archive,
                                                                          tmp_path):
    """SIGKILL to `ray-emer label` once a few segments' features are written, then a rerun: each segment once."""
    from ray_emer.data.extraction import read_markers
    from ray_emer.data.label_job import read_labels, run_label
    from ray_emer.features.shards import written_clip_ids

    folder, _ = recording_archive
    out = tmp_path / "labels"
    cmd = [str(Path(sys.executable).parent / "ray-emer"), "label", "--input", str(folder), "--checkpoint",
           trained["checkpoint"], "--output", str(out), "--set", "extract.encode_batch_size=1", "--set",
           "progress=false", "--set", "tracking.enabled=false"]
    env = {**os.environ, "RAY_DATA_DISABLE_PROGRESS_BARS": "1", "RAY_ADDRESS": "local"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list(out.glob("_features/part-talk@*.parquet"))) < 3 \
                and proc.poll() is None:
            time.sleep(0.02)
        for p in [proc, *_children(proc.pid)]:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    written_before = written_clip_ids(str(out / "_features"))
    before = [c for c in written_before if c.startswith("talk@")]
    assert before and "talk" not in read_markers(str(out / "_features")), "the kill must land inside the recording"
    summary = run_label(_cfg(str(folder), str(out), trained["checkpoint"]), log=lambda m: None)
    segments = read_markers(str(out / "_features"))["talk"]
    assert len(before) < len(segments)
    clips_left = 2 - sum(not c.startswith("talk@") for c in written_before)
    assert summary["extract"]["ok"] == len(segments) - len(before) + clips_left  # only what is missing
    written = written_clip_ids(str(out / "_features"))
    assert len(written) == len(set(written)) == len(segments) + 2  # no segment twice
    labels = read_labels(str(out))
    assert sorted(labels["clip_id"]) == sorted(segments + ["synth_00000", "synth_00001"])
