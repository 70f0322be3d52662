"""The GPU benchmark suite in one command: extraction, a training step, labelling and serving, one JSON.

    python benchmarks/gpu_suite.py --out result.json                 # a CUDA machine: the published sizes
    python benchmarks/gpu_suite.py --small --out /tmp/result.json    # any machine (chosen when there is no CUDA)

Every model is built from config with random weights (compute does not depend on them; nothing
to download; the shipped tiny tokenizer's ids fit any vocabulary). Sizes: on CUDA the
``affectgpt-qwen2.5-7b`` preset (CLIP ViT-L/14 + HuBERT-large encoders, a Qwen2.5-7B-shaped LLM
with LoRA); ``--small`` the ``tiny`` preset in fp32, so the same code paths run in the test suite.

- extraction: the Ray Data job (``run_extract``: decode tasks + encoder actors, one GPU each)
  over a synthetic archive: end-to-end clips/s and clips/s per GPU, plus the frozen encoders
  alone on decoded clips; GPU utilisation sampled while the job runs (NVML or nvidia-smi).
- training: the library's training step (``loop.micro_step``: processor, packing, head, LLM;
  then clipping and AdamW) under FSDP2 (``train.fsdp.shard_model``, a world-size-1 process group:
  NCCL on CUDA, gloo otherwise), bf16 parameters on CUDA: samples/s, tokens/s, model FLOPs
  utilisation and peak memory. MFU counts 2*N FLOPs per token forward and 2*N backward for the
  activations; with LoRA the frozen base weights take no weight gradient, so 4*N per token
  (6*N for full training), N = the LLM's parameters; divided by the GPU's dense bf16 peak.
- labelling: ``Labeller`` (description + OV labels per clip) with the vLLM engine when vllm
  imports, else the HF engine: clips/s and generated tokens/s.
- serving: ``ClipModel`` in process (decode -> encoders -> labeller for one uploaded clip, the
  path every Serve replica runs; HTTP and Ray Serve not included): p50/p95 latency.

One failing section records its error and the others still run. ``--json`` prints the JSON as
the last stdout line; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import numpy as np
import torch

SECTIONS = ("extraction", "training", "labelling", "serving")
# dense bf16 peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12, "L4": 121e12}


def log(msg: str) -> None:
    print(f"[gpu_suite] {msg}", file=sys.stderr, flush=True)


@dataclasses.dataclass
class Shape:
    small: bool
    preset: str
    clips: int  # extraction archive
    train_batch: int
    train_steps: int
    label_clips: int
    label_batch: int
    description_tokens: int
    label_tokens: int
    serve_requests: int


def shape(small: bool) -> Shape:
    if small:
        return Shape(True, "tiny", 16, 4, 3, 8, 4, 16, 8, 5)
    return Shape(False, "affectgpt-qwen2.5-7b", 512, 8, 10, 256, 64, 160, 32, 20)


def model_config(sh: Shape):
    """The preset with random weights and the shipped tiny tokenizer (nothing to download)."""
    from ray_emer.model.config import get_preset

    cfg = get_preset(sh.preset)
    cfg.init, cfg.tokenizer = "random", "tiny"
    return cfg


def peak_flops(device: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in device), None)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class GpuSampler:
    """Mean and max GPU utilisation (%) while it runs: NVML if importable, else nvidia-smi; None without a GPU."""

    def __init__(self, period: float = 0.5) -> None:
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._read = self._reader() if torch.cuda.is_available() else None
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _reader():
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            return lambda: [float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu) for h in handles]
        except Exception:  # noqa: BLE001 - no NVML: ask nvidia-smi
            if not shutil.which("nvidia-smi"):
                return None

            def smi() -> list[float]:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                return [float(x) for x in out.split()]

            return smi

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append(self._read())
            self._stop.wait(self.period)

    def __enter__(self):
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def summary(self) -> dict:
        if not self.samples:
            return {"gpu_util_mean": None, "gpu_util_max": None}
        per = [float(np.mean(s)) for s in self.samples if s]
        return {"gpu_util_mean": round(float(np.mean(per)), 1), "gpu_util_max": round(float(np.max(per)), 1)}


# ---------------------------------------------------------------- sections
def extraction(sh: Shape, work: str, state: dict) -> dict:
    import ray

    from ray_emer.data.features import ExtractConfig, FeatureEncoder, decode_row, effective_media, stack_rows
    from ray_emer.data.manifest import read_manifest
    from ray_emer.data.pipeline import run_extract
    from ray_emer.synthetic import SynthConfig, write_archive

    cfg = model_config(sh)
    preset_dir = os.path.join(work, "preset")
    os.makedirs(preset_dir, exist_ok=True)
    with open(os.path.join(preset_dir, "config.json"), "w") as fh:
        fh.write(cfg.to_json())
    manifest = write_archive(os.path.join(work, "archive"), SynthConfig(clips=sh.clips, seed=3))
    ecfg = ExtractConfig(input=manifest, output=os.path.join(work, "features"), preset=preset_dir, progress=False)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    ecfg.num_encoders = max(1, gpus)
    with GpuSampler() as sampler:
        summary = run_extract(ecfg, log=lambda m: None)
    state["features"], state["preset_dir"], state["manifest"] = ecfg.output, preset_dir, manifest
    # the frozen encoders alone on decoded clips (what one GPU sustains once decoding keeps up)
    media = effective_media(ecfg)
    records = read_manifest(manifest).to_pylist()[: min(32, sh.clips)]
    decoded = stack_rows([decode_row(r, media) for r in records])
    encoder = FeatureEncoder(preset_dir, media)
    encoder.encode_batch(decoded)
    sync()
    t0 = time.perf_counter()
    reps = 3
    for _ in range(reps):
        encoder.encode_batch(decoded)
    sync()
    enc_s = time.perf_counter() - t0
    del encoder
    return {"clips": summary["processed"], "ok": summary["ok"], "error_rows": summary["error"],
            "clips_per_s": summary["clips_per_s"], "gpus": gpus,
            "clips_per_s_per_gpu": round(summary["clips_per_s"] / gpus, 3) if gpus else None,
            "first_shard_s": summary.get("first_shard_s"),
            "encoder_only_clips_per_s": round(reps * len(records) / enc_s, 2),
            "frame_size": media.frame_size, **sampler.summary()}


@contextlib.contextmanager
def process_group(cuda: bool):
    """A world-size-1 process group for FSDP2 (kept when the caller already has one)."""
    dist = torch.distributed
    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0,
                            world_size=1, timeout=datetime.timedelta(minutes=5))
    try:
        yield
    finally:
        dist.destroy_process_group()


def training(sh: Shape, work: str, state: dict) -> dict:
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.synthetic import length_mix_rows
    from ray_emer.train.fsdp import shard_model
    from ray_emer.train.loop import DataConfig, OptimConfig, make_optimizer, micro_step, stack_batch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    cfg = model_config(sh)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with process_group(cuda):
        model = AffectGPT.build(cfg, dtype=dtype, seed=0)
        n_llm = sum(p.numel() for p in model.llm.parameters())
        lora = model.has_lora
        model = shard_model(model.to(device=device, dtype=dtype))
        opt, _ = make_optimizer(model, OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant"), sh.train_steps + 1)
        params = [p for p in model.parameters() if p.requires_grad]
        rows = length_mix_rows(sh.train_batch * (sh.train_steps + 1), cfg.video_dim, cfg.audio_dim, seed=5)
        data = DataConfig(batch_size=sh.train_batch)
        model.train()
        times, tokens, positions = [], 0, 0
        for k in range(sh.train_steps + 1):  # step 0 warms up
            batch = stack_batch(rows[k * sh.train_batch:(k + 1) * sh.train_batch])
            sync()
            t0 = time.perf_counter()
            out = micro_step(model, batch, data, random.Random(k))
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            if k:
                times.append(time.perf_counter() - t0)
                tokens += out["tokens"]
                positions += out["positions"]
            log(f"training step {k}/{sh.train_steps}: {time.perf_counter() - t0:.2f} s, loss {out['loss']:.3f}")
        del model, opt
    wall = sum(times)
    per_token = (4 if lora else 6) * n_llm
    peak = peak_flops(torch.cuda.get_device_name() if cuda else "")
    return {"preset": sh.preset, "llm_params": n_llm, "lora": lora, "dtype": str(dtype).replace("torch.", ""),
            "batch_size": sh.train_batch, "steps": sh.train_steps, "step_s": round(wall / sh.train_steps, 4),
            "samples_per_s": round(sh.train_batch * sh.train_steps / wall, 3),
            "tokens_per_s": round(tokens / wall, 1), "padding_share": round(1 - tokens / max(1, positions), 4),
            "model_flops_per_s": round(per_token * tokens / wall, 1),
            "mfu": round(per_token * tokens / wall / peak, 4) if peak else None,
            "peak_flops": peak, "flops_per_token": f"{'4' if lora else '6'}*N (N = LLM parameters)",
            "peak_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def _checkpoint(sh: Shape, work: str, state: dict) -> str:
    """One checkpoint of the preset with random weights, written once for labelling and serving."""
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint

    if "checkpoint" not in state:
        path = os.path.join(work, "checkpoint")
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32  # a 7B random base: 15 GB, not 30
        save_checkpoint(AffectGPT.build(model_config(sh), dtype=dtype, seed=0), path)
        state["checkpoint"] = path
    return state["checkpoint"]


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def labelling(sh: Shape, work: str, state: dict) -> dict:
    from ray_emer.data.features import read_features
    from ray_emer.infer.labeller import Labeller, LabellerConfig
    from ray_emer.synthetic import length_mix_rows
    from ray_emer.train.loop import stack_batch

    ckpt = _checkpoint(sh, work, state)
    engine = "vllm" if _vllm_available() else "hf"
    cfg = model_config(sh)
    if state.get("features"):  # the extraction section's features, repeated up to the clip count
        table = read_features(state["features"])
        from ray_emer.train.loop import feature_rows

        base = feature_rows(table, "")
        rows = [dict(base[i % len(base)], clip_id=f"c{i:05d}") for i in range(sh.label_clips)]
    else:
        rows = length_mix_rows(sh.label_clips, cfg.video_dim, cfg.audio_dim, seed=9)
    for r in rows:
        r.setdefault("error", "")
    lcfg = LabellerConfig(engine=engine, batch_size=sh.label_batch, description_tokens=sh.description_tokens,
                          label_tokens=sh.label_tokens)
    t0 = time.perf_counter()
    labeller = Labeller(ckpt, lcfg)
    load_s = time.perf_counter() - t0
    labeller.label_batch(stack_batch(rows[: min(len(rows), sh.label_batch)]))  # warm-up
    sync()
    t0 = time.perf_counter()
    out = []
    for i in range(0, len(rows), sh.label_batch):
        out.extend(labeller.label_batch(stack_batch(rows[i:i + sh.label_batch])))
    sync()
    wall = time.perf_counter() - t0
    tokens = sum(r["generated_tokens"] for r in out)
    state["vllm_started"] = engine == "vllm"
    del labeller
    return {"engine": engine, "clips": len(out), "ok": sum(r["status"] == "ok" for r in out),
            "batch_size": sh.label_batch, "load_s": round(load_s, 2), "clips_per_s": round(len(out) / wall, 3),
            "generated_tokens_per_s": round(tokens / wall, 1), "generated_tokens": tokens}


def serving(sh: Shape, work: str, state: dict) -> dict:
    from ray_emer.infer.labeller import LabellerConfig
    from ray_emer.media import MediaConfig
    from ray_emer.serve.analyzer import ClipModel, decode_media
    from ray_emer.synthetic import SynthConfig, write_archive

    ckpt = _checkpoint(sh, work, state)
    manifest = state.get("manifest") or write_archive(os.path.join(work, "serve_archive"), SynthConfig(clips=2, seed=4))
    from ray_emer.data.manifest import read_manifest

    clip = read_manifest(manifest).to_pylist()[0]["video_uri"]
    with open(clip, "rb") as fh:
        data = fh.read()
    # one vLLM engine per process: after the labelling section's, serving measures the HF engine
    engine = "vllm" if _vllm_available() and not state.get("vllm_started") else "hf"
    lcfg = LabellerConfig(engine=engine, batch_size=1,
                          description_tokens=sh.description_tokens, label_tokens=sh.label_tokens)
    model = ClipModel(ckpt, lcfg, MediaConfig())
    media = model.media
    lat = []
    for k in range(sh.serve_requests + 1):  # request 0 warms up
        t0 = time.perf_counter()
        row = decode_media(data, ".mp4", media=media)
        answer = model.analyze([row])[0]
        sync()
        if k:
            lat.append(time.perf_counter() - t0)
        if answer.status != "ok":
            raise RuntimeError(f"the served clip failed: {answer.error}")
    del model
    return {"path": "ClipModel in process (decode, encoders, labeller; no HTTP, no Ray Serve)",
            "engine": lcfg.engine, "requests": len(lat), "p50_s": round(float(np.percentile(lat, 50)), 4),
            "p95_s": round(float(np.percentile(lat, 95)), 4), "mean_s": round(float(np.mean(lat)), 4)}


RUNNERS = {"extraction": extraction, "training": training, "labelling": labelling, "serving": serving}


def run_suite(sections=SECTIONS, small: bool | None = None, work: str | None = None) -> dict:
    """Run the named sections; -> the result object (one section's failure is its ``error``)."""
    small = (not torch.cuda.is_available()) if small is None else small
    sh = shape(small)
    work = work or tempfile.mkdtemp(prefix="ray_emer_gpu_suite_")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result = {"device": device, "gpus": torch.cuda.device_count(), "torch": torch.__version__,
              "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
              "shape": dataclasses.asdict(sh), "sections": {}}
    state: dict = {}
    for name in sections:
        if name not in RUNNERS:
            raise SystemExit(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
        log(f"{name} ({'small' if small else 'full'} shapes on {device})")
        t0 = time.perf_counter()
        try:
            numbers, error = RUNNERS[name](sh, work, state), None
        except Exception as exc:  # noqa: BLE001 - the other sections still run
            traceback.print_exc(file=sys.stderr)
            numbers, error = {}, f"{type(exc).__name__}: {exc}"
        result["sections"][name] = {**numbers, "wall_s": round(time.perf_counter() - t0, 2), "error": error}
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log(f"{name}: {json.dumps(result['sections'][name])}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_suite.json", help="where the JSON goes")
    ap.add_argument("--small", action="store_true", help="tiny shapes (the default without CUDA)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--json", action="store_true", help="print the JSON object as the last stdout line")
    args = ap.parse_args()
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    result = run_suite(sections, small=True if args.small else None, work=args.workdir)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    log(f"wrote {args.out}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
