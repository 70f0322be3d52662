"""The Ray Serve endpoint on the session's local Ray: API contract, auth, limits and bad inputs, SSRF, the
server-side timeout, overload, the official `openai` client (plain and streaming), the demo page in Chromium."""

from __future__ import annotations

import base64
import concurrent.futures
import http.server
import io
import os
import signal
import socket
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from conftest import start_server
from ray_emer.model.affectgpt import AffectGPT
from ray_emer.model.checkpoint import save_checkpoint
from ray_emer.model.config import get_preset
from ray_emer.serve import security
from ray_emer.synthetic import encode_clip

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
KEY = "test-key-7f3a"
LABELLER = {"description_tokens": 24, "label_tokens": 12}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_local, synth_archive, tmp_path_factory):
    """Three applications: the default one, one with a tiny server-side timeout, one that admits 1 request."""
    # Ray Serve (and FastAPI, through app) load with the server, so the plain-Python tests below run without them
    from ray import serve

    from ray_emer.serve.app import build_app

    root = tmp_path_factory.mktemp("serve")
    torch.manual_seed(0)
    save_checkpoint(AffectGPT.build(get_preset("tiny")), str(root / "ckpt"))
    port = _port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base = {"checkpoint": str(root / "ckpt"), "api_key": KEY, "labeller": LABELLER, "max_upload_mb": 1.0,
            "max_duration_s": 5.0, "allow_prefixes": [str(synth_archive)], "allow_hosts": ["localhost"]}
    serve.run(build_app(base), name="main", route_prefix="/")
    serve.run(build_app({**base, "request_timeout_s": 0.05}), name="strict", route_prefix="/strict")
    serve.run(build_app({**base, "max_inflight": 1, "labeller": {"description_tokens": 160, "label_tokens": 32}}),
              name="busy", route_prefix="/busy")
    serve.run(build_app({**base, "max_duration_s": 30.0, "segment": {"min_s": 2.0, "max_s": 6.0}}), name="long",
              route_prefix="/long")
    try:
        yield {"url": f"http://127.0.0.1:{port}", "root": root}
    finally:
        serve.shutdown()


@pytest.fixture(scope="module")
def clip(synth_archive) -> Path:
    return sorted((synth_archive / "clips").glob("*.mp4"))[0]


def _auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _upload(url: str, path: Path, key: str = KEY, **kw) -> requests.Response:
    with open(path, "rb") as fh:
        return requests.post(f"{url}/v1/analyze", headers=_auth(key), files={"file": (path.name, fh, "video/mp4")},
                             timeout=120, **kw)


def test_analyze_contract_upload_and_uri(server, clip):
    url = server["url"]
    up = _upload(url, clip, data={"subtitle": "I can't believe it!"})
    assert up.status_code == 200, up.text
    body = up.json()
    assert set(body) == {"description", "labels", "sentiment", "timings"}  # the contract, exactly
    assert isinstance(body["description"], str) and body["description"]
    assert isinstance(body["labels"], list) and body["sentiment"] in ("positive", "negative", "neutral")
    assert body["timings"]["total_s"] > 0 and body["timings"]["decode_s"] > 0
    # the same clip by URI (an allowed prefix) and by upload give the same answer (greedy)
    by_uri = requests.post(f"{url}/v1/analyze", headers=_auth(), timeout=120,
                           json={"video_uri": str(clip), "subtitle": "I can't believe it!"})
    assert by_uri.status_code == 200 and by_uri.json()["description"] == body["description"]
    other_sub = requests.post(f"{url}/v1/analyze", headers=_auth(), timeout=120, json={"video_uri": str(clip)})
    assert other_sub.status_code == 200
    with_frames = _upload(url, clip, params={"frames": "1"})
    frames = with_frames.json()["frames"]
    assert len(frames) == 8 and all(f.startswith("data:image/jpeg;base64,") for f in frames)
    models = requests.get(f"{url}/v1/models", headers=_auth(), timeout=30).json()
    assert models["data"][0]["id"] == "ray-emer"
    # a separate audio file replaces the container's track (the published layout ships wavs beside videos)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes((np.sin(np.arange(32000) * 0.05) * 8000).astype(np.int16).tobytes())
    with open(clip, "rb") as fh:
        with_audio = requests.post(f"{url}/v1/analyze", headers=_auth(), timeout=120,
                                   files={"file": (clip.name, fh, "video/mp4"), "audio": ("a.wav", buf.getvalue())},
                                   data={"subtitle": "I can't believe it!"})
    assert with_audio.status_code == 200, with_audio.text
    assert with_audio.json()["description"] != body["description"]  # other audio, other features, other answer


def test_auth_on_every_route_but_health_and_page(server, clip):
    url = server["url"]
    assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
    page = requests.get(f"{url}/", timeout=30)
    assert page.status_code == 200 and "<title>ray_emer" in page.text and KEY not in page.text
    for key in (None, "wrong-key"):
        headers = _auth(key) if key else {}
        assert requests.get(f"{url}/v1/models", headers=headers, timeout=30).status_code == 401
        assert requests.post(f"{url}/v1/analyze", headers=headers, json={"video_uri": str(clip)},
                             timeout=30).status_code == 401
        assert requests.post(f"{url}/v1/chat/completions", headers=headers, json={}, timeout=30).status_code == 401


def test_limits_and_bad_inputs(server, clip, tmp_path):
    url = server["url"]
    big = tmp_path / "big.mp4"
    big.write_bytes(clip.read_bytes() + b"\0" * (2 * 2**20))
    assert _upload(url, big).status_code == 413  # Content-Length over the 1 MB limit

    def chunks():  # no Content-Length: the limit holds while the body streams in
        for _ in range(40):
            yield b"x" * 65536

    chunked = requests.post(f"{url}/v1/analyze", headers={**_auth(), "Content-Type": "application/json"},
                            data=chunks(), timeout=60)
    assert chunked.status_code == 413
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"definitely not a video " * 50)
    bad = _upload(url, corrupt)
    assert bad.status_code == 400 and "not_a_media_file" in bad.json()["error"]
    long_clip = tmp_path / "long.mp4"
    long_clip.write_bytes(encode_clip([np.full((32, 32, 3), i, np.uint8) for i in range(80)], None, 10))
    too_long = _upload(url, long_clip)
    assert too_long.status_code == 400 and "too_long" in too_long.json()["error"]
    for uri, why in (("file:///etc/passwd", "file://"), ("/etc/passwd", "allowed prefix"),
                     (str(clip.parent / ".." / ".." / "x.mp4"), "allowed prefix"),
                     ("http://127.0.0.1:1/x.mp4", "allow-list"), ("http://localhost:1/x.mp4", "non-public"),
                     ("gopher://example.com/x", "not allowed")):
        r = requests.post(f"{url}/v1/analyze", headers=_auth(), json={"video_uri": uri}, timeout=30)
        assert r.status_code == 403 and why in r.json()["error"], (uri, r.text)
    r = requests.post(f"{url}/v1/analyze", headers=_auth(), json={"video_uri": "data:video/mp4;base64,@@@"},
                      timeout=30)
    assert r.status_code == 400 and "base64" in r.json()["error"]
    assert requests.post(f"{url}/v1/analyze", headers=_auth(), json={"nothing": 1}, timeout=30).status_code == 400


def test_a_refused_large_upload_is_an_answer_every_client_reads(server):
    """16x the 1 MB limit from Python's urllib, which sends the whole body before it reads the answer: the 413
    (declared size; and the 401 without a key), not a connection reset; the same from requests, chunked."""
    import urllib.error
    import urllib.request

    url, body = f"{server['url']}/v1/analyze", b"\0" * (16 * 2**20)
    for headers, code, why in (({**_auth(), "Content-Type": "application/json"}, 413, "over 1.0 MB"),
                               ({"Content-Type": "application/json"}, 401, "API key")):
        req = urllib.request.Request(url, data=body, method="POST", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=120)
        assert err.value.code == code and why in err.value.read().decode()

    def chunks():  # no Content-Length: refused while it streams in, read to the end
        for _ in range(16):
            yield b"x" * 2**20

    r = requests.post(url, headers={**_auth(), "Content-Type": "application/json"}, data=chunks(), timeout=120)
    assert r.status_code == 413 and "over 1.0 MB" in r.json()["error"]


def test_timeout_cannot_be_lifted_by_a_header(server, clip):
    r = requests.post(f"{server['url']}/strict/v1/analyze", timeout=60, json={"video_uri": str(clip)},
                      headers={**_auth(), "x-request-timeout-seconds": "0"})
    assert r.status_code == 504 and "longer than 0.05 s" in r.json()["error"]
    streamed = requests.post(f"{server['url']}/strict/v1/chat/completions", headers=_auth(), timeout=60, json={
        "stream": True, "messages": [{"role": "user", "content": [{"type": "video_url",
                                                                   "video_url": {"url": str(clip)}}]}]})
    assert streamed.status_code == 504 and "longer than 0.05 s" in streamed.json()["error"]  # no text in time


def test_overload_answers_429_with_retry_after(server, clip):
    url = f"{server['url']}/busy"
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: _upload(url, clip), range(6)))
    codes = sorted(a.status_code for a in answers)
    assert 429 in codes and 200 in codes and not any(c >= 500 for c in codes), codes
    assert all(a.headers.get("Retry-After") == "1" for a in answers if a.status_code == 429)


def _data_url(path: Path) -> str:
    return "data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode()


def test_openai_client_plain_and_streaming(server, clip):
    import openai  # a test-only dependency, loaded by the one test that uses it

    client = openai.OpenAI(base_url=f"{server['url']}/v1", api_key=KEY, max_retries=0, timeout=120)
    messages = [{"role": "user", "content": [{"type": "text", "text": "I can't believe it!"},
                                             {"type": "video_url", "video_url": {"url": _data_url(clip)}}]}]
    out = client.chat.completions.create(model="ray-emer", messages=messages)
    content = out.choices[0].message.content
    direct = _upload(server["url"], clip, data={"subtitle": "I can't believe it!"}).json()
    assert content.startswith(direct["description"]) and "Emotions:" in content
    assert out.choices[0].finish_reason == "stop" and out.model == "ray-emer"
    streamed = client.chat.completions.create(model="ray-emer", messages=messages, stream=True)
    pieces = [c.choices[0].delta.content or "" for c in streamed]
    assert len(pieces) > 2 and "".join(pieces) == content
    # the longer answers of "busy": the text streams while it is generated, then the emotions come
    busy = openai.OpenAI(base_url=f"{server['url']}/busy/v1", api_key=KEY, max_retries=0, timeout=120)
    t0, arrivals, extra = time.perf_counter(), [], None
    for c in busy.chat.completions.create(model="ray-emer", messages=messages, stream=True):
        if c.choices[0].delta.content:
            arrivals.append((time.perf_counter(), c.choices[0].delta.content))
        extra = getattr(c, "ray_emer", None) or extra
    whole = busy.chat.completions.create(model="ray-emer", messages=messages)  # 200: the stream left its slot
    assert "".join(p for _, p in arrivals) == whole.choices[0].message.content and len(arrivals) > 10
    first, last = arrivals[0][0] - t0, arrivals[-1][0] - t0
    assert first < 0.75 * last, (first, last)  # the first text came well before the end, not with it
    assert extra["timings"]["first_text_s"] < extra["timings"]["model_s"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server['url']}/v1", api_key="wrong", max_retries=0).models.list()
    assert [m.id for m in client.models.list()] == ["ray-emer"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> dict:
    from ray_emer.synthetic import SynthConfig
    from ray_emer.synthetic_recording import write_recording

    return write_recording(str(tmp_path_factory.mktemp("long") / "talk.mp4"),
                           SynthConfig(seed=8, min_duration_s=2.5, max_duration_s=4.0), 20, subtitles=False)


def _sse(response: requests.Response) -> list[tuple[float, object]]:
    """(arrival time, the parsed event or "[DONE]") of each server-sent event."""
    import json

    out = []
    for line in response.iter_lines():
        if line.startswith(b"data: "):
            data = line[6:].decode()
            out.append((time.perf_counter(), data if data == "[DONE]" else json.loads(data)))
    return out


def test_a_long_upload_answers_a_timeline_and_streams_its_segments(server, recording):
    import openai

    url, path = f"{server['url']}/long", Path(recording["path"])
    whole = _upload(url, path)
    assert whole.status_code == 200, whole.text
    body = whole.json()
    assert {"description", "labels", "sentiment", "timings", "timeline"} <= set(body)
    timeline = body["timeline"]
    assert len(timeline) >= 4 and body["description"].startswith(f"Summary of {len(timeline)} segments")
    assert all(set(s) == {"start_s", "end_s", "description", "labels", "sentiment", "subtitle"} for s in timeline)
    assert timeline[0]["start_s"] == 0.0 and all(a["end_s"] == b["start_s"] for a, b in zip(timeline, timeline[1:]))
    assert timeline[-1]["end_s"] == pytest.approx(recording["duration_s"], abs=0.2)
    assert all(2.0 - 1e-6 <= s["end_s"] - s["start_s"] <= 6.0 + 1e-6 for s in timeline)
    assert set(body["labels"]) <= {label for s in timeline for label in s["labels"]}
    with open(path, "rb") as fh:
        streamed = requests.post(f"{url}/v1/analyze?stream=1", headers=_auth(), stream=True, timeout=120,
                                 files={"file": (path.name, fh, "video/mp4")})
        events = _sse(streamed)
    segments = [(t, e["segment"]) for t, e in events if isinstance(e, dict) and "segment" in e]
    (t_result, result), = [(t, e["result"]) for t, e in events if isinstance(e, dict) and "result" in e]
    assert events[-1][1] == "[DONE]" and [s for _, s in segments] == result["timeline"] == timeline  # greedy
    assert segments[0][0] < t_result  # the first segment came before the whole answer
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120)
    url_part = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64," +
                                                   base64.b64encode(path.read_bytes()).decode()}}
    chunks = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="ray-emer", messages=[{"role": "user", "content": [url_part]}], stream=True)]
    lines = [line for line in "".join(chunks).split("\n") if line.startswith("[")]
    assert len(lines) == len(timeline) and lines[0].startswith("[0:00.0-")
    too_long = _upload(f"{server['url']}/long", Path(write_long(server["root"] / "long.mp4", 35)))
    assert too_long.status_code == 400 and "too_long" in too_long.json()["error"]


def write_long(path: Path, seconds: int) -> str:
    frames = [np.full((32, 32, 3), 90, np.uint8)] * (seconds * 4)
    path.write_bytes(encode_clip(frames, None, fps=4))
    return str(path)


def test_demo_page_in_headless_chromium(server, clip, chrome, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get(f"{server['url']}/")
    chrome.find_element(By.ID, "key").send_keys(KEY)
    chrome.find_element(By.ID, "clip").send_keys(str(clip))
    chrome.find_element(By.ID, "subtitle").send_keys("I can't believe it!")
    chrome.find_element(By.ID, "go").click()
    WebDriverWait(chrome, 120).until(lambda b: b.execute_script("return document.body.dataset.done") == "1")
    description = chrome.find_element(By.ID, "description").text
    chips = [c.text for c in chrome.find_elements(By.CSS_SELECTOR, "#labels .chip")]
    frames = chrome.execute_script("return [...document.querySelectorAll('#frames img')].map(i => i.naturalWidth)")
    shot = tmp_path / "demo.png"
    chrome.save_screenshot(str(shot))
    direct = _upload(server["url"], clip, data={"subtitle": "I can't believe it!"}).json()
    assert description == direct["description"] and chips == direct["labels"]
    assert len(frames) == 8 and all(w > 0 for w in frames)  # the clip's frames rendered
    assert shot.stat().st_size > 20_000


def test_demo_page_draws_a_long_uploads_timeline(server, recording, chrome, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    chrome.get(f"{server['url']}/long/")
    chrome.find_element(By.ID, "key").send_keys(KEY)
    chrome.find_element(By.ID, "clip").send_keys(recording["path"])
    chrome.find_element(By.ID, "go").click()
    WebDriverWait(chrome, 120).until(lambda b: b.execute_script("return document.body.dataset.done") == "1")
    boxes = chrome.find_elements(By.CSS_SELECTOR, "#strip .segment")
    thumbs = chrome.execute_script("return [...document.querySelectorAll('#thumbs img')].map(i => i.naturalWidth)")
    assert len(boxes) >= 4 and len(thumbs) == len(boxes) and all(w > 0 for w in thumbs)
    assert len(chrome.find_elements(By.CSS_SELECTOR, "#valence polyline")) == 1
    boxes[1].click()
    detail = chrome.find_element(By.ID, "segment").text
    direct = _upload(f"{server['url']}/long", Path(recording["path"])).json()["timeline"][1]
    assert detail.startswith(f"{direct['start_s']:.1f}-{direct['end_s']:.1f} s") and direct["description"] in detail
    chrome.save_screenshot(str(tmp_path / "timeline.png"))


def test_ray_emer_serve_cli_generates_a_key_and_stops_on_sigterm(server, clip, tmp_path):
    """`ray-emer serve --checkpoint DIR --port N --max-upload-mb M` (the contract), as a user starts it."""
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_EMER_API_KEY")}
    env["RAY_ADDRESS"] = "local"  # its own Ray, as ray_local's: never a head someone else started on this machine
    cmd = [str(Path(sys.executable).parent / "ray-emer"), "serve", "--checkpoint", str(server["root"] / "ckpt"),
           "--port", str(port), "--max-upload-mb", "1", "--set", "labeller.description_tokens=8"]
    proc, lines, _ = start_server(cmd, env, port)
    try:
        key = next(ln.split("Bearer ", 1)[1].strip() for ln in lines if "Authorization: Bearer" in ln)
        url = f"http://127.0.0.1:{port}"
        assert requests.get(f"{url}/healthz", timeout=30).status_code == 200
        assert requests.get(f"{url}/v1/models", timeout=30).status_code == 401
        assert _upload(url, clip, key=key).status_code == 200
        big = tmp_path / "big.mp4"
        big.write_bytes(b"\0" * (int(1.5 * 2**20)))
        assert _upload(url, big, key=key).status_code == 413
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    assert rc == 0


def test_uri_rules_without_a_server(tmp_path):
    """The SSRF rules and the fetch itself, in plain Python (no Ray): redirects are refused, errors are 400s."""
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
            self.end_headers()

        def log_message(self, *args):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        with pytest.raises(security.Forbidden, match="redirects are not followed"):
            security.fetch_http(f"http://127.0.0.1:{srv.server_port}/clip.mp4", 1000)
    finally:
        srv.shutdown()
    with pytest.raises(security.BadRequest, match="cannot fetch"):
        security.fetch_http(f"http://127.0.0.1:{_port()}/clip.mp4", 1000)
    with pytest.raises(security.Forbidden, match="non-public"):
        security.check_uri("http://localhost/x.mp4", ["localhost"], [])
    (tmp_path / "ok").mkdir()
    (tmp_path / "link").symlink_to("/etc")
    assert security.check_uri(str(tmp_path / "ok" / "a.mp4"), [], [str(tmp_path / "ok")]) == "storage"
    with pytest.raises(security.Forbidden):  # a symlink out of the allowed prefix
        security.check_uri(str(tmp_path / "ok" / ".." / "link" / "passwd"), [], [str(tmp_path / "ok")])
    with pytest.raises(security.Forbidden):
        security.check_uri("s3://bucket/allowed/../secret", [], ["s3://bucket/allowed"])
    key, generated = security.resolve_api_key({})
    assert generated and len(key) >= 24
    (tmp_path / "k").write_text("from-file\n")
    assert security.resolve_api_key({"RAY_EMER_API_KEY_FILE": str(tmp_path / "k")}) == ("from-file", False)
    assert security.resolve_api_key({"RAY_EMER_API_KEY": "env"}) == ("env", False)
    assert security.bearer_ok("Bearer env", "env") and not security.bearer_ok("Bearer envx", "env")
    assert not security.bearer_ok("env", "env") and not security.bearer_ok(None, "env")
