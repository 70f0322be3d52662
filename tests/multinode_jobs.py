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

    from ray_emer.data.extraction import ExtractConfig
    from ray_emer.data.label_job import LabelJobConfig, run_label
    from ray_emer.features.shards import written_clip_ids
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
    ids = {name: written_clip_ids(f"{bucket}/{name}") for name in ("labels/_features", "labels")}  # as written
    return {"kills": kills, "ids": ids, "summary": {k: summary[k] for k in ("rows", "clips", "ok", "error",
                                                                             "restarted_actors", "nodes_lost", "resumed_passes")},
            "extract": summary.get("extract")}


def _train_cfg(work: Path, out: str, name: str):
    from ray_emer.storage import StorageConfig
    from ray_emer.tracking import TrackingConfig
    from ray_emer.train.loop import DataConfig, OptimConfig, ScalingConfig, TrainConfig

    # 1.5 CPUs a worker on 2-CPU nodes: each rank on its own node; checkpoints every 3 steps
    return TrainConfig(features=str(work / "features"), output=out, preset="tiny", epochs=1, log_every=1,
                       scaling=ScalingConfig(workers=2, worker_cpus=1.5, checkpoint_every=3, max_failures=1),
                       data=DataConfig(batch_size=2), val_samples=0, storage=StorageConfig(shared_paths=[str(work)]),
                       optim=OptimConfig(lr=3e-3, warmup_steps=1, schedule="constant"),
                       tracking=TrackingConfig(enabled=False, run_name=name))


def lose_rank_node(marker_dir: str, rank: int, step: int):
    """An ``on_step`` hook: ``rank``, right after ``step``, writes the id of its node to ``marker_dir/victim`` and
    waits there (the driver removes that node); once the node is gone (``marker_dir/removed``) it does nothing. A
    closure: cloudpickle ships it to the workers by value."""
    import os
    import time

    def on_step(state, this_rank: int) -> None:
        if (this_rank, state.step) != (rank, step) or os.path.exists(os.path.join(marker_dir, "removed")):
            return
        import ray

        with open(os.path.join(marker_dir, "victim.tmp"), "w") as fh:
            fh.write(ray.get_runtime_context().get_node_id())
        os.replace(os.path.join(marker_dir, "victim.tmp"), os.path.join(marker_dir, "victim"))
        time.sleep(120)  # the node dies under this rank; the other rank waits in its next collective

    return on_step


def train_node_loss(work: Path, cluster, nodes: list) -> dict:
    """A two-worker Ray Train stage (one rank per node) loses the node of rank 1 after step 4 (a checkpoint was
    written at step 3). Ray Train restarts the fixed-size group from that checkpoint on the nodes left (a third one
    has room for the lost rank; ``Cluster.add_node`` cannot run off the main thread, so it is there from the start); the same
    stage runs again undisturbed on the same cluster, and both exports are scored on the same held-out rows."""
    import random
    import threading

    import torch

    from conftest import synthetic_features
    from ray_emer.features.shards import read_shards
    from ray_emer.model.checkpoint import load_checkpoint
    from ray_emer.synthetic import SynthConfig
    from ray_emer.train.loop import batches, feature_rows
    from ray_emer.train.trainer import run_ray_training

    synthetic_features(work, SynthConfig(clips=48, seed=5))
    markers = work / "markers"
    markers.mkdir()
    removed: list[str] = []

    def remover() -> None:  # the driver side of the failure: waits for the rank's word, then removes its node
        deadline = time.time() + 240
        while time.time() < deadline and not (markers / "victim").exists():
            time.sleep(0.2)
        if not (markers / "victim").exists():
            return
        victim = (markers / "victim").read_text()
        node = next(n for n in nodes if n.node_id == victim)
        time.sleep(3)  # Ray's controller registers the step-3 checkpoint asynchronously
        (markers / "removed").write_text(victim)
        cluster.remove_node(node)
        removed.append(victim)

    thread = threading.Thread(target=remover, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    hit = run_ray_training(_train_cfg(work, str(work / "hit"), "hit"), log=lambda m: None,
                           on_step=lose_rank_node(str(markers), rank=1, step=4))
    hit_s = time.perf_counter() - t0
    thread.join(timeout=5)
    t0 = time.perf_counter()
    clean = run_ray_training(_train_cfg(work, str(work / "clean"), "clean"), log=lambda m: None)
    clean_s = time.perf_counter() - t0
    seen = [json.loads((work / "hit.ray" / "hit" / "final" / f"seen_rank{r}.json").read_text())["last_epoch"]
            for r in (0, 1)]
    train_ids = sorted(r["clip_id"] for r in feature_rows(read_shards(str(work / "features")), "train"))
    val = feature_rows(read_shards(str(work / "features")), "val")
    losses = {}
    with torch.no_grad():
        for name in ("hit", "clean"):
            model = load_checkpoint(str(work / name)).eval()
            per = [float(model(model.processor.from_rows(b, "ov_labels", random.Random(0))).loss)
                   for b in batches(val, 4, random.Random(0), shuffle=False)]
            losses[name] = sum(per) / len(per)
    return {"removed": removed, "hit": {k: hit[k] for k in ("steps", "resumed_from", "first_loss", "last_loss")},
            "clean": {k: clean[k] for k in ("steps", "resumed_from", "first_loss", "last_loss")},
            "seen": seen, "train_ids": train_ids, "val_loss": losses, "hit_s": round(hit_s, 1),
            "clean_s": round(clean_s, 1)}


def serve_node_loss(work: Path, cluster, nodes: list) -> dict:
    """The endpoint under a bounded load (4 clients, each one request at a time) loses the node of one of its two
    Model replicas once 8 answers have come back. Ingress and Decoder live on the head (resource ``front``), one
    Model replica fits a node (resource ``replica``), and a third node has room for the replacement."""
    import threading

    import requests
    import torch
    from ray import serve
    from ray._private.state import actors  # the GCS actor table (the state API needs the dashboard)

    from ray_emer.infer.labeller import LabellerConfig
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import get_preset
    from ray_emer.serve.app import build_app_with
    from ray_emer.serve.settings import ServeArgs
    from ray_emer.synthetic import SynthConfig, write_archive

    torch.manual_seed(0)
    save_checkpoint(AffectGPT.build(get_preset("tiny")), str(work / "ckpt"))
    write_archive(str(work / "archive"), SynthConfig(clips=4, seed=0))
    clips = [p.read_bytes() for p in sorted((work / "archive").rglob("*.mp4"))]
    port = 8000 + os.getpid() % 1000
    args = ServeArgs(checkpoint=str(work / "ckpt"), auth=False, request_timeout_s=30, max_inflight=16,
                     frame_size=32, labeller=LabellerConfig(description_tokens=8, label_tokens=6, batch_size=8))
    front = {"ray_actor_options": {"resources": {"front": 0.1}}}
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app_with(args, {"Ingress": front, "Decoder": front, "Model": {
        "num_replicas": 2, "ray_actor_options": {"resources": {"replica": 1}}}}), name="ray_emer", route_prefix="/")

    def replicas() -> list[str]:  # the nodes of the live Model replicas
        return [a["Address"]["NodeID"] for a in actors().values()
                if a["State"] == "ALIVE" and a["ActorClassName"].endswith(":Model")]

    def running() -> int:  # Model replicas Serve counts as running
        return serve.status().applications["ray_emer"].deployments["Model"].replica_states.get("RUNNING", 0)

    url = f"http://127.0.0.1:{port}/v1/analyze"
    results: list[dict] = []
    inflight: set[int] = set()
    lock, stop = threading.Lock(), threading.Event()

    def client(c: int) -> None:
        n = 0
        while not stop.is_set():
            key = c * 10_000 + n
            with lock:
                inflight.add(key)
            t0 = time.time()
            try:
                r = requests.post(url, files={"file": ("clip.mp4", clips[n % len(clips)], "video/mp4")}, timeout=45)
                outcome = {"status": r.status_code, "error": "" if r.ok else r.text[:300]}
            except requests.Timeout:
                outcome = {"status": 0, "error": "hung (no answer in 45 s)"}
            except requests.RequestException as exc:
                outcome = {"status": -1, "error": repr(exc)[:300]}
            with lock:
                inflight.discard(key)
                results.append({**outcome, "start": t0, "end": time.time()})
            n += 1

    before = replicas()
    assert len(before) == running() == 2, (before, running())
    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(4)]
    for t in threads:
        t.start()
    deadline = time.time() + 120
    while time.time() < deadline and sum(r["status"] == 200 for r in results) < 8:
        time.sleep(0.1)
    victim = next(n for n in nodes if n.node_id == before[0])
    with lock:
        inflight_at_kill = len(inflight)
    killed_at = time.time()
    cluster.remove_node(victim)
    time.sleep(20)  # the load goes on while Serve replaces the replica
    stop.set()
    for t in threads:
        t.join(timeout=60)
    recovered_s = None
    while time.time() < killed_at + 120:
        if running() == 2 and len(replicas()) == 2:
            recovered_s = round(time.time() - killed_at, 1)
            break
        time.sleep(0.5)
    after = [requests.post(url, files={"file": ("clip.mp4", clips[0], "video/mp4")}, timeout=45).status_code
             for _ in range(4)]
    replicas_after = len(replicas())
    serve.shutdown()
    return {"replicas_before": len(before), "replicas_after": replicas_after,
            "recovered_s": recovered_s, "inflight_at_kill": inflight_at_kill, "clients_alive": sum(t.is_alive() for t in threads),
            "requests": len(results), "ok": sum(r["status"] == 200 for r in results),
            "after_kill": sum(r["start"] >= killed_at for r in results),
            "failed": [r for r in results if r["status"] != 200], "after_recovery": after}


def main(scenario: str, work: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    work_dir = Path(work)
    if scenario == "gpu_layout":  # the workers inherit it: logical GPUs run on the CPU, with a warning
        os.environ["RAY_EMER_LOGICAL_GPUS"] = "cpu"
    head = {"num_cpus": 0, "include_dashboard": False}
    if scenario == "serve_node_loss":  # the proxy, the controller, Ingress and Decoder on the head
        head.update(num_cpus=1, resources={"front": 1})
    cluster = Cluster(initialize_head=True, head_node_args=head)
    if scenario == "serve_node_loss":
        nodes = [cluster.add_node(num_cpus=1, resources={"replica": 1}) for _ in range(3)]
    elif scenario == "gpu_layout":
        nodes = [cluster.add_node(num_cpus=2, num_gpus=2)]
    else:  # logical CPUs: a read task (1 CPU) fits beside half-CPU actors
        nodes = [cluster.add_node(num_cpus=2) for _ in range(3 if scenario == "train_node_loss" else 2)]
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        bucket = os.environ.get("RAY_EMER_TEST_BUCKET", "")
        if scenario == "train_node_loss":
            out = train_node_loss(work_dir, cluster, nodes)
        elif scenario == "serve_node_loss":
            out = serve_node_loss(work_dir, cluster, nodes)
        elif scenario == "node_loss":
            out = node_loss(work_dir, bucket, cluster, nodes)
        else:
            out = {"storage": storage_rule, "gpu_layout": gpu_layout}[scenario](work_dir, bucket)
        out["nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
        # a file, not stdout: Ray's raylets print their own warnings to this process's stdout at any time
        (work_dir / "result.json").write_text(json.dumps(out))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
