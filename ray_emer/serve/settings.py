"""The endpoint's settings: ``ServeArgs`` (options, limits, auth), their defaults and checks, and the API key.

What ``serve_config.yaml``'s ``args`` and ``ray-emer serve``'s flags fill (unknown keys fail, as every typed
config does). No Ray, no Ray Serve, no FastAPI here: the CLI parses ``serve`` flags with this module alone,
and the deployments (``app.py``) get a checked ``ServeArgs``.
"""

import dataclasses
import sys
from typing import Literal

from ray_emer.config import from_dict
from ray_emer.infer.labeller import LabellerConfig
from ray_emer.media import MediaConfig
from ray_emer.media.segments import SegmentConfig
from ray_emer.registry import is_model_uri, resolve_checkpoint
from ray_emer.serve import security


@dataclasses.dataclass
class ServeArgs:
    # an exported checkpoint directory (local or s3://), or models:/NAME/VERSION, models:/NAME@ALIAS,
    # runs:/RUN_ID/PATH: resolved to a local copy once, when the application is built
    checkpoint: str = ""
    tracking_uri: str = ""  # the MLflow store model URIs resolve through; empty: MLFLOW_TRACKING_URI, else the default
    engine: Literal["hf", "vllm"] = "hf"
    model_name: str = "ray-emer"  # the id /v1/models lists and answers carry
    auth: bool = True  # false: no API key at all (explicitly asked for)
    api_key: str = ""  # empty: RAY_EMER_API_KEY, RAY_EMER_API_KEY_FILE, else generated and printed
    max_upload_mb: float = 50.0  # request bodies and fetched media (413 above)
    max_duration_s: float = 120.0  # longer clips: 400 (too_long)
    request_timeout_s: float = 60.0  # server-side; x-request-timeout-seconds cannot lift it (504)
    max_inflight: int = 8  # per ingress replica; more: 429 with Retry-After
    allow_hosts: list[str] = dataclasses.field(default_factory=list)  # http(s) media hosts (public addresses only)
    allow_prefixes: list[str] = dataclasses.field(default_factory=list)  # s3:// or local prefixes for video_uri
    frame_size: int = 96  # decoded frame size (the encoder resizes; the page shows these frames)
    use_gpu: bool = False  # one GPU per model replica
    model_cpus: float = 0.5
    decode_cpus: float = 0.25
    max_batch_size: int = 8  # requests per model call
    batch_wait_s: float = 0.02
    labeller: LabellerConfig = dataclasses.field(default_factory=lambda: LabellerConfig(batch_size=8))
    # uploads longer than segment.max_s (up to max_duration_s): a timeline of segments; mode off: one clip
    segment: SegmentConfig = dataclasses.field(default_factory=SegmentConfig)

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def media(self) -> MediaConfig:
        return MediaConfig(frame_size=self.frame_size, max_duration_s=self.max_duration_s)


def resolve_args(args: dict | ServeArgs | None) -> ServeArgs:
    """``serve_config.yaml``'s ``args`` (unknown keys fail) or a ``ServeArgs`` -> the checked ``ServeArgs``.

    A checkpoint is required (a model URI becomes the local directory it resolves to); the labeller runs the
    endpoint's ``engine`` (``labeller.engine`` follows it).
    """
    cfg = args if isinstance(args, ServeArgs) else from_dict(ServeArgs, dict(args or {}))
    if not cfg.checkpoint:
        raise ValueError("serve needs a checkpoint (args.checkpoint)")
    if is_model_uri(cfg.checkpoint):
        cfg = dataclasses.replace(cfg, checkpoint=resolve_checkpoint(cfg.checkpoint, cfg.tracking_uri))
    cfg.labeller = dataclasses.replace(cfg.labeller, engine=cfg.engine)
    return cfg


def api_key(cfg: ServeArgs) -> str:
    """The key every guarded route asks for: ``""`` with ``auth: false``; else ``api_key``, the environment's
    (``RAY_EMER_API_KEY``, ``RAY_EMER_API_KEY_FILE``), or a new one, printed once on stderr."""
    if not cfg.auth:
        return ""
    key, generated = (cfg.api_key, False) if cfg.api_key else security.resolve_api_key()
    if generated:
        print(f"[serve] no API key configured (RAY_EMER_API_KEY / RAY_EMER_API_KEY_FILE); generated one:\n"
              f"[serve]   Authorization: Bearer {key}", file=sys.stderr, flush=True)
    return key
