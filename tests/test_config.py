import dataclasses
from pathlib import Path
from typing import Literal

import pytest

from ray_emer.config import ConfigError, from_dict, load_config, parse_override, to_dict
from ray_emer.data.extraction import ExtractConfig
from ray_emer.data.label_job import LabelJobConfig
from ray_emer.quickstart import QuickstartConfig
from ray_emer.train.loop import TrainConfig

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Inner:
    rate: float = 0.1
    mode: str = "a"


@dataclasses.dataclass
class Outer:
    name: str = "x"
    steps: int = 3
    inner: Inner = dataclasses.field(default_factory=Inner)
    tags: list[str] = dataclasses.field(default_factory=list)
    path: str | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("steps: 7\ninner:\n  mode: b\n")
    cfg = load_config(Outer, y, ["inner.rate=2", "tags=[u, v]", "path=s3://b/p"])
    assert cfg == Outer(name="x", steps=7, inner=Inner(rate=2.0, mode="b"), tags=["u", "v"], path="s3://b/p")
    assert to_dict(cfg)["inner"] == {"rate": 2.0, "mode": "b"}


@pytest.mark.parametrize("override,needle", [
    ("inner.rte=1", "inner.rte"),
    ("nme=1", "nme"),
    ("steps=abc", "steps"),
    ("inner=3", "inner"),
])
def test_bad_keys_and_types_fail_with_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(Outer, None, [override])


def test_unknown_key_in_yaml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("inner:\n  speed: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key inner\.speed"):
        load_config(Outer, y)


def test_parse_override_forms():
    assert parse_override("a.b=3") == ("a.b", "3")  # the value is parsed later, by the field's type
    assert parse_override("a=x=y") == ("a", "x=y")
    with pytest.raises(ConfigError):
        parse_override("novalue")
    with pytest.raises(ConfigError):
        parse_override("=3")


@dataclasses.dataclass
class Typed:
    output: str = ""
    flag: bool = False
    mode: Literal["auto", "true", "false"] = "auto"
    rate: float = 0.5
    steps: int = 1
    maybe: int | None = 3
    tags: list[str] = dataclasses.field(default_factory=list)
    extra: dict = dataclasses.field(default_factory=dict)
    inner: Inner = dataclasses.field(default_factory=Inner)


def test_set_values_are_parsed_by_the_field_type():
    cfg = load_config(Typed, None, ["output=2024", "flag=on", "mode=true", "rate=1e-3", "steps=7", "maybe=none",
                                    "tags=[a, b]", "extra.depth=4", "inner.mode=on"])
    assert cfg == Typed(output="2024", flag=True, mode="true", rate=1e-3, steps=7, maybe=None, tags=["a", "b"],
                        extra={"depth": 4}, inner=Inner(mode="on"))
    assert load_config(Typed, None, ["output=on", "flag=false", "maybe=5"]) == Typed(output="on", maybe=5)
    for bad, needle in (("flag=maybe", "flag: expected true or false"), ("mode=yes", "mode: 'yes' is not one of"),
                        ("steps=1.5", "steps: expected int"), ("inner.speed=1", "unknown config key inner.speed"),
                        ("output.x=1", "output is not a section")):
        with pytest.raises(ConfigError, match=bad.split("=")[0] if "unknown" in needle else needle):
            load_config(Typed, None, [bad])


def test_flag_values_keep_their_type_and_yaml_scalars_fit_string_fields(tmp_path):
    assert load_config(Typed, None, values={"output": "2024", "inner.rate": 2.0}).output == "2024"
    with pytest.raises(ConfigError, match="unknown config key nope"):
        load_config(Typed, None, values={"nope": 1})
    y = tmp_path / "c.yaml"
    y.write_text("output: 2024\nmode: true\n")  # YAML reads a number and a bool
    assert load_config(Typed, y) == Typed(output="2024", mode="true")
    y.write_text("output: on\n")
    with pytest.raises(ConfigError, match="quote it"):
        load_config(Typed, y)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(Typed, tmp_path / "missing.yaml")


def test_from_dict_bool_is_not_int():
    with pytest.raises(ConfigError):
        from_dict(Outer, {"steps": True})


CONFIG_CLASSES = {"quickstart.yaml": QuickstartConfig, "extract_features.yaml": ExtractConfig,
                  "stage1_coarse.yaml": TrainConfig, "stage2_fine.yaml": TrainConfig, "stage3_grpo.yaml": TrainConfig,
                  "label_archive.yaml": LabelJobConfig}


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    """Every YAML under jobs/configs/ is loaded by its typed config and documents its submit command."""
    assert path.name in CONFIG_CLASSES, f"{path.name}: add its config class to CONFIG_CLASSES"
    load_config(CONFIG_CLASSES[path.name], path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Submit:") and "ray job submit" in first
    assert first[len("# Submit: "):] in (REPO / "docs" / "cluster.md").read_text(), "docs/cluster.md shows the same command"
