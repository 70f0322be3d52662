"""The embedded default job: make the synthetic archive, then decode every clip of it.

Each clip becomes one result row (ok, or error with the reason): rows in == rows out.
Later stages extend this into extract -> train -> label -> evaluate.
"""

from __future__ import annotations

import dataclasses
import json
import time

from ray_emer import storage
from ray_emer.data.manifest import read_manifest
from ray_emer.media import MediaConfig, MediaError, decode_uri
from ray_emer.synthetic import SynthConfig, write_archive


@dataclasses.dataclass
class QuickstartConfig:
    out: str = "/tmp/ray_emer_quickstart"
    synth: SynthConfig = dataclasses.field(default_factory=SynthConfig)
    media: MediaConfig = dataclasses.field(default_factory=MediaConfig)


def decode_manifest(manifest_uri: str, media: MediaConfig) -> list[dict]:
    """Decode every clip of a manifest, one row each; a bad clip is an error row."""
    rows = []
    for rec in read_manifest(manifest_uri).to_pylist():
        row = {"clip_id": rec["clip_id"], "status": "ok", "error": ""}
        try:
            row.update(decode_uri(rec["video_uri"], rec.get("audio_uri"), media).summary())
        except (MediaError, storage.StorageError) as exc:
            row.update(status="error", error=str(exc))
        rows.append(row)
    return rows


def run_quickstart(cfg: QuickstartConfig, log=print) -> dict:
    t0 = time.perf_counter()
    manifest = write_archive(storage.join(cfg.out, "archive"), cfg.synth)
    t1 = time.perf_counter()
    log(f"wrote {cfg.synth.clips} synthetic clips and {manifest} in {t1 - t0:.1f} s")
    rows = decode_manifest(manifest, cfg.media)
    t2 = time.perf_counter()
    ok = sum(r["status"] == "ok" for r in rows)
    summary = {
        "manifest": manifest,
        "clips": len(rows),
        "ok": ok,
        "error": len(rows) - ok,
        "decode_s": round(t2 - t1, 3),
        "decode_clips_per_s": round(len(rows) / max(t2 - t1, 1e-9), 2),
    }
    report = storage.join(cfg.out, "decode_report.jsonl")
    storage.write_text(report, "".join(json.dumps(r) + "\n" for r in rows))
    log(f"decoded {len(rows)} clips ({ok} ok, {len(rows) - ok} error) in {t2 - t1:.1f} s -> {report}")
    return summary
