"""Jobs on a Ray cluster of several nodes on this one machine (``ray.cluster_utils.Cluster``, as Ray's own tests
do), run by tests/test_multinode.py in a subprocess: the test session keeps its own single-node Ray, and a Ray
driver joins one cluster per process.

    python tests/multinode_jobs.py SCENARIO WORKDIR   # writes WORKDIR/result.json

``storage``: a head with no CPUs and two worker nodes; the label job with a local --output is refused before any
work, then the same job with every path on S3 (moto, AWS_* from the environment) labels every clip once.
``gpu_layout``: a head with no CPUs and one node with 2 CPUs and 2 logical GPUs: extraction and labelling run
their GPU layout (decode tasks -> encoder actors; labelling actors with one GPU each) on CPU tensors.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def _upload_dir(local: str, uri: str) -> None:
    from ray_emer import storage

    for path in sorted(Path(local).rglob("*")):
        if path.is_file():
            storage.write_bytes(storage.join(uri, path.relative_to(local).as_posix()), path.read_bytes())


def storage_rule(work: Path, bucket: str) -> dict:
    import torch

    from ray_emer.config import ConfigError
    from ray_emer.data.label_job import LabelJobConfig, run_label
    from ray_emer.features.shards import read_shards
    from ray_emer.infer.labeller import LabellerConfig
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import get_preset
    from ray_emer.synthetic import SynthConfig, write_archive
    from ray_emer.tracking import TrackingConfig

    torch.manual_seed(0)
    save_checkpoint(AffectGPT.build(get_preset("tiny")), str(work / "ckpt"))
    ckpt = f"{bucket}/ckpt"
    _upload_dir(str(work / "ckpt"), ckpt)
    manifest = write_archive(f"{bucket}/archive", SynthConfig(clips=8, seed=0))
    base = dict(input=manifest, checkpoint=ckpt, num_actors=2, actor_cpus=0.5, progress=False,
                labeller=LabellerConfig(description_tokens=8, label_tokens=6), tracking=TrackingConfig(enabled=False))
    refused = ""
    try:
        run_label(LabelJobConfig(output=str(work / "labels"), **base), log=lambda m: None)
    except ConfigError as exc:
        refused = str(exc)
    t0 = time.perf_counter()
    summary = run_label(LabelJobConfig(output=f"{bucket}/labels", **base), log=lambda m: None)
    ids = read_shards(f"{bucket}/labels", columns=["clip_id"]).column("clip_id").to_pylist()
    return {"refused": refused, "local_output_written": (work / "labels").exists(), "rows": summary["rows"],
            "clips": summary["clips"], "ids": ids, "label_s": round(time.perf_counter() - t0, 1)}


def gpu_layout(work: Path, bucket: str) -> dict:
    """Extraction and labelling on a node that declares 2 GPUs (logical: no CUDA here; the workers run on the
    CPU, RAY_EMER_LOGICAL_GPUS=cpu): the split layout, one encoder / labelling actor per GPU."""
    import torch

    from ray_emer.data.extraction import ExtractConfig
    from ray_emer.data.label_job import LabelJobConfig, run_label
    from ray_emer.data.pipeline import run_extract
    from ray_emer.features.shards import read_shards
    from ray_emer.infer.labeller import LabellerConfig
    from ray_emer.media import MediaConfig
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import get_preset
    from ray_emer.storage import StorageConfig
    from ray_emer.synthetic import SynthConfig, write_archive
    from ray_emer.tracking import TrackingConfig

    shared = StorageConfig(shared_paths=[str(work)])  # every "node" here is this machine: its disk is shared
    torch.manual_seed(0)
    save_checkpoint(AffectGPT.build(get_preset("tiny")), str(work / "ckpt"))
    manifest = write_archive(str(work / "archive"), SynthConfig(clips=12, seed=0))
    ext = run_extract(ExtractConfig(input=manifest, output=str(work / "features"), progress=False, storage=shared,
                                    encode_batch_size=2, decode_batch_size=2, media=MediaConfig(frame_size=32),
                                    tracking=TrackingConfig(enabled=False)), log=lambda m: None)
    lab = run_label(LabelJobConfig(input=str(work / "features"), output=str(work / "labels"),
                                   checkpoint=str(work / "ckpt"), progress=False, storage=shared, tracking=TrackingConfig(enabled=False),
                                   labeller=LabellerConfig(description_tokens=8, label_tokens=6, batch_size=2)),
                    log=lambda m: None)
    ids = {name: read_shards(str(work / name), columns=["clip_id"]).column("clip_id").to_pylist()
           for name in ("features", "labels")}
    return {"extract": {k: ext[k] for k in ("layout", "gpu", "ok", "error", "processed", "encoder_loads")},
            "label": {k: lab[k] for k in ("gpu", "actors", "ok", "error", "rows", "clips")}, "ids": ids}


def node_loss(work: Path, bucket: str, cluster, nodes: list) -> dict:
    """The label job of an archive on S3 while nodes die: the first worker node is removed when extraction's first
    shard is written (a fresh node joins in its place), the second when the first labels are written."""
    import torch

    from ray_emer.data.label_job import LabelJobConfig, run_label
    from ray_emer.features.shards import read_shards
    from ray_emer.infer.labeller import LabellerConfig
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import get_preset
    from ray_emer.synthetic import SynthConfig, write_archive
    from ray_emer.data.extraction import ExtractConfig
    from ray_emer.tracking import TrackingConfig

    torch.manual_seed(0)
    save_checkpoint(AffectGPT.build(get_preset("tiny")), str(work / "ckpt"))
    ckpt = f"{bucket}/ckpt"
    _upload_dir(str(work / "ckpt"), ckpt)
    manifest = write_archive(f"{bucket}/archive", SynthConfig(clips=24, seed=0))
    kills: list[str] = []

    def log(message: str) -> None:  # the job's own progress triggers the failures
        if message.startswith("[extract] ") and "clips (ok" in message and not kills:
            cluster.remove_node(nodes[0])
            kills.append("extract")
            nodes.append(cluster.add_node(num_cpus=2))
        elif message.startswith("[label] ") and "clips labelled" in message and len(kills) == 1:
            cluster.remove_node(nodes[1])
            kills.append("label")

    summary = run_label(LabelJobConfig(input=manifest, output=f"{bucket}/labels", checkpoint=ckpt, num_actors=2,
                                       actor_cpus=0.5, progress=False, tracking=TrackingConfig(enabled=False),
                                       extract=ExtractConfig(encode_batch_size=2),
                                       labeller=LabellerConfig(description_tokens=8, label_tokens=6, batch_size=2)),
                        log=log)
    ids = {name: read_shards(f"{bucket}/{name}", columns=["clip_id"]).column("clip_id").to_pylist()
           for name in ("labels/_features", "labels")}
    return {"kills": kills, "ids": ids, "summary": {k: summary[k] for k in ("rows", "clips", "ok", "error",
                                                                             "restarted_actors", "nodes_lost")},
            "extract": summary.get("extract")}


def main(scenario: str, work: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    work_dir = Path(work)
    if scenario == "gpu_layout":  # the workers inherit it: logical GPUs run on the CPU, with a warning
        os.environ["RAY_EMER_LOGICAL_GPUS"] = "cpu"
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    if scenario == "gpu_layout":
        nodes = [cluster.add_node(num_cpus=2, num_gpus=2)]
    else:  # logical CPUs: a read task (1 CPU) fits beside half-CPU actors
        nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        bucket = os.environ.get("RAY_EMER_TEST_BUCKET", "")
        out = node_loss(work_dir, bucket, cluster, nodes) if scenario == "node_loss" else \
            {"storage": storage_rule, "gpu_layout": gpu_layout}[scenario](work_dir, bucket)
        out["nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
        # a file, not stdout: Ray's raylets print their own warnings to this process's stdout at any time
        (work_dir / "result.json").write_text(json.dumps(out))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
