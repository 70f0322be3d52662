"""Labelling throughput: the Ray Data job against the published way, same checkpoint and clips, same run.

    python benchmarks/label.py                      # 2000 clips, tiny preset, HF engine, ~8 min on 2 cores
    python benchmarks/label.py --engine vllm --preset affectgpt-qwen2.5-7b --random-init   # a GPU node

The published way labels one clip at a time: decode (frames at 224 px + audio windows),
run the frozen encoders, then generate the description and the OV-labels answer with
batch 1. The job extracts features with Ray Data (decode tasks, encoder actors) and
labels them with an actor pool that batches clips per engine call. The checkpoint is the
preset with random weights (nothing to download), so answers run to the token limit:
a fixed output length on both sides. Prints clips/s of each, their ratios, and the
engine's generated tokens/s; ``--json`` adds one JSON object as the last line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

from ray_emer.data.extraction import ExtractConfig
from ray_emer.features.columns import to_columns
from ray_emer.features.decode import decode_row
from ray_emer.features.encoder import FeatureEncoder
from ray_emer.data.manifest import read_manifest
from ray_emer.infer.labeller import Labeller, LabellerConfig
from ray_emer.media import MediaConfig
from ray_emer.synthetic import SynthConfig, write_archive


def checkpoint(work: str, preset: str, overrides: list[str]) -> str:
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import resolve_model_config

    out = os.path.join(work, f"ckpt-{preset}")
    if not os.path.isdir(out):
        save_checkpoint(AffectGPT.build(resolve_model_config(preset, overrides)), out)
    return out


def published(manifest: str, ckpt: str, labeller: LabellerConfig, n: int) -> dict:
    """One clip at a time: decode at 224 px, encode, generate with batch 1 (HF, as published)."""
    records = read_manifest(manifest).to_pylist()[:n]
    media = MediaConfig(frame_size=224)
    encoder = FeatureEncoder(ckpt, media)
    lab = Labeller(ckpt, dataclasses.replace(labeller, engine="hf", batch_size=1))
    t0, tokens = time.perf_counter(), 0
    for rec in records:
        rows = lab.label_batch(encoder.encode_batch(to_columns([decode_row(rec, media)])))
        tokens += sum(r["generated_tokens"] for r in rows)
    wall = time.perf_counter() - t0
    return {"clips": len(records), "wall_s": wall, "clips_per_s": len(records) / wall, "tokens_per_s": tokens / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=2000,
                    help="archive size; the job's fixed costs (Ray workers, model loads: ~20 s) need a few "
                         "thousand clips to amortise (400 clips: 2.95x end to end, 2000: 6.9x)")
    ap.add_argument("--sequential-clips", type=int, default=60, help="clips the published loop runs (a rate)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--random-init", action="store_true", help="build a pretrained preset from its config dicts")
    ap.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--batch-size", type=int, default=32, help="clips per engine call in the job")
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--description-tokens", type=int, default=160, help="as the job default")
    ap.add_argument("--label-tokens", type=int, default=32, help="as the job default")
    ap.add_argument("--workdir")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import ray

    from ray_emer.data.label_job import LabelJobConfig, run_label

    work = args.workdir or tempfile.mkdtemp(prefix="ray_emer_label_bench_")
    manifest = os.path.join(work, "archive", "manifest.csv")
    if not os.path.exists(manifest):
        write_archive(os.path.join(work, "archive"), SynthConfig(clips=args.clips, seed=5))
    ckpt = checkpoint(work, args.preset, ["init=random"] if args.random_init else [])
    labeller = LabellerConfig(engine=args.engine, description_tokens=args.description_tokens,
                              label_tokens=args.label_tokens, batch_size=args.batch_size)
    gpu = __import__("torch").cuda.is_available()
    ray.init(num_cpus=None if gpu else 4, include_dashboard=False, log_to_driver=False)  # once, as a cluster is
    base = published(manifest, ckpt, labeller, args.sequential_clips)
    job_dir = tempfile.mkdtemp(dir=work, prefix="job-")
    cfg = LabelJobConfig(input=manifest, output=job_dir, checkpoint=ckpt, labeller=labeller, num_actors=args.actors,
                         actor_cpus=0.5, progress=False, extract=ExtractConfig(encode_batch_size=32))
    t0 = time.perf_counter()
    job = run_label(cfg, log=lambda m: None)
    job_wall = time.perf_counter() - t0
    job_rate = job["clips"] / job_wall
    # labelling alone on the cached features (what every later relabel of an archive costs)
    relabel = run_label(dataclasses.replace(cfg, input=job["features"], output=tempfile.mkdtemp(dir=work)),
                        log=lambda m: None)
    ray.shutdown()
    result = {
        "preset": args.preset, "engine": args.engine, "clips": job["clips"], "ok": job["ok"],
        "published_clips_per_s": round(base["clips_per_s"], 3), "published_tokens_per_s": round(base["tokens_per_s"], 1),
        "job_clips_per_s": round(job_rate, 3), "job_wall_s": round(job_wall, 2),
        "job_extract_s": job["extract"]["wall_s"], "job_label_s": job["label_s"],
        "ratio_vs_published": round(job_rate / base["clips_per_s"], 2),
        "label_only_clips_per_s": round(relabel["clips_per_s"], 3),
        "label_only_ratio_vs_published": round(relabel["clips_per_s"] / base["clips_per_s"], 2),
        "engine_tokens_per_s": relabel["tokens_per_s"],
    }
    print(f"{args.preset} preset, {args.engine} engine, {job['clips']} clips, batch {args.batch_size}, "
          f"{args.description_tokens}+{args.label_tokens} new tokens per clip")
    print(f"(a) published way (one clip: decode 224 px, encode, generate batch 1): {base['clips']} clips, "
          f"{base['clips_per_s']:.2f} clips/s, {base['tokens_per_s']:.0f} tokens/s")
    print(f"(b) job from the archive (Ray Data extract + label): {job_rate:.2f} clips/s end to end "
          f"({job_wall:.1f} s: extract {job['extract']['wall_s']:.1f} s, label {job['label_s']:.1f} s)")
    print(f"    ratio vs published: {result['ratio_vs_published']:.2f}x")
    print(f"(c) label job on cached features: {relabel['clips_per_s']:.2f} clips/s, "
          f"{relabel['tokens_per_s']:.0f} generated tokens/s; ratio vs published "
          f"{result['label_only_ratio_vs_published']:.2f}x")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
