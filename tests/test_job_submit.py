"""Every job under `ray job submit`, and `serve deploy`, against a local head started with `ray start --head`
(slow: run with -m slow)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from ray_emer.synthetic import SynthConfig

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """`ray start --head` on free ports (token auth off for the test); yields the dashboard URL and the env."""
    bindir = Path(sys.executable).parent
    dash, gcs = _port(), _port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    head = subprocess.Popen([str(bindir / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=4",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}"],
                            # (no --temp-dir under tmp_path: its socket paths would pass the 107-byte AF_UNIX limit)
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 180
        while time.time() < deadline:  # the port opens before the job API answers
            try:
                with urllib.request.urlopen(f"{url}/api/version", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            time.sleep(1)
        time.sleep(3)
        yield url, env
    finally:
        head.terminate()
        head.wait(timeout=60)
        # `ray start` records the head in /tmp/ray/ray_current_cluster and only `ray stop` (which would end
        # every Ray process on the machine) removes it; a stale record makes a later ray.init() try to join it
        record = Path("/tmp/ray/ray_current_cluster")
        if record.exists() and record.read_text().strip().endswith(f":{gcs}"):
            record.unlink()


CHAIN = ["quickstart.yaml", "extract_features.yaml", "stage1_coarse.yaml", "stage2_fine.yaml", "label_archive.yaml"]


def submit_line(name: str) -> str:
    """The documented submit command: the first line of a job's YAML (the README lists the same lines)."""
    first = (REPO / "jobs" / "configs" / name).read_text().splitlines()[0]
    assert first.startswith("# Submit: RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 ")
    return first[len("# Submit: "):]


@pytest.mark.timeout(1800)
def test_every_job_as_documented_under_ray_job_submit(ray_head, tmp_path):
    """quickstart -> extract -> stage 1 -> stage 2 -> label, each with its YAML's (= the README's) submit line;
    only the address, the /tmp/ root and the auth mode (the test's head runs without token auth) differ."""
    import shlex

    url, env = ray_head
    summaries = {}
    for name in CHAIN:
        line = submit_line(name).replace("RAY_AUTH_MODE=token ", "").replace("http://127.0.0.1:8265", url)
        argv = [a.replace("/tmp/", f"{tmp_path}/") for a in shlex.split(line)]
        done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, name + ": " + done.stdout[-3000:] + done.stderr[-3000:]
        summaries[name] = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    quick = summaries["quickstart.yaml"]
    assert quick["scores"]["accuracy"] > 1 / 6 and Path(quick["report"]).is_file()
    assert summaries["extract_features.yaml"]["ok"] == 48
    for stage in ("stage1_coarse.yaml", "stage2_fine.yaml"):
        s = summaries[stage]
        assert s["engine"] == "ray" and s["workers"] == 2 and s["steps"] > 0 and s["checkpoint"], s
    assert json.loads((tmp_path / "stage2" / "config.json").read_text())["architecture"] == "AffectGPT"
    labels = summaries["label_archive.yaml"]
    assert labels["rows"] == labels["ok"] == 48 and labels["engine"] == "hf"
    # every job tracked to MLflow by default (the head's RAY_EMER_HOME store; the quickstart its own)
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{env['RAY_EMER_HOME']}/mlflow.db")
    names = {e.name for e in client.search_experiments()}
    assert {"ray_emer-extract", "ray_emer-train", "ray_emer-label"} <= names, names


def test_serve_deploy_serve_config(ray_head, tmp_path):
    """`serve deploy serve_config.yaml` against `ray start --head`: only the checkpoint, the port and the key
    file differ from the shipped file."""
    import requests
    import torch
    import yaml

    from ray_emer.model.affectgpt import AffectGPT
    from ray_emer.model.checkpoint import save_checkpoint
    from ray_emer.model.config import get_preset
    from ray_emer.synthetic import write_archive

    url, env = ray_head
    torch.manual_seed(0)
    save_checkpoint(AffectGPT.build(get_preset("tiny")), str(tmp_path / "ckpt"))
    (tmp_path / "key").write_text("deploy-test-key\n")
    cfg = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    port = _port()
    cfg["http_options"]["port"] = port
    app = cfg["applications"][0]
    app["args"]["checkpoint"] = str(tmp_path / "ckpt")
    app["runtime_env"]["env_vars"]["RAY_EMER_API_KEY_FILE"] = str(tmp_path / "key")
    (tmp_path / "serve_config.yaml").write_text(yaml.safe_dump(cfg))
    bindir = Path(sys.executable).parent
    done = subprocess.run([str(bindir / "serve"), "deploy", str(tmp_path / "serve_config.yaml"), "-a", url],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, ok = time.time() + 300, False
        while time.time() < deadline and not ok:
            try:
                ok = requests.get(f"{base}/healthz", timeout=5).status_code == 200
            except requests.RequestException:
                time.sleep(2)
        assert ok, "the deployed application never answered /healthz"
        clip = Path(write_archive(str(tmp_path / "a"), SynthConfig(clips=1, seed=2))).parent / "clips"
        with open(next(clip.glob("*.mp4")), "rb") as fh:
            files = {"file": ("c.mp4", fh.read(), "video/mp4")}
        assert requests.post(f"{base}/v1/analyze", files=files, timeout=120).status_code == 401
        r = requests.post(f"{base}/v1/analyze", files=files, timeout=120,
                          headers={"Authorization": "Bearer deploy-test-key"})
        assert r.status_code == 200 and set(r.json()) == {"description", "labels", "sentiment", "timings"}
    finally:
        subprocess.run([str(bindir / "serve"), "shutdown", "-a", url, "-y"], env=env, capture_output=True,
                       timeout=120)
