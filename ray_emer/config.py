"""Typed run configs: dataclasses loaded from YAML plus dotted ``--set a.b=v`` overrides.

Owns the rules every job shares: unknown keys fail with the dotted key in the message,
values are checked against the field types, and a resolved config can be dumped back
to a plain dict (for MLflow params and for the checkpoint's ``config.json``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ray_emer.errors import RayEmerError

T = TypeVar("T")


class ConfigError(RayEmerError, ValueError):
    """A config file or override does not fit the typed config."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: {value!r} fits none of {tp}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and str(value).lower() in choices:  # YAML reads `use_gpu: true` as a bool
            return str(value).lower()
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # PyYAML reads "3e-3" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)  # YAML reads `output: 2024` as a number; the field is a string
    if tp is str and isinstance(value, bool):
        raise ConfigError(f"{key}: expected a string, got {value!r} (YAML reads yes/no/on/off as booleans: quote it)")
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys raise ``ConfigError``."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s} (known keys under "
            f"'{prefix.rstrip('.') or '<root>'}': {', '.join(sorted(types_))})"
        )
    kwargs = {k: _coerce(v, types_[k], f"{prefix}{k}") for k, v in data.items()}
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a config dataclass (JSON/YAML friendly)."""
    return dataclasses.asdict(cfg)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    node[parts[-1]] = value


def field_type(cls: type, dotted: str) -> Any:
    """The annotation of ``a.b.c`` in dataclass ``cls``; ``Any`` below a free-form mapping field.

    Unknown keys raise ``ConfigError`` naming the known ones, as loading does."""
    tp: Any = cls
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        tp = _strip_optional(tp)
        if tp in (dict, Any) or typing.get_origin(tp) is dict:
            return Any
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {dotted}: {'.'.join(parts[:i])} is not a section")
        types_ = _field_types(tp)
        if part not in types_:
            section = ".".join(parts[:i]) or "<root>"
            raise ConfigError(f"unknown config key {dotted} (known keys under '{section}': "
                              f"{', '.join(sorted(types_))})")
        tp = types_[part]
    return tp


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def parse_value(raw: str, tp: Any, key: str) -> Any:
    """Parse a command-line string by the type of the field it sets (no YAML guessing for scalars):
    ``str`` stays as written (``--set output=2024`` is the string "2024"), ``bool`` takes
    true/false/yes/no/on/off/1/0, numbers parse as numbers, lists and mappings as YAML flow text."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if raw.strip().lower() in ("none", "null", "~") and type(None) in typing.get_args(tp):
            return None
        tp, origin = _strip_optional(tp), typing.get_origin(_strip_optional(tp))
    if tp is str:
        return raw
    if tp is bool:
        word = raw.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    if tp in (int, float):
        try:
            return tp(raw.strip())
        except ValueError:
            raise ConfigError(f"{key}: expected {tp.__name__}, got {raw!r}") from None
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if str(choice) == raw.strip():
                return choice
        raise ConfigError(f"{key}: {raw!r} is not one of {list(choices)}")
    try:
        return yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot parse {raw!r}: {exc}") from None


def parse_override(text: str) -> tuple[str, str]:
    """``'a.b=3'`` -> ``('a.b', '3')``; the value is parsed later, by the field's type."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key, raw


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    values: dict[str, Any] | None = None,
) -> T:
    """Defaults of ``cls``, then ``base``, then the YAML file, then ``values`` (typed, dotted keys: what the
    command-line flags gave), then ``--set`` overrides (strings, parsed by each field's type)."""
    data: dict[str, Any] = to_dict(cls()) if base is None else dict(base)
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
        _deep_update(data, loaded)
    for key, value in (values or {}).items():
        field_type(cls, key)
        _set_dotted(data, key, value)
    for text in overrides or []:
        key, raw = parse_override(text)
        _set_dotted(data, key, parse_value(raw, field_type(cls, key), key))
    return from_dict(cls, data)


def _deep_update(dst: dict[str, Any], src: dict[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value
