"""Every input and output location is a URI: a local path or ``s3://bucket/prefix``.

Owns listing, reading, atomic writing and local materialisation of files behind such
URIs. S3 goes through fsspec/s3fs (and pyarrow.fs for datasets), which honour
``AWS_ENDPOINT_URL`` and the usual AWS variables, so a MinIO or moto endpoint works
without code changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import fsspec

from ray_emer.errors import RayEmerError

S3_PREFIXES = ("s3://", "s3a://")
SHARED_PATHS_ENV = "RAY_EMER_SHARED_PATHS"  # os.pathsep-separated folders every node mounts (added to the config's)


@dataclasses.dataclass
class StorageConfig:
    # local folders that every node of a Ray cluster mounts at the same path (NFS, a shared volume): local
    # paths under them are allowed on a cluster of more than one node; s3:// URIs always are
    shared_paths: list[str] = dataclasses.field(default_factory=list)


class StorageError(RayEmerError, OSError):
    """A URI cannot be read, listed or written."""


def is_remote(uri: str) -> bool:
    return str(uri).startswith(S3_PREFIXES)


def shared_paths(cfg: StorageConfig | None = None) -> list[str]:
    """The declared shared folders: the config's ``shared_paths`` and ``$RAY_EMER_SHARED_PATHS``."""
    env = [p for p in os.environ.get(SHARED_PATHS_ENV, "").split(os.pathsep) if p]
    return [*(cfg.shared_paths if cfg else []), *env]


def is_shared(uri: str, shared: list[str]) -> bool:
    """Whether every node sees ``uri``: an ``s3://`` URI, or a local path inside a declared shared folder."""
    if is_remote(uri):
        return True
    path = os.path.abspath(os.path.expanduser(str(uri)))
    return any(os.path.commonpath([path, root]) == root
               for root in (os.path.abspath(os.path.expanduser(r)) for r in shared))


def filesystem(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """fsspec filesystem and the path inside it for ``uri``.

    S3 listings are never cached: s3fs keeps each process's directory listings by default, so a process that
    listed a prefix (a job's driver looking for finished shards) and let other processes write under it (Ray
    workers) would keep answering from the old listing. Every ``exists`` / ``isdir`` / listing here asks the store.
    """
    uri = str(uri)
    if is_remote(uri):
        fs = fsspec.filesystem("s3", use_listings_cache=False)
        return fs, uri.split("://", 1)[1]
    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(uri))


def arrow_filesystem(uri: str):
    """``(pyarrow.fs.FileSystem, path)`` for pyarrow.dataset / parquet IO."""
    import pyarrow.fs as pafs

    uri = str(uri)
    if is_remote(uri):
        fs, path = pafs.FileSystem.from_uri("s3://" + uri.split("://", 1)[1])
        return fs, path
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if is_remote(uri):
        return posixpath.join(uri.rstrip("/"), *parts)
    return os.path.join(uri, *parts)


def basename(uri: str) -> str:
    return posixpath.basename(str(uri).rstrip("/"))


def stem(uri: str) -> str:
    return os.path.splitext(basename(uri))[0]


def _to_uri(uri: str, path: str) -> str:
    return f"s3://{path}" if is_remote(uri) else path


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def list_files(uri: str, suffixes: Iterable[str] | None = None, recursive: bool = True) -> list[str]:
    """Sorted URIs of the files under ``uri`` whose lower-cased name ends in a suffix."""
    return sorted(file_sizes(uri, suffixes, recursive))


def file_sizes(uri: str, suffixes: Iterable[str] | None = None, recursive: bool = True) -> dict[str, int]:
    """``{uri: bytes}`` of the files under ``uri`` (``recursive=False``: directly in it) whose lower-cased name ends
    in a suffix, from one detailed listing (no request per file)."""
    fs, path = filesystem(uri)
    try:
        if not fs.isdir(path):
            raise StorageError(f"{uri}: not a directory or prefix (or it does not exist)")
        found = list(fs.find(path, detail=True).values()) if recursive else fs.ls(path, detail=True)
    except FileNotFoundError as exc:
        raise StorageError(f"{uri}: does not exist") from exc
    want = tuple(s.lower() for s in suffixes) if suffixes else None
    return {_to_uri(uri, e["name"]): int(e.get("size") or 0) for e in found
            if e.get("type") == "file" and (want is None or e["name"].lower().endswith(want))}


def remove_tree(uri: str) -> None:
    """Delete a directory or prefix and everything under it."""
    fs, path = filesystem(uri)
    fs.rm(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError as exc:
        raise StorageError(f"{uri}: does not exist") from exc


def read_text(uri: str, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def makedirs(uri: str) -> None:
    if not is_remote(uri):
        os.makedirs(filesystem(uri)[1], exist_ok=True)


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: readers see the old file or the whole new one, never a part.

    Local files go to a temp file in the same directory and are renamed over the
    target; an S3 PUT of one object is atomic by itself.
    """
    fs, path = filesystem(uri)
    if is_remote(uri):
        with fs.open(path, "wb") as fh:
            fh.write(data)
        return
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(uri: str, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


@contextlib.contextmanager
def local_copy(uri: str) -> Iterator[str]:
    """A local file path with the content of ``uri`` (a temp copy for remote URIs)."""
    if not is_remote(uri):
        path = filesystem(uri)[1]
        if not os.path.exists(path):
            raise StorageError(f"{uri}: does not exist")
        yield path
        return
    suffix = os.path.splitext(basename(uri))[1]
    with tempfile.TemporaryDirectory(prefix="ray_emer-") as tmp:
        local = str(Path(tmp) / f"clip{suffix}")
        Path(local).write_bytes(read_bytes(uri))
        yield local


@contextlib.contextmanager
def local_tree(uri: str) -> Iterator[Path]:
    """A local directory with the files under ``uri`` (a temp copy for remote URIs, the folder itself otherwise)."""
    if not is_remote(uri):
        yield Path(uri)
        return
    with tempfile.TemporaryDirectory(prefix="ray_emer-") as tmp:
        prefix = uri.rstrip("/") + "/"
        for remote in list_files(uri):
            rel = remote[len(prefix):] if remote.startswith(prefix) else basename(remote)
            dest = Path(tmp) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(read_bytes(remote))
        yield Path(tmp)
