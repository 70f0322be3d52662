"""The featurizer, without Ray: a manifest row -> decoded arrays -> frozen-encoder features -> Parquet shards.

- ``decode``: one manifest record -> frames, 16 kHz audio windows and flags (a bad clip is an error row)
- ``encoder``: the frozen encoders of a preset (or their TorchScript traces) over a decoded batch -> arrays
- ``columns``: the one rows <-> columns pair every batch goes through (row dicts <-> a numpy batch)
- ``shards``: the output directory contract (``part-*.parquet``, written atomically, read back, done ids);
  the only place a batch becomes Arrow

The Ray Data jobs (``ray_emer.data``), the trainer, the labeller and the endpoint all call these, so the work
per clip is the same everywhere; see docs/architecture.md.
"""
