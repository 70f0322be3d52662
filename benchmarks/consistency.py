"""Labels vs their own descriptions: held-out accuracy and consistency of the labelling modes, one checkpoint.

    python benchmarks/consistency.py /tmp/ray_emer_quickstart     # after `ray-emer quickstart`, ~1 min

Labels the quickstart's held-out features with its stage-2 checkpoint (HF engine, no Ray) three ways:
the model's labels prompt as generated (``state_labels: off``), the same labels with each description
stating them (``state_labels: auto``: a conclusion naming other emotions is decoded again with the first
label in place), and labels read from the description (``labels_from: lexicon``, the quickstart's
default). The vocabulary is the archive's (its wheel tables, as the quickstart writes them). Prints one
JSON line per mode: accuracy (first label is a gold label), consistency, sentiment accuracy, EW F_s,
BLEU-4 and seconds. Same checkpoint, same clips: differences are the modes', not training's.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import pandas as pd

from ray_emer.eval.labelled import gold_from_features, score_labels
from ray_emer.eval.wheel import EmotionWheels, write_wheel_tables
from ray_emer.features.shards import read_shards, table_columns
from ray_emer.infer.labeller import Labeller, LabellerConfig
from ray_emer.synthetic import EMOTIONS, SYNONYMS

MODES = {"model, state_labels off": dict(state_labels="off"),
         "model, state_labels auto": dict(),
         "lexicon (from the description)": dict(labels_from="lexicon")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("quickstart", help="the quickstart's --out folder (heldout_features/, stage2/)")
    args = parser.parse_args()
    feats = read_shards(f"{args.quickstart}/heldout_features", columns=None)
    gold = gold_from_features(feats.drop(["video_feats", "audio_feats"]))
    wheel_dir = write_wheel_tables(tempfile.mkdtemp(prefix="wheel-"), {e: SYNONYMS[e] for e in EMOTIONS})
    wheels, batch = EmotionWheels.load(wheel_dir), table_columns(feats)
    for name, settings in MODES.items():
        t0 = time.perf_counter()
        labeller = Labeller(f"{args.quickstart}/stage2", LabellerConfig(batch_size=16, wheel_dir=wheel_dir, **settings))
        s = score_labels(pd.DataFrame(labeller.label_batch(batch)), gold, wheels)
        print(json.dumps({"mode": name, "accuracy": round(s["accuracy"], 4), "consistency": round(s["consistency"], 4),
                          "sentiment_accuracy": round(s["sentiment_accuracy"], 4), "ov_fs": round(s["ov"]["score"], 4),
                          "bleu_4": round(s["text"]["bleu_4"], 4), "s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
