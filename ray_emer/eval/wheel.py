"""The emotion wheel (EW) grouping of open-vocabulary labels, as the published benchmark does it.

Owns loading the tables from a user's ``--wheel-dir`` (``wheel1..5``, ``synonym``,
``format``; each ``.xlsx`` as published or ``.csv``; a local folder or an ``s3://`` prefix, read
through :mod:`ray_emer.storage`) and mapping one label to its
level-1 or level-2 class on one wheel. The procedure and its quirks (e.g. ``fear``
reaching ``happy`` on some wheels through ``fearless``) are kept on purpose: they are
what the published numbers were computed with.
"""

from __future__ import annotations

import dataclasses
import io
import os
from collections import defaultdict

import pandas as pd

from ray_emer import storage
from ray_emer.errors import RayEmerError

NUM_WHEELS = 5
WHEEL_COLUMNS = ("level1", "level2", "level3")


class WheelError(RayEmerError, ValueError):
    """The wheel tables are missing or malformed."""


def _norm(text) -> str:
    return str(text).strip().lower()


def _find_table(wheel_dir: str, files: dict[str, str], stem: str) -> str:
    """The URI of ``stem.xlsx`` (else ``stem.csv``) among ``files`` (base name -> URI)."""
    for suffix in (".xlsx", ".csv"):
        if f"{stem}{suffix}" in files:
            return files[f"{stem}{suffix}"]
    raise WheelError(f"wheel dir {wheel_dir}: missing {stem}.xlsx (or {stem}.csv)")


def _read_table(path: str, columns: tuple[str, ...] | None = None) -> pd.DataFrame:
    try:
        data = io.BytesIO(storage.read_bytes(path))
    except (storage.StorageError, OSError) as exc:
        raise WheelError(f"{path}: cannot be read ({exc})") from exc
    try:
        if path.lower().endswith(".xlsx"):
            df = pd.read_excel(data, dtype=str)
        else:
            df = pd.read_csv(data, dtype=str, keep_default_na=True)
    except Exception as exc:  # openpyxl/pandas raise many types for a broken file
        raise WheelError(f"{path}: cannot be read as a table: {exc}") from exc
    if columns is not None:
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise WheelError(f"{path}: missing column(s) {missing}; have {list(df.columns)}")
    return df


@dataclasses.dataclass
class Wheel:
    """One wheel: every word (any level) -> its level-1 and level-2 ancestor.

    A word listed under two parents (wheel 2 has four) takes the parent of the *later*
    row: that is how the published scores were computed (checked against all 7
    published MER2023 checkpoints; first-row-wins is 0.4-0.7 points off).
    """

    level1: dict[str, str]
    level2: dict[str, str]

    @classmethod
    def from_rows(cls, rows: list[tuple[str, str, str]]) -> Wheel:
        l1: dict[str, str] = {}
        children: dict[str, set[str]] = defaultdict(set)
        for a, b, _ in rows:
            children[a].add(b)
        l2: dict[str, str] = {a: sorted(kids)[0] for a, kids in children.items()}
        for a, b, c in rows:
            l1.update({a: a, b: a, c: a})
            l2.update({b: b, c: b})
        return cls(l1, l2)

    def classes(self, level: int) -> set[str]:
        return set((self.level1 if level == 1 else self.level2).values())


def read_wheel(path: str) -> list[tuple[str, str, str]]:
    """Rows of one wheel table; a blank cell means "same as the row above"."""
    df = _read_table(path, WHEEL_COLUMNS)[list(WHEEL_COLUMNS)].ffill()
    if df.isna().any().any():
        raise WheelError(f"{path}: the first row has a blank cell")
    return [tuple(_norm(v) for v in row) for row in df.itertuples(index=False)]


def _index_lists(index: dict[str, set[str]], heads, lists) -> None:
    """For each (head, "a, b, c") pair: head -> head, and each listed item -> head (union)."""
    for head, items in zip(heads, lists):
        if pd.isna(head):
            continue
        h = _norm(head)
        index[h].add(h)
        for item in ("" if pd.isna(items) else str(items)).split(","):
            if item.strip():
                index[_norm(item)].add(h)


def read_forms(path: str) -> dict[str, set[str]]:
    """``format.csv``: every inflected form (and the base word itself) -> base word(s)."""
    df = _read_table(path, ("name", "format"))
    forms: dict[str, set[str]] = defaultdict(set)
    _index_lists(forms, df["name"], df["format"])
    return dict(forms)


def read_synonyms(path: str) -> dict[str, set[str]]:
    """``synonym``: runs of ``word_runK, synonym_runK``; word -> itself, synonym -> words (union)."""
    df = _read_table(path)
    runs = sorted({c[len("word_run"):] for c in df.columns if c.startswith("word_run")})
    if not runs:
        raise WheelError(f"{path}: no word_runK/synonym_runK column pairs")
    syn: dict[str, set[str]] = defaultdict(set)
    for k in runs:
        if f"synonym_run{k}" not in df.columns:
            raise WheelError(f"{path}: word_run{k} without synonym_run{k}")
        _index_lists(syn, df[f"word_run{k}"], df[f"synonym_run{k}"])
    return dict(syn)


@dataclasses.dataclass
class EmotionWheels:
    wheels: list[Wheel]
    forms: dict[str, set[str]]
    synonyms: dict[str, set[str]]
    source: str = ""

    @classmethod
    def load(cls, wheel_dir: str | os.PathLike, format_file: str | os.PathLike | None = None) -> EmotionWheels:
        """Load from a folder or ``s3://`` prefix in the published layout; ``format_file`` (any URI)
        swaps in another inflection table (e.g. the revised ``format.csv``)."""
        root = str(wheel_dir)
        try:
            files = {storage.basename(f): f for f in storage.list_files(root, recursive=False)}
        except storage.StorageError as exc:
            raise WheelError(f"wheel dir {root} does not exist or is not a directory") from exc
        wheels = [Wheel.from_rows(read_wheel(_find_table(root, files, f"wheel{i}"))) for i in range(1, NUM_WHEELS + 1)]
        fmt = str(format_file) if format_file else _find_table(root, files, "format")
        if not storage.exists(fmt):
            raise WheelError(f"format table {fmt} does not exist")
        return cls(wheels, read_forms(fmt), read_synonyms(_find_table(root, files, "synonym")), root)

    def candidates(self, label: str) -> list[str]:
        """Wheel words reachable from ``label`` (form -> base -> synonym map), sorted."""
        bases = self.forms.get(_norm(label))
        if not bases:
            return []
        found: set[str] = set()
        for base in bases:
            found |= self.synonyms.get(base, set())
        return sorted(found)

    def map_label(self, label: str, wheel: int, level: int = 1) -> str | None:
        """Class of ``label`` on wheel ``wheel`` (0-based) at ``level`` (1 or 2); None = dropped."""
        table = self.wheels[wheel].level1 if level == 1 else self.wheels[wheel].level2
        for word in self.candidates(label):
            if word in table:
                return table[word]
        return None

    def map_labels(self, labels, wheel: int, level: int = 1) -> set[str]:
        out = {self.map_label(lab, wheel, level) for lab in labels}
        out.discard(None)
        return out  # type: ignore[return-value]

    def vocabulary(self) -> set[str]:
        """Every label the tables know (all forms)."""
        return set(self.forms)


def write_wheel_tables(out: str, groups: dict[str, list[str]]) -> str:
    """A small vocabulary as wheel tables in the published layout, under ``out`` (local or ``s3://``):
    ``groups`` maps each level-1 class to its words (e.g. a synthetic archive's emotions and synonyms);
    five identical wheels, each word its own level 2, ``synonym.csv`` and ``format.csv`` naming each word
    itself. ``EmotionWheels.load(out)`` reads them back. Returns ``out``."""
    words = {_norm(w): _norm(cls) for cls, ws in groups.items() for w in [cls, *ws]}
    wheel = pd.DataFrame([(c, w, w) for w, c in words.items()], columns=list(WHEEL_COLUMNS))
    for i in range(1, NUM_WHEELS + 1):
        storage.write_text(storage.join(out, f"wheel{i}.csv"), wheel.to_csv(index=False))
    storage.write_text(storage.join(out, "synonym.csv"),
                       pd.DataFrame({"word_run1": list(words), "synonym_run1": ""}).to_csv(index=False))
    storage.write_text(storage.join(out, "format.csv"),
                       pd.DataFrame({"name": list(words), "format": ""}).to_csv(index=False))
    return out
