"""The two label-list parsing rules and the model-answer parser (ray_emer.labels)."""

import math

import numpy as np
import pytest

from ray_emer.labels import PARSING_RULES, parse_answer, parse_labels
from ray_emer.model.prompts import OV_PREFIX, format_ov_labels, parse_ov_answer


@pytest.mark.parametrize("value,expected", [
    ('["happy", "sad"]', ["happy", "sad"]),
    ("['Happy']", ["happy"]),
    ("happy, sad", ["happy", "sad"]),
    (" [worried, Nervous] ", ["worried", "nervous"]),
    ("a; b\nc", ["a", "b", "c"]),
    ('["don\'t believe", \'doubt\']', ["don't believe", "doubt"]),
    ('["happy, but tired"]', ["happy, but tired"]),  # a list item is one label
    ("happy, Happy ,  happy.", ["happy"]),
    ("very   anxious", ["very anxious"]),
    ("", []), ("[]", []), ("  ", []), (None, []), (float("nan"), []),
    (["A ", "b", "a", None, ""], ["a", "b"]),
    (np.array(["x", "Y"]), ["x", "y"]),
])
def test_proper_rule_well_formed(value, expected):
    assert parse_labels(value) == parse_labels(value, "proper") == expected


@pytest.mark.parametrize("value,expected", [
    ('[], ["confused"]', ["confused"]),  # two literals joined by a comma (extractor output)
    ("[], ['confused', 'sad']", ["confused", "sad"]),
    ('[["a"], ["b", "a"]]', ["a", "b"]),  # nested lists are flattened
    ("['happy', 'sad'", ["happy", "sad"]),  # truncated literal
    ("[] ['confused']", ["confused"]),
    ('("calm",)', ["calm"]),
    ("[happy, [sad]]", ["happy", "sad"]),
])
def test_proper_rule_malformed(value, expected):
    assert parse_labels(value) == expected


@pytest.mark.parametrize("value,expected", [
    ('[], ["confused"]', ["]", "[", "confused"]),  # what the published string_to_list yields
    ('["don\'t believe", \'doubt\']', ["don", "t believe", "doubt"]),
    ("[concerned, Stressed]", ["concerned", "Stressed"]),  # case kept
    ("happy, sad", ["happy", "sad"]),
    ("a; b", ["a; b"]),
    (" [a]", ["[a"]),  # one leading '[' only when it is the very first character
    ("[[a]]", ["[a]"]),
    ("", []), ("[]", []), (None, []), (math.nan, []),
    (["A ", "b"], ["A ", "b"]),  # lists pass through as they are
])
def test_published_rule(value, expected):
    assert parse_labels(value, "published") == expected


def test_rules_are_named():
    assert PARSING_RULES == ("proper", "published")
    with pytest.raises(ValueError, match="unknown label parsing rule"):
        parse_labels("a", "loose")


def test_answers():
    assert parse_ov_answer(format_ov_labels(["happy", "grateful"])) == ["happy", "grateful"]
    assert parse_ov_answer(f"Sure.\n{OV_PREFIX} Happy, excited and grateful.\nMore text") == \
        ["happy", "excited", "grateful"]
    assert parse_ov_answer("calm") == ["calm"]
    assert parse_answer("Emotions: calm; relaxed") == ["calm", "relaxed"]
    assert parse_answer('\n["Joyful", "excited"]\nextra line') == ["joyful", "excited"]
    assert parse_answer("None.") == [] and parse_answer("") == [] and parse_answer(None) == []
