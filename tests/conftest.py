"""Shared fixtures: a real S3 endpoint on loopback (moto_server), the bad-media corpus,
a small synthetic archive, and the path to ../shared/reference."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO.parent / "shared" / "reference"
# Every job tracks to MLflow by default (sqlite:///$RAY_EMER_HOME/mlflow.db): the session's default store is a
# temp folder, never the user's ~/.ray_emer. Set before any Ray or CLI subprocess starts, so they inherit it.
os.environ["RAY_EMER_HOME"] = tempfile.mkdtemp(prefix="ray_emer_test_home_")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# A local ray.init() with token auth at its default writes ~/.ray/auth_token into the real HOME (after which any
# plain `ray start --head` on the machine demands tokens): the session's local Ray runs without auth. The
# token-auth job test gives its own head a token in a temp HOME.
os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not SHARED_REFERENCE.is_dir():
        pytest.skip(f"published reference data not found at {SHARED_REFERENCE} (it ships beside the repo, not in it)")
    return SHARED_REFERENCE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1; sets AWS_ENDPOINT_URL and dummy keys for the session."""
    # the venv's own moto first: a machine-wide older moto on PATH mishandles multipart uploads
    beside = Path(sys.executable).parent / "moto_server"
    exe = str(beside) if beside.exists() else shutil.which("moto_server")
    if exe is None:
        pytest.fail("moto_server not found: install the dev extra (moto[server])")
    port = _free_port()
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.terminate()
        pytest.fail("moto_server did not start")
    env = {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           # no instance-metadata probes (169.254.169.254): tests only talk to loopback
           "AWS_EC2_METADATA_DISABLED": "true"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_endpoint, request):
    import boto3

    name = "t-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return f"s3://{name}"


def _frames(n: int, h: int = 64, w: int = 64) -> list[np.ndarray]:
    return [np.full((h, w, 3), (i * 25) % 255, np.uint8) for i in range(n)]


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def _audio_only(seconds: float) -> bytes:
    buf = io.BytesIO()
    audio = _tone(seconds)
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("aac", rate=16000, layout="mono")
        for start in range(0, len(audio), 1024):
            fr = av.AudioFrame.from_ndarray(audio[None, start : start + 1024], format="flt", layout="mono")
            fr.sample_rate, fr.pts = 16000, start
            out.mux(s.encode(fr))
        out.mux(s.encode())
    return buf.getvalue()


def _odd_resolution() -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        s = out.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 97, 61, "yuv444p"
        for i in range(10):
            out.mux(s.encode(av.VideoFrame.from_ndarray(np.full((61, 97, 3), i * 20, np.uint8), format="rgb24")))
        out.mux(s.encode())
    return buf.getvalue()


# name -> expected: ("ok", checks) or ("error", reason)
BAD_MEDIA_EXPECTED = {
    "zero.mp4": ("error", "zero_bytes"),
    "truncated.mp4": ("error", "truncated"),
    "random.mp4": ("error", "not_a_media_file"),
    "text.mp4": ("error", "not_a_media_file"),
    "no_audio.mp4": ("ok", {"has_audio": False, "has_video": True}),
    "audio_only.m4a": ("ok", {"has_audio": True, "has_video": False}),
    "one_frame.mp4": ("ok", {"has_audio": True, "has_video": True}),
    "av1.mkv": ("ok", {"has_video": True, "video_backend": "pyav"}),
    "vp9.webm": ("ok", {"has_video": True}),
    "odd_resolution.mp4": ("ok", {"width": 97, "height": 61}),
    "too_long.mp4": ("error", "too_long"),
}
BAD_MEDIA_MAX_DURATION_S = 20.0


@pytest.fixture(scope="session")
def bad_media(tmp_path_factory) -> Path:
    """The bad-media corpus, generated here (nothing shipped). Decode with
    ``max_duration_s=BAD_MEDIA_MAX_DURATION_S`` so that too_long.mp4 is over the limit."""
    from ray_emer.synthetic import encode_clip

    d = tmp_path_factory.mktemp("bad_media")
    good = encode_clip(_frames(20), _tone(2.0), 10)
    files = {
        "zero.mp4": b"",
        "truncated.mp4": good[: len(good) // 2],
        "random.mp4": np.random.default_rng(1).bytes(5000),
        "text.mp4": b"this is a text file, not a video\n" * 40,
        "no_audio.mp4": encode_clip(_frames(20), None, 10),
        "audio_only.m4a": _audio_only(2.0),
        "one_frame.mp4": encode_clip(_frames(1), _tone(0.5), 10),
        "av1.mkv": encode_clip(_frames(12), None, 10, vcodec="libsvtav1", fmt="matroska"),
        "vp9.webm": encode_clip(_frames(12), None, 10, vcodec="libvpx-vp9", fmt="webm"),
        "odd_resolution.mp4": _odd_resolution(),
        "too_long.mp4": encode_clip(_frames(int(BAD_MEDIA_MAX_DURATION_S * 10) + 50, 32, 32), None, 10),
    }
    assert set(files) == set(BAD_MEDIA_EXPECTED)
    for name, data in files.items():
        (d / name).write_bytes(data)
    return d


def synthetic_features(root: Path, cfg) -> Path:
    """A synthetic archive under ``root/archive`` and its tiny-encoder features under ``root/features``
    (sequential extraction: no Ray needed)."""
    from ray_emer.data.extraction import ExtractConfig, extract_sequential
    from ray_emer.synthetic import write_archive

    manifest = write_archive(str(root / "archive"), cfg)
    extract_sequential(ExtractConfig(input=manifest, output=str(root / "features"), progress=False))
    return root / "features"


def start_server(cmd: list[str], env: dict, port: int, cwd=None, wait_s: float = 240):
    """`ray-emer serve ...` as a user starts it: a subprocess whose stderr lines a thread collects as they come,
    waited for until it says it listens on 127.0.0.1:PORT (else killed, failing with its stderr). Returns
    ``(proc, lines, reader)``; the caller stops it (SIGTERM to its PID) and may join the reader for the last lines."""
    import threading

    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    deadline = time.time() + wait_s
    while time.time() < deadline and not any(" on http://" in ln for ln in lines) and proc.poll() is None:
        time.sleep(0.3)
    if not any(f" on http://127.0.0.1:{port}/" in ln for ln in lines):
        proc.kill()
        pytest.fail("the server did not start:\n" + "".join(lines)[-4000:])
    return proc, lines, reader


@pytest.fixture(scope="session")
def synth_archive(tmp_path_factory) -> Path:
    """12 synthetic clips + manifest.csv (seed 0)."""
    from ray_emer.synthetic import SynthConfig, write_archive

    d = tmp_path_factory.mktemp("synth")
    write_archive(str(d), SynthConfig(clips=12, seed=0))
    return d


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """One local Ray for the whole session (init costs seconds). Started after the S3
    endpoint so that Ray's workers inherit AWS_ENDPOINT_URL. num_cpus=4 on a 2-core box:
    fractional actors plus tasks must never hold every CPU (Ray would wait forever)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a fresh instance, never a head someone started on this machine (`ray start`)
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def chrome():
    """Headless Chromium driven through selenium (Debian's chromium + chromium-driver; .ci/run installs them);
    skips, saying so, where they are absent."""
    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,1400"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=webdriver.ChromeService(executable_path=driver), options=opts)
    try:
        yield browser
    finally:
        browser.quit()


# ---------------------------------------------------------------- test tiers
# Tests that start Ray, a server or a subprocess are `integration`; `-m "not integration"` is the fast tier.
# Tests using these fixtures are marked automatically; any other unmarked test that starts Ray or a subprocess
# fails, saying so. Allowed: the instant probes libraries make on their own (git for the commit id that MLflow
# and the training params record, uname from Python's platform module, ffmpeg's version when PySceneDetect loads).
PROBES = {"git", "uname", "ffmpeg"}
INTEGRATION_FIXTURES = {"ray_local", "ray_head", "s3_endpoint", "s3_bucket", "chrome", "vllm_python", "vllm_case"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(autouse=True)
def _unit_tests_start_nothing(request, monkeypatch):
    if request.node.get_closest_marker("integration"):
        yield
        return
    real_popen = subprocess.Popen.__init__

    def popen(self, args, *a, **kw):
        first = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
        if os.path.basename(str(first)) not in PROBES:
            pytest.fail(f"{request.node.nodeid} starts a subprocess ({first}): mark it integration")
        real_popen(self, args, *a, **kw)

    def ray_init(*a, **kw):
        pytest.fail(f"{request.node.nodeid} starts Ray: mark it integration")

    monkeypatch.setattr(subprocess.Popen, "__init__", popen)
    import ray

    if not ray.is_initialized():
        monkeypatch.setattr(ray, "init", ray_init)
    yield
