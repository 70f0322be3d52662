"""Chaos: a label job of a few hundred clips on a Ray cluster whose worker nodes keep dying, against the same job
undisturbed on the same cluster, same run.

    python benchmarks/chaos.py --json                 # 240 clips, a node killed every 20 s, ~6 min on 2 cores
    python benchmarks/chaos.py --clips 400 --kill-every 10 --json

The cluster is ``ray.cluster_utils.Cluster`` on this machine (loopback only): a head with no CPUs and two worker
nodes of 2 logical CPUs. ``ray-emer label`` runs as a user runs it (a subprocess joining the cluster through
RAY_ADDRESS; the archive, checkpoint and output live in one folder declared shared). During the chaos run, every
``--kill-every`` seconds the oldest worker node is removed (its raylet, workers and object store die) and a fresh
one joins in its place. Afterwards the label shards are read back: rows in, rows out, duplicate ids, lost clips.
Prints one line per run and, with ``--json``, one JSON object as the last line: ``rows_in``, ``rows_out``,
``duplicates``, ``lost``, ``node_kills``, ``wall_s``, ``baseline_wall_s``, ``ratio`` (chaos / undisturbed wall).
Each run is bounded by ``--timeout`` seconds (a job past it is killed and counted as such).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time


def label_command(work: str, out: str) -> list[str]:
    sets = ["num_actors=2", "actor_cpus=0.5", "labeller.description_tokens=8", "labeller.label_tokens=6",
            "labeller.batch_size=8", "extract.encode_batch_size=8", "extract.media.frame_size=32",
            "tracking.enabled=false"]
    return [sys.executable, "-m", "ray_emer.cli", "label", "--input", os.path.join(work, "archive", "manifest.csv"),
            "--checkpoint", os.path.join(work, "ckpt"), "--output", out] + [a for s in sets for a in ("--set", s)]


def run_job(cluster, nodes: list, work: str, out: str, kill_every: float, timeout: float, env: dict) -> dict:
    """One label job; with ``kill_every`` > 0 the oldest worker node is replaced that often while it runs."""
    log = open(out + ".log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(label_command(work, out), env=env, stdout=subprocess.DEVNULL, stderr=log)
    kills, last, timed_out = 0, time.perf_counter(), False
    while proc.poll() is None:
        time.sleep(0.5)
        now = time.perf_counter()
        if now - t0 > timeout:
            proc.kill()
            timed_out = True
            break
        if kill_every and now - last >= kill_every:
            cluster.remove_node(nodes.pop(0))
            nodes.append(cluster.add_node(num_cpus=2))
            kills += 1
            last = time.perf_counter()
    proc.wait()
    log.close()
    return {"exit": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1), "node_kills": kills,
            "timed_out": timed_out}


def read_back(out: str, clip_ids: list[str]) -> dict:
    """What the job wrote, counted from the shards as written (a row written twice counts twice)."""
    from ray_emer.features.shards import part_files, read_shards, written_clip_ids

    written = written_clip_ids(out)
    status = read_shards(out, columns=["clip_id", "status"]).column("status").to_pylist() if part_files(out) else []
    summary = os.path.join(out, "_summary.json")
    resumed = json.load(open(summary)).get("resumed_passes") if os.path.exists(summary) else None
    return {"rows_in": len(clip_ids), "rows_out": len(written), "duplicates": len(written) - len(set(written)),
            "lost": len(set(clip_ids) - set(written)), "error_rows": sum(s != "ok" for s in status),
            "resumed_passes": resumed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=240)
    ap.add_argument("--kill-every", type=float, default=20.0, help="seconds between node kills in the chaos run")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds each run may take at most")
    ap.add_argument("--work", default="", help="working folder (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    # the cluster's processes and the job's driver inherit these: no token auth on this loopback cluster
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import torch
    from ray.cluster_utils import Cluster

    from ray_emer.data.manifest import read_manifest
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import get_preset
    from ray_emer.synthetic import SynthConfig, write_archive

    work = os.path.abspath(args.work or tempfile.mkdtemp(prefix="chaos-"))
    os.makedirs(work, exist_ok=True)
    torch.manual_seed(0)
    save_checkpoint(AffectGPT.build(get_preset("tiny")), os.path.join(work, "ckpt"))
    manifest = write_archive(os.path.join(work, "archive"), SynthConfig(clips=args.clips, seed=0))
    clip_ids = [str(c) for c in read_manifest(manifest).column("clip_id").to_pylist()]

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    results = {}
    try:
        cluster.wait_for_nodes()
        env = {**os.environ, "RAY_ADDRESS": cluster.address, "RAY_EMER_SHARED_PATHS": work}  # one disk here
        for name, every in (("undisturbed", 0.0), ("chaos", args.kill_every)):
            out = os.path.join(work, f"labels-{name}")
            run = run_job(cluster, nodes, work, out, every, args.timeout, env)
            results[name] = {**run, **read_back(out, clip_ids)}
            print(f"[chaos] {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
    finally:
        cluster.shutdown()
    chaos, base = results["chaos"], results["undisturbed"]
    summary = {k: chaos[k] for k in ("rows_in", "rows_out", "duplicates", "lost", "node_kills", "wall_s",
                                     "error_rows", "resumed_passes", "exit", "timed_out")}
    summary.update(baseline_wall_s=base["wall_s"], baseline_rows_out=base["rows_out"],
                   ratio=round(chaos["wall_s"] / base["wall_s"], 2), clips=args.clips, kill_every_s=args.kill_every,
                   cores=os.cpu_count(), work=work)
    print(f"chaos: {summary['rows_out']}/{summary['rows_in']} rows, {summary['duplicates']} duplicates, "
          f"{summary['lost']} lost, {summary['node_kills']} node kills, {summary['wall_s']} s "
          f"({summary['ratio']}x the undisturbed {summary['baseline_wall_s']} s)")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
