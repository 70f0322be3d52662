"""Benchmark: feature extraction, Ray Data pipeline vs the published sequential loop, same run.

    python benchmarks/extract.py --clips 1000            # synthetic archive
    python benchmarks/extract.py --folder /data/videos   # any folder / manifest

Prints clips/s of (a) a sequential loop (decode + encode one clip at a time, in one
process, as the published code does), (b) the Ray Data job, their ratio, (c) the
machine's decode-only ceiling (the same sampled frames and audio windows, one decode
process per core) and the pipeline's share of it, and the resident memory of the
driver + Ray workers at the first finished batch, the middle and the end, and where the
CPU went during the Ray run (decode tasks, encoder actors, driver, Ray's own services).
Time to the first written shard: of the main run (the session's first Ray Data job, from
``run_extract``'s start; ``ray.init`` is printed apart), and of a second, 64-clip run in
the same session (a chain's later job: Ray is up, Ray Data's own actors exist, the encoder
actor still starts from nothing). ``--json``: the last stdout line is one JSON object
(``time_to_first_shard_s`` is the second run's, ``ratio_vs_sequential``, ``clips``, ...).
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


def _rss_mb() -> float:
    """Driver + every Ray worker process on this machine (MB)."""
    total = psutil.Process().memory_info().rss
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if cmd.startswith("ray::") or "default_worker.py" in cmd:
                total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total / 2**20


def _ray_cpu() -> dict[int, tuple[str, float]]:
    """pid -> (role, CPU seconds so far) for this process and every Ray process on the machine."""
    out = {}
    for p in psutil.process_iter(["cmdline", "cpu_times"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            cpu = p.info["cpu_times"].user + p.info["cpu_times"].system
        except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
            continue
        if p.pid == os.getpid():
            role = "driver"
        elif "_EncodeAndWrite" in cmd:
            role = "encoder actors"
        elif cmd.startswith("ray::IDLE") or "_decode" in cmd:
            role = "decode tasks"
        elif "ray" in cmd:
            role = "Ray services"
        else:
            continue
        out[p.pid] = (role, cpu)
    return out


def cpu_by_role(before: dict[int, tuple[str, float]], seen: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each role used since ``before`` (processes started since count in full); ``seen``
    holds the last sample of processes that may have exited since (idle workers do)."""
    roles = dict.fromkeys(("decode tasks", "encoder actors", "driver", "Ray services"), 0.0)
    for pid, (role, cpu) in {**seen, **_ray_cpu()}.items():
        roles[role] += cpu - before.get(pid, (role, 0.0))[1]
    return roles


def _decode_only(args):
    rec, media = args
    from ray_emer.data.features import decode_row

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
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true", help="print every number as one JSON object, the last line")
    args = ap.parse_args()

    import ray

    from ray_emer.data.features import ExtractConfig, effective_media, extract_sequential, pending_records
    from ray_emer.data.pipeline import run_extract
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
    base = dict(input=source, preset=args.preset, progress=False, encode_batch_size=args.encode_batch_size)

    seq_cfg = ExtractConfig(output=os.path.join(work, "seq"), **base)
    shutil.rmtree(seq_cfg.output, ignore_errors=True)
    seq = extract_sequential(seq_cfg, limit=args.sequential_clips)
    print(f"(a) sequential loop: {seq['processed']} clips, {seq['clips_per_s']:.1f} clips/s")

    media = effective_media(seq_cfg)
    records, total, _ = pending_records(ExtractConfig(output=os.path.join(work, "none"), **base))
    ceiling = decode_ceiling(records, media, args.cpus)
    print(f"(c) decode-only ceiling ({args.cpus} processes, frames at {media.frame_size}px): {ceiling:.1f} clips/s "
          f"= {args.cpus / ceiling * 1000:.1f} CPU-ms per clip")

    t_init = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - t_init
    pipe_cfg = ExtractConfig(output=os.path.join(work, "ray"), **base)
    shutil.rmtree(pipe_cfg.output, ignore_errors=True)
    rss, stop, seen = [], threading.Event(), {}

    def sample():
        while not stop.is_set():
            rss.append((time.perf_counter(), _rss_mb()))
            seen.update(_ray_cpu())
            time.sleep(0.5)

    marks: list[tuple[float, int]] = []

    def log(msg: str) -> None:
        if "/" in msg and "clips (ok" in msg:
            marks.append((time.perf_counter(), int(msg.split()[1].split("/")[0])))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    cpu_before = _ray_cpu()
    t0 = time.perf_counter()
    summary = run_extract(pipe_cfg, log=log)
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    # no "steady state" figure: decoding runs ahead while the encoder actor starts, so the rate after
    # the first batch includes draining that backlog and overstates what the pipeline sustains
    (t_first, _), (t_last, _) = marks[0], marks[-1]
    end_to_end = summary["processed"] / wall
    print(f"(b) Ray Data job: {summary['processed']} clips ({summary['ok']} ok, {summary['error']} error), "
          f"{end_to_end:.1f} clips/s end to end (incl. {t_first - t0:.1f} s to the first batch)")
    ratio = end_to_end / seq["clips_per_s"]
    print(f"ratio vs sequential: {ratio:.2f}x")
    print(f"share of the decode ceiling: {end_to_end / ceiling:.0%}")
    first = next((m for t, m in rss if t >= t_first), rss[0][1])
    mid = next((m for t, m in rss if t >= (t_first + t_last) / 2), rss[-1][1])
    print(f"RSS driver+workers: first batch {first:.0f} MB, middle {mid:.0f} MB, end {rss[-1][1]:.0f} MB, "
          f"peak {max(m for _, m in rss):.0f} MB over {total} clips")
    roles = cpu_by_role(cpu_before, seen)
    n = max(summary["processed"], 1)
    print(f"CPU budget of the Ray run ({sum(roles.values()):.1f} CPU-s for {args.cpus} cores x {wall:.1f} s), "
          "per clip: " + ", ".join(f"{k} {v / n * 1000:.1f} ms" for k, v in roles.items())
          + " (worker start-up and imports included)")
    warm_cfg = ExtractConfig(output=os.path.join(work, "ray_warm"), **dict(base, input=_subset(source, work, 64)))
    shutil.rmtree(warm_cfg.output, ignore_errors=True)
    warm = run_extract(warm_cfg, log=lambda m: None)
    print(f"time to the first written shard: {summary['first_shard_s']:.1f} s in the session's first Ray Data job "
          f"(after ray.init {ray_init_s:.1f} s), {warm['first_shard_s']:.1f} s in a later job of the same session "
          f"({warm['processed']} clips)")
    ray.shutdown()
    if args.json:
        print(json.dumps({"clips": summary["processed"], "ok": summary["ok"], "error": summary["error"],
                          "time_to_first_shard_s": warm["first_shard_s"],
                          "time_to_first_shard_first_job_s": summary["first_shard_s"], "ray_init_s": round(ray_init_s, 2),
                          "ratio_vs_sequential": round(ratio, 3), "clips_per_s": round(end_to_end, 2),
                          "sequential_clips_per_s": round(seq["clips_per_s"], 2),
                          "decode_ceiling_clips_per_s": round(ceiling, 2), "wall_s": round(wall, 2),
                          "peak_rss_mb": round(max(m for _, m in rss))}))


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
