import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_emer import storage


def _roundtrip(root: str):
    storage.write_text(storage.join(root, "a", "x.txt"), "hello")
    storage.write_bytes(storage.join(root, "a", "b", "y.mp4"), b"\x00\x01")
    storage.write_bytes(storage.join(root, "z.MP4"), b"zz")
    assert storage.read_text(storage.join(root, "a", "x.txt")) == "hello"
    files = storage.list_files(root)
    assert [storage.basename(f) for f in files] == ["y.mp4", "x.txt", "z.MP4"]  # sorted by full path
    assert [storage.basename(f) for f in storage.list_files(root, suffixes=[".mp4"])] == ["y.mp4", "z.MP4"]
    assert storage.exists(storage.join(root, "z.MP4"))
    assert not storage.exists(storage.join(root, "nope"))
    with storage.local_copy(storage.join(root, "a", "b", "y.mp4")) as local:
        assert os.path.exists(local) and open(local, "rb").read() == b"\x00\x01"
        assert local.endswith(".mp4")
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.read_bytes(storage.join(root, "missing.bin"))


def test_local_roundtrip(tmp_path):
    _roundtrip(str(tmp_path))


def test_atomic_write_leaves_no_temp_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        storage.write_bytes(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_listing_missing_prefix_is_clear(tmp_path):
    with pytest.raises(storage.StorageError, match="not a directory"):
        storage.list_files(str(tmp_path / "nothing"))


@pytest.mark.integration
def test_s3_roundtrip_through_moto_server(s3_bucket):
    _roundtrip(s3_bucket + "/prefix")
    with pytest.raises(storage.StorageError):
        storage.read_bytes(s3_bucket + "/prefix/missing")


@pytest.mark.integration
def test_s3_parquet_through_pyarrow_fs(s3_bucket):
    uri = s3_bucket + "/tables/t.parquet"
    fs, path = storage.arrow_filesystem(uri)
    pq.write_table(pa.table({"a": [1, 2]}), path, filesystem=fs)
    fs2, path2 = storage.arrow_filesystem(uri)
    assert pq.read_table(path2, filesystem=fs2).column("a").to_pylist() == [1, 2]
    assert storage.list_files(s3_bucket + "/tables") == [uri]


@pytest.mark.integration
def test_s3_listing_sees_what_another_process_wrote(s3_bucket):
    """A job's driver lists its output, Ray workers (other processes) write shards under it, the driver lists
    again: it must see them. s3fs's per-process listing cache answered the second look from the first."""
    import subprocess
    import sys

    root = s3_bucket + "/out"
    storage.write_text(storage.join(root, "part-a.parquet"), "a")
    assert [storage.basename(f) for f in storage.list_files(root)] == ["part-a.parquet"]
    assert not storage.exists(storage.join(root, "part-b.parquet"))
    empty = s3_bucket + "/later"
    assert not storage.exists(empty)
    code = ("import sys; from ray_emer import storage; "
            "[storage.write_text(u, 'b') for u in sys.argv[1:]]")
    subprocess.run([sys.executable, "-c", code, storage.join(root, "part-b.parquet"),
                    storage.join(empty, "part-c.parquet")], check=True, timeout=120)
    assert [storage.basename(f) for f in storage.list_files(root)] == ["part-a.parquet", "part-b.parquet"]
    assert storage.exists(storage.join(root, "part-b.parquet"))
    assert set(storage.file_sizes(root, recursive=False)) == {storage.join(root, "part-a.parquet"),
                                                               storage.join(root, "part-b.parquet")}
    assert storage.exists(empty) and storage.list_files(empty) == [storage.join(empty, "part-c.parquet")]


def test_shared_paths_are_s3_or_inside_a_declared_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(storage.SHARED_PATHS_ENV, raising=False)
    nfs = tmp_path / "nfs"
    cfg = storage.StorageConfig(shared_paths=[str(nfs)])
    assert storage.is_shared("s3://b/x", [])
    assert storage.is_shared(str(nfs / "a" / "b"), storage.shared_paths(cfg))
    assert storage.is_shared(str(nfs), storage.shared_paths(cfg))
    assert not storage.is_shared(str(tmp_path / "nfs2" / "a"), storage.shared_paths(cfg))  # a prefix of a name
    assert not storage.is_shared(str(tmp_path / "local"), storage.shared_paths(cfg))
    monkeypatch.setenv(storage.SHARED_PATHS_ENV, os.pathsep.join([str(tmp_path / "x"), str(tmp_path / "local")]))
    assert storage.is_shared(str(tmp_path / "local" / "out"), storage.shared_paths(cfg))


def test_a_multi_node_cluster_refuses_local_paths_naming_each(tmp_path, monkeypatch):
    """The rule without a cluster: the node count is the only thing asked of Ray."""
    from ray_emer import cluster
    from ray_emer.config import ConfigError

    monkeypatch.delenv(storage.SHARED_PATHS_ENV, raising=False)
    paths = {"--output": str(tmp_path / "out"), "--checkpoint": "s3://b/ckpt", "--input": ""}
    monkeypatch.setattr(cluster, "alive_nodes", lambda: 1)
    cluster.require_shared_storage(paths)  # one node: its disk is everyone's
    monkeypatch.setattr(cluster, "alive_nodes", lambda: 3)
    with pytest.raises(ConfigError, match=r"3 nodes.*--output .*/out is a local path") as err:
        cluster.require_shared_storage(paths)
    assert "--checkpoint" not in str(err.value) and "storage.shared_paths" in str(err.value)
    cluster.require_shared_storage(paths, storage.StorageConfig(shared_paths=[str(tmp_path)]))  # declared: fine
    cluster.require_shared_storage({"--output": "s3://b/out"})


def test_a_worker_on_gpus_torch_cannot_see_fails_or_runs_on_cpu_when_told(monkeypatch):
    import ray
    import torch

    from ray_emer import cluster

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert cluster.worker_device() is None  # no GPU from Ray: the library picks
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv(cluster.LOGICAL_GPUS_ENV, raising=False)
    with pytest.raises(cluster.GpuUnavailableError, match=r"GPU\(s\) \[0\] but torch .* sees no CUDA device"):
        cluster.worker_device()
    monkeypatch.setenv(cluster.LOGICAL_GPUS_ENV, "cpu")
    with pytest.warns(RuntimeWarning, match="running on the CPU"):
        assert cluster.worker_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cluster.worker_device() == "cuda"
