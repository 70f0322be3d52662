"""The multi-node tier: jobs on a Ray cluster of a head (no CPUs) and two worker nodes on this machine, each
scenario in its own process (tests/multinode_jobs.py), since the test session keeps its own one-node Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.multinode, pytest.mark.timeout(300)]


def _run(scenario: str, work, env_extra: dict) -> dict:
    import os

    env = {**os.environ, **env_extra, "RAY_ADDRESS": ""}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "multinode_jobs.py"), scenario, str(work)],
                          capture_output=True, text=True, timeout=280, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((work / "result.json").read_text())


def test_local_paths_are_refused_on_many_nodes_and_s3_labels_every_clip_once(s3_bucket, tmp_path):
    out = _run("storage", tmp_path, {"RAY_EMER_TEST_BUCKET": s3_bucket})
    assert out["nodes"] == 3
    assert "3 nodes" in out["refused"] and "--output" in out["refused"] and "--checkpoint" not in out["refused"]
    assert not out["local_output_written"]  # refused before any work
    assert out["rows"] == out["clips"] == 8 and sorted(out["ids"]) == sorted(set(out["ids"])) and len(out["ids"]) == 8


def test_the_gpu_layout_runs_on_logical_gpus(tmp_path):
    out = _run("gpu_layout", tmp_path, {})
    ext, lab = out["extract"], out["label"]
    assert ext["layout"] == "split" and ext["gpu"] and ext["ok"] == ext["processed"] == 12 and ext["error"] == 0
    assert 1 <= ext["encoder_loads"] <= 2  # the encoder pool grows to one actor per logical GPU at most
    assert lab["gpu"] and lab["actors"] == 2 and lab["ok"] == lab["rows"] == lab["clips"] == 12
    for name, ids in out["ids"].items():
        assert len(ids) == len(set(ids)) == 12, name


def test_a_label_job_loses_two_nodes_and_keeps_every_clip_once(s3_bucket, tmp_path):
    """A node removed when extraction writes its first shard (a new one joins), another when the first labels
    are written: Ray retries the lost tasks and restarts the lost actors; every clip once in the features and
    the labels, and the summary counts the lost nodes."""
    out = _run("node_loss", tmp_path, {"RAY_EMER_TEST_BUCKET": s3_bucket})
    assert out["kills"] == ["extract", "label"]
    for name, ids in out["ids"].items():
        assert sorted(ids) == sorted(set(ids)) and len(ids) == 24, name
    s = out["summary"]
    assert s["rows"] == s["clips"] == s["ok"] == 24 and s["error"] == 0 and s["nodes_lost"] == 2
