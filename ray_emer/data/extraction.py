"""The extraction job's settings and the published way of running it: one clip at a time, in one process.

``ExtractConfig`` is what ``ray-emer extract`` (``data.pipeline.run_extract``, Ray Data) reads;
``extract_sequential`` decodes and encodes clip by clip with the same featurizer calls (the baseline the
benchmarks compare against, and a way to extract without Ray).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from typing import Literal

import pyarrow as pa

from ray_emer import storage
from ray_emer.asr import AsrConfig, check_config
from ray_emer.data.manifest import read_manifest
from ray_emer.features.columns import to_columns
from ray_emer.features.decode import decode_rows
from ray_emer.features.encoder import FeatureEncoder, effective_media
from ray_emer.features.shards import done_clip_ids, write_features
from ray_emer.media import MediaConfig
from ray_emer.media.segments import SegmentConfig
from ray_emer.storage import StorageConfig
from ray_emer.tracking import TrackingConfig, tracking


@dataclasses.dataclass
class ExtractConfig:
    input: str = ""  # folder, s3:// prefix, or manifest (.csv/.tsv/.parquet)
    output: str = ""  # directory / prefix receiving part-*.parquet
    preset: str = "tiny"  # model preset (or checkpoint dir) whose frozen encoders run
    # max_duration_s: longer files are error rows (too_long); recordings stream in bounded memory, hence 4 h
    media: MediaConfig = dataclasses.field(default_factory=lambda: MediaConfig(frame_size=0, max_duration_s=14400.0))
    decode_batch_size: int = 16  # clips per decode task (split layout; fewer, larger tasks: less scheduling)
    encode_batch_size: int = 16  # clips per encoder call = rows per Parquet shard (fused: each worker's first, 1/4)
    decode_cpus: float = 0.5  # CPUs per decode task (a fused task takes decode_cpus + encoder_cpus)
    decode_memory_mb: int = 256  # memory reserved per decode task (and per fused task)
    decode_tasks: int = 0  # concurrent decode tasks (fused: decode+encode tasks); 0: what the cluster's CPUs hold
    encoder_cpus: float = 0.5  # CPUs per encoder actor (ignored with GPUs)
    encoder_memory_mb: int = 0  # reserved per fused task beyond decode_memory_mb; 0: 384 + the traced towers' MB
    num_encoders: int = 0  # encoder actors (max of the pool; 1 GPU each); 0: one per GPU of the cluster, else 1
    use_gpu: Literal["auto", "true", "false"] = "auto"  # auto: GPUs when the cluster has them
    # CPU-only clusters: tasks that decode, encode and write their own batches, one per decode_cpus +
    # encoder_cpus (decoded clips stay in the process); false: decode tasks -> encoder actors, as with GPUs
    fused_cpu: bool = True
    # fused: seconds a worker process keeps its loaded encoders after its last batch (a job a moment later starts
    # warm); 0: dropped after every batch (each batch loads them again)
    warm_keep_s: float = 30.0
    tracking: TrackingConfig = dataclasses.field(default_factory=lambda: tracking("ray_emer-extract"))
    asr: AsrConfig = dataclasses.field(default_factory=AsrConfig)  # subtitles by speech recognition (--asr)
    # recordings longer than segment.max_s: one row per segment (auto), or one clip per file as before (off)
    segment: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)  # shared folders (multi-node)
    # passes started again, over what is not written yet, when one fails while a node died (0: fail)
    resume_on_node_loss: int = 3
    progress: bool = True  # a progress bar on a terminal; false: plain progress lines there too


SKIP = "_skip"  # a todo row's segments already written (a recording cut part-way): decoded, not encoded again


def _markers_dir(output: str) -> str:
    return storage.join(output, "_recordings")


def write_marker(output: str, recording_id: str, segment_ids: list[str]) -> None:
    """After a recording streamed through: its segments, so that a rerun knows when all are written."""
    storage.write_text(storage.join(_markers_dir(output), f"{recording_id}.json"),
                       json.dumps({"recording_id": recording_id, "segments": segment_ids}))


def read_markers(output: str) -> dict[str, list[str]]:
    """``{recording_id: its segment ids}`` of the recordings that streamed through to their end."""
    folder = _markers_dir(output)
    if not storage.exists(folder):
        return {}
    out = {}
    for f in storage.list_files(folder, suffixes=[".json"], recursive=False):
        data = json.loads(storage.read_text(f))
        out[data["recording_id"]] = list(data["segments"])
    return out


def pending(cfg: ExtractConfig) -> tuple[pa.Table, int, int]:
    """Manifest rows still to extract (an Arrow table), the manifest size, and how many were already written.

    A recording is done when its marker lists segments that are all written; one cut part-way is to do, with
    the segments written so far in its ``_skip`` column (its decode pass cuts them again, but encodes only the
    others)."""
    manifest = read_manifest(cfg.input)
    done = done_clip_ids(cfg.output)
    markers = read_markers(cfg.output) if done else {}
    parts: dict[str, list[str]] = {}
    for clip in done:
        if "@" in clip:
            parts.setdefault(clip.rsplit("@", 1)[0], []).append(clip)
    keep, skips = [], []
    for clip in manifest.column("clip_id").to_pylist():
        complete = clip in done or (clip in markers and set(markers[clip]) <= done)
        keep.append(not complete)
        if not complete:
            skips.append(sorted(parts.get(clip, [])))
    todo = manifest.filter(pa.array(keep, pa.bool_()))
    return todo.append_column(SKIP, pa.array(skips, pa.list_(pa.string()))), manifest.num_rows, \
        manifest.num_rows - todo.num_rows


def record_rows(rec: dict, media: MediaConfig, asr: AsrConfig | None, seg: SegmentConfig,
                output: str) -> Iterator[dict]:
    """A todo row -> its decoded rows (``decode_rows``); a recording's marker is written once it streamed through."""
    rec = dict(rec)
    skip = set(rec.pop(SKIP, None) or ())
    ids: list[str] = []
    yield from decode_rows(rec, media, asr, seg, skip, ids)
    if ids:
        write_marker(output, str(rec["clip_id"]), ids)


def extract_sequential(cfg: ExtractConfig, limit: int | None = None) -> dict:
    """The published way: decode and encode one clip at a time, in this process (the baseline). ``wall_s`` and
    ``clips_per_s`` time the loop; ``start_s`` is what came before it (listing the work, building the encoders)."""
    t_call = time.perf_counter()
    media = effective_media(cfg.preset, cfg.media)
    todo, total, skipped = pending(cfg)
    records = todo.to_pylist()[:limit] if limit is not None else todo.to_pylist()
    if cfg.asr.enabled:
        check_config(cfg.asr)  # a bad backend/model/language fails here, not as one error row per clip
    encoder = FeatureEncoder(cfg.preset, media, asr=cfg.asr)
    t0 = time.perf_counter()
    counts = {"ok": 0, "error": 0}
    for rec in records:
        for row in record_rows(rec, media, cfg.asr, cfg.segment, cfg.output):
            table = write_features(encoder.encode_batch(to_columns([row])), encoder.schema, cfg.output)
            for s in table.column("status").to_pylist():
                counts[s] += 1
    wall = time.perf_counter() - t0
    return {"clips": total, "processed": len(records), "skipped": skipped, **counts, "wall_s": round(wall, 3),
            "clips_per_s": round(len(records) / max(wall, 1e-9), 3), "start_s": round(t0 - t_call, 3)}
