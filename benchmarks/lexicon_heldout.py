"""The lexicon extractor's EW F_s on a held-out half of the 332 OV-MERD gold descriptions.

    python benchmarks/lexicon_heldout.py                       # seed 0, 50/50, spread over seeds 0..19
    python benchmarks/lexicon_heldout.py --seed 3 --seeds 0    # another split, no spread

Every setting (focus conclusion|all x negation window 0..5) is scored on the tuning half
and the report half of a seeded split (``ray_emer.eval.unibench.split_names``); the
setting is chosen on the tuning half alone and its report-half F_s is the held-out
number. Prints one table (F_s/P/R per half; ``*`` the shipped defaults, ``<`` the
tuning half's choice), the decisions, the spread over ``--seeds`` splits, and one JSON
object as the last line. See ``benchmarks/lexicon_grid.py`` for what is held out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lexicon_grid import SHIPPED, heldout, load_ovmerd, over_seeds, predict_grid
from ray_emer.eval.wheel import EmotionWheels

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def run(reference: str | Path = REFERENCE, seed: int = 0, fraction: float = 0.5, seeds: int = 20) -> dict:
    reference = Path(reference)
    wheels = EmotionWheels.load(reference / "emotion_wheel")
    descriptions, gold = load_ovmerd(reference / "ovmerd")
    preds = predict_grid(descriptions, wheels)
    result = heldout(preds, gold, wheels, seed, fraction)
    result["over_seeds"] = over_seeds(preds, gold, wheels, range(seeds), fraction) if seeds > 0 else None
    return result


def table(result: dict) -> str:
    halves = ("tune", "report", "all")
    lines = [f"seed {result['seed']}: tuning half {result['n_tune']} names, report half {result['n_report']} names "
             f"(EW F_s / precision / recall; 'all' = the 332 names, the tuning data of the shipped defaults)",
             f"{'setting':<18}" + "".join(f"{h + ' F_s':>12}{'P':>8}{'R':>8}" for h in halves)]
    for row in result["variants"]:
        mark = ("*" if row["variant"] == SHIPPED.name else " ") + ("<" if row == result["chosen_on_tune"] else " ")
        lines.append(f"{row['variant'] + ' ' + mark:<18}" + "".join(
            f"{row[h]['score']:>12.4f}{row[h]['precision']:>8.4f}{row[h]['recall']:>8.4f}" for h in halves))
    d = result["decisions"]
    lines.append(f"tuning half chooses {result['chosen_on_tune']['variant']}: focus {d['focus']['chosen']} "
                 f"(shipped {d['focus']['shipped']}, margin {d['focus']['tune_margin']:+.4f} F_s), negation window "
                 f"{d['negation_window']['chosen']} (shipped {d['negation_window']['shipped']}, margin over none "
                 f"{d['negation_window']['tune_margin_over_none']:+.4f}); held-out F_s "
                 f"{result['chosen_on_tune']['report']['score']:.4f}")
    spread = result.get("over_seeds")
    if spread:
        c, s = spread["chosen_report_score"], spread["shipped_report_score"]
        n = len(spread["seeds"])
        lines.append(f"over {n} seeds: held-out F_s of the choice {c['mean']:.4f} +- {c['sd']:.4f} "
                     f"[{c['min']:.4f}, {c['max']:.4f}], of the shipped defaults {s['mean']:.4f} +- {s['sd']:.4f}; "
                     f"focus as shipped {spread['focus_as_shipped']}/{n}, negation skipping chosen "
                     f"{spread['negation_skipping_chosen']}/{n}, window {SHIPPED.negation_window} chosen "
                     f"{spread['window_as_shipped']}/{n}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", default=str(REFERENCE), help="the published reference folder (ovmerd/, emotion_wheel/)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the split (ray_emer.eval.unibench.split_names)")
    ap.add_argument("--fraction", type=float, default=0.5, help="share of the names in the tuning half")
    ap.add_argument("--seeds", type=int, default=20, help="also run seeds 0..N-1 for the spread (0: skip)")
    args = ap.parse_args(argv)
    result = run(args.reference, args.seed, args.fraction, args.seeds)
    print(table(result))
    print(json.dumps({k: v for k, v in result.items() if k not in ("tune_names", "report_names")}))
    return result


if __name__ == "__main__":
    main()
