"""Labels that agree with their own description: the ``consistency`` score on hand-made rows, and the
labeller's descriptions that state the labels (``state_labels``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ray_emer.eval.consistency import consistency, conclusion_slot
from ray_emer.eval.extract import LexiconExtractor
from ray_emer.eval.wheel import EmotionWheels, Wheel, write_wheel_tables
from ray_emer.synthetic import EMOTIONS, SYNONYMS

CLUES = "In the video, the mouth turns up. The subtitle says \"Hi\", which openly expresses a {} feeling. "
END = "Weighing the facial, vocal and verbal clues together, the person's emotional state is most likely {}."


def synthetic_wheels(tmp_path) -> EmotionWheels:
    return EmotionWheels.load(write_wheel_tables(str(tmp_path / "wheel"), {e: SYNONYMS[e] for e in EMOTIONS}))


def rows() -> list[dict]:
    return [
        {"clip_id": "a", "labels": ["happy", "pleased"],
         "description": CLUES.format("worried") + END.format("joyful")},
        {"clip_id": "b", "labels": ["happy"], "description": CLUES.format("happy") + END.format("worried, anxious")},
        {"clip_id": "c", "labels": np.array(["sad"]), "description": "He is not happy. Therefore, upset."},
        {"clip_id": "d", "labels": None, "description": END.format("sad")},
        {"clip_id": "e", "labels": ["angry"], "description": "The clip shows a kitchen."},
        {"clip_id": "f", "labels": ["worried"], "description": CLUES.format("worried") + END.format("happy")},
    ]


def test_consistency_of_hand_made_rows(tmp_path):
    wheels = synthetic_wheels(tmp_path)
    result = consistency(rows(), wheels)
    # a: joyful is happy's class; c: upset is sad's (the negated "happy" is no statement); b, f: the conclusion
    # names another class (f's clue part names worried, but the conclusion is what the description infers);
    # d has no labels, e states no emotion
    assert result["consistency"] == pytest.approx(2 / 6) and result["n"] == 6 and result["grouping"] == "wheel"
    assert [(r["clip_id"], r["stated"]) for r in result["inconsistent"]] == [
        ("b", ["worried", "anxious"]), ("d", ["sad"]), ("e", []), ("f", ["happy"])]
    assert consistency([], wheels)["consistency"] is None
    # without the tables, a label agrees only with itself (the vocabulary: the labels scored)
    exact = consistency(rows() + [{"labels": ["joyful"], "description": "Therefore, joyful."}])
    assert exact["grouping"] == "exact" and exact["consistency"] == pytest.approx(1 / 7)  # only the last row
    # the score is averaged over the wheels: a wheel that parts joyful from happy halves row a's agreement
    words = {w: e for e in EMOTIONS for w in [e, *SYNONYMS[e]]}
    split = dict(words, joyful="joyful")
    two = EmotionWheels([Wheel.from_rows([(c, w, w) for w, c in m.items()]) for m in (words, split)],
                        {w: {w} for w in words}, {w: {w} for w in words})
    assert consistency(rows(), two)["consistency"] == pytest.approx((0.5 + 1) / 6)


def test_conclusion_slot(tmp_path):
    ext = LexiconExtractor(synthetic_wheels(tmp_path))
    text = CLUES.format("happy") + END.format("sad, upset")
    assert text[conclusion_slot(text, ext):] == "sad, upset."
    negated = "He is not happy. Therefore, not sad; he is upset."
    assert negated[conclusion_slot(negated, ext):] == "upset."
    assert conclusion_slot("The clip shows a kitchen. Therefore, nothing.", ext) is None


# ---------------------------------------------------------------- the labeller states its labels
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import get_preset

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ck") / "stage"
    save_checkpoint(AffectGPT.build(get_preset("tiny")), str(path))
    return str(path)


def _batch(n: int) -> dict:
    rng = np.random.default_rng(0)
    return {"clip_id": np.array([f"c{i}" for i in range(n)], dtype=object),
            "status": np.array(["ok"] * n, dtype=object),
            "error": np.array([""] * n, dtype=object), "subtitle": np.array(["Hi."] * n, dtype=object),
            "has_video": np.ones(n, bool), "has_audio": np.ones(n, bool),
            "video_feats": rng.standard_normal((n, 8, 48)).astype(np.float16),
            "audio_feats": rng.standard_normal((n, 8, 32)).astype(np.float16)}


DESCRIPTIONS = [CLUES.format("happy") + END.format("happy, calm"), END.format("sad"), "The clip shows a kitchen."]
ANSWERS = ["The character's emotional state is worried, anxious.", "The character's emotional state is upset.",
           "The character's emotional state is angry."]


def scripted(lab, continuation: str) -> list:
    """Replace the engine's generations: descriptions, then OV answers, then any conclusion decoded again."""
    from ray_emer.infer.engine import Generation

    calls = []
    tail = lab.tokenizer(continuation, add_special_tokens=False)["input_ids"]

    def generate(embeds, n):
        calls.append([e.shape[0] for e in embeds])
        texts = [DESCRIPTIONS, ANSWERS][len(calls) - 1] if len(calls) <= 2 else None
        if texts is None:
            return [Generation(lab.tokenizer.decode(tail), list(tail)) for _ in embeds]
        return [Generation(t, [1, 2, 3]) for t in texts[: len(embeds)]]

    lab.embed = lambda mb: [torch.zeros(3, 64) for _ in range(len(mb))]
    lab.engine.generate_embeds = generate
    return calls


def test_the_description_states_the_labels(checkpoint, tmp_path):
    from ray_emer.infer.labeller import Labeller, LabellerConfig

    wheels = synthetic_wheels(tmp_path)
    lab = Labeller(checkpoint, LabellerConfig(wheel_dir=wheels.source, batch_size=3))
    calls = scripted(lab, ", uneasy.")
    rows = lab.label_batch(_batch(3))
    forced = CLUES.format("happy") + "Weighing the facial, vocal and verbal clues together, the person's emotional " \
                                     "state is most likely worried"
    # clip 0's conclusion named happy: decoded again from there with the first label in place, the labels kept
    assert rows[0]["description"] == forced + ", uneasy." and rows[0]["labels"] == ["worried", "anxious"]
    assert calls[2] == [3 + len(lab.tokenizer(forced, add_special_tokens=False)["input_ids"])]  # prompt + forced
    assert rows[0]["generated_tokens"] == 3 + 3 + len(lab.tokenizer(", uneasy.", add_special_tokens=False)["input_ids"])
    # clip 1 agreed already (upset is sad's class); clip 2's description names no emotion: left as generated
    assert [r["description"] for r in rows[1:]] == DESCRIPTIONS[1:] and rows[1]["labels"] == ["upset"]
    assert consistency(rows, wheels)["consistency"] == pytest.approx(2 / 3)

    off = Labeller(checkpoint, LabellerConfig(wheel_dir=wheels.source, state_labels="off"))
    calls = scripted(off, ", uneasy.")
    assert [r["description"] for r in off.label_batch(_batch(3))] == DESCRIPTIONS and len(calls) == 2
    assert Labeller(checkpoint, LabellerConfig()).stater is None  # no vocabulary: auto is off
    with pytest.raises(ValueError, match="state_labels: on needs wheel_dir"):
        Labeller(checkpoint, LabellerConfig(state_labels="on"))


def test_the_label_jobs_wheel_tables_serve_the_labeller():
    from ray_emer.data.label_job import LabelJobConfig, labeller_config
    from ray_emer.infer.labeller import LabellerConfig

    assert labeller_config(LabelJobConfig(wheel_dir="/w")).wheel_dir == "/w"
    own = LabelJobConfig(wheel_dir="/w", labeller=LabellerConfig(wheel_dir="/mine"))
    assert labeller_config(own).wheel_dir == "/mine" and labeller_config(LabelJobConfig()).wheel_dir == ""


# ---------------------------------------------------------------- a streamed description
def _stream_in_order(lab, description: str) -> tuple[list[str], dict, list]:
    """stream_one over a scripted engine whose description comes 5 characters at a time: the deltas, the
    row, and the order of events (each delta as the consumer reads it, "labels" when the OV prompt runs)."""
    order: list = []
    generate = lab.engine.generate_embeds
    generate([], 0)  # the scripted descriptions' call: on a stream the description comes from stream_embeds
    lab.engine.generate_embeds = lambda embeds, n: order.append("labels") or generate(embeds, n)
    lab.engine.stream_embeds = lambda e, n: iter([description[i:i + 5] for i in range(0, len(description), 5)])
    deltas, row = [], None
    for item in lab.stream_one(_batch(1)):
        if isinstance(item, str):
            order.append(item)
            deltas.append(item)
        else:
            row = item
    return deltas, row, order


def test_a_streamed_description_is_the_final_one(checkpoint, tmp_path):
    from ray_emer.infer.labeller import Labeller, LabellerConfig

    wheels = synthetic_wheels(tmp_path)
    lab = Labeller(checkpoint, LabellerConfig(wheel_dir=wheels.source))
    scripted(lab, ", uneasy.")
    deltas, row, order = _stream_in_order(lab, DESCRIPTIONS[0])
    fixed = CLUES.format("happy") + "Weighing the facial, vocal and verbal clues together, the person's emotional " \
                                    "state is most likely worried, uneasy."
    assert "".join(deltas) == row["description"] == fixed and row["labels"] == ["worried", "anxious"]
    # sent before the labels were known: the text up to its first emotion word (the conclusion may change there)
    assert "".join(order[:order.index("labels")]) == CLUES.format("happy").split(" happy")[0] and len(deltas) > 5

    off = Labeller(checkpoint, LabellerConfig(wheel_dir=wheels.source, state_labels="off"))
    scripted(off, ", uneasy.")
    deltas, row, order = _stream_in_order(off, DESCRIPTIONS[0])
    assert "".join(deltas) == row["description"] == DESCRIPTIONS[0]
    assert "".join(order[:order.index("labels")]) == DESCRIPTIONS[0]  # no stater: every delta as it comes


@pytest.mark.integration
def test_a_streamed_row_is_the_batch_row(checkpoint, tmp_path):
    """The real engine (tiny random model), with and without a stater: stream_one's deltas join to its row's
    description, and the row is label_batch's for the same clip."""
    from ray_emer.infer.labeller import Labeller, LabellerConfig

    lab = Labeller(checkpoint, LabellerConfig(wheel_dir=synthetic_wheels(tmp_path).source, description_tokens=24))
    for stater in (lab.stater, None):
        lab.stater = stater
        out = list(lab.stream_one(_batch(1)))
        row, deltas = out[-1], out[:-1]
        assert all(isinstance(d, str) for d in deltas) and len(deltas) > 2
        assert "".join(deltas) == row["description"] and row["status"] == "ok"
        batch_row = lab.label_batch(_batch(1))[0]
        assert {k: row[k] for k in ("description", "labels", "sentiment")} == \
            {k: batch_row[k] for k in ("description", "labels", "sentiment")}
