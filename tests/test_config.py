import dataclasses
from pathlib import Path

import pytest

from ray_emer.config import ConfigError, from_dict, load_config, parse_override, to_dict
from ray_emer.data.features import ExtractConfig
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
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=hello world") == ("a", "hello world")
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_from_dict_bool_is_not_int():
    with pytest.raises(ConfigError):
        from_dict(Outer, {"steps": True})


CONFIG_CLASSES = {"quickstart.yaml": QuickstartConfig, "extract_features.yaml": ExtractConfig,
                  "stage1_coarse.yaml": TrainConfig, "stage2_fine.yaml": TrainConfig,
                  "label_archive.yaml": LabelJobConfig}


@pytest.mark.parametrize("path", sorted((REPO / "jobs" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_yaml_loads(path):
    """Every YAML under jobs/configs/ is loaded by its typed config and documents its submit command."""
    assert path.name in CONFIG_CLASSES, f"{path.name}: add its config class to CONFIG_CLASSES"
    load_config(CONFIG_CLASSES[path.name], path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# Submit:") and "ray job submit" in first
