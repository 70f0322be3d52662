"""Long recordings, end to end: how fast `ray-emer label` turns a recording into an emotion timeline.

    python benchmarks/timeline.py --json                  # 10 and 40 min recordings, tiny preset (~6 min)
    python benchmarks/timeline.py --minutes 5 --json      # one quick length

For each length, a synthetic recording (clips of known emotions joined with pauses, ``synthetic_recording``) is
labelled by the job (``run_label`` on a folder holding it: one streamed decode, segments, encoders, labeller,
timelines) in one local Ray session, and measured:

- ``realtime_factor``: seconds of recording labelled per wall second of the job;
- ``decode_ceiling_factor``: the decode pass alone (``stream_segments``: frames, audio, cuts), one process per core
  on copies of the recording, seconds of recording per wall second; ``ratio`` = realtime / ceiling;
- ``decode_peak_rss_mb``: the peak RSS of one process decoding the whole recording (flat in its length: the
  stream holds the open segments only); ``job_peak_rss_mb``: the largest RSS of any process of the job, sampled;
- ``boundary_recall``: the share of true joins with a segment boundary within 0.5 s;
- ``segment_accuracy``: the share of segments whose first label names the emotion of the clip under their middle
  (meaningful with a trained ``--checkpoint``; the default tiny preset has random weights).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

DECODE = """
import sys, time
from ray_emer.media import MediaConfig, probe
from ray_emer.media.recording import stream_segments
from ray_emer.media.segments import SegmentConfig
path, size = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
n = sum(1 for _ in stream_segments(path, probe(path), MediaConfig(frame_size=size), SegmentConfig()))
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))  # this image's peak (not
print(n, time.perf_counter() - t0, int(hwm.split()[1]) / 1024)  # ru_maxrss: it keeps the forking parent's)
"""


def decode_ceiling(path: str, size: int, procs: int) -> dict:
    """``procs`` processes decode copies of the recording at once; -> factor and one process's peak RSS."""
    copies = [path] + [shutil.copy(path, f"{path}.{i}.mp4") for i in range(1, procs)]
    t0 = time.perf_counter()
    runs = [subprocess.Popen([sys.executable, "-c", DECODE, p, str(size)], stdout=subprocess.PIPE, text=True)
            for p in copies]
    outs = [r.communicate()[0].split() for r in runs]
    wall = time.perf_counter() - t0
    for p in copies[1:]:
        os.remove(p)
    return {"segments": int(outs[0][0]), "wall_s": wall, "single_s": float(outs[0][1]),
            "peak_rss_mb": max(float(o[2]) for o in outs)}


class RssSampler:
    """The largest RSS of any process of this session (this driver and its Ray processes), every 0.2 s, and which
    process it was."""

    def __init__(self) -> None:
        self.peak, self.who, self._stop = 0.0, "", threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            procs = [me] + me.children(recursive=True)
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                    if rss > self.peak:
                        self.peak, self.who = rss, "driver" if p.pid == me.pid else " ".join(p.cmdline())[:60]
                except psutil.Error:
                    pass
            self._stop.wait(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def segment_accuracy(timeline: dict, spans: list[dict]) -> float:
    from ray_emer.synthetic import emotion_of

    hits = n = 0
    for s in timeline["segments"]:
        mid = (s["start_s"] + s["end_s"]) / 2
        under = next((c for c in spans if c["start_s"] <= mid < c["end_s"]), None)
        if under is None or "error" in s:
            continue
        n += 1
        hits += bool(s["labels"]) and emotion_of(s["labels"][0]) == under["emotion"]
    return hits / n if n else 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", default="10,40", help="recording lengths (the first and last are compared)")
    ap.add_argument("--checkpoint", help="a checkpoint directory (default: the tiny preset, random weights)")
    ap.add_argument("--batch-size", type=int, default=32, help="labeller batch size")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import ray

    from ray_emer.data.label_job import LabelJobConfig, run_label
    from ray_emer.features.encoder import effective_media
    from ray_emer.infer.labeller import LabellerConfig
    from ray_emer.model.checkpoint import random_checkpoint
    from ray_emer.synthetic import SynthConfig
    from ray_emer.synthetic_recording import write_recording
    from ray_emer.tracking import TrackingConfig

    work = Path(tempfile.mkdtemp(prefix="ray_emer_timeline_"))
    ckpt = args.checkpoint or random_checkpoint(str(work / "ckpt"))
    size = effective_media(ckpt, LabelJobConfig().extract.media).frame_size
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    results = []
    for minutes in (float(m) for m in args.minutes.split(",")):
        folder = work / f"rec_{minutes:g}min"
        folder.mkdir()
        rec = write_recording(str(folder / "recording.mp4"), SynthConfig(seed=7, min_duration_s=2.5,
                                                                          max_duration_s=6.0), minutes * 60)
        ceiling = decode_ceiling(rec["path"], size, os.cpu_count() or 1)
        cfg = LabelJobConfig(input=str(folder), output=str(work / f"out_{minutes:g}min"), checkpoint=ckpt,
                             labeller=LabellerConfig(batch_size=args.batch_size), progress=False,
                             tracking=TrackingConfig(enabled=False))
        with RssSampler() as rss:
            t0 = time.perf_counter()
            summary = run_label(cfg, log=lambda m: None)
            wall = time.perf_counter() - t0
        timeline = json.loads(Path(summary["timelines"]["recording"]).read_text())
        bounds = [s["start_s"] for s in timeline["segments"][1:]]
        recall = sum(any(abs(b - j) <= 0.5 for b in bounds) for j in rec["joins"]) / len(rec["joins"])
        procs = os.cpu_count() or 1
        row = {"minutes": minutes, "duration_s": rec["duration_s"], "segments": len(timeline["segments"]),
               "rows_ok": summary["ok"], "rows_error": summary["error"], "wall_s": round(wall, 2),
               "realtime_factor": round(rec["duration_s"] / wall, 2),
               "decode_ceiling_factor": round(procs * rec["duration_s"] / ceiling["wall_s"], 2),
               "decode_one_process_factor": round(rec["duration_s"] / ceiling["single_s"], 2),
               "decode_peak_rss_mb": round(ceiling["peak_rss_mb"], 1), "job_peak_rss_mb": round(rss.peak, 1),
               "job_peak_rss_process": rss.who,
               "boundary_recall": round(recall, 3), "segment_accuracy": round(segment_accuracy(timeline,
                                                                                               rec["spans"]), 3)}
        row["ratio"] = round(row["realtime_factor"] / row["decode_ceiling_factor"], 3)
        results.append(row)
        print(f"{minutes:g} min: {row['segments']} segments, {row['realtime_factor']}x real time "
              f"(decode ceiling {row['decode_ceiling_factor']}x on {procs} cores, ratio {row['ratio']}), decode peak "
              f"RSS {row['decode_peak_rss_mb']} MB, job peak RSS {row['job_peak_rss_mb']} MB, boundary recall "
              f"{row['boundary_recall']}, segment accuracy {row['segment_accuracy']}", file=sys.stderr)
    ray.shutdown()
    first, last = results[0], results[-1]
    out = {"lengths": results, "cores": os.cpu_count(), "checkpoint": args.checkpoint or "tiny (random weights)",
           "decode_rss_growth": round(last["decode_peak_rss_mb"] / first["decode_peak_rss_mb"] - 1, 3),
           "job_rss_growth": round(last["job_peak_rss_mb"] / first["job_peak_rss_mb"] - 1, 3)}
    print(json.dumps(out) if args.json else json.dumps(out, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
