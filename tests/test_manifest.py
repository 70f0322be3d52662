import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_emer import storage
from ray_emer.data.manifest import ManifestError, join_published, read_manifest
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
    assert read_manifest(str(tmp_path / "m.parquet")).num_rows == 1
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
    v1 = pd.read_csv(reference_dir / "ovmerd" / "emer_v1_100_gt_english.csv")
    names = list(v1["names"][:3])
    pd.DataFrame({"clip_id": names, "video_uri": [f"{n}.mp4" for n in names]}).to_csv(tmp_path / "m.csv", index=False)
    pd.DataFrame({"name": names, "english": ["s1", "s2", "s3"]}).to_csv(tmp_path / "subs.csv", index=False)
    pd.DataFrame({"name": v1["names"], "reason": v1["reasons"]}).to_csv(tmp_path / "reasons.csv", index=False)
    gt = reference_dir / "ovmerd" / "ovmerd332_gt_openset_labels_mer2024_check.csv"
    gt_names = list(pd.read_csv(gt)["name"][:2])
    pd.DataFrame({"clip_id": gt_names, "video_uri": ["a.mp4", "b.mp4"]}).to_csv(tmp_path / "m2.csv", index=False)
    t = join_published(read_manifest(str(tmp_path / "m.csv")), subtitles=str(tmp_path / "subs.csv"),
                       reasons=str(tmp_path / "reasons.csv"))
    rows = t.to_pylist()
    assert [r["subtitle"] for r in rows] == ["s1", "s2", "s3"]
    assert rows[0]["description"] == v1["reasons"][0]
    rows2 = join_published(read_manifest(str(tmp_path / "m2.csv")), openset=str(gt)).to_pylist()
    assert rows2[0]["labels"][:2] == ["pleasurable", "self-deprecating"]


@pytest.mark.integration
def test_s3_folder_manifest(s3_bucket, synth_archive):
    clip = sorted((synth_archive / "clips").glob("*.mp4"))[0]
    storage.write_bytes(s3_bucket + "/arch/x.mp4", clip.read_bytes())
    storage.write_text(s3_bucket + "/arch/x.txt", "words")
    rows = read_manifest(s3_bucket + "/arch").to_pylist()
    assert rows == [{"clip_id": "x", "video_uri": s3_bucket + "/arch/x.mp4", "audio_uri": None,
                     "subtitle": "words", "description": None, "labels": None, "split": None}]


def test_folder_holding_a_manifest_is_read_through_it(synth_archive):
    """`ray-emer synth` writes clips/ + manifest.csv: the folder keeps its subtitles, descriptions and labels."""
    rows = read_manifest(str(synth_archive)).to_pylist()
    assert len(rows) == 12 and all(r["labels"] and r["description"] and r["split"] for r in rows)
    assert rows == read_manifest(str(synth_archive / "manifest.csv")).to_pylist()
