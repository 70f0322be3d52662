"""Load test of the Ray Serve endpoint on loopback: latency percentiles, throughput, non-2xx, replicas over time,
and the time to first token of streamed chat answers.

    python benchmarks/serve_load.py                 # tiny preset (random weights), concurrency 1, 4, 16, ~3 min

Starts a local Ray and the application with the deployment settings of
``serve_config.yaml`` (autoscaling, bounded queues), then sends synthetic clips as
multipart uploads to ``/v1/analyze`` at each concurrency for a bounded number of
requests and seconds, samples the replica count of each deployment every second, and
keeps sampling while idle afterwards to show the scale-down. Then, one at a time,
``--stream-requests`` chat completions with ``stream: true``: the time to the first
content delta (TTFT) and to the end of the answer, with the server's timings of each
(what the first token waits for: decoding, encoding, the prompt and the first tokens). Loopback only.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
KEY = "load-test-key"


def replica_counts(app: str) -> dict[str, int]:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None:
        return {}
    return {name: int(d.replica_states.get("RUNNING", 0)) for name, d in status.deployments.items()}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def run_level(url: str, clips: list[bytes], concurrency: int, n: int, max_s: float) -> dict:
    latencies, codes = [], []
    deadline = time.perf_counter() + max_s

    def one(i: int):
        if time.perf_counter() > deadline:
            return None
        t0 = time.perf_counter()
        try:
            r = requests.post(f"{url}/v1/analyze", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                              files={"file": ("clip.mp4", clips[i % len(clips)], "video/mp4")})
            code = r.status_code
        except requests.RequestException:
            code = 599
        return time.perf_counter() - t0, code

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for res in pool.map(one, range(n)):
            if res is not None:
                latencies.append(res[0])
                codes.append(res[1])
    wall = time.perf_counter() - t0
    ok = [lat for lat, c in zip(latencies, codes, strict=True) if 200 <= c < 300]
    return {"concurrency": concurrency, "requests": len(codes), "ok": len(ok),
            "non_2xx": sum(not 200 <= c < 300 for c in codes), "5xx": sum(c >= 500 for c in codes),
            "p50_s": percentile(ok, 0.5) if ok else None, "p95_s": percentile(ok, 0.95) if ok else None,
            "p99_s": percentile(ok, 0.99) if ok else None, "throughput_rps": len(ok) / wall if wall else 0.0,
            "mean_s": statistics.mean(ok) if ok else None}


def stream_one(url: str, clip: bytes) -> dict:
    """One streamed chat answer: seconds to the first content delta and to the end, the server's timings."""
    body = {"model": "ray-emer", "stream": True, "messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," + base64.b64encode(clip).decode()}}]}]}
    t0 = time.perf_counter()
    first, extra, deltas = None, {}, 0
    with requests.post(f"{url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, json=body,
                       stream=True, timeout=120) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(chunk["error"]["message"])
            if chunk["choices"][0]["delta"].get("content"):
                first = first if first is not None else time.perf_counter() - t0
                deltas += 1
            extra = chunk.get("ray_emer", extra)
    return {"ttft_s": first, "full_s": time.perf_counter() - t0, "deltas": deltas, "timings": extra["timings"]}


def run_stream_level(url: str, clips: list[bytes], n: int) -> dict:
    """``n`` streamed answers at concurrency 1: TTFT and full-answer percentiles, their ratio, and the medians
    of the server's timings (what TTFT is made of)."""
    runs = [stream_one(url, clips[i % len(clips)]) for i in range(n)]
    ttft, full = [r["ttft_s"] for r in runs], [r["full_s"] for r in runs]
    median = {k: statistics.median(r["timings"][k] for r in runs)
              for k in ("decode_s", "encode_s", "first_text_s", "generate_s", "model_s", "total_s")}
    return {"concurrency": 1, "requests": n, "ttft_p50_s": percentile(ttft, 0.5), "ttft_p95_s": percentile(ttft, 0.95),
            "full_p50_s": percentile(full, 0.5), "full_p95_s": percentile(full, 0.95),
            "ttft_p50_over_full_p50": percentile(ttft, 0.5) / percentile(full, 0.5),
            "deltas_p50": statistics.median(r["deltas"] for r in runs), "server_timings_p50": median}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", help="a checkpoint directory (default: the tiny preset, random weights)")
    ap.add_argument("--levels", default="1,4,16", help="concurrency levels")
    ap.add_argument("--requests", type=int, default=48,
                    help="requests per level, times concurrency/4 above 4 (bounded by --max-seconds)")
    ap.add_argument("--max-seconds", type=float, default=90, help="per level (bounded)")
    ap.add_argument("--idle-seconds", type=float, default=40, help="sampling replicas after the load")
    ap.add_argument("--stream-requests", type=int, default=16,
                    help="streamed chat answers after the load, one at a time (0: none)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import ray
    from ray import serve

    from ray_emer.model.checkpoint import random_checkpoint
    from ray_emer.serve.app import build_app_with
    from ray_emer.synthetic import SynthConfig, write_archive

    work = Path(tempfile.mkdtemp(prefix="ray_emer_serve_load_"))
    ckpt = args.checkpoint or random_checkpoint(str(work / "ckpt"))
    manifest = write_archive(str(work / "clips"), SynthConfig(clips=8, seed=3))
    clips = [p.read_bytes() for p in sorted((Path(manifest).parent / "clips").glob("*.mp4"))]
    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())["applications"][0]
    options = {d["name"]: d for d in cfg["deployments"]}
    app_args = {**cfg["args"], "checkpoint": ckpt, "api_key": KEY}

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    port = 8000 + os.getpid() % 1000
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app_with(app_args, options), name="ray_emer", route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    timeline, stop, t_start = [], threading.Event(), time.perf_counter()

    def sample():
        while not stop.is_set():
            timeline.append((round(time.perf_counter() - t_start, 1), replica_counts("ray_emer")))
            stop.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    requests.post(f"{url}/v1/analyze", headers={"Authorization": f"Bearer {KEY}"},
                  files={"file": ("clip.mp4", clips[0], "video/mp4")}, timeout=120)  # warm-up
    levels = []
    for c in (int(x) for x in args.levels.split(",")):
        n = args.requests * max(1, c // 4)
        t0 = round(time.perf_counter() - t_start, 1)
        levels.append({**run_level(url, clips, c, n, args.max_seconds), "t_start": t0,
                       "t_end": round(time.perf_counter() - t_start, 1)})
    load_end = time.perf_counter() - t_start
    time.sleep(args.idle_seconds)
    stop.set()
    sampler.join()
    streaming = run_stream_level(url, clips, args.stream_requests) if args.stream_requests > 0 else None
    serve.shutdown()
    ray.shutdown()

    print(f"{'conc':>5} {'reqs':>5} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7} {'req/s':>7} {'non-2xx':>8} {'5xx':>4}"
          f"  window")
    for lv in levels:
        print(f"{lv['concurrency']:>5} {lv['requests']:>5} {lv['p50_s']:>7.3f} {lv['p95_s']:>7.3f} {lv['p99_s']:>7.3f} "
              f"{lv['throughput_rps']:>7.2f} {lv['non_2xx']:>8} {lv['5xx']:>4}  t={lv['t_start']}-{lv['t_end']} s")
    c1 = levels[0]
    print(f"p95/p50 at concurrency {c1['concurrency']}: {c1['p95_s'] / c1['p50_s']:.2f}")
    names = sorted({n for _, counts in timeline for n in counts})
    print("replicas over time (" + ", ".join(names) + "); load ended at " + f"{load_end:.0f} s:")
    last = None
    for t, counts in timeline:
        row = tuple(counts.get(n, 0) for n in names)
        if row != last:
            print(f"  t={t:>6.1f} s  " + "  ".join(f"{n}={v}" for n, v in zip(names, row, strict=True)))
            last = row
    if streaming:
        st = streaming
        print(f"streamed chat answers, concurrency 1, {st['requests']} requests: ttft_p50_s={st['ttft_p50_s']:.3f} "
              f"ttft_p95_s={st['ttft_p95_s']:.3f} full_p50_s={st['full_p50_s']:.3f} "
              f"ttft_p50/full_p50={st['ttft_p50_over_full_p50']:.3f} (content deltas p50: {st['deltas_p50']:.0f})")
        print("  server timings p50: " + "  ".join(f"{k}={v:.3f}" for k, v in st["server_timings_p50"].items()))
    if args.json:
        print(json.dumps({"levels": levels, "timeline": timeline, "load_end_s": load_end, "streaming": streaming}))


if __name__ == "__main__":
    main()
