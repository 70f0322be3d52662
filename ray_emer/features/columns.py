"""Rows <-> columns: the one conversion pair between per-clip dicts and a columnar numpy batch.

A batch is ``{column: np.ndarray}`` with one entry per row, the shape Ray Data's numpy batches have:
array-valued columns (frames ``[N, T, S, S, 3]``, features ``[N, T, D]``) are stacked; every other column is an
object array of the row values as they were (strings, flags, lists, dicts, bytes of any length).
"""

from __future__ import annotations

import numpy as np


def objects(values: list) -> np.ndarray:
    """Values as a 1-D object array, each kept as it is."""
    arr = np.empty(len(values), dtype=object)  # filled one by one: numpy would nest lists and drop bytes' zeros
    for i, v in enumerate(values):
        arr[i] = v
    return arr


def _column(values: list) -> np.ndarray:
    if values and all(isinstance(v, np.ndarray) for v in values):
        return np.stack(values)
    return objects(values)


def to_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Row dicts (the keys of the first row) -> one columnar batch."""
    return {k: _column([r[k] for r in rows]) for k in rows[0]} if rows else {}


def to_rows(columns: dict[str, np.ndarray]) -> list[dict]:
    """A columnar batch -> row dicts; a stacked column gives each row its ``[...]`` slice."""
    n = len(next(iter(columns.values()))) if columns else 0
    return [{k: v[i] for k, v in columns.items()} for i in range(n)]
