import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_emer import storage
from ray_emer.data.manifest import ManifestError, read_manifest
from ray_emer.data.published import assign_splits, build_manifest, join_published
from ray_emer.schema import MANIFEST_SCHEMA


def test_manifest_labels_use_the_proper_rule(tmp_path):
    """CSV cells in any list spelling and Parquet list columns become clean label lists."""
    cells = ['["Happy", "sad"]', '[], ["confused"]', "worried; nervous", "[calm, Calm]", ""]
    pd.DataFrame({"clip_id": list("abcde"), "video_uri": [f"{c}.mp4" for c in "abcde"], "labels": cells}) \
        .to_csv(tmp_path / "m.csv", index=False)
    rows = read_manifest(str(tmp_path / "m.csv")).to_pylist()
    assert [r["labels"] for r in rows] == [["happy", "sad"], ["confused"], ["worried", "nervous"], ["calm"], []]
    pq.write_table(pa.table({"clip_id": ["a"], "video_uri": ["a.mp4"], "labels": [[" Joy ", "joy", "[]"]]}),
                   tmp_path / "m.parquet")
    assert read_manifest(str(tmp_path / "m.parquet")).to_pylist()[0]["labels"] == ["joy"]


def test_synthetic_manifest_csv(synth_archive):
    table = read_manifest(str(synth_archive / "manifest.csv"))
    assert table.schema.names[: len(MANIFEST_SCHEMA)] == MANIFEST_SCHEMA.names
    assert table.num_rows == 12
    row = table.to_pylist()[0]
    assert row["video_uri"].endswith(".mp4") and storage.exists(row["video_uri"])
    assert isinstance(row["labels"], list) and row["labels"]


def test_folder_with_sidecars(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "a.txt").write_text("hello there\n")
    (tmp_path / "a.wav").write_bytes(b"w")
    (tmp_path / "sub" / "b.mkv").write_bytes(b"y")
    (tmp_path / "notes.md").write_text("ignored")
    rows = read_manifest(str(tmp_path)).to_pylist()
    assert [r["clip_id"] for r in rows] == ["a", "b"]
    assert rows[0]["subtitle"] == "hello there" and rows[0]["audio_uri"].endswith("a.wav")
    assert rows[1]["subtitle"] is None and rows[1]["audio_uri"] is None


def test_relative_paths_parquet_and_errors(tmp_path):
    pd.DataFrame({"clip_id": ["c1"], "video_uri": ["clips/c1.mp4"], "split": ["test"]}).to_csv(tmp_path / "m.csv", index=False)
    row = read_manifest(str(tmp_path / "m.csv")).to_pylist()[0]
    assert row["video_uri"] == str(tmp_path / "clips" / "c1.mp4") and row["labels"] is None
    pq.write_table(read_manifest(str(tmp_path / "m.csv")), tmp_path / "m.parquet")
    # a Parquet null reads back as NaN in pandas: it stays null, never the path ".../nan"
    back = read_manifest(str(tmp_path / "m.parquet")).to_pylist()
    assert [(r["video_uri"], r["audio_uri"], r["split"]) for r in back] == [(row["video_uri"], None, "test")]
    pd.DataFrame({"name": ["c1"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ManifestError, match="missing required column"):
        read_manifest(str(tmp_path / "bad.csv"))
    pd.DataFrame({"clip_id": ["c", "c"], "video_uri": ["a", "b"]}).to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(ManifestError, match="more than once"):
        read_manifest(str(tmp_path / "dup.csv"))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ManifestError, match="empty"):
        read_manifest(str(tmp_path / "empty.csv"))
    (tmp_path / "no_clips").mkdir()
    with pytest.raises(ManifestError, match="no video files"):
        read_manifest(str(tmp_path / "no_clips"))


def test_join_published_layouts(tmp_path, reference_dir):
    """The published files as shipped: EMER v1 (names,emotions,subtitles,reasons: one file, two roles) and
    OV-MERD (name,chinese,english descriptions; name,openset labels) fill a manifest; the published names are
    the rows, and names no video matched are reported (kept as rows with an empty video_uri, or dropped)."""
    v1 = pd.read_csv(reference_dir / "ovmerd" / "emer_v1_100_gt_english.csv")
    names = list(v1["names"][:3])
    videos = read_manifest(_write_csv(tmp_path / "m.csv", clip_id=names, video_uri=[f"{n}.mp4" for n in names]))
    v1_file = str(reference_dir / "ovmerd" / "emer_v1_100_gt_english.csv")
    t, found = join_published(videos, subtitles=v1_file, reasons=v1_file)
    rows = {r["clip_id"]: r for r in t.to_pylist()}
    assert t.num_rows == 100 and found["matched"] == 3 and len(found["unmatched_names"]) == 97
    assert [rows[n]["subtitle"] for n in names] == list(v1["subtitles"][:3])
    assert rows[names[0]]["description"] == v1["reasons"][0] and rows[names[0]]["video_uri"].endswith(".mp4")
    assert rows[v1["names"][50]]["video_uri"] == "" and rows[v1["names"][50]]["description"] == v1["reasons"][50]
    kept, _ = join_published(videos, reasons=v1_file, keep_unmatched=False)
    assert kept.column("clip_id").to_pylist() == names

    gt = reference_dir / "ovmerd" / "ovmerd332_gt_openset_labels_mer2024_check.csv"
    desc = reference_dir / "ovmerd" / "emer_v2_ovmerd332_descriptions_chi_eng.csv"
    gt_names = list(pd.read_csv(gt)["name"][:2])
    videos2 = read_manifest(_write_csv(tmp_path / "m2.csv", clip_id=gt_names, video_uri=["a.mp4", "b.mp4"]))
    rows2, found2 = join_published(videos2, reasons=str(desc), openset=str(gt), keep_unmatched=False)
    rows2 = rows2.to_pylist()
    assert [r["clip_id"] for r in rows2] == gt_names and found2["matched"] == 2
    assert rows2[0]["labels"][:2] == ["pleasurable", "self-deprecating"]
    assert rows2[0]["description"] == pd.read_csv(desc)["english"][0]  # OV-MERD's English description


def _write_csv(path, **columns) -> str:
    pd.DataFrame(columns).to_csv(path, index=False)
    return str(path)


# ---------------------------------------------------------------- published layout -> training features
# A realistic video folder: the synthetic clips renamed as a published release names them, with the usual
# mismatches: a different case, an upper-case extension, a subfolder, a name written with its extension,
# a video no published file names, and published names with no video.
NAMES = [f"sample_{i:08d}" for i in range(5)]
GHOSTS = ["sample_00000098", "sample_00000099"]  # published, no video


def _published_folder(synth_archive, root):
    """(video folder, the synthetic manifest rows by published name)."""
    import shutil

    gold = read_manifest(str(synth_archive / "manifest.csv")).to_pylist()
    files = [f"{NAMES[0]}.mp4", f"{NAMES[1].upper()}.mp4", f"{NAMES[2]}.MP4", f"{NAMES[3]}.mp4",
             f"part2/{NAMES[4]}.mp4", "orphan_clip.mp4"]
    videos = root / "video"
    for row, name in zip(gold, files):
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(row["video_uri"], videos / name)
    return videos, dict(zip(NAMES, gold))


def _openset_cell(labels) -> str:
    return str(list(labels))  # the published spelling: "['happy', 'joyful']"


def _features(manifest: str, out) -> pa.Table:
    from ray_emer.data.extraction import ExtractConfig, extract_sequential
    from ray_emer.features.shards import read_shards

    summary = extract_sequential(ExtractConfig(input=manifest, output=str(out), progress=False))
    table = read_shards(str(out))
    assert summary["clips"] == table.num_rows  # rows in == rows out
    return table


def test_stage2_ovmerd_layout_to_training_features(synth_archive, tmp_path):
    """OV-MERD layout (name,reason + name,openset + name,chinese,english subtitles), a val share: the manifest
    reports every unmatched name on both sides, extraction keeps the ghosts as not_found error rows, and the
    train and val splits carry training rows with a description and labels; `ray-emer train` trains on them."""
    from ray_emer.cli import main
    from ray_emer.train.loop import feature_rows, require_rows

    videos, gold = _published_folder(synth_archive, tmp_path)
    published = [*NAMES, *GHOSTS]
    src = {n: gold.get(n, gold[NAMES[0]]) for n in published}
    reasons = _write_csv(tmp_path / "track3_train_ovmerd.csv", name=published,
                         reason=[src[n]["description"] for n in published])
    openset_names = [f"{n}.mp4" if n == NAMES[3] else n for n in published]  # one name written with its extension
    openset = _write_csv(tmp_path / "track2_train_ovmerd.csv", name=openset_names,
                         openset=[_openset_cell(src[n]["labels"]) for n in published])
    sub_names = [*NAMES[:4], "sample_77777777"]  # NAMES[4] has no published subtitle; one subtitle has no clip
    (videos / f"{NAMES[0]}.txt").write_text("sidecar words")  # a published subtitle wins over a sidecar .txt
    (videos / "part2" / f"{NAMES[4]}.txt").write_text("sidecar words")  # ... which fills in where none is published
    subtitles = _write_csv(tmp_path / "subtitle_chieng.csv", name=sub_names, chinese=["zh"] * 5,
                           english=[f"words of {n}" for n in sub_names])
    out = build_manifest(str(videos), subtitles=subtitles, reasons=reasons, openset=openset, val_fraction=0.4,
                         seed=0, output=str(tmp_path / "fine.parquet"))
    assert out["rows"] == 7 and out["matched"] == 5
    assert out["unmatched_names"] == {"count": 2, "examples": GHOSTS, "in_manifest": True}
    assert out["videos_without_row"] == {"count": 1, "examples": ["orphan_clip"]}
    assert out["splits"] == {"train": 5, "val": 2} and out["with_labels"] == 7 and out["with_subtitle"] == 5
    listed = pd.read_csv(out["unmatched_list"], keep_default_na=False)
    assert listed.values.tolist() == [[GHOSTS[0], "no_video", ""], [GHOSTS[1], "no_video", ""],
                                      ["orphan_clip", "no_published_row", str(videos / "orphan_clip.mp4")]]

    rows = {r["clip_id"]: r for r in read_manifest(str(tmp_path / "fine.parquet")).to_pylist()}
    assert list(rows) == published  # published names, published order
    assert rows[NAMES[1]]["video_uri"].endswith(f"{NAMES[1].upper()}.mp4")
    assert rows[NAMES[3]]["labels"] == gold[NAMES[3]]["labels"]  # matched through "sample_...3.mp4"
    assert rows[NAMES[0]]["subtitle"] == f"words of {NAMES[0]}" and rows[NAMES[4]]["subtitle"] == "sidecar words"
    assert all(rows[n]["video_uri"] == "" and rows[n]["split"] == "train" for n in GHOSTS)

    table = _features(str(tmp_path / "fine.parquet"), tmp_path / "features")
    status = dict(zip(table.column("clip_id").to_pylist(), table.column("error").to_pylist()))
    assert sorted(status) == sorted(published)
    assert all(status[n].startswith("not_found") for n in GHOSTS) and all(status[n] == "" for n in NAMES)
    train, val = feature_rows(table, "train"), feature_rows(table, "val")
    assert len(train) == 3 and len(val) == 2
    for r in train + val:
        assert r["description"] == gold[r["clip_id"]]["description"] and r["labels"] == gold[r["clip_id"]]["labels"]
    require_rows(table.drop(["video_feats", "audio_feats"]).to_pylist(), "train", "features")
    assert main(["train", "--features", str(tmp_path / "features"), "--output", str(tmp_path / "stage2"),
                 "--max-steps", "1", "--set", "scaling.engine=local", "--set", "tracking.enabled=false",
                 "--set", "data.batch_size=2", "--set", "val_samples=2"]) == 0
    assert (tmp_path / "stage2" / "config.json").exists()


def test_stage1_coarse_layout_cli(synth_archive, tmp_path, capsys):
    """EMER-Coarse / MER-Caption style, descriptions only, through `ray-emer manifest` in process: one file
    names,reasons,subtitles serves as --reasons and --subtitles; --drop-unmatched leaves the ghost out of the
    manifest but not out of the report; stage 1's rows (split '': any) train on descriptions."""
    import json

    from ray_emer.cli import main
    from ray_emer.train.loop import feature_rows, require_rows

    videos, gold = _published_folder(synth_archive, tmp_path)
    published = [*NAMES[:3], GHOSTS[0]]
    coarse = _write_csv(tmp_path / "coarse.csv", names=published, emotions=["x"] * 4,
                        subtitles=[f"said {n}" for n in published],
                        reasons=[gold.get(n, gold[NAMES[0]])["description"] for n in published])
    assert main(["manifest", str(videos), "--reasons", coarse, "--subtitles", coarse, "--drop-unmatched",
                 "--output", str(tmp_path / "coarse.parquet")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 3 and out["matched"] == 3 and out["with_description"] == 3 and out["with_labels"] == 0
    assert out["unmatched_names"] == {"count": 1, "examples": [GHOSTS[0]], "in_manifest": False}
    assert out["videos_without_row"]["count"] == 3 and out["splits"] == {"": 3}
    assert set(pd.read_csv(out["unmatched_list"])["name"]) == {GHOSTS[0], NAMES[3], NAMES[4], "orphan_clip"}

    table = _features(str(tmp_path / "coarse.parquet"), tmp_path / "features")
    rows = feature_rows(table, "")
    assert sorted(r["clip_id"] for r in rows) == NAMES[:3]
    assert all(r["description"] == gold[r["clip_id"]]["description"] and not r["labels"]
               and r["subtitle"] == f"said {r['clip_id']}" for r in rows)
    require_rows(table.drop(["video_feats", "audio_feats"]).to_pylist(), "", "features")


def test_published_layout_errors_and_split_rules(tmp_path):
    """Wrong columns, a conflicting repeat, a case-only tie and a folder nothing matches fail with the reason;
    an identical repeat merges (counted); the val draw is exact, seeded and independent of row order."""
    for name in ("a.mp4", "b.mp4", "Dd.mp4", "DD.mp4"):
        (tmp_path / name).write_bytes(b"x")
    folder = str(tmp_path)
    with pytest.raises(ManifestError, match="expected a name column"):
        build_manifest(folder, reasons=_write_csv(tmp_path / "r1.csv", clip=["a"], reason=["r"]))
    with pytest.raises(ManifestError, match="different reason values"):
        build_manifest(folder, reasons=_write_csv(tmp_path / "r2.csv", name=["a", "a.mp4"], reason=["r", "s"]))
    with pytest.raises(ManifestError, match="only up to case"):  # Dd.mp4 and DD.mp4, neither spelled dd
        build_manifest(folder, reasons=_write_csv(tmp_path / "r3.csv", name=["a", "dd"], reason=["r", "s"]))
    with pytest.raises(ManifestError, match="none of the 2 published names"):
        build_manifest(folder, openset=_write_csv(tmp_path / "o.csv", name=["x", "y"], openset=["[]", "[]"]))
    with pytest.raises(ManifestError, match="val_fraction"):
        build_manifest(folder, val_fraction=1.0)
    out = build_manifest(folder, reasons=_write_csv(tmp_path / "r4.csv", name=["a", "a", "b"], reason=["r", "r", "s"]))
    assert out["rows"] == 2 and out["repeated_rows"] == 1
    # a manifest as the video table: a name one file lacks keeps the manifest's value for that column
    videos = read_manifest(_write_csv(tmp_path / "v.csv", clip_id=["a", "b"], video_uri=["a.mp4", "b.mp4"],
                                      labels=["[old]", "[old]"], description=["d", "d"]))
    rows = join_published(videos, reasons=str(tmp_path / "r4.csv"),
                          openset=_write_csv(tmp_path / "o2.csv", name=["a"], openset=["[new]"]))[0].to_pylist()
    assert [(r["description"], r["labels"]) for r in rows] == [("r", ["new"]), ("s", ["old"])]

    ids = [f"clip{i:03d}" for i in range(40)]
    table = read_manifest(_write_csv(tmp_path / "m.csv", clip_id=ids, video_uri=[f"{i}.mp4" for i in ids]))
    val = lambda t: {c for c, s in zip(t.column("clip_id").to_pylist(), t.column("split").to_pylist()) if s == "val"}
    drawn = val(assign_splits(table, val_fraction=0.1, seed=0))
    assert len(drawn) == 4 and drawn == val(assign_splits(table.take(list(range(39, -1, -1))), val_fraction=0.1))
    assert drawn != val(assign_splits(table, val_fraction=0.1, seed=1))
    assert len(val(assign_splits(table, val_fraction=0.001))) == 1  # a share asked for: at least one val row
    assert len(val(assign_splits(table, val_fraction=0.99))) == 39  # and at least one train row
    assert set(assign_splits(table, split="test").column("split").to_pylist()) == {"test"}
    assert assign_splits(table).column("split").null_count == 40  # nothing asked: splits kept


@pytest.mark.integration
def test_s3_folder_manifest(s3_bucket, synth_archive):
    clip = sorted((synth_archive / "clips").glob("*.mp4"))[0]
    storage.write_bytes(s3_bucket + "/arch/x.mp4", clip.read_bytes())
    storage.write_text(s3_bucket + "/arch/x.txt", "words")
    rows = read_manifest(s3_bucket + "/arch").to_pylist()
    assert rows == [{"clip_id": "x", "video_uri": s3_bucket + "/arch/x.mp4", "audio_uri": None,
                     "subtitle": "words", "description": None, "labels": None, "split": None, "subtitle_uri": None}]


@pytest.mark.integration
def test_published_layout_on_an_s3_prefix(s3_bucket, synth_archive):
    """Videos under an s3:// prefix, published CSVs and the output on S3: matched by name, unmatched listed."""
    clips = sorted((synth_archive / "clips").glob("*.mp4"))[:2]
    for name, clip in zip(("Sample_1.mp4", "sample_2.mp4"), clips):
        storage.write_bytes(f"{s3_bucket}/video/{name}", clip.read_bytes())
    storage.write_text(f"{s3_bucket}/track2.csv", "name,openset\nsample_1,\"['happy']\"\nsample_9,[]\n")
    out = build_manifest(f"{s3_bucket}/video", openset=f"{s3_bucket}/track2.csv", output=f"{s3_bucket}/m.parquet")
    assert (out["rows"], out["matched"], out["unmatched_list"]) == (2, 1, f"{s3_bucket}/m.unmatched.csv")
    assert out["unmatched_names"]["examples"] == ["sample_9"] and out["videos_without_row"]["examples"] == ["sample_2"]
    rows = read_manifest(f"{s3_bucket}/m.parquet").to_pylist()
    assert [(r["clip_id"], r["video_uri"], r["labels"]) for r in rows] == [
        ("sample_1", f"{s3_bucket}/video/Sample_1.mp4", ["happy"]), ("sample_9", "", [])]
    assert "sample_2,no_published_row" in storage.read_text(out["unmatched_list"])


def test_folder_holding_a_manifest_is_read_through_it(synth_archive):
    """`ray-emer synth` writes clips/ + manifest.csv: the folder keeps its subtitles, descriptions and labels."""
    rows = read_manifest(str(synth_archive)).to_pylist()
    assert len(rows) == 12 and all(r["labels"] and r["description"] and r["split"] for r in rows)
    assert rows == read_manifest(str(synth_archive / "manifest.csv")).to_pylist()
