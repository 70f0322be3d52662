"""The extraction job's settings and the published way of running it: one clip at a time, in one process.

``ExtractConfig`` is what ``ray-emer extract`` (``data.pipeline.run_extract``, Ray Data) reads;
``extract_sequential`` decodes and encodes clip by clip with the same featurizer calls (the baseline the
benchmarks compare against, and a way to extract without Ray).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from ray_emer.asr import AsrConfig, check_config
from ray_emer.data.manifest import read_manifest
from ray_emer.features.columns import to_columns
from ray_emer.features.decode import decode_row
from ray_emer.features.encoder import FeatureEncoder, effective_media
from ray_emer.features.shards import done_clip_ids, write_features
from ray_emer.media import MediaConfig
from ray_emer.storage import StorageConfig
from ray_emer.tracking import TrackingConfig, tracking


@dataclasses.dataclass
class ExtractConfig:
    input: str = ""  # folder, s3:// prefix, or manifest (.csv/.tsv/.parquet)
    output: str = ""  # directory / prefix receiving part-*.parquet
    preset: str = "tiny"  # model preset (or checkpoint dir) whose frozen encoders run
    media: MediaConfig = dataclasses.field(default_factory=lambda: MediaConfig(frame_size=0))
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
    storage: StorageConfig = dataclasses.field(default_factory=StorageConfig)  # shared folders (multi-node)
    # passes started again, over what is not written yet, when one fails while a node died (0: fail)
    resume_on_node_loss: int = 3
    progress: bool = True  # a progress bar on a terminal; false: plain progress lines there too


def pending(cfg: ExtractConfig) -> tuple[pa.Table, int, int]:
    """Manifest rows still to extract (an Arrow table), the manifest size, and how many were already written."""
    manifest = read_manifest(cfg.input)
    done = done_clip_ids(cfg.output)
    todo = manifest.filter(pc.invert(pc.is_in(manifest.column("clip_id"), pa.array(sorted(done), pa.string())))) \
        if done else manifest
    return todo, manifest.num_rows, manifest.num_rows - todo.num_rows


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
        table = write_features(encoder.encode_batch(to_columns([decode_row(rec, media, cfg.asr)])), encoder.schema,
                               cfg.output)
        for s in table.column("status").to_pylist():
            counts[s] += 1
    wall = time.perf_counter() - t0
    return {"clips": total, "processed": len(records), "skipped": skipped, **counts, "wall_s": round(wall, 3),
            "clips_per_s": round(len(records) / max(wall, 1e-9), 3), "start_s": round(t0 - t_call, 3)}
