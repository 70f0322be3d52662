"""The few Ray helpers every job shares: join (or start) Ray, whether a job runs its GPU layout, and the rule
that on more than one node every path a job shares between its processes is on shared storage."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Iterator

import ray

from ray_emer import storage
from ray_emer.config import ConfigError
from ray_emer.errors import RayEmerError

# "cpu": where Ray gives a worker GPUs that torch cannot see (logical GPUs, as tests declare them), run on the CPU
# with a warning; unset (production): such a worker fails, saying why
LOGICAL_GPUS_ENV = "RAY_EMER_LOGICAL_GPUS"


class GpuUnavailableError(RayEmerError, RuntimeError):
    """Ray scheduled a worker on GPUs that torch cannot use (no CUDA build or driver on that node)."""


def ensure_ray() -> None:
    if not ray.is_initialized():
        ray.init()  # joins RAY_ADDRESS / a running cluster / `ray job submit`'s, else starts a local one


def use_gpu(setting: str) -> bool:
    """``auto | true | false``: auto means the cluster has GPUs."""
    if setting in ("true", "false"):
        return setting == "true"
    return ray.cluster_resources().get("GPU", 0) > 0


def worker_device() -> str | None:
    """The device of a Ray actor or task: None where Ray gave it no GPU (the library picks its own), ``cuda``
    where it did and CUDA is there. GPUs that torch cannot see (a node that declares GPUs without a CUDA build
    or driver; the logical GPUs of a test cluster) raise ``GpuUnavailableError``, or with
    ``RAY_EMER_LOGICAL_GPUS=cpu`` run on the CPU with a warning (what the GPU-layout tests do)."""
    ids = ray.get_gpu_ids()
    if not ids:
        return None
    import torch  # here: the driver and CPU-only workers never need it for this

    if torch.cuda.is_available():
        return "cuda"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    reason = (f"Ray gave this worker GPU(s) {ids} but torch {torch.__version__} sees no CUDA device "
              f"(CUDA build: {torch.version.cuda or 'none'}; CUDA_VISIBLE_DEVICES={visible})")
    if os.environ.get(LOGICAL_GPUS_ENV) == "cpu":
        warnings.warn(f"{reason}: running on the CPU ({LOGICAL_GPUS_ENV}=cpu)", RuntimeWarning, stacklevel=2)
        return "cpu"
    raise GpuUnavailableError(f"{reason}. Install a CUDA build of torch on GPU nodes, or set use_gpu: false "
                              f"(or {LOGICAL_GPUS_ENV}=cpu to run on the CPU anyway)")


def pool_size(setting: int, gpu: bool) -> int:
    """Actors of a job's pool: ``setting`` when > 0; else (0, auto) one per GPU of the cluster on the GPU layout,
    one on CPUs."""
    if setting > 0:
        return setting
    return max(1, int(ray.cluster_resources().get("GPU", 0))) if gpu else 1


def alive_node_ids() -> set[str]:
    return {node["NodeID"] for node in ray.nodes() if node.get("Alive")}


def alive_nodes() -> int:
    return len(alive_node_ids())


class NodeLossPasses:
    """A job's passes over what it has not written yet. Ray Data retries the tasks and restarts the actors of a
    node that dies; a few of its own helpers do not come back (the Parquet footer readers of a read, which fail
    the read's listing task) and end the execution. When a pass fails while a node alive at its start has died,
    ``run`` starts a new pass (``make()`` again, which builds the dataset of what is still missing), up to
    ``limit`` times; any other failure, or one more, is raised. ``resumed``: the passes started after a loss."""

    def __init__(self, limit: int, log: Callable[[str], None], tag: str) -> None:
        self.limit, self.log, self.tag, self.resumed = limit, log, tag, 0

    def run(self, make: Callable[[], Iterable]) -> Iterator:
        while True:
            before = alive_node_ids()
            try:
                yield from make()
                return
            except Exception as exc:  # noqa: BLE001 - re-raised unless a node died under this pass
                lost = before - alive_node_ids()
                if not lost or self.resumed >= self.limit:
                    raise
                self.resumed += 1
                self.log(f"[{self.tag}] {len(lost)} node(s) died and the pass failed ({type(exc).__name__}); "
                         f"resuming with what is not written yet (pass {self.resumed + 1}, at most "
                         f"{self.limit} after node losses)")


def restarted() -> bool:
    """In an actor: whether Ray restarted it (its node died, or its process), so a job can count the restarts."""
    return bool(ray.get_runtime_context().was_current_actor_reconstructed)


def require_shared_storage(paths: dict[str, str], cfg: storage.StorageConfig | None = None) -> None:
    """On a cluster of more than one node each node has its own disk: a local output written by tasks on several
    nodes ends up scattered, and a checkpoint or feature folder on one node is missing on the others. ``paths``
    (``{what: path}``, empty ones skipped) must then be ``s3://`` URIs or inside a declared shared folder
    (``storage.shared_paths`` or ``$RAY_EMER_SHARED_PATHS``); else a ``ConfigError`` names each, before any work."""
    shared = storage.shared_paths(cfg)
    local = {what: p for what, p in paths.items() if p and not storage.is_shared(p, shared)}
    if not local:
        return
    nodes = alive_nodes()
    if nodes <= 1:
        return
    listed = "; ".join(f"{what} {p}" for what, p in local.items())
    raise ConfigError(f"this Ray cluster has {nodes} nodes, which do not share a local disk: {listed} "
                      f"is a local path. Use s3:// URIs, or a folder every node mounts at the same path declared "
                      f"in storage.shared_paths (or ${storage.SHARED_PATHS_ENV})")
