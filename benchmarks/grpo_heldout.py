"""Stage 3 (GRPO) vs stage 2 on held-out clips of the synthetic archive, per training seed; prints JSON.

    nice python benchmarks/grpo_heldout.py --seeds 0 1 2          # the quickstart's archives, ~30 min on 2 cores

The quickstart's three archives (coarse 160 clips, clean 160, held-out 48; extracted once, sequentially, tiny
encoders) and its stage 1 and 2 (full training of the tiny random LLM, 200 + 300 steps, lr 1e-3), on the local
engine; then stage 3 (``method: grpo``, reward = emotion-wheel F-score + format - length) on the clean data's
train split from the stage-2 export. Both exports answer every held-out clip greedily (the ``ov_labels`` question
and the ``description`` question, straight from the model), scored with the evaluation's ``score_labels``:
``accuracy`` (first label is a gold label), ``emotion_accuracy`` (first label names the clip's emotion),
``ov_fscore`` (EW F-score, wheel tables given) and ``consistency``: the share of clips whose labels share an
emotion with the emotions the generated description states (``LexiconExtractor`` over the description; shared =
a common label or a common level-1 class on some wheel).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import tempfile

from ray_emer.data.extraction import ExtractConfig, extract_sequential
from ray_emer.data.manifest import read_manifest
from ray_emer.eval.extract import LexiconExtractor
from ray_emer.eval.labelled import gold_from_features, score_labels
from ray_emer.eval.wheel import NUM_WHEELS, EmotionWheels
from ray_emer.features.shards import read_shards
from ray_emer.model.checkpoint import load_checkpoint
from ray_emer.model.prompts import parse_ov_answer
from ray_emer.quickstart import QuickstartConfig, stage_config
from ray_emer.synthetic import emotion_of, write_archive
from ray_emer.tracking import TrackingConfig
from ray_emer.train.grpo import GRPOConfig
from ray_emer.train.loop import DataConfig, OptimConfig, ScalingConfig, batches, feature_rows
from ray_emer.train.run import run_stage

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WHEELS = os.path.join(HERE, "..", "..", "shared", "reference", "emotion_wheel_csv")


def features(work: str, name: str, synth) -> tuple[str, str]:
    out, manifest = os.path.join(work, f"{name}_features"), os.path.join(work, name, "manifest.csv")
    if not os.path.isdir(out):
        manifest = write_archive(os.path.join(work, name), synth)
        extract_sequential(ExtractConfig(input=manifest, output=out, progress=False))
    return out, manifest


def shares_emotion(a: list[str], b: list[str], wheels: EmotionWheels) -> bool:
    if {x.lower() for x in a} & {x.lower() for x in b}:
        return True
    return any(wheels.map_labels(a, w) & wheels.map_labels(b, w) for w in range(NUM_WHEELS))


def answer(ckpt: str, rows: list[dict]) -> dict[str, dict]:
    model = load_checkpoint(ckpt).eval()
    out = {}
    for batch in batches(rows, 16, random.Random(0), shuffle=False):
        proc = model.processor
        labels = model.generate(proc.from_rows(batch, "ov_labels", with_targets=False), max_new_tokens=24)
        descs = model.generate(proc.from_rows(batch, "description", with_targets=False), max_new_tokens=128)
        for cid, lab, desc in zip(batch["clip_id"], labels, descs, strict=True):
            out[str(cid)] = {"labels": parse_ov_answer(lab), "description": desc}
    return out


def score(answers: dict[str, dict], gold: dict, emotion: dict, wheels: EmotionWheels) -> dict:
    import pandas as pd

    frame = pd.DataFrame([{"clip_id": c, "status": "ok", "labels": a["labels"], "sentiment": "",
                           "description": a["description"]} for c, a in answers.items()])
    s = score_labels(frame, gold, wheels)
    extractor = LexiconExtractor(wheels)
    said = {c: extractor.extract_one(a["description"]) for c, a in answers.items()}
    return {"accuracy": s["accuracy"], "ov_fscore": s["ov"]["score"],
            "emotion_accuracy": statistics.mean(bool(a["labels"]) and emotion_of(a["labels"][0]) == emotion[c]
                                                for c, a in answers.items()),
            "consistency": statistics.mean(shares_emotion(a["labels"], said[c], wheels) for c, a in answers.items()),
            "n": len(answers)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--stage1-steps", type=int, default=200)
    ap.add_argument("--stage2-steps", type=int, default=300)
    ap.add_argument("--stage3-steps", type=int, default=80)
    ap.add_argument("--stage3-lr", type=float, default=3e-4)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per stage-3 step")
    ap.add_argument("--wheel-dir", default=DEFAULT_WHEELS)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = args.workdir or tempfile.mkdtemp(prefix="ray_emer_grpo_")
    q = QuickstartConfig(out=work, tracking=TrackingConfig(enabled=False))
    coarse, _ = features(work, "coarse", q.coarse)
    clean, _ = features(work, "clean", q.clean)
    heldout, manifest = features(work, "heldout", q.heldout)
    wheels = EmotionWheels.load(args.wheel_dir)
    table = read_shards(heldout)
    rows, gold = feature_rows(table, ""), gold_from_features(table)
    emotion = {r["clip_id"]: r["emotion"] for r in read_manifest(manifest).to_pylist()}
    results = []
    for seed in args.seeds:
        q.seed = seed
        local = ScalingConfig(engine="local")

        def stage(features_: str, name: str, steps: int, init: str, split: str, **kw):
            out = os.path.join(work, f"seed{seed}", name)
            if name != "stage3" and os.path.isfile(os.path.join(out, "config.json")):
                return {"output": out}  # a rerun into the same --workdir reuses the seed's stage 1 and 2
            cfg = dataclasses.replace(stage_config(q, features_, out, steps, init, split, name), scaling=local,
                                      tracking=TrackingConfig(enabled=False), **kw)
            return run_stage(cfg, log=lambda m: None)

        s1 = stage(coarse, "stage1", args.stage1_steps, "", "")
        s2 = stage(clean, "stage2", args.stage2_steps, s1["output"], "train")
        s3 = stage(clean, "stage3", args.stage3_steps, s2["output"], "train", method="grpo", log_every=1,
                   data=DataConfig(train_split="train", batch_size=args.prompts, packing=False),
                   optim=OptimConfig(lr=args.stage3_lr, warmup_steps=0, schedule="constant", weight_decay=0.0),
                   grpo=GRPOConfig(group_size=args.group_size, wheel_dir=args.wheel_dir))
        row = {"seed": seed, "stage2": score(answer(s2["output"], rows), gold, emotion, wheels),
               "stage3": score(answer(s3["output"], rows), gold, emotion, wheels),
               "reward_first": s3["reward_first"], "reward_last": s3["reward_last"], "kl_last": s3["kl_last"],
               "stage3_wall_s": s3["wall_s"]}
        results.append(row)
        print(json.dumps(row), flush=True)
    summary = {}
    for key in ("accuracy", "emotion_accuracy", "ov_fscore", "consistency"):
        deltas = [r["stage3"][key] - r["stage2"][key] for r in results]
        summary[key] = {"stage2_mean": statistics.mean(r["stage2"][key] for r in results),
                        "stage3_mean": statistics.mean(r["stage3"][key] for r in results),
                        "delta_mean": statistics.mean(deltas),
                        "delta_sd": statistics.stdev(deltas) if len(deltas) > 1 else 0.0}
    print(json.dumps({"seeds": args.seeds, "heldout_clips": len(rows), "stage3_steps": args.stage3_steps,
                      "stage3_lr": args.stage3_lr, "group_size": args.group_size, "prompts": args.prompts,
                      "summary": summary, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
