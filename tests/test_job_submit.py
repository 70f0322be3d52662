"""Every job under `ray job submit`, and `serve deploy`, against a local head started with `ray start --head`
(slow: run with -m slow); one documented submit line against a head with token auth (in CI)."""

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
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(request, tmp_path_factory):
    """`ray start --head` on free ports; yields the dashboard URL and the env for its clients.

    Auth mode "disabled" (the default) starts it with `RAY_AUTH_MODE=disabled`. Mode "token" (parametrise
    indirectly) starts it as the README does, plain `ray start --head` with RAY_AUTH_MODE unset, under a
    temporary HOME whose `~/.ray/auth_token` comes from `ray get-auth-token --generate` (Ray 2.60's head turns
    token auth on when a token exists); the yielded env has that HOME and no RAY_AUTH_MODE, so a client finds
    the token only when it says `RAY_AUTH_MODE=token`. The real ~/.ray is never touched."""
    mode = getattr(request, "param", "disabled")
    bindir = Path(sys.executable).parent
    dash, gcs, agent, client = _port(), _port(), _port(), _port()
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}"}
    if mode == "disabled":
        headers = {}
    elif mode == "token":
        # the session's local ray.init() may have set RAY_AUTH_MODE=token in this process; token sources
        # other than ~/.ray/auth_token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH) would take precedence over it
        for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
            env.pop(key, None)
        env["HOME"] = str(tmp_path_factory.mktemp("home"))
        subprocess.run([str(bindir / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                       capture_output=True, timeout=120)
        headers = {"Authorization": "Bearer " + (Path(env["HOME"]) / ".ray" / "auth_token").read_text().strip()}
    else:
        raise ValueError(f"unknown auth mode {mode!r}")
    # every fixed default port moved too: a local ray.init() (the session's, or anyone's on this machine) holds
    # the dashboard agent's 52365, and a head whose agent cannot bind it answers every submit with
    # "No available agent to submit job"
    head = subprocess.Popen([str(bindir / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=4",
                             "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                             f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}"],
                            # (no --temp-dir under tmp_path: its socket paths would pass the 107-byte AF_UNIX limit)
                            env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 180
        while True:  # the port opens before the job API answers
            try:
                with urllib.request.urlopen(urllib.request.Request(f"{url}/api/version", headers=headers),
                                            timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:  # (HTTPError too: 401 until the token is sent)
                pass
            if time.time() > deadline or head.poll() is not None:
                pytest.fail(f"`ray start --head` ({mode}) did not answer on {url} (exit code {head.poll()})")
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


EXTRACT_CLIPS = 4


@pytest.mark.timeout(300)
@pytest.mark.parametrize("ray_head", ["token"], indirect=True)
def test_documented_submit_needs_and_uses_token_auth(ray_head, tmp_path):
    """The documented extract line (docs/cluster.md), verbatim but for the address and the /tmp/ root (`RAY_AUTH_MODE=token`
    kept, run by a shell), against a plain `ray start --head` with a token in ~/.ray: without the
    `RAY_AUTH_MODE=token` prefix the head refuses the submit (so auth is on); with it the job runs and writes
    the features of a small synthetic archive placed where the line expects the quickstart's held-out split."""
    import csv
    import shlex

    import numpy as np

    from ray_emer.features.shards import feature_arrays, read_shards
    from ray_emer.synthetic import write_archive

    url, env = ray_head
    line = submit_line("extract_features.yaml")
    assert "python jobs/extract_features.py" in line and line in (REPO / "docs" / "cluster.md").read_text()
    argv = [a.replace("/tmp/", f"{tmp_path}/") for a in shlex.split(line.replace("http://127.0.0.1:8265", url))]
    manifest = tmp_path / "ray_emer_quickstart" / "heldout" / "manifest.csv"
    assert str(manifest) in argv
    write_archive(str(manifest.parent), SynthConfig(clips=EXTRACT_CLIPS, seed=3))
    out = tmp_path / "ray_emer_features"

    assert argv[0] == "RAY_AUTH_MODE=token"
    refused = subprocess.run(["bash", "-c", shlex.join(argv[1:])], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=240)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Authentication required" in said, said[-3000:]
    assert not out.exists()

    done = subprocess.run(["bash", "-c", shlex.join(argv)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads([ln for ln in done.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["ok"] == EXTRACT_CLIPS and summary["error"] == 0, summary
    assert json.loads((out / "_summary.json").read_text())["ok"] == EXTRACT_CLIPS
    table = read_shards(str(out))
    wanted = {row["clip_id"] for row in csv.DictReader(manifest.open())}
    assert sorted(table.column("clip_id").to_pylist()) == sorted(wanted) and len(wanted) == EXTRACT_CLIPS
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert np.abs(feature_arrays(table, "video_feats")).sum(axis=(1, 2)).min() > 0


CHAIN = ["quickstart.yaml", "extract_features.yaml", "stage1_coarse.yaml", "stage2_fine.yaml", "label_archive.yaml"]


def submit_line(name: str) -> str:
    """The documented submit command: the first line of a job's YAML (docs/cluster.md lists the same lines)."""
    first = (REPO / "jobs" / "configs" / name).read_text().splitlines()[0]
    assert first.startswith("# Submit: RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 ")
    return first[len("# Submit: "):]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_every_job_as_documented_under_ray_job_submit(ray_head, tmp_path):
    """quickstart -> extract -> stage 1 -> stage 2 -> label, each with its YAML's (= docs/cluster.md's) submit line;
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


@pytest.mark.slow
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
