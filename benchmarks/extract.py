"""Benchmark: feature extraction, Ray Data pipeline vs the published sequential loop, same run.

    python benchmarks/extract.py --clips 1000            # synthetic archive
    python benchmarks/extract.py --folder /data/videos   # any folder / manifest
    python benchmarks/extract.py --clips 1000 --json     # ... and every number as one JSON line, the last

Prints clips/s of (a) a sequential loop (decode + encode one clip at a time, in one
process, as the published code does), (c) the machine's decode-only ceiling (the same
sampled frames and audio windows, one decode process per core), and (b) the Ray Data job
twice in one Ray session: the session's first Ray Data job (Ray Data starts its own actors
then, detached: once per cluster) and the same job again (a chain's later step), then (b'')
once more from a new driver process connected to that running cluster (a new job's worker
processes, imports and MLflow, as `ray-emer extract` against a long-lived cluster pays), each timed from
``run_extract``'s start with its own start-up and MLflow logging included, with its ratio
to (a)'s loop and to (a) from its call (building its encoders and listing the work counted
too, as the Ray job's start-up is), its share of (c), the resident memory of the driver +
Ray workers, and where the CPU went (decode+encode tasks or decode tasks and encoder actors,
idle pooled workers, Ray Data's own actors, driver, Ray's services).

Time to the first written shard (``part-*.parquet``; ``first_shard_s`` of ``run_extract``):
in the first job and the later job (from ``run_extract``'s start, Ray up; ``ray.init`` is
printed apart), and from spawning a cold ``ray-emer extract`` process on 64 of the clips
(interpreter, imports, its own local Ray, the job) to the file appearing. ``--json``: the
last stdout line is one JSON object: ``time_to_first_shard_s`` (the first job),
``time_to_first_shard_later_job_s``, ``time_to_first_shard_cold_s``, ``ratio_vs_sequential``
(the first job, against the loop), ``ratio_vs_sequential_later_job``,
``ratio_vs_sequential_end_to_end`` (against (a) from its call), ``..._end_to_end_later_job``,
``ratio_vs_sequential_new_driver``, ``ratio_vs_sequential_end_to_end_new_driver``,
``time_to_first_shard_new_driver_s``, ``clips``, ...
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import threading
import time

import psutil


def _session() -> list[psutil.Process]:
    """This process and its descendants: the local Ray it started (services, workers); other users' Ray
    sessions on the machine are left out."""
    me = psutil.Process()
    return [me, *me.children(recursive=True)]


def _rss_mb() -> float:
    """Driver + every Ray worker process of this session (MB)."""
    total = psutil.Process().memory_info().rss
    for p in _session()[1:]:
        try:
            cmd = " ".join(p.cmdline())
            if cmd.startswith("ray::") or "default_worker.py" in cmd:
                total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def _ray_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) for this process and every Ray process of this session."""
    out = {}
    for p in _session():
        try:
            cmd = " ".join(p.cmdline())
            times = p.cpu_times()
            cpu = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if p.pid == os.getpid():
            role = "driver"
        elif "_decode_encode_write" in cmd:
            role = "decode+encode tasks"
        elif "_EncodeAndWrite" in cmd:
            role = "encoder actors"
        elif "_decode" in cmd:
            role = "decode tasks"
        elif cmd.startswith("ray::IDLE"):
            role = "idle workers"
        elif any(a in cmd for a in ("_StatsActor", "AutoscalingCoordinator", "ActorLocationTracker")):
            role = "Ray Data's actors"
        elif "ray" in cmd:
            role = "Ray services"
        else:
            continue
        out[p.pid] = (role, cpu)
    return out


def _merge(seen: dict[int, tuple[str, float]], now: dict[int, tuple[str, float]]) -> None:
    """``seen`` += the latest sample; a pooled worker keeps the role of the work it ran (it reads IDLE between
    tasks, and while it starts)."""
    for pid, (role, cpu) in now.items():
        if role == "idle workers" and pid in seen:
            role = seen[pid][0]
        seen[pid] = (role, cpu)


def cpu_by_role(before: dict[int, tuple[str, float]], seen: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each role used since ``before`` (processes started since count in full); ``seen``
    holds the last sample of processes that may have exited since (idle workers do)."""
    roles = dict.fromkeys(("decode+encode tasks", "decode tasks", "encoder actors", "idle workers",
                           "Ray Data's actors", "driver", "Ray services"), 0.0)
    _merge(seen, _ray_cpu())
    for pid, (role, cpu) in seen.items():
        roles[role] += cpu - before.get(pid, (role, 0.0))[1]
    return {k: v for k, v in roles.items() if v > 0 or k in ("driver", "Ray services")}


def _decode_only(args):
    rec, media = args
    from ray_emer.features.decode import decode_row

    return decode_row(rec, media)["status"]


def decode_ceiling(records: list[dict], media, procs: int) -> float:
    ctx = mp.get_context("spawn")
    with ctx.Pool(procs) as pool:
        pool.map(_decode_only, [(records[0], media)] * procs)  # warm the imports in every process
        t0 = time.perf_counter()
        pool.map(_decode_only, [(r, media) for r in records], chunksize=8)
        return len(records) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=1000, help="synthetic clips (ignored with --folder)")
    ap.add_argument("--folder", help="a folder, s3:// prefix or manifest to benchmark instead")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--sequential-clips", type=int, default=200, help="clips timed for the sequential loop")
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--encode-batch-size", type=int, default=32)
    ap.add_argument("--layout", choices=("fused", "split"), default="fused",
                    help="CPU layout of the Ray job: fused decode+encode tasks (default) or decode tasks -> "
                         "encoder actors")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true", help="print every number as one JSON object, the last line")
    args = ap.parse_args()

    import ray

    from ray_emer.data.extraction import ExtractConfig, extract_sequential, pending
    from ray_emer.features.encoder import effective_media
    from ray_emer.synthetic import SynthConfig, write_archive

    work = args.workdir or tempfile.mkdtemp(prefix="ray_emer_bench_")
    if args.folder:
        source = args.folder
    elif os.path.exists(os.path.join(work, "archive", f"manifest-{args.clips}.csv")):
        source = os.path.join(work, "archive", f"manifest-{args.clips}.csv")  # --workdir reused
    else:
        t0 = time.perf_counter()
        source = write_archive(os.path.join(work, "archive"), SynthConfig(clips=args.clips, seed=7))
        shutil.copy(source, os.path.join(work, "archive", f"manifest-{args.clips}.csv"))
        print(f"wrote {args.clips} synthetic clips in {time.perf_counter() - t0:.1f} s")
    base = dict(input=source, preset=args.preset, progress=False, encode_batch_size=args.encode_batch_size,
                fused_cpu=args.layout == "fused")

    seq_cfg = ExtractConfig(output=os.path.join(work, "seq"), **base)
    shutil.rmtree(seq_cfg.output, ignore_errors=True)
    seq = extract_sequential(seq_cfg, limit=args.sequential_clips)
    print(f"(a) sequential loop: {seq['processed']} clips, {seq['clips_per_s']:.1f} clips/s in the loop, "
          f"{seq['start_s']:.1f} s before it (building the encoders, listing the work)")

    media = effective_media(seq_cfg.preset, seq_cfg.media)
    todo, total, _ = pending(ExtractConfig(output=os.path.join(work, "none"), **base))
    records = todo.to_pylist()
    ceiling = decode_ceiling(records, media, args.cpus)
    # the loop's rate over the Ray job's clips with its start-up counted once, as the Ray job's start-up is
    seq_e2e = len(records) / (seq["start_s"] + len(records) / seq["clips_per_s"])
    print(f"(a') sequential loop from its call, over {len(records)} clips: {seq_e2e:.1f} clips/s")
    print(f"(c) decode-only ceiling ({args.cpus} processes, frames at {media.frame_size}px): {ceiling:.1f} clips/s "
          f"= {args.cpus / ceiling * 1000:.1f} CPU-ms per clip")

    t_init = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t_init
    print(f"ray.init (local, {args.cpus} CPUs): {ray_init_s:.1f} s")
    # (b) twice: the session's first Ray Data job (Ray Data also starts its own actors then, once per cluster)
    # and the same job again (a chain's later step); each from run_extract's start, its own start-up included
    first = timed_run(ExtractConfig(output=os.path.join(work, "ray"), **base), seq["clips_per_s"], seq_e2e,
                      ceiling, "(b) Ray Data job, the session's first")
    later = timed_run(ExtractConfig(output=os.path.join(work, "ray_later"), **base), seq["clips_per_s"], seq_e2e,
                      ceiling, "(b') the same job again in the session")
    # (b'') a new driver's first job on this running cluster: what `ray-emer extract` or `ray job submit` against
    # a long-lived cluster pays (new worker processes with their imports, the driver's imports and MLflow), not
    # the cluster's start nor Ray Data's detached actors, which the session's first job started once for good
    other = new_driver_run(ExtractConfig(output=os.path.join(work, "ray_new_driver"), **base), seq["clips_per_s"],
                           seq_e2e, ray.get_runtime_context().gcs_address)
    subset = _subset(source, work, 64)
    ray.shutdown()
    cold = cold_first_shard(subset, os.path.join(work, "ray_cold"), args)
    print(f"time to the first written shard: {first['first_shard_s']:.1f} s in the session's first Ray Data job "
          f"(from run_extract's start, Ray up; ray.init before it {ray_init_s:.1f} s), {later['first_shard_s']:.1f} s "
          f"in a later job of the session, {cold:.1f} s from spawning a cold `ray-emer extract` process (64 clips; "
          "interpreter, imports and its own local Ray included)")
    if args.json:
        print(json.dumps({"clips": first["processed"], "ok": first["ok"], "error": first["error"],
                          "time_to_first_shard_s": first["first_shard_s"],
                          "time_to_first_shard_later_job_s": later["first_shard_s"],
                          "time_to_first_shard_cold_s": round(cold, 3), "ray_init_s": round(ray_init_s, 2),
                          "ratio_vs_sequential": first["ratio"], "ratio_vs_sequential_later_job": later["ratio"],
                          "ratio_vs_sequential_end_to_end": first["ratio_e2e"],
                          "ratio_vs_sequential_end_to_end_later_job": later["ratio_e2e"],
                          "ratio_vs_sequential_new_driver": other["ratio"],
                          "ratio_vs_sequential_end_to_end_new_driver": other["ratio_e2e"],
                          "time_to_first_shard_new_driver_s": other["first_shard_s"],
                          "clips_per_s_new_driver": other["clips_per_s"], "wall_s_new_driver": other["wall_s"],
                          "clips_per_s": first["clips_per_s"], "clips_per_s_later_job": later["clips_per_s"],
                          "sequential_clips_per_s": round(seq["clips_per_s"], 2),
                          "sequential_clips_per_s_end_to_end": round(seq_e2e, 2), "layout": first["layout"],
                          "decode_ceiling_clips_per_s": round(ceiling, 2), "wall_s": first["wall_s"],
                          "wall_s_later_job": later["wall_s"], "peak_rss_mb": first["peak_rss_mb"],
                          "cpu_s_by_role": first["cpu_s_by_role"],
                          "cpu_s_by_role_later_job": later["cpu_s_by_role"]}))


def timed_run(cfg, seq_clips_per_s: float, seq_e2e: float, ceiling: float, label: str) -> dict:
    """One ``run_extract`` with RSS and per-role CPU sampled every 0.5 s; prints its lines, returns its numbers."""
    from ray_emer.data.pipeline import run_extract

    shutil.rmtree(cfg.output, ignore_errors=True)
    rss, stop, seen = [], threading.Event(), {}

    def sample():
        while not stop.is_set():
            rss.append((time.perf_counter(), _rss_mb()))
            _merge(seen, _ray_cpu())
            time.sleep(0.5)

    marks: list[float] = []

    def log(msg: str) -> None:
        if "clips (ok" in msg:
            marks.append(time.perf_counter())

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    cpu_before = _ray_cpu()
    t0 = time.perf_counter()
    summary = run_extract(cfg, log=log)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    # no "steady state" figure: in the split layout decoding runs ahead while the encoder actor starts, so
    # the rate after the first batch includes draining that backlog and overstates what the pipeline sustains
    end_to_end = summary["processed"] / wall
    ratio = end_to_end / seq_clips_per_s
    ratio_e2e = end_to_end / seq_e2e
    print(f"{label} ({summary['layout']} layout): {summary['processed']} clips ({summary['ok']} ok, "
          f"{summary['error']} error) in {wall:.1f} s, {end_to_end:.1f} clips/s end to end (first shard after "
          f"{summary['first_shard_s']:.1f} s) = {ratio:.2f}x the sequential loop ({ratio_e2e:.2f}x with the loop's "
          f"start-up counted too), {end_to_end / ceiling:.0%} of the decode ceiling")
    t_first, t_last = marks[0], marks[-1]
    at_first = next((m for t, m in rss if t >= t_first), rss[0][1])
    mid = next((m for t, m in rss if t >= (t_first + t_last) / 2), rss[-1][1])
    print(f"    RSS driver+workers: first batch {at_first:.0f} MB, middle {mid:.0f} MB, end {rss[-1][1]:.0f} MB, "
          f"peak {max(m for _, m in rss):.0f} MB")
    roles = cpu_by_role(cpu_before, seen)
    n = max(summary["processed"], 1)
    print(f"    CPU budget ({sum(roles.values()):.1f} CPU-s for {os.cpu_count()} cores x {wall:.1f} s), per clip: "
          + ", ".join(f"{k} {v / n * 1000:.1f} ms" for k, v in roles.items())
          + " (worker start-up, imports and MLflow included)")
    return {**{k: summary[k] for k in ("processed", "ok", "error", "first_shard_s", "layout")},
            "ratio": round(ratio, 3), "ratio_e2e": round(ratio_e2e, 3), "clips_per_s": round(end_to_end, 2),
            "wall_s": round(wall, 2),
            "peak_rss_mb": round(max(m for _, m in rss)), "cpu_s_by_role": {k: round(v, 2) for k, v in roles.items()}}


def new_driver_run(cfg, seq_clips_per_s: float, seq_e2e: float, address: str) -> dict:
    """``run_extract`` timed from its call in a fresh driver process connected to the running cluster at
    ``address`` (its own job: new worker processes, its own imports and MLflow; the cluster and Ray Data's
    detached actors already up); prints its line, returns its numbers."""
    import subprocess
    import sys

    shutil.rmtree(cfg.output, ignore_errors=True)
    code = ("import json, sys, time, ray\n"
            "from ray_emer.data.extraction import ExtractConfig\n"
            "from ray_emer.data.pipeline import run_extract\n"
            "ray.init(address=sys.argv[1], log_to_driver=False)\n"
            "t0 = time.perf_counter()\n"
            "s = run_extract(ExtractConfig(**json.loads(sys.argv[2])), log=lambda m: None)\n"
            "s['wall'] = time.perf_counter() - t0\n"
            "print(json.dumps(s))\n")
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "token")  # the cluster this benchmark started has Ray's default token auth
    kwargs = {k: getattr(cfg, k) for k in ("input", "output", "preset", "progress", "encode_batch_size",
                                           "fused_cpu")}
    proc = subprocess.run([sys.executable, "-c", code, address, json.dumps(kwargs)], capture_output=True,
                          text=True, env=env, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"new driver failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rate = summary["processed"] / summary["wall"]
    out = {"processed": summary["processed"], "first_shard_s": summary["first_shard_s"],
           "clips_per_s": round(rate, 2), "wall_s": round(summary["wall"], 2),
           "ratio": round(rate / seq_clips_per_s, 3), "ratio_e2e": round(rate / seq_e2e, 3)}
    print(f"(b'') a new driver's first job on the running cluster: {summary['processed']} clips ({summary['ok']} "
          f"ok, {summary['error']} error) in {out['wall_s']:.1f} s, {rate:.1f} clips/s end to end (first shard "
          f"after {summary['first_shard_s']:.1f} s) = {out['ratio']:.2f}x the sequential loop "
          f"({out['ratio_e2e']:.2f}x with the loop's start-up counted too)")
    return out


def cold_first_shard(manifest: str, output: str, args) -> float:
    """Seconds from spawning ``ray-emer extract`` (a fresh interpreter that starts its own local Ray) to the
    first ``part-*.parquet`` in its output (the directory polled every 10 ms)."""
    import subprocess
    import sys

    shutil.rmtree(output, ignore_errors=True)
    os.makedirs(output)
    env = dict(os.environ, RAY_ADDRESS="local")  # its own instance, never a cluster someone started here
    cmd = [sys.executable, "-m", "ray_emer.cli", "extract", "--input", manifest, "--output", output,
           "--preset", args.preset, "--set", "progress=false", "--set", f"encode_batch_size={args.encode_batch_size}",
           "--set", f"fused_cpu={str(args.layout == 'fused').lower()}"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    first = None
    while first is None and proc.poll() is None:
        if any(f.startswith("part-") and f.endswith(".parquet") for f in os.listdir(output)):
            first = time.perf_counter() - t0
        time.sleep(0.01)
    _, err = proc.communicate(timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"cold ray-emer extract failed ({proc.returncode}): {err[-2000:]}")
    if first is None:  # finished between two polls
        first = time.perf_counter() - t0
    return first


def _subset(source: str, work: str, n: int) -> str:
    """The first ``n`` clips of a manifest (or folder) as a manifest of their own."""
    from ray_emer.data.manifest import read_manifest

    table = read_manifest(source).slice(0, n)
    path = os.path.join(work, f"subset-{n}.parquet")
    import pyarrow.parquet as pq

    pq.write_table(table, path)
    return path


if __name__ == "__main__":
    main()
