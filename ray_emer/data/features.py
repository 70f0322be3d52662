"""Feature extraction without Ray: decode one clip, encode a batch, write and read Parquet shards.

The Ray Data pipeline (``data/pipeline.py``) and the sequential baseline both call these
functions, so the work per clip is the same and only the scheduling differs.

- ``decode_row``: a manifest record -> decoded arrays + status (never raises: a bad clip
  is an error row with ``"<reason>: <detail>"``)
- ``FeatureEncoder``: decoded rows -> one feature table (frozen encoders, float16)
- ``write_shard`` / ``done_clip_ids`` / ``read_features``: the output directory contract:
  ``part-*.parquet`` files (one per encoded batch, each written atomically), readable
  with ``pyarrow.dataset``; a rerun skips clip ids already written.
"""

from __future__ import annotations

import dataclasses
import io
import json
import time
import uuid
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ray_emer import storage
from ray_emer.asr import AsrConfig, AsrError, build_transcriber, check_config, has_subtitle
from ray_emer.media import SAMPLE_RATE, MediaConfig, MediaError, decode_uri
from ray_emer.schema import FEATURE_REQUIRED, MANIFEST_SCHEMA, conform, feature_schema, tensor_array
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
    num_encoders: int = 1  # encoder actors (max of the pool; 1 GPU each when GPUs exist)
    use_gpu: Literal["auto", "true", "false"] = "auto"  # auto: GPUs when the cluster has them
    # CPU-only clusters: tasks that decode, encode and write their own batches, one per decode_cpus +
    # encoder_cpus (decoded clips stay in the process); false: decode tasks -> encoder actors, as with GPUs
    fused_cpu: bool = True
    # fused: seconds a worker process keeps its loaded encoders after its last batch (a job a moment later starts
    # warm); 0: dropped after every batch (each batch loads them again)
    warm_keep_s: float = 30.0
    tracking: TrackingConfig = dataclasses.field(default_factory=lambda: tracking("ray_emer-extract"))
    asr: AsrConfig = dataclasses.field(default_factory=AsrConfig)  # subtitles by speech recognition (--asr)
    progress: bool = True


def effective_media(cfg: ExtractConfig) -> MediaConfig:
    """``media.frame_size == 0`` means the encoder's input size (224 for CLIP ViT-L/14)."""
    if cfg.media.frame_size > 0:
        return cfg.media
    from ray_emer.model.config import encoder_image_size, resolve_model_config

    return dataclasses.replace(cfg.media, frame_size=encoder_image_size(resolve_model_config(cfg.preset)))


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, MediaError):
        return f"{exc.reason}: {exc.detail or exc.path}"
    if isinstance(exc, storage.StorageError):
        return f"storage_error: {exc}"
    if isinstance(exc, AsrError):
        return f"asr_failed: {exc}"
    return f"decode_failed: {type(exc).__name__}: {exc}"


def decode_row(rec: dict, media: MediaConfig, asr: AsrConfig | None = None) -> dict:
    """One manifest record -> arrays + flags; errors become ``status="error"`` with zeros.

    With ``asr.enabled``, a clip with audio and no subtitle is transcribed here (offline backend) or its
    whole 16 kHz audio is handed on as ``asr_wave`` (float16 bytes) to the encoder's Whisper."""
    t0 = time.perf_counter()
    win = int(round(media.audio_window_s * SAMPLE_RATE))
    out = {"row_json": json.dumps(rec, default=str), "status": "ok", "error": "", "face_frames": -1,
           "skipped_packets": -1, "video_backend": "", "duration_s": 0.0, "has_video": False, "has_audio": False,
           "subtitle_source": "given" if has_subtitle(rec.get("subtitle")) else "none"}
    if asr is not None and asr.enabled and asr.backend == "whisper":
        out["asr_wave"] = b""
    try:
        clip = decode_uri(rec["video_uri"], rec.get("audio_uri"), media)
        # audio travels as float16: half the bytes through the object store, and what the encoders
        # compute in on a GPU anyway (the CPU path upcasts to float32)
        out.update(frames=clip.frames, audio=clip.audio.astype(np.float16), has_video=clip.has_video,
                   has_audio=clip.has_audio, face_frames=clip.face_frames, video_backend=clip.video_backend,
                   duration_s=float(clip.probe.duration_s), skipped_packets=clip.skipped_packets)
        if asr is not None and asr.enabled and clip.has_audio and out["subtitle_source"] == "none":
            _asr_in_decode(rec, out, asr, clip.wave)
    except Exception as exc:  # noqa: BLE001 - one bad clip must never end the job
        out.update(status="error", error=_error_text(exc),
                   frames=np.zeros((media.num_frames, media.frame_size, media.frame_size, 3), np.uint8),
                   audio=np.zeros((media.num_audio_windows, win), np.float16))
    out["decode_s"] = time.perf_counter() - t0
    return out


def _asr_in_decode(rec: dict, out: dict, asr: AsrConfig, wave: np.ndarray) -> None:
    """The clip's whole audio track (as decoding read it): transcribed now by the offline backend (CPU work,
    spread over the decode tasks), or handed to the encoder, where Whisper is loaded once."""
    if asr.backend == "whisper":
        out["asr_wave"] = wave.astype(np.float16).tobytes()
        return
    try:
        text = build_transcriber(asr).transcribe(wave)
    except AsrError:
        raise
    except Exception as exc:  # noqa: BLE001 - the clip's row says why
        raise AsrError(f"{type(exc).__name__}: {exc}") from exc
    if text.strip():
        out.update(row_json=json.dumps({**rec, "subtitle": text.strip()}, default=str), subtitle_source="asr")


def _column(name: str, values: list) -> np.ndarray:
    if name in ("frames", "audio"):
        return np.stack(values)
    if name == "asr_wave":  # bytes of any length as objects (numpy's bytes dtype drops trailing zero bytes)
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        return arr
    return np.array(values)


def stack_rows(rows: list[dict]) -> dict[str, np.ndarray]:
    """Decoded rows -> one columnar batch (what a Ray Data numpy batch looks like)."""
    return {k: _column(k, [r[k] for r in rows]) for k in rows[0]}


class FeatureEncoder:
    """Frozen encoders of a model config, turning decoded batches into feature tables."""

    def __init__(self, preset: str, media: MediaConfig, device: str | None = None,
                 asr: AsrConfig | None = None, scripted: str | None = None) -> None:
        """``scripted``: a directory of traced towers (``scripted_encoders``) to load instead of building the
        transformers towers, on CPU only; ignored when it does not exist here (another node) or on a GPU."""
        import os

        import torch

        from ray_emer.model.config import resolve_model_config
        from ray_emer.model.encoders import SCRIPTED_FILES, Encoders

        self.cfg = resolve_model_config(preset, [])
        self.name = self.cfg.preset if self.cfg.preset != "custom" else preset
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        if scripted and self.device == "cpu" and all(os.path.exists(os.path.join(scripted, f)) for f in SCRIPTED_FILES):
            self.encoders = Encoders.load_scripted(scripted, self.cfg)
        else:
            self.encoders = Encoders.build(self.cfg, self.device, dtype)
        self.media = media
        self.video_shape = (media.num_frames, self.cfg.video_dim)
        self.audio_shape = (media.num_audio_windows, self.cfg.audio_dim)
        self.schema = feature_schema(self.video_shape, self.audio_shape)
        # Whisper runs here, on the encoder's device, batched; the offline backend runs in decode_row
        self.transcriber = build_transcriber(asr, self.device) if asr and asr.enabled and asr.backend == "whisper" \
            else None

    def _encode(self, frames: np.ndarray, audio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        v, a = self.encoders.encode(frames, audio)
        v, a = v.cpu().numpy(), a.cpu().numpy()
        if not (np.isfinite(v).all() and np.isfinite(a).all()):
            raise FloatingPointError("non-finite features")
        return v, a

    def encode_batch(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """A decoded batch -> feature table (one row per input row, errors included)."""
        t0 = time.perf_counter()
        n = len(batch["row_json"])
        status, error = list(batch["status"]), list(batch["error"])
        video = np.zeros((n, *self.video_shape), np.float32)
        audio = np.zeros((n, *self.audio_shape), np.float32)
        ok = [i for i in range(n) if status[i] == "ok"]
        try:
            if ok:
                video[ok], audio[ok] = self._encode(batch["frames"][ok], batch["audio"][ok])
        except Exception:  # noqa: BLE001 - find the clip that breaks the batch, keep the rest
            for i in ok:
                try:
                    video[i], audio[i] = (x[0] for x in self._encode(batch["frames"][i:i + 1], batch["audio"][i:i + 1]))
                except Exception as exc:  # noqa: BLE001
                    status[i], error[i] = "error", f"encode_failed: {type(exc).__name__}: {exc}"
        if self.transcriber is not None:
            batch = self._transcribe(batch, status, error)
        has_video = np.array([bool(batch["has_video"][i]) and status[i] == "ok" for i in range(n)])
        has_audio = np.array([bool(batch["has_audio"][i]) and status[i] == "ok" for i in range(n)])
        video[~has_video], audio[~has_audio] = 0.0, 0.0
        encode_s = (time.perf_counter() - t0) / max(n, 1)
        return self._table(batch, video, audio, has_video, has_audio, status, error, encode_s)

    def _transcribe(self, batch: dict[str, np.ndarray], status: list, error: list) -> dict[str, np.ndarray]:
        """Whisper on the rows whose audio the decode step handed on: ``subtitle`` and ``subtitle_source``
        filled in where it recognised something; a clip it fails on becomes an error row."""
        rows, source = list(batch["row_json"]), [str(s) for s in batch["subtitle_source"]]
        todo = [i for i in range(len(rows)) if status[i] == "ok" and len(batch["asr_wave"][i])]
        waves = [np.frombuffer(batch["asr_wave"][i], np.float16).astype(np.float32) for i in todo]
        try:
            texts = self.transcriber.transcribe_batch(waves)
        except Exception:  # noqa: BLE001 - find the clip that breaks the batch, keep the rest
            texts = []
            for i, wave in zip(todo, waves, strict=True):
                try:
                    texts.append(self.transcriber.transcribe(wave))
                except Exception as exc:  # noqa: BLE001
                    status[i], error[i] = "error", f"asr_failed: {type(exc).__name__}: {exc}"
                    texts.append("")
        for i, text in zip(todo, texts, strict=True):
            if text.strip():
                rows[i] = json.dumps({**json.loads(rows[i]), "subtitle": text.strip()})
                source[i] = "asr"
        return {**batch, "row_json": rows, "subtitle_source": source}

    def _table(self, batch, video, audio, has_video, has_audio, status, error, encode_s) -> pa.Table:
        records = [json.loads(s) for s in batch["row_json"]]
        manifest_names = set(MANIFEST_SCHEMA.names)
        cols: dict[str, pa.Array] = {}
        for name in dict.fromkeys(k for r in records for k in r):
            values = [r.get(name) for r in records]
            if name not in manifest_names:  # extra manifest columns travel as strings
                values = [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values]
            cols[name] = pa.array(values, type=MANIFEST_SCHEMA.field(name).type if name in manifest_names
                                  else pa.string())
        n = len(records)
        cols.update(
            video_feats=tensor_array(video, self.video_shape), audio_feats=tensor_array(audio, self.audio_shape),
            has_video=pa.array(has_video, pa.bool_()), has_audio=pa.array(has_audio, pa.bool_()),
            status=pa.array(status, pa.string()), error=pa.array(error, pa.string()),
            face_frames=pa.array(np.asarray(batch["face_frames"], np.int32)),
            skipped_packets=pa.array(np.asarray(batch["skipped_packets"], np.int32)),
            video_backend=pa.array([str(x) for x in batch["video_backend"]], pa.string()),
            duration_s=pa.array(np.asarray(batch["duration_s"], np.float32)),
            decode_s=pa.array(np.asarray(batch["decode_s"], np.float32)),
            encode_s=pa.array(np.full(n, encode_s, np.float32)), encoder=pa.array([self.name] * n, pa.string()),
            subtitle_source=pa.array([str(x) for x in batch["subtitle_source"]], pa.string()),
        )
        return conform(pa.table(cols), self.schema, FEATURE_REQUIRED)


def scripted_encoders(preset: str, media: MediaConfig) -> str:
    """The encoders of ``preset`` traced to TorchScript once per machine, under ``$RAY_EMER_HOME/cache/encoders/``
    (keyed by the encoder settings, the input sizes and the torch/transformers versions); -> the directory.

    Extraction workers load these with torch alone: building the transformers towers first imports transformers'
    model modules (torch._dynamo among them), seconds of start-up per worker. The traces compute the same thing.
    """
    import hashlib
    import importlib.metadata
    import os
    import shutil
    import tempfile

    from ray_emer.config import to_dict
    from ray_emer.model.config import encoder_image_size, resolve_model_config
    from ray_emer.tracking import home

    cfg = resolve_model_config(preset, [])
    window = int(round(media.audio_window_s * SAMPLE_RATE))
    enc = to_dict(cfg.encoders)
    sources = [enc["vision_name"], enc["audio_name"]] if cfg.init == "pretrained" else []
    # versions from the package metadata: a cache hit imports no torch in the driver (seconds on a small machine)
    key = json.dumps({"encoders": enc, "init": cfg.init, "image_size": encoder_image_size(cfg), "window": window,
                      "local": {p: os.path.getmtime(p) for p in sources if p and os.path.exists(p)},
                      "torch": importlib.metadata.version("torch"),
                      "transformers": importlib.metadata.version("transformers")}, sort_keys=True)
    out = os.path.join(home(), "cache", "encoders", hashlib.sha256(key.encode()).hexdigest()[:20])
    if os.path.exists(os.path.join(out, "key.json")):  # written last; the directory appears whole (rename)
        return out
    import torch

    from ray_emer.model.encoders import SCRIPTED_FILES, Encoders

    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=os.path.dirname(out))
    try:
        Encoders.build(cfg, "cpu", torch.float32).export_scripted(tmp, window)
        with open(os.path.join(tmp, "key.json"), "w") as fh:
            fh.write(key)
        try:
            os.rename(tmp, out)  # atomic: a concurrent run that got there first wins, with the same content
        except OSError:
            if not all(os.path.exists(os.path.join(out, f)) for f in SCRIPTED_FILES):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def write_shard(table: pa.Table, output: str) -> str:
    """Write one Parquet shard atomically under ``output``; returns its URI. The name follows from the clip ids
    (the first one and a hash of all), so a batch written again (a task Ray retried after its worker died) replaces
    its own shard instead of adding a second copy of its rows."""
    import hashlib

    buf = io.BytesIO()
    pq.write_table(table, buf)
    ids = [str(c) for c in table.column("clip_id").to_pylist()]
    first = ids[0] if ids else "empty"
    digest = hashlib.sha1("\n".join(ids).encode()).hexdigest()[:8] if ids else uuid.uuid4().hex[:8]
    uri = storage.join(output, f"part-{first}-{digest}.parquet")
    storage.write_bytes(uri, buf.getvalue())
    return uri


def part_files(output: str) -> list[str]:
    """The ``part-*.parquet`` shards directly under ``output`` (features or labels), [] if none."""
    if not storage.exists(output):
        return []
    try:
        files = storage.list_files(output, suffixes=[".parquet"], recursive=False)
    except storage.StorageError:
        return []
    return [f for f in files if storage.basename(f).startswith("part-")]


def _dataset(output: str) -> pads.Dataset | None:
    files = part_files(output)
    if not files:
        return None
    fs, _ = storage.arrow_filesystem(output)
    return pads.dataset([storage.arrow_filesystem(f)[1] for f in files], format="parquet", filesystem=fs)


def done_clip_ids(output: str) -> set[str]:
    """Clip ids already written under ``output`` (ok or error): a rerun skips them."""
    ds = _dataset(output)
    return set() if ds is None else set(ds.to_table(columns=["clip_id"]).column("clip_id").to_pylist())


def read_features(output: str, columns: list[str] | None = None, filter=None) -> pa.Table:
    """Rows of the shards under ``output`` (features, or labels), optionally some columns / a
    ``pyarrow.dataset`` filter, one per clip id (the first written wins)."""
    ds = _dataset(output)
    if ds is None:
        raise storage.StorageError(f"{output}: no part-*.parquet shards")
    table = ds.to_table(columns=columns, filter=filter)
    ids = table.column("clip_id").to_pylist()
    seen: dict[str, int] = {}
    keep = [seen.setdefault(c, i) == i for i, c in enumerate(ids)]
    return table if all(keep) else table.filter(pa.array(keep))


def feature_arrays(table: pa.Table, column: str) -> np.ndarray:
    """A fixed-shape tensor column -> ``[N, ...]`` numpy array."""
    return table.column(column).combine_chunks().to_numpy_ndarray()


def feature_batch(table: pa.Table) -> dict[str, np.ndarray]:
    """Every row of a feature table as one columnar numpy batch (what a Ray Data batch looks like):
    ``video_feats``/``audio_feats`` as ``[N, T, D]`` arrays, other columns as object arrays."""
    out = {c: feature_arrays(table, c) for c in ("video_feats", "audio_feats")}
    rest = table.drop(["video_feats", "audio_feats"])
    for name in rest.column_names:
        values = rest.column(name).to_pylist()
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        out[name] = arr
    return out


def pending_records(cfg: ExtractConfig) -> tuple[list[dict], int, int]:
    """Manifest records still to extract, the manifest size, and how many were already written."""
    from ray_emer.data.manifest import read_manifest

    records = read_manifest(cfg.input).to_pylist()
    done = done_clip_ids(cfg.output)
    todo = [r for r in records if r["clip_id"] not in done]
    return todo, len(records), len(records) - len(todo)


def extract_sequential(cfg: ExtractConfig, limit: int | None = None) -> dict:
    """The published way: decode and encode one clip at a time, in this process (the baseline). ``wall_s`` and
    ``clips_per_s`` time the loop; ``start_s`` is what came before it (listing the work, building the encoders)."""
    t_call = time.perf_counter()
    media = effective_media(cfg)
    todo, total, skipped = pending_records(cfg)
    todo = todo[:limit] if limit is not None else todo
    if cfg.asr.enabled:
        check_config(cfg.asr)  # a bad backend/model/language fails here, not as one error row per clip
    encoder = FeatureEncoder(cfg.preset, media, asr=cfg.asr)
    t0 = time.perf_counter()
    counts = {"ok": 0, "error": 0}
    for rec in todo:
        table = encoder.encode_batch(stack_rows([decode_row(rec, media, cfg.asr)]))
        write_shard(table, cfg.output)
        for s in table.column("status").to_pylist():
            counts[s] += 1
    wall = time.perf_counter() - t0
    return {"clips": total, "processed": len(todo), "skipped": skipped, **counts, "wall_s": round(wall, 3),
            "clips_per_s": round(len(todo) / max(wall, 1e-9), 3), "start_s": round(t0 - t_call, 3)}
