"""Benchmark: training samples/s from cached features vs the published way, same model and batch, same run.

    python benchmarks/train_throughput.py --clips 64 --steps 20 --batch-size 8

(a) cached: the loop reads feature rows written once by the extraction job.
(b) published: every step decodes its clips (frames at 224 px as the published CLIP
    preprocessing does, + 16 kHz windows) and re-runs the frozen encoders before the same
    forward/backward/optimizer step. Decoding runs as the published training config loads
    data: a torch DataLoader with 4 worker processes (``--loader-workers``) that decode the
    next batches while the main process encodes and steps; the encoders stay in the step.
(c) published, serial: the same with decoding inside the step (0 loader workers), for reference.
Prints samples/s of each and the ratio of (a) to (b).

    python benchmarks/train_throughput.py --real-scale --batch-size 2 --steps 2

(--real-scale) the published-size model, composed from parts measured in this run: a
LoRA train step of the Qwen2.5-7B-shaped LLM (embeddings + lm_head + 1 and 2 decoder
layers at full width, so one layer's cost is the difference, times 28 layers), the
full-size CLIP ViT-L/14 + HuBERT-large forward on the same clips, and decoding them at
224 px. Its ratio is what caching saves where the LLM, not the encoders, dominates a
step; no machine here holds the 7B model, so it is composed rather than timed whole.

    python benchmarks/train_throughput.py --size mid --json     # Qwen2.5-0.5B-shaped LLM, ~5 min here
    python benchmarks/train_throughput.py --size tiny --json

(step overhead, always run) on feature rows with real EMER text lengths (descriptions of
200-600 characters, subtitles 0-200, both target tasks), the same batches three ways,
interleaved step by step: (before) the training step with right-padded batches, (after)
the training step with packed batches (the default), (bare) the LLM alone, forward +
backward on the very token rows of (after), no head, processor, data path or optimizer.
Prints the padding share and useful (non-padding) tokens/s before/after, and
overhead_ratio = bare / after (1.0: everything around the LLM is free). ``--size mid`` is
the ``affectgpt-qwen2.5-0.5b`` preset with random weights (LoRA, batch 2) and skips the
published-loop comparison; ``--size tiny`` runs both. ``--json``: the last stdout line is
one JSON object with every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import tempfile
import time

import numpy as np
import torch

from ray_emer.data.extraction import ExtractConfig, extract_sequential
from ray_emer.features.columns import to_columns
from ray_emer.features.decode import decode_row
from ray_emer.features.encoder import FeatureEncoder, effective_media
from ray_emer.features.shards import read_shards
from ray_emer.data.manifest import read_manifest
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.config import AffectGPTConfig, get_preset, resolve_model_config
from ray_emer.synthetic import SynthConfig, length_mix_rows, write_archive
from ray_emer.train.loop import DataConfig, OptimConfig, feature_rows, make_optimizer, micro_step

SIZES = {"tiny": ("tiny", 8, 10), "mid": ("affectgpt-qwen2.5-0.5b", 2, 5)}  # preset, batch size, timed steps


def step(model, opt, batch, rng) -> float:
    loss = model(model.processor.from_rows(batch, rng=rng)).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def real_encoders_preset(directory: str, name: str) -> tuple[str, AffectGPTConfig]:
    """The tiny preset with the published CLIP ViT-L/14 + HuBERT-large (random init: compute does not depend on
    the weights) and their feature sizes, written as a preset directory; returns it and the config."""
    real = get_preset("affectgpt-qwen2.5-7b")
    cfg = get_preset("tiny")
    cfg.preset, cfg.encoders = name, real.encoders
    cfg.video_dim, cfg.audio_dim, cfg.fusion_dim = real.video_dim, real.audio_dim, real.fusion_dim
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as fh:
        fh.write(cfg.to_json())
    return directory, cfg


def timed_steps(model, opt, make, steps, rng) -> float:
    """Seconds per step (after one warm-up step)."""
    step(model, opt, make(), rng)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(model, opt, make(), rng)
    return (time.perf_counter() - t0) / steps


def real_scale(args, rows: list[dict], records: dict, media, work: str) -> None:
    """The published-size step composed from measured parts (see the module docstring)."""
    real = get_preset("affectgpt-qwen2.5-7b")
    enc_dir, base = real_encoders_preset(os.path.join(work, "real_encoders"), "real-encoders")
    rng, pick = random.Random(0), random.Random(1)
    chunk = [rows[i] for i in pick.sample(range(len(rows)), args.batch_size)]

    def real_batch() -> dict:
        batch = to_columns(chunk)
        n = len(chunk)  # feature values do not change the cost; their shapes are the published ones
        batch["video_feats"] = np.random.default_rng(0).standard_normal((n, 8, real.video_dim), np.float32)
        batch["audio_feats"] = np.random.default_rng(1).standard_normal((n, 8, real.audio_dim), np.float32)
        return batch

    per_step = {}
    for layers in (1, 2):
        # the tiny tokenizer: its ids fit the 7B vocabulary, nothing to download
        cfg = dataclasses.replace(base, preset=f"qwen2.5-7b-shaped-{layers}-layer", lora=real.lora,
                                  image_branch=False)
        cfg.llm_config = dict(real.llm_config, num_hidden_layers=layers)
        torch.manual_seed(0)
        model = AffectGPT.build(cfg)
        opt, _ = make_optimizer(model, OptimConfig(lr=1e-5), args.steps + 1)
        per_step[layers] = timed_steps(model, opt, real_batch, args.steps, rng)
        mb = model.processor.from_rows(real_batch(), rng=random.Random(0))
        tokens = int(mb.attention_mask.sum())
        del model, opt
    layer = per_step[2] - per_step[1]
    n_layers = int(real.llm_config["num_hidden_layers"])
    llm = per_step[1] - layer + n_layers * layer
    encoder = FeatureEncoder(enc_dir, media)
    t0 = time.perf_counter()
    decoded = to_columns([decode_row(records[r["clip_id"]], media) for r in chunk])
    decode_s = time.perf_counter() - t0
    encoder.encode_batch(decoded)
    t0 = time.perf_counter()
    encoder.encode_batch(decoded)
    encode_s = time.perf_counter() - t0
    b = args.batch_size
    print(f"real scale, batch {b} ({tokens / b:.0f} tokens per sample), {torch.get_num_threads()} threads, fp32 CPU:")
    print(f"  LLM step: embeddings + lm_head + head {per_step[1] - layer:.2f} s, one decoder layer {layer:.2f} s "
          f"-> {n_layers} layers {llm:.2f} s")
    print(f"  frozen encoders (CLIP ViT-L/14 x 8 frames + HuBERT-large x 8 windows): {encode_s:.2f} s; "
          f"decoding at {media.frame_size} px: {decode_s:.2f} s")
    print(f"  ratio cached / published: {(llm + encode_s) / llm:.2f}x with the encoders re-run, "
          f"{(llm + encode_s + decode_s) / llm:.2f}x with decoding in the step too")


def size_config(size: str) -> AffectGPTConfig:
    """The benchmark model of a size: random weights from the preset's architecture, the shipped tiny tokenizer
    (its ids fit any vocabulary; nothing to download)."""
    cfg = get_preset(SIZES[size][0])
    cfg.init, cfg.tokenizer, cfg.image_branch = "random", "tiny", False
    return cfg


def bare_inputs(model: AffectGPT, mb) -> dict:
    """The LLM-only inputs of a packed batch: its token rows (placeholders as padding ids; the cost is the
    same), restarting positions, labels."""
    p, pad = mb.packed, model.tokenizer.pad_token_id
    ids = mb.input_ids.reshape(-1)[p.index.clamp(min=0)]
    slots = torch.isin(ids, torch.tensor(list(model.processor.placeholder_ids.values())))
    ids = ids.masked_fill(slots | (p.index < 0), pad)
    return {"input_ids": ids, "position_ids": p.position_ids, "labels": p.labels, "use_cache": False}


def step_overhead(size: str, steps: int | None = None, batch_size: int | None = None,
                  pack_length: int = DataConfig().pack_length,
                  log=print) -> dict:
    """Padding share, useful tokens/s before/after packing and bare LLM / full step (see the module docstring)."""
    preset, default_bs, default_steps = SIZES[size]
    bs, steps = batch_size or default_bs, steps or default_steps
    cfg = size_config(size)
    t0 = time.perf_counter()
    model = AffectGPT.build(cfg, seed=0)
    model.train()
    build_s = time.perf_counter() - t0
    rows = length_mix_rows(max(64, bs * (steps + 1)), cfg.video_dim, cfg.audio_dim, seed=7)
    pick = random.Random(11)
    chunks = [[rows[i] for i in pick.sample(range(len(rows)), bs)] for _ in range(steps + 1)]
    opt, sched = make_optimizer(model, OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant"), 10 * steps)
    params = [p for p in model.parameters() if p.requires_grad]
    modes = {"before": DataConfig(batch_size=bs, packing=False),
             "after": DataConfig(batch_size=bs, packing=True, pack_length=pack_length)}

    def full_step(data: DataConfig, k: int) -> tuple[float, dict]:
        """What loop.train does per optimizer step: rows -> batch -> processor -> head -> LLM -> backward ->
        clip -> AdamW (weight decay groups, LoRA + head) -> zero grads."""
        t = time.perf_counter()
        out = micro_step(model, to_columns(chunks[k]), data, random.Random(k))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t, out

    def bare_step(k: int) -> float:
        mb = model.processor.from_rows(to_columns(chunks[k]), "hybrid", random.Random(k), pack=True,
                                       row_length=pack_length)
        inputs = bare_inputs(model, mb)
        t = time.perf_counter()
        model.llm(**inputs).loss.backward()
        dt = time.perf_counter() - t
        model.zero_grad(set_to_none=True)
        return dt

    times = {m: [] for m in (*modes, "bare")}
    tokens = {m: 0 for m in modes}
    positions = {m: 0 for m in modes}
    for k in range(steps + 1):  # step 0 warms up; the three ways alternate so drift hits them alike
        for name, data in modes.items():
            dt, out = full_step(data, k)
            if k:
                times[name].append(dt)
                tokens[name] += out["tokens"]
                positions[name] += out["positions"]
        dt = bare_step(k)
        if k:
            times["bare"].append(dt)
        log(f"[overhead {size}] step {k}/{steps}: " + ", ".join(f"{m} {t[-1]:.2f} s" for m, t in times.items() if t))
    per = {m: sum(t) for m, t in times.items()}
    return {
        "size": size, "preset": preset, "llm_params": sum(p.numel() for p in model.llm.parameters()),
        "batch_size": bs, "steps": steps, "pack_length": pack_length, "threads": torch.get_num_threads(),
        "build_s": round(build_s, 2),
        "tokens_per_sample": round(tokens["after"] / (bs * steps), 1),
        "padding_share_before": round(1 - tokens["before"] / positions["before"], 4),
        "padding_share_after": round(1 - tokens["after"] / positions["after"], 4),
        "step_s_before": round(per["before"] / steps, 3), "step_s_after": round(per["after"] / steps, 3),
        "bare_llm_step_s": round(per["bare"] / steps, 3),
        "useful_tokens_per_s_before": round(tokens["before"] / per["before"], 1),
        "useful_tokens_per_s_after": round(tokens["after"] / per["after"], 1),
        "speedup_after_vs_before": round(per["before"] / per["after"], 3),
        "overhead_ratio": round(per["bare"] / per["after"], 3),
    }


def print_overhead(r: dict) -> None:
    print(f"step overhead, {r['size']} ({r['preset']}, {r['llm_params'] / 1e6:.0f}M LLM params, random weights, LoRA), "
          f"batch {r['batch_size']}, {r['tokens_per_sample']:.0f} tokens per sample, {r['steps']} steps, "
          f"{r['threads']} threads:")
    print(f"  padding share: {r['padding_share_before']:.1%} padded -> {r['padding_share_after']:.1%} packed")
    print(f"  useful tokens/s: {r['useful_tokens_per_s_before']:.1f} -> {r['useful_tokens_per_s_after']:.1f} "
          f"({r['speedup_after_vs_before']:.2f}x); step {r['step_s_before']:.2f} s -> {r['step_s_after']:.2f} s")
    print(f"  bare LLM forward+backward on the same rows {r['bare_llm_step_s']:.2f} s vs full step "
          f"{r['step_s_after']:.2f} s: overhead_ratio {r['overhead_ratio']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--real-encoders", action="store_true",
                    help="tiny LLM, but CLIP ViT-L/14 + HuBERT-large at full size (random init; compute does not "
                         "depend on the weights): the encoder cost the published loop pays at every step")
    ap.add_argument("--real-scale", action="store_true",
                    help="also compose the published-size step from measured parts (slow on CPU: use --batch-size 2)")
    ap.add_argument("--published-frame-size", type=int, default=224,
                    help="frame size the published loop decodes to (its CLIP preprocessing is fixed at 224)")
    ap.add_argument("--loader-workers", type=int, default=4,
                    help="DataLoader worker processes of the published baseline (its training config uses 4)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny",
                    help="step-overhead model: tiny, or mid (Qwen2.5-0.5B-shaped; skips the published comparison)")
    ap.add_argument("--overhead-steps", type=int, default=None, help="timed steps of the step-overhead section")
    ap.add_argument("--overhead-batch-size", type=int, default=None)
    ap.add_argument("--pack-length", type=int, default=DataConfig().pack_length,
                    help="tokens per packed row (0: one row per batch); default: the training default")
    ap.add_argument("--json", action="store_true", help="print every number as one JSON object, the last line")
    args = ap.parse_args()
    torch.manual_seed(0)
    result = {"overhead": step_overhead(args.size, args.overhead_steps, args.overhead_batch_size, args.pack_length,
                                        log=lambda m: print(m, flush=True))}
    print_overhead(result["overhead"])
    if args.size == "tiny":
        result["published"] = published_comparison(args)
    flat = {**result["overhead"], **result.get("published", {})}
    if args.json:
        print(json.dumps(flat))


def published_comparison(args) -> dict:
    work = args.workdir or tempfile.mkdtemp(prefix="ray_emer_train_bench_")
    manifest = write_archive(os.path.join(work, "archive"), SynthConfig(clips=args.clips, seed=3))
    preset = args.preset
    if args.real_encoders:
        preset, _ = real_encoders_preset(os.path.join(work, "tiny_llm_real_encoders"), "tiny-llm+real-encoders")
    ecfg = ExtractConfig(input=manifest, output=os.path.join(work, "features"), preset=preset, progress=False)
    if not os.path.isdir(ecfg.output):
        extract_sequential(ecfg)
    rows = feature_rows(read_shards(ecfg.output), "")
    records = {r["clip_id"]: r for r in read_manifest(manifest).to_pylist()}
    media = dataclasses.replace(effective_media(ecfg.preset, ecfg.media), frame_size=args.published_frame_size)
    encoder = FeatureEncoder(preset, media)

    torch.manual_seed(0)
    model = AffectGPT.build(resolve_model_config(preset))
    opt, _ = make_optimizer(model, OptimConfig(lr=1e-3), args.steps)
    rng, pick = random.Random(0), random.Random(1)

    def sample() -> list[dict]:
        return [rows[i] for i in pick.sample(range(len(rows)), args.batch_size)]

    def published_batch(chunk):
        decoded = to_columns([decode_row(records[r["clip_id"]], media) for r in chunk])
        feats = encoder.encode_batch(decoded)  # the frozen encoders, again, at every step
        batch = to_columns(chunk)
        batch["video_feats"], batch["audio_feats"] = feats["video_feats"], feats["audio_feats"]
        return batch

    def published_parallel():
        """Decoding in DataLoader worker processes (as published), encoders + step in the main process."""
        chunks = [sample() for _ in range(args.steps + 1)]
        loader = torch.utils.data.DataLoader(
            [records[r["clip_id"]] for chunk in chunks for r in chunk], batch_size=args.batch_size,
            num_workers=args.loader_workers, collate_fn=lambda recs: to_columns([decode_row(r, media) for r in recs]),
            prefetch_factor=2 if args.loader_workers else None)
        it = iter(loader)
        chunk_it = iter(chunks)

        def make():
            chunk, decoded = next(chunk_it), next(it)
            feats = encoder.encode_batch(decoded)
            batch = to_columns(chunk)
            batch["video_feats"], batch["audio_feats"] = feats["video_feats"], feats["audio_feats"]
            return batch

        t0 = time.perf_counter()
        per_step = timed_steps(model, opt, make, args.steps, rng)
        return per_step, time.perf_counter() - t0

    results = {"cached": args.batch_size / timed_steps(model, opt, lambda: to_columns(sample()), args.steps, rng)}
    per_step, _ = published_parallel()
    results["published"] = args.batch_size / per_step
    results["published_serial"] = args.batch_size / timed_steps(model, opt, lambda: published_batch(sample()),
                                                                args.steps, rng)
    for name, value in results.items():
        print(f"{name:>16}: {value:.1f} samples/s ({args.steps} steps, batch {args.batch_size}, model "
              f"{model.cfg.preset}, {torch.get_num_threads()} threads"
              + (f", {args.loader_workers} loader workers)" if name == "published" else ")"))
    print(f"ratio cached / published ({args.loader_workers} loader workers): "
          f"{results['cached'] / results['published']:.1f}x "
          f"(vs decoding inside the step: {results['cached'] / results['published_serial']:.1f}x)")
    if args.real_scale:
        del model, opt, encoder
        real_scale(args, rows, records, media, work)
    return {"cached_samples_per_s": round(results["cached"], 2), "published_samples_per_s": round(results["published"], 2),
            "ratio_cached_vs_published": round(results["cached"] / results["published"], 2)}


if __name__ == "__main__":
    main()
