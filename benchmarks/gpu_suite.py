"""The GPU benchmark suite in one command: extraction, a training step, labelling and serving, one JSON.

    python benchmarks/gpu_suite.py --out result.json                 # a CUDA machine: the published sizes
    python benchmarks/gpu_suite.py --small --out /tmp/result.json    # any machine (chosen when there is no CUDA)

Every model is built from config with random weights (compute does not depend on them; nothing to
download; the shipped tiny tokenizer's ids fit any vocabulary). Sizes: on CUDA the
``affectgpt-qwen2.5-7b`` preset (CLIP ViT-L/14 + HuBERT-large encoders, a Qwen2.5-7B-shaped LLM with
LoRA as the preset says); ``--small`` the ``tiny`` preset at a handful of clips (fp32 on CPU), so the
same code paths run in the test suite (tests/test_gpu_suite.py).

- extraction: the Ray Data job (``run_extract``: decode tasks + encoder actors, one GPU each) over a
  synthetic archive (``synthetic.write_archive``): clips/s, clips/s per GPU, clips/s after the first
  shard; then the frozen encoders alone (``FeatureEncoder`` on already-decoded clips, one GPU): what
  a GPU sustains once decoding keeps up. GPU utilisation sampled throughout (NVML, else nvidia-smi;
  null without either).
- training: the library's training step (``train.loop.micro_step``: processor with packing, head,
  LLM, loss, backward; then clipping, AdamW and the lr schedule as ``loop.train`` does) under FSDP2
  (``train.fsdp.shard_model``) in a world-size-1 process group (NCCL on CUDA, gloo otherwise), bf16
  parameters and autocast on CUDA as ``train.trainer`` sets them: samples/s, tokens/s (real tokens,
  packing padding excluded), model FLOPs utilisation, peak memory (``torch.cuda.max_memory_allocated``).
  Model FLOPs per token: the usual 2*N forward + 2*N backward for the activation gradients + 2*N for
  the weight gradients of weights that train. With LoRA the frozen base weights take no weight
  gradient: 4*N_base + 6*N_lora per token; full training 6*N. N counts the LLM's matmul weights (the
  input embedding table is a lookup and is left out unless tied to the output layer); attention
  scores, the head and recomputation are not counted (the convention of the 6*N estimate). MFU =
  model FLOPs/s over the GPU's dense bf16 peak (``PEAK_BF16``; null for a GPU not in the table).
- labelling: ``infer.labeller.Labeller`` (description + OV labels per clip, what the labelling job
  runs) with the vLLM engine when vllm imports and CUDA is there, else the HF engine (``engine``
  says which ran): clips/s and generated tokens/s, after one warm-up batch.
- serving: the analyzer path of ``ray_emer/serve`` in process (``decode_media`` then
  ``ClipModel.analyze``, what the Decoder and Model deployments run for one upload, with the app's
  media and labeller settings; no HTTP, no Ray Serve): p50/p95 latency of sequential requests.

On CUDA each section runs in its own process (``--isolate``; the default there): GPU memory starts
empty for each, a hard crash (CUDA error, OOM kill) costs only that section, and each section may
start its own vLLM engine. Sections share files under the work folder (archive, features, checkpoint).
One failing section records its ``error`` and the others still run. Progress goes to stderr; the
JSON's path is printed at the end and ``--json`` prints the JSON object as the last stdout line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

SECTIONS = ("extraction", "training", "labelling", "serving")
SCRIPT = os.path.abspath(__file__)
# Dense bf16 tensor-core peak FLOP/s (no sparsity) by a substring of the CUDA device name; first match wins
# (so "H100 PCIe" before "H100", "L40S" and "L40" before "L4"). SXM parts unless named.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12), ("H200 NVL", 835e12),
             ("H200", 989e12), ("A100", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12))


def log(msg: str) -> None:
    print(f"[gpu_suite] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass(frozen=True)
class Shape:
    small: bool
    preset: str
    clips: int  # extraction archive
    encode_batch: int  # clips per encoder call (0: the library's default)
    encoder_min_s: float  # the encoders alone run at least this long (and at least 3 batches)
    train_batch: int
    train_steps: int  # timed optimizer steps (after one warm-up step)
    label_clips: int
    label_batch: int
    description_tokens: int
    label_tokens: int
    serve_requests: int  # timed requests (after one warm-up request)


def shape(small: bool) -> Shape:
    if small:
        return Shape(True, "tiny", 16, 4, 0.0, 4, 3, 8, 4, 16, 8, 5)  # 4 shards: a job past its first shard
    # batch sizes: the shipped job configs' (train 8 per worker, labelling 16 per engine call); tokens: the
    # labeller's defaults (160 + 32)
    return Shape(False, "affectgpt-qwen2.5-7b", 512, 0, 10.0, 8, 10, 256, 16, 160, 32, 20)


def model_config(sh: Shape):
    """The preset with random weights and the shipped tiny tokenizer (nothing to download)."""
    from ray_emer.model.config import get_preset

    cfg = get_preset(sh.preset)
    cfg.init, cfg.tokenizer = "random", "tiny"
    return cfg


def peak_flops(device: str) -> float | None:
    return next((v for k, v in PEAK_BF16 if k in device), None)


def cuda() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if cuda():
        torch.cuda.synchronize()


def compute_dtype() -> torch.dtype:
    return torch.bfloat16 if cuda() else torch.float32


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---------------------------------------------------------------- GPU utilisation
def visible_gpus() -> list[str]:
    """NVML ids (index or UUID) of the GPUs this process sees, in CUDA order (NVML ignores CUDA_VISIBLE_DEVICES)."""
    n = torch.cuda.device_count() if cuda() else 0
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in env.split(",") if x.strip()] if env is not None else [str(i) for i in range(n)]
    return ids[:n]


def _nvml_reader(ids: list[str]) -> Callable[[], list[float]] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(int(i)) if i.isdigit() else pynvml.nvmlDeviceGetHandleByUUID(i)
                   for i in ids]
        return lambda: [float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in handles]
    except Exception:  # noqa: BLE001 - no NVML here: nvidia-smi, or nothing
        return None


def _smi_reader(ids: list[str]) -> Callable[[], list[float]] | None:
    if not shutil.which("nvidia-smi"):
        return None

    def read() -> list[float]:
        out = subprocess.run(["nvidia-smi", "-i", ",".join(ids), "--query-gpu=utilization.gpu",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=10).stdout
        return [float(x) for x in out.split()]

    return read


class GpuSampler:
    """GPU utilisation (%) sampled every ``period`` s while the block runs, averaged over ``ids`` (default: every
    visible GPU); the summary's numbers are None without a GPU or without NVML and nvidia-smi."""

    def __init__(self, ids: list[str] | None = None, period: float = 0.5) -> None:
        ids = visible_gpus() if ids is None else ids
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._read = (_nvml_reader(ids) or _smi_reader(ids)) if ids else None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                values = self._read()
                if values:
                    self.samples.append(float(np.mean(values)))
            self._stop.wait(self.period)

    def __enter__(self) -> GpuSampler:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self, prefix: str = "gpu_util") -> dict:
        s = self.samples
        return {f"{prefix}_mean": round(float(np.mean(s)), 1) if s else None,
                f"{prefix}_max": round(float(np.max(s)), 1) if s else None}


def first_gpu() -> list[str]:
    return visible_gpus()[:1]


# ---------------------------------------------------------------- shared files in the work folder
def once(path: str, make: Callable[[str], object]) -> str:
    """``make(path)`` unless an earlier section (maybe another process) finished it: ``path.done`` marks it."""
    if not os.path.exists(path + ".done"):
        shutil.rmtree(path, ignore_errors=True)
        make(path)
        open(path + ".done", "w").close()
    return path


def archive(work: str, clips: int, name: str = "archive") -> str:
    """A synthetic archive under the work folder -> its manifest."""
    from ray_emer.synthetic import SynthConfig, write_archive

    out = once(os.path.join(work, name), lambda d: write_archive(d, SynthConfig(clips=clips, seed=3)))
    return os.path.join(out, "manifest.csv")


def preset_dir(sh: Shape, work: str) -> str:
    """The preset (init random, tiny tokenizer) as a config directory: what the encoders are built from."""
    def write(d: str) -> None:
        os.makedirs(d, exist_ok=True)
        Path(d, "config.json").write_text(model_config(sh).to_json())

    return once(os.path.join(work, "preset"), write)


def checkpoint(sh: Shape, work: str) -> str:
    """A checkpoint of the preset with random weights (bf16 on CUDA: a 7B base is 15 GB, not 30), written once."""
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint

    def write(d: str) -> None:
        log("writing a random-weight checkpoint")
        model = AffectGPT.build(model_config(sh), dtype=compute_dtype(), seed=0)
        save_checkpoint(model, d)
        del model
        gc.collect()

    return once(os.path.join(work, "checkpoint"), write)


def features_dir(work: str) -> str | None:
    """The extraction section's features, when it ran to the end."""
    path = os.path.join(work, "features")
    return path if os.path.exists(path + ".done") else None


def resolve_engine(engine: str) -> str:
    """``auto``: vLLM when it imports and CUDA is there, else HF."""
    if engine != "auto":
        return engine
    import importlib.util

    return "vllm" if importlib.util.find_spec("vllm") is not None and cuda() else "hf"


def vllm_memory_share(ckpt: str, margin_gib: float = 4.0) -> float:
    """The GPU memory share a vLLM engine started now may ask for (vLLM refuses to start unless that much is
    free). The Labeller loads the whole model on the GPU and merges LoRA into a copy of the LLM before it
    starts the engine; what it frees stays in torch's cache, so the engine sees about twice the weights
    taken. Free memory now, less that, less a margin (encoders, CUDA context); at most the library default."""
    free, total = torch.cuda.mem_get_info()
    return memory_share(free, total, sum(f.stat().st_size for f in Path(ckpt).rglob("*.safetensors")), margin_gib)


def memory_share(free: int, total: int, weights: int, margin_gib: float = 4.0) -> float:
    from ray_emer.infer.vllm_engine import VLLMSettings

    share = (free - 2 * weights - margin_gib * 2**30) / total
    return round(max(0.1, min(VLLMSettings().gpu_memory_utilization, share)), 3)


def labeller_config(engine: str, sh: Shape, ckpt: str, base=None, batch_size: int | None = None):
    """``base`` (default: the library's labeller settings) with this shape's token budgets and the engine."""
    from ray_emer.infer.labeller import LabellerConfig

    base = base or LabellerConfig()
    lcfg = dataclasses.replace(base, engine=engine, batch_size=batch_size or base.batch_size,
                               description_tokens=sh.description_tokens, label_tokens=sh.label_tokens)
    if engine == "vllm" and cuda():
        lcfg.vllm = dataclasses.replace(lcfg.vllm, kv_cache_mb=0, gpu_memory_utilization=vllm_memory_share(ckpt))
    return lcfg


# ---------------------------------------------------------------- sections
# Each section fills ``rec`` (``shape`` first, then its numbers) so a failure keeps what was measured.
def extraction(sh: Shape, work: str, rec: dict, opts: dict) -> None:
    import ray

    from ray_emer.data.extraction import ExtractConfig
    from ray_emer.features.columns import to_columns
    from ray_emer.features.decode import decode_row
    from ray_emer.features.encoder import FeatureEncoder, effective_media
    from ray_emer.data.manifest import read_manifest
    from ray_emer.data.pipeline import run_extract
    from ray_emer.synthetic import SynthConfig

    cfg = model_config(sh)
    preset = preset_dir(sh, work)
    manifest = archive(work, sh.clips)
    out = os.path.join(work, "features")
    shutil.rmtree(out, ignore_errors=True)  # run_extract skips clips already extracted: start empty
    Path(out + ".done").unlink(missing_ok=True)
    ecfg = ExtractConfig(input=manifest, output=out, preset=preset, progress=False)
    ecfg.encode_batch_size = sh.encode_batch or ecfg.encode_batch_size
    ecfg.tracking.enabled = False  # the suite's JSON is the record
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", include_dashboard=False, log_to_driver=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        ecfg.num_encoders = max(1, gpus)
        media = effective_media(ecfg.preset, ecfg.media)
        rec["shape"] = {"preset": sh.preset, "init": "random", "vision": cfg.encoders.vision_name or "tiny CLIP",
                        "audio": cfg.encoders.audio_name or "tiny HuBERT", "clips": sh.clips,
                        "clip_px": SynthConfig().size,
                        "frames": media.num_frames, "frame_size": media.frame_size,
                        "encode_batch_size": ecfg.encode_batch_size, "encoder_actors": ecfg.num_encoders,
                        "encoder_dtype": "float16" if gpus else "float32"}
        log(f"extraction: Ray Data job over {sh.clips} clips, {ecfg.num_encoders} encoder actor(s), {gpus} GPU(s)")
        with GpuSampler() as sampler:
            t0 = time.perf_counter()
            summary = run_extract(ecfg, log=lambda m: None)
            job_s = time.perf_counter() - t0
        first = summary.get("first_shard_s")
        after = summary["processed"] - ecfg.encode_batch_size  # a shard is one encoder batch
        rec.update({"clips": summary["processed"], "ok": summary["ok"], "error_rows": summary["error"],
                    "gpus": gpus, "clips_per_s": summary["clips_per_s"],
                    "clips_per_s_per_gpu": round(summary["clips_per_s"] / gpus, 3) if gpus else None,
                    "first_shard_s": first,
                    # the job past its start-up (actors up, towers built): clips after the first shard / the rest
                    "clips_per_s_after_first_shard": round(after / (job_s - first), 3)
                    if first is not None and after > 0 and job_s > first else None,
                    **sampler.summary()})
        open(out + ".done", "w").close()
    finally:
        if started:
            ray.shutdown()
    # the frozen encoders alone on decoded clips (the job's batch size), in this process on one device
    records = read_manifest(manifest).to_pylist()[: ecfg.encode_batch_size]
    decoded = to_columns([decode_row(r, media) for r in records])
    encoder = FeatureEncoder(preset, media)
    encoder.encode_batch(decoded)  # warm-up (allocator, kernels)
    n, t0 = 0, time.perf_counter()
    with GpuSampler(first_gpu()) as sampler:
        while n < 3 * len(records) or time.perf_counter() - t0 < sh.encoder_min_s:
            encoder.encode_batch(decoded)  # returns host arrays: synchronised
            n += len(records)
        enc_s = time.perf_counter() - t0
    rec.update({"encoder_only_clips_per_s": round(n / enc_s, 2), "encoder_only_batch": len(records),
                **sampler.summary("encoder_only_gpu_util")})


@contextlib.contextmanager
def process_group():
    """A world-size-1 process group for FSDP2 (NCCL on CUDA, gloo otherwise); kept when the caller has one."""
    dist = torch.distributed
    if dist.is_initialized():
        yield dist.get_backend()
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kwargs = {"device_id": torch.device("cuda", torch.cuda.current_device())} if cuda() else {}
    dist.init_process_group("nccl" if cuda() else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, timeout=datetime.timedelta(minutes=10), **kwargs)
    try:
        yield dist.get_backend()
    finally:
        dist.destroy_process_group()


def flop_params(model) -> tuple[int, int, int]:
    """(all LLM parameters, matmul weights of the base, LoRA parameters): the input embedding table is a lookup,
    counted only when tied to the output layer (then it is the output matmul)."""
    llm = model.llm
    total = sum(p.numel() for p in llm.parameters())  # a tied table once
    lora = sum(p.numel() for n, p in llm.named_parameters() if "lora_" in n)
    emb, out = llm.get_input_embeddings().weight, llm.get_output_embeddings().weight
    return total, total - lora - (0 if emb is out else emb.numel()), lora


def flops_per_token(n_base: int, n_lora: int, llm_setting: str) -> int:
    """2N forward + 2N activation gradients + 2N weight gradients for weights that train (module docstring)."""
    return (6 if llm_setting == "full" else 4) * n_base + 6 * n_lora


def training(sh: Shape, work: str, rec: dict, opts: dict) -> None:
    from torch.distributed.fsdp import FSDPModule

    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.synthetic import length_mix_rows
    from ray_emer.train.fsdp import shard_model
    from ray_emer.features.columns import to_columns
    from ray_emer.train.loop import DataConfig, OptimConfig, make_optimizer, micro_step

    device = torch.device("cuda", torch.cuda.current_device()) if cuda() else torch.device("cpu")
    dtype, cfg, data = compute_dtype(), model_config(sh), DataConfig(batch_size=sh.train_batch)
    optim = OptimConfig(lr=1e-5, schedule="constant", warmup_steps=0)
    llm = cfg.llm_config
    rec["shape"] = {"preset": sh.preset, "init": "random", "llm_layers": llm["num_hidden_layers"],
                    "llm_hidden": llm["hidden_size"], "vocab": None,
                    "trainable": dataclasses.asdict(cfg.trainable), "lora_r": cfg.lora.r,
                    "batch_size": sh.train_batch, "steps": sh.train_steps, "warmup_steps": 1,
                    "packing": data.packing, "pack_length": data.pack_length, "dtype": dtype_name(dtype),
                    "autocast": "bfloat16" if cuda() else None, "world_size": 1}
    if cuda():
        torch.cuda.reset_peak_memory_stats()
    with process_group() as backend:
        rec["shape"]["fsdp"] = f"FSDP2 (fully_shard per decoder block + root), {backend}"
        log(f"training: building {sh.preset} ({dtype_name(dtype)})")
        model = AffectGPT.build(cfg, dtype=dtype, seed=0)
        rec["shape"]["vocab"] = model.llm.config.vocab_size
        n_llm, n_base, n_lora = flop_params(model)
        model = shard_model(model.to(device=device, dtype=dtype))
        rec["shape"]["fsdp_units"] = sum(isinstance(m, FSDPModule) for m in model.modules())
        opt, sched = make_optimizer(model, optim, sh.train_steps + 1)
        params = [p for p in model.parameters() if p.requires_grad]
        rows = length_mix_rows(sh.train_batch * (sh.train_steps + 1), cfg.video_dim, cfg.audio_dim, seed=5)
        model.train()
        times, tokens, positions, losses = [], 0, 0, []
        with GpuSampler(first_gpu()) as sampler:
            for k in range(sh.train_steps + 1):  # step 0 warms up
                batch = to_columns(rows[k * sh.train_batch:(k + 1) * sh.train_batch])
                sync()
                t0 = time.perf_counter()
                out = micro_step(model, batch, data, random.Random(k))
                if optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(params, optim.grad_clip)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                sync()
                dt = time.perf_counter() - t0
                if k:
                    times.append(dt)
                    tokens += out["tokens"]
                    positions += out["positions"]
                    losses.append(out["loss"])
                log(f"training step {k}/{sh.train_steps}: {dt:.3f} s, {out['tokens']} tokens, loss {out['loss']:.3f}")
        del model, opt, sched, params
    wall = sum(times)
    per_token = flops_per_token(n_base, n_lora, cfg.trainable.llm)
    device_name = torch.cuda.get_device_name() if cuda() else "cpu"
    peak = peak_flops(device_name) if cuda() else None
    rec.update({"llm_params": n_llm, "flop_params": n_base, "lora_params": n_lora,
                "flops_per_token": per_token,
                "flops_rule": "6*N (LLM full)" if cfg.trainable.llm == "full" else "4*N_base + 6*N_lora",
                "step_s": round(wall / sh.train_steps, 4),
                "samples_per_s": round(sh.train_batch * sh.train_steps / wall, 3),
                "tokens_per_s": round(tokens / wall, 1), "tokens_per_step": round(tokens / sh.train_steps, 1),
                "padding_share": round(1 - tokens / max(1, positions), 4),
                "model_flops_per_s": round(per_token * tokens / wall, 1), "peak_flops": peak,
                "mfu": round(per_token * tokens / wall / peak, 4) if peak else None,
                "loss_mean": round(float(np.mean(losses)), 4),
                "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda() else None,
                "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda() else None,
                **sampler.summary()})


def label_rows(sh: Shape, work: str) -> tuple[list[dict], str]:
    """Feature rows to label: the extraction section's (repeated up to the clip count), else rows with random
    features and the text lengths of real data."""
    from ray_emer.synthetic import length_mix_rows
    from ray_emer.train.loop import feature_rows

    feats = features_dir(work)
    if feats:
        from ray_emer.features.shards import read_shards

        base = feature_rows(read_shards(feats), "")
        if base:
            rows = [dict(base[i % len(base)], clip_id=f"c{i:05d}") for i in range(sh.label_clips)]
            return rows, "extraction features"
    cfg = model_config(sh)
    rows = length_mix_rows(sh.label_clips, cfg.video_dim, cfg.audio_dim, seed=9)
    for r in rows:
        r["error"] = ""
    return rows, "random features, real text lengths"


def labelling(sh: Shape, work: str, rec: dict, opts: dict) -> None:
    from ray_emer.infer.labeller import Labeller
    from ray_emer.features.columns import to_columns

    ckpt = checkpoint(sh, work)
    engine = resolve_engine(opts.get("engine", "auto"))
    lcfg = labeller_config(engine, sh, ckpt, batch_size=sh.label_batch)
    rows, source = label_rows(sh, work)
    rec["shape"] = {"preset": sh.preset, "init": "random", "engine": engine, "clips": len(rows), "rows": source,
                    "batch_size": lcfg.batch_size, "description_tokens": lcfg.description_tokens,
                    "label_tokens": lcfg.label_tokens, "dtype": dtype_name(compute_dtype()),
                    "vllm_gpu_memory_utilization": lcfg.vllm.gpu_memory_utilization if engine == "vllm" and cuda() else None}
    log(f"labelling: {len(rows)} clips with the {engine} engine")
    t0 = time.perf_counter()
    labeller = Labeller(ckpt, lcfg)
    rec["load_s"] = round(time.perf_counter() - t0, 2)
    rec["engine"] = labeller.engine.name
    labeller.label_batch(to_columns(rows[: lcfg.batch_size]))  # warm-up
    out = []
    with GpuSampler(first_gpu()) as sampler:
        sync()
        t0 = time.perf_counter()
        for i in range(0, len(rows), lcfg.batch_size):
            out.extend(labeller.label_batch(to_columns(rows[i:i + lcfg.batch_size])))
        sync()
        wall = time.perf_counter() - t0
    del labeller
    tokens = sum(r["generated_tokens"] for r in out)
    errors = [r["error"] for r in out if r["status"] != "ok"]
    rec.update({"clips": len(out), "ok": len(out) - len(errors), "label_s": round(wall, 3),
                "clips_per_s": round(len(out) / wall, 3), "generated_tokens": tokens,
                "generated_tokens_per_s": round(tokens / wall, 1),
                "generated_tokens_per_clip": round(tokens / max(1, len(out)), 1), **sampler.summary()})
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(out)} clips failed, first: {errors[0]}")


def serve_settings(engine: str):
    """(media, labeller settings, where they come from): the Serve app's (``ServeArgs``), or the analyzer's own
    defaults where Ray Serve is not installed (e.g. a vLLM-only venv)."""
    from ray_emer.infer.labeller import LabellerConfig
    from ray_emer.media import MediaConfig

    try:
        from ray_emer.serve.app import ServeArgs
    except ImportError as exc:
        return MediaConfig(), LabellerConfig(), f"analyzer defaults (no Ray Serve here: {exc.name})"
    args = ServeArgs(engine=engine)
    return args.media(), args.labeller, "the Serve app's (ServeArgs defaults)"


def serving(sh: Shape, work: str, rec: dict, opts: dict) -> None:
    from ray_emer.data.manifest import read_manifest
    from ray_emer.serve.analyzer import ClipModel, decode_media

    ckpt = checkpoint(sh, work)
    manifest = os.path.join(work, "archive", "manifest.csv") if os.path.exists(os.path.join(work, "archive.done")) \
        else archive(work, 4, name="serve_archive")
    clips = [r["video_uri"] for r in read_manifest(manifest).to_pylist()[:4]]
    uploads = [Path(c).read_bytes() for c in clips]
    engine = resolve_engine(opts.get("engine", "auto"))
    note = None
    if engine == "vllm" and opts.get("vllm_started"):
        engine, note = "hf", "vLLM already ran in this process (labelling): one engine per process, HF here"
    media, base, settings = serve_settings(engine)
    lcfg = labeller_config(engine, sh, ckpt, base=base)
    rec.update({"path": "analyzer in process: decode_media + ClipModel.analyze per request (what the Decoder and "
                        "Model deployments run; no HTTP, no Ray Serve, no request batching)", "note": note})
    rec["shape"] = {"preset": sh.preset, "init": "random", "engine": engine, "requests": sh.serve_requests,
                    "concurrency": 1, "settings": settings, "frame_size": media.frame_size, "description_tokens": lcfg.description_tokens,
                    "label_tokens": lcfg.label_tokens, "dtype": dtype_name(compute_dtype()),
                    "vllm_gpu_memory_utilization": lcfg.vllm.gpu_memory_utilization if engine == "vllm" and cuda() else None}
    log(f"serving: {sh.serve_requests} requests, {engine} engine")
    t0 = time.perf_counter()
    model = ClipModel(ckpt, lcfg, media)
    rec["load_s"] = round(time.perf_counter() - t0, 2)
    rec["engine"] = model.labeller.engine.name
    latency, parts = [], {"decode_s": [], "encode_s": [], "generate_s": []}
    with GpuSampler(first_gpu()) as sampler:
        for k in range(sh.serve_requests + 1):  # request 0 warms up
            t0 = time.perf_counter()
            row = decode_media(uploads[k % len(uploads)], ".mp4", media=media)
            answer = model.analyze([row])[0]
            sync()
            if answer.status != "ok":
                raise RuntimeError(f"request {k} failed: {answer.error}")
            if k:
                latency.append(time.perf_counter() - t0)
                for key in parts:
                    parts[key].append(answer.timings[key])
    del model
    rec.update({"requests": len(latency), "p50_s": round(float(np.percentile(latency, 50)), 4),
                "p95_s": round(float(np.percentile(latency, 95)), 4), "mean_s": round(float(np.mean(latency)), 4),
                "max_s": round(float(np.max(latency)), 4),
                **{f"mean_{k}": round(float(np.mean(v)), 4) for k, v in parts.items()}, **sampler.summary()})


RUNNERS = {"extraction": extraction, "training": training, "labelling": labelling, "serving": serving}


# ---------------------------------------------------------------- running sections
def run_in_process(name: str, sh: Shape, work: str, opts: dict) -> dict:
    rec: dict = {}
    t0 = time.perf_counter()
    try:
        RUNNERS[name](sh, work, rec, opts)
        error = None
    except Exception as exc:  # noqa: BLE001 - the other sections still run
        traceback.print_exc(file=sys.stderr)
        error = f"{type(exc).__name__}: {exc}"
    if name == "labelling" and rec.get("engine") == "vllm":
        opts["vllm_started"] = True
    gc.collect()
    if cuda():
        torch.cuda.empty_cache()
    return {"shape": rec.pop("shape", None), **rec, "wall_s": round(time.perf_counter() - t0, 2), "error": error}


def run_isolated(name: str, sh: Shape, work: str, opts: dict, timeout_s: float) -> dict:
    """The section in a fresh process of this script (its own session: a timeout ends its children too)."""
    part = os.path.join(work, f"section-{name}.json")
    Path(part).unlink(missing_ok=True)
    cmd = [sys.executable, SCRIPT, "--sections", name, "--isolate", "no", "--workdir", work, "--out", part,
           "--engine", opts.get("engine", "auto"), "--small" if sh.small else "--full"]
    t0 = time.perf_counter()
    # stdout too goes to stderr: this process's stdout carries only the path and the JSON
    proc = subprocess.Popen(cmd, stdout=2, start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"shape": None, "wall_s": round(time.perf_counter() - t0, 2),
                "error": f"timed out after {timeout_s:g} s (the section's process was killed)"}
    try:
        rec = json.loads(Path(part).read_text())["sections"][name]
    except (OSError, ValueError, KeyError):
        how = f"signal {-rc}" if rc < 0 else f"exit code {rc}"
        return {"shape": None, "wall_s": round(time.perf_counter() - t0, 2),
                "error": f"the section's process died ({how}) before writing its numbers; its output is above"}
    return {**rec, "process_s": round(time.perf_counter() - t0, 2)}


def run_suite(sections=SECTIONS, small: bool | None = None, work: str | None = None, isolate: bool | None = None,
              engine: str = "auto", section_timeout_s: float = 3600.0) -> dict:
    """Run the named sections; -> the result object (one section's failure is its ``error``).

    ``small``: tiny shapes (default: when there is no CUDA); ``isolate``: each section in its own process
    (default: on CUDA); ``work``: the folder the sections share (kept; default a temp folder, removed)."""
    sections = list(sections)
    unknown = [s for s in sections if s not in RUNNERS]
    if unknown:
        raise SystemExit(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    small = (not cuda()) if small is None else small
    isolate = cuda() if isolate is None else isolate
    sh, own_work = shape(small), work is None
    work = work or tempfile.mkdtemp(prefix="ray_emer_gpu_suite_")
    os.makedirs(work, exist_ok=True)
    device = torch.cuda.get_device_name() if cuda() else "cpu"
    result = {"device": device, "gpus": torch.cuda.device_count() if cuda() else 0, "torch": torch.__version__,
              "cuda": torch.version.cuda, "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "mode": "small" if small else "full", "isolated": isolate, "sections": {}}
    opts = {"engine": engine}
    t_suite = time.perf_counter()
    try:
        for name in sections:
            log(f"{name}: {'small' if small else 'full'} shapes on {device}{' (own process)' if isolate else ''}")
            rec = run_isolated(name, sh, work, opts, section_timeout_s) if isolate \
                else run_in_process(name, sh, work, opts)
            result["sections"][name] = rec
            log(f"{name}: {json.dumps(rec)}")
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    result["wall_s"] = round(time.perf_counter() - t_suite, 2)
    return result


def write_json(result: dict, path: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    Path(tmp).write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_suite.json", help="where the JSON goes")
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--small", action="store_true", default=None, help="tiny shapes (the default without CUDA)")
    size.add_argument("--full", dest="small", action="store_false", default=None,
                      help="published shapes (the default on CUDA)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--engine", choices=("auto", "hf", "vllm"), default="auto",
                    help="labelling and serving engine (auto: vLLM when it imports and CUDA is there)")
    ap.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                    help="each section in its own process (auto: on CUDA)")
    ap.add_argument("--section-timeout", type=float, default=3600.0, help="seconds per isolated section")
    ap.add_argument("--workdir", default=None, help="shared files of the sections (kept); default: a temp folder")
    ap.add_argument("--json", action="store_true", help="print the JSON object as the last stdout line")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    isolate = {"auto": None, "yes": True, "no": False}[args.isolate]
    result = run_suite(sections, small=args.small, work=args.workdir, isolate=isolate, engine=args.engine,
                       section_timeout_s=args.section_timeout)
    write_json(result, args.out)
    log(f"wrote {args.out}")
    print(os.path.abspath(args.out), flush=True)
    if args.json:
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
