"""The few Ray helpers every job shares: join (or start) Ray, and whether a job runs its GPU layout."""

from __future__ import annotations

import ray


def ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init()  # joins RAY_ADDRESS / a running cluster / `ray job submit`'s, else starts a local one


def use_gpu(setting: str) -> bool:
    """``auto | true | false``: auto means the cluster has GPUs."""
    if setting in ("true", "false"):
        return setting == "true"
    return ray.cluster_resources().get("GPU", 0) > 0
