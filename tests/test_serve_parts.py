"""The endpoint's parts that run without Ray: the settings (``ray-emer serve`` parses its flags with them alone,
no Ray Serve or FastAPI imported) and the HTTP shapes (requests read, answers and SSE chunks written).
The served behaviour end to end is tests/test_serve.py's."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from conftest import REPO
from ray_emer.config import ConfigError
from ray_emer.serve import http, security
from ray_emer.serve.settings import ServeArgs, api_key, resolve_args

HEAVY = ("ray", "ray.serve", "fastapi", "starlette")


def _python(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.integration
def test_serve_flags_parse_with_the_settings_alone():
    """`ray-emer serve ...` up to the call of serve_local (replaced here): the flags, the YAML-style overrides
    and the typed ServeArgs, with neither Ray (Serve) nor FastAPI imported on the way."""
    out = _python(f"""
import json, sys
import ray_emer.serve.run as run
seen = {{}}
run.serve_local = lambda cfg, log=None, **kw: seen.update(cfg=cfg, kw=kw) or 0
from ray_emer import cli
rc = cli.main(["serve", "--checkpoint", "ckpt", "--port", "9001", "--max-upload-mb", "2", "--engine", "vllm",
               "--no-auth", "--set", "labeller.description_tokens=8"])
cfg = seen["cfg"]
print(json.dumps({{"rc": rc, "cls": type(cfg).__module__ + "." + type(cfg).__name__, "kw": seen["kw"],
                  "cfg": [cfg.checkpoint, cfg.max_upload_mb, cfg.engine, cfg.auth, cfg.labeller.description_tokens],
                  "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
""")
    got = json.loads(out.strip().splitlines()[-1])
    assert got["rc"] == 0 and got["cls"] == "ray_emer.serve.settings.ServeArgs"
    assert got["cfg"] == ["ckpt", 2.0, "vllm", False, 8] and got["kw"] == {"port": 9001, "host": "127.0.0.1"}
    assert got["loaded"] == [], f"parsing `serve` flags imported {got['loaded']}"


@pytest.mark.integration
def test_serve_help_without_ray_serve_or_fastapi():
    out = _python(f"""
import sys
from ray_emer import cli
try:
    cli.main(["serve", "--help"])
except SystemExit as exc:
    assert exc.code == 0, exc.code
print("LOADED", [m for m in {HEAVY!r} if m in sys.modules])
""")
    assert "--checkpoint" in out and "--max-upload-mb" in out and "--no-auth" in out
    assert out.strip().splitlines()[-1] == "LOADED []"


# ---------------------------------------------------------------- settings
def test_settings_check_and_fill_in():
    cfg = resolve_args({"checkpoint": "ckpt", "engine": "vllm", "max_upload_mb": 1.5, "labeller": {"label_tokens": 4}})
    assert cfg.labeller.engine == "vllm" and cfg.labeller.label_tokens == 4
    assert resolve_args({"checkpoint": "ckpt"}).labeller.batch_size == 8  # the endpoint's default batch
    assert cfg.max_bytes == int(1.5 * 2**20) and cfg.media().max_duration_s == cfg.max_duration_s
    assert resolve_args(cfg) is cfg  # a ServeArgs passes through, checked
    with pytest.raises(ValueError, match="needs a checkpoint"):
        resolve_args({"engine": "hf"})
    with pytest.raises(ConfigError, match="max_uplod_mb"):
        resolve_args({"checkpoint": "ckpt", "max_uplod_mb": 2})
    with pytest.raises(ConfigError, match="engine"):
        resolve_args({"checkpoint": "ckpt", "engine": "tgi"})


def test_api_key_configured_from_the_environment_or_generated(monkeypatch, tmp_path, capsys):
    for name in ("RAY_EMER_API_KEY", "RAY_EMER_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert api_key(ServeArgs(auth=False, api_key="ignored")) == ""
    assert api_key(ServeArgs(api_key="given")) == "given"
    generated = api_key(ServeArgs())
    assert len(generated) >= 24 and f"Authorization: Bearer {generated}" in capsys.readouterr().err
    (tmp_path / "key").write_text("from-file\n")
    monkeypatch.setenv("RAY_EMER_API_KEY_FILE", str(tmp_path / "key"))
    assert api_key(ServeArgs()) == "from-file" and capsys.readouterr().err == ""  # nothing printed


# ---------------------------------------------------------------- HTTP shapes
def test_chat_request_reads_the_user_parts():
    body = {"messages": [{"role": "system", "content": "ignored"},
                         {"role": "user", "content": [{"type": "text", "text": "I can't"},
                                                      {"type": "video_url", "video_url": {"url": "s3://b/c.mp4"}}]},
                         {"role": "user", "content": "believe it"}]}
    assert http.chat_request(body) == ("s3://b/c.mp4", "I can't believe it")
    assert http.chat_request({"messages": [{"role": "user", "content": [
        {"type": "video_url", "video_url": {"url": "x.mp4"}}]}]}) == ("x.mp4", None)
    with pytest.raises(security.BadRequest, match="video_url"):
        http.chat_request({"messages": [{"role": "user", "content": "no clip"}]})


def test_analyze_request_and_suffixes():
    assert http.analyze_request({"video_uri": "a/b.webm", "subtitle": "hi"}) == ("a/b.webm", "hi")
    for bad in ({"nothing": 1}, {"video_uri": 3}, ["video_uri"]):
        with pytest.raises(security.BadRequest, match="multipart"):
            http.analyze_request(bad)
    assert http.json_body(b"") == {}
    with pytest.raises(security.BadRequest, match="not JSON"):
        http.json_body(b"{oops")
    assert http.uri_suffix("https://h/x/clip.mkv?sig=1") == ".mkv" and http.uri_suffix("s3://b.k/clip") == ".mp4"


def test_errors_answer_json_with_their_status():
    answers = {exc_status: http.error_response(exc) for exc_status, exc in (
        (403, security.Forbidden("no")), (413, security.TooLarge("big")), (400, security.BadRequest("bad")),
        (429, http.HTTPError(429, "busy", {"Retry-After": "1"})))}
    assert {s: a.status_code for s, a in answers.items()} == {403: 403, 413: 413, 400: 400, 429: 429}
    assert json.loads(answers[413].body) == {"error": "big"} and answers[429].headers["retry-after"] == "1"


RESULT = {"description": "She smiles and laughs, so she is happy.", "labels": ["happy", "surprised"],
          "sentiment": "positive", "timings": {"total_s": 0.5}}
CONTENT = "She smiles and laughs, so she is happy.\n\nEmotions: happy, surprised (sentiment: positive)"


def test_chat_answer_plain():
    out = http.chat_answer(RESULT, "ray-emer")
    assert out["object"] == "chat.completion" and out["model"] == "ray-emer" and out["id"].startswith("chatcmpl-")
    assert out["choices"] == [{"index": 0, "message": {"role": "assistant", "content": CONTENT},
                               "finish_reason": "stop"}]
    assert out["usage"]["completion_tokens"] == len(CONTENT.split()) == out["usage"]["total_tokens"]
    assert out["ray_emer"] == {"labels": ["happy", "surprised"], "sentiment": "positive", "timings": {"total_s": 0.5}}


def _sse(events: list[dict]) -> list[str]:
    async def gen():
        for e in events:
            yield e

    async def collect():
        return [piece async for piece in http.sse("chatcmpl-1", 7, "ray-emer", gen())]

    return asyncio.run(collect())


def test_chat_answer_streams_openai_chunks():
    words = RESULT["description"].split(" ")
    deltas = [{"delta": w + " "} for w in words[:-1]] + [{"delta": words[-1]}]
    events = _sse([*deltas, {"result": RESULT}, {"delta": "never sent"}])
    assert events[-1] == "data: [DONE]\n\n" and all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "chatcmpl-1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # a chunk per delta as it came, then the emotions line: the content is the plain answer's, exactly
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:len(words) + 1]] == [d["delta"] for d in deltas]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == CONTENT
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["ray_emer"] == {"labels": ["happy", "surprised"], "sentiment": "positive",
                                      "timings": {"total_s": 0.5}}


def test_a_failure_after_the_stream_began_is_an_error_event_and_the_end():
    events = _sse([{"delta": "She smiles"}, {"error": "the model failed on this clip: boom"}, {"delta": "never"}])
    assert events[-1] == "data: [DONE]\n\n" and len(events) == 4
    assert json.loads(events[1][6:])["choices"][0]["delta"] == {"content": "She smiles"}
    assert json.loads(events[2][6:]) == {"error": {"message": "the model failed on this clip: boom",
                                                   "type": "server_error"}}
