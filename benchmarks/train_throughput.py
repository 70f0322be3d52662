"""Benchmark: training samples/s from cached features vs the published way, same model and batch, same run.

    python benchmarks/train_throughput.py --clips 64 --steps 20 --batch-size 8

(a) cached: the loop reads feature rows written once by the extraction job.
(b) published: every step decodes its clips (frames at 224 px as the published CLIP
    preprocessing does, + 16 kHz windows) and re-runs the frozen encoders before the same
    forward/backward/optimizer step.
Prints samples/s of both and the ratio.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time

import torch

from ray_emer.data.features import (
    ExtractConfig,
    FeatureEncoder,
    decode_row,
    effective_media,
    extract_sequential,
    feature_arrays,
    read_features,
    stack_rows,
)
from ray_emer.data.manifest import read_manifest
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.config import get_preset
from ray_emer.synthetic import SynthConfig, write_archive
from ray_emer.train.loop import OptimConfig, collate, feature_rows, make_optimizer, stack_batch


def step(model, opt, batch, rng) -> float:
    loss = model(collate(batch, model, rng)).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--real-encoders", action="store_true",
                    help="tiny LLM, but CLIP ViT-L/14 + HuBERT-large at full size (random init; compute does not "
                         "depend on the weights): the encoder cost the published loop pays at every step")
    ap.add_argument("--published-frame-size", type=int, default=224,
                    help="frame size the published loop decodes to (its CLIP preprocessing is fixed at 224)")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="ray_emer_train_bench_")
    manifest = write_archive(os.path.join(work, "archive"), SynthConfig(clips=args.clips, seed=3))
    preset = args.preset
    if args.real_encoders:
        preset = os.path.join(work, "tiny_llm_real_encoders")
        os.makedirs(preset, exist_ok=True)
        cfg = get_preset("tiny")
        real = get_preset("affectgpt-qwen2.5-7b")
        cfg.preset, cfg.encoders = "tiny-llm+real-encoders", real.encoders
        cfg.video_dim, cfg.audio_dim, cfg.fusion_dim = real.video_dim, real.audio_dim, real.fusion_dim
        with open(os.path.join(preset, "config.json"), "w") as fh:
            fh.write(cfg.to_json())
    ecfg = ExtractConfig(input=manifest, output=os.path.join(work, "features"), preset=preset, progress=False)
    if not os.path.isdir(ecfg.output):
        extract_sequential(ecfg)
    rows = feature_rows(read_features(ecfg.output), "")
    records = {r["clip_id"]: r for r in read_manifest(manifest).to_pylist()}
    import dataclasses

    media = dataclasses.replace(effective_media(ecfg), frame_size=args.published_frame_size)
    encoder = FeatureEncoder(preset, media)

    from ray_emer.model.config import resolve_model_config

    torch.manual_seed(0)
    model = AffectGPT.build(resolve_model_config(preset))
    opt, _ = make_optimizer(model, OptimConfig(lr=1e-3), args.steps)
    rng, pick = random.Random(0), random.Random(1)

    def sample() -> list[dict]:
        return [rows[i] for i in pick.sample(range(len(rows)), args.batch_size)]

    def published_batch(chunk):
        decoded = stack_rows([decode_row(records[r["clip_id"]], media) for r in chunk])
        table = encoder.encode_batch(decoded)  # the frozen encoders, again, at every step
        batch = stack_batch(chunk)
        batch["video_feats"], batch["audio_feats"] = feature_arrays(table, "video_feats"), feature_arrays(table,
                                                                                                       "audio_feats")
        return batch

    results = {}
    for name, make in (("cached", stack_batch), ("published", published_batch)):
        step(model, opt, make(sample()), rng)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(model, opt, make(sample()), rng)
        results[name] = args.steps * args.batch_size / (time.perf_counter() - t0)
        print(f"{name:>10}: {results[name]:.1f} samples/s ({args.steps} steps, batch {args.batch_size}, "
              f"model {model.cfg.preset}, {torch.get_num_threads()} threads)")
    print(f"ratio cached / published: {results['cached'] / results['published']:.1f}x")


if __name__ == "__main__":
    main()
