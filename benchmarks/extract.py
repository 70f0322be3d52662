"""Benchmark: feature extraction, Ray Data pipeline vs the published sequential loop, same run.

    python benchmarks/extract.py --clips 1000            # synthetic archive
    python benchmarks/extract.py --folder /data/videos   # any folder / manifest

Prints clips/s of (a) a sequential loop (decode + encode one clip at a time, in one
process, as the published code does), (b) the Ray Data job, their ratio, (c) the
machine's decode-only ceiling (the same sampled frames and audio windows, one decode
process per core) and the pipeline's share of it, and the resident memory of the
driver + Ray workers at the first finished batch, the middle and the end.
"""

from __future__ import annotations

import argparse
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
    args = ap.parse_args()

    import ray

    from ray_emer.data.features import ExtractConfig, effective_media, extract_sequential, pending_records
    from ray_emer.data.pipeline import run_extract
    from ray_emer.synthetic import SynthConfig, write_archive

    work = args.workdir or tempfile.mkdtemp(prefix="ray_emer_bench_")
    if args.folder:
        source = args.folder
    else:
        t0 = time.perf_counter()
        source = write_archive(os.path.join(work, "archive"), SynthConfig(clips=args.clips, seed=7))
        print(f"wrote {args.clips} synthetic clips in {time.perf_counter() - t0:.1f} s")
    base = dict(input=source, preset=args.preset, progress=False, encode_batch_size=args.encode_batch_size)

    seq_cfg = ExtractConfig(output=os.path.join(work, "seq"), **base)
    shutil.rmtree(seq_cfg.output, ignore_errors=True)
    seq = extract_sequential(seq_cfg, limit=args.sequential_clips)
    print(f"(a) sequential loop: {seq['processed']} clips, {seq['clips_per_s']:.1f} clips/s")

    media = effective_media(seq_cfg)
    records, total, _ = pending_records(ExtractConfig(output=os.path.join(work, "none"), **base))
    ceiling = decode_ceiling(records, media, args.cpus)
    print(f"(c) decode-only ceiling ({args.cpus} processes, frames at {media.frame_size}px): {ceiling:.1f} clips/s")

    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    pipe_cfg = ExtractConfig(output=os.path.join(work, "ray"), **base)
    shutil.rmtree(pipe_cfg.output, ignore_errors=True)
    rss, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            rss.append((time.perf_counter(), _rss_mb()))
            time.sleep(0.5)

    marks: list[tuple[float, int]] = []

    def log(msg: str) -> None:
        if "/" in msg and "clips (ok" in msg:
            marks.append((time.perf_counter(), int(msg.split()[1].split("/")[0])))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    summary = run_extract(pipe_cfg, log=log)
    stop.set()
    th.join()
    wall = time.perf_counter() - t0
    (t_first, n_first), (t_last, n_last) = marks[0], marks[-1]
    steady = (n_last - n_first) / max(t_last - t_first, 1e-9)
    end_to_end = summary["processed"] / wall
    print(f"(b) Ray Data job: {summary['processed']} clips ({summary['ok']} ok, {summary['error']} error), "
          f"{end_to_end:.1f} clips/s end to end (incl. {t_first - t0:.1f} s to the first batch), "
          f"{steady:.1f} clips/s steady state")
    print(f"ratio vs sequential: {end_to_end / seq['clips_per_s']:.2f}x end to end, "
          f"{steady / seq['clips_per_s']:.2f}x steady")
    print(f"share of the decode ceiling: {end_to_end / ceiling:.0%} end to end, {steady / ceiling:.0%} steady")
    first = next((m for t, m in rss if t >= t_first), rss[0][1])
    mid = next((m for t, m in rss if t >= (t_first + t_last) / 2), rss[-1][1])
    print(f"RSS driver+workers: first batch {first:.0f} MB, middle {mid:.0f} MB, end {rss[-1][1]:.0f} MB, "
          f"peak {max(m for _, m in rss):.0f} MB over {total} clips")
    ray.shutdown()


if __name__ == "__main__":
    main()
