"""The Ray Serve application: ``build_app(args)`` (what ``serve_config.yaml`` imports) and its deployments.

    ingress (FastAPI: auth, limits, URIs, the OpenAI shape, the demo page)
      -> Decoder (CPU: media decoding of the upload or an allowed URI)
      -> Model (frozen encoders + head + engine, requests batched with ``serve.batch``;
                one GPU per replica when ``use_gpu``, a fraction of a CPU otherwise)

Secure by default: a bearer API key on every route but ``/healthz`` and the page's HTML
(generated and printed when none is configured; turning auth off takes ``auth: false``),
a body-size limit (413) enforced while the body streams in, a duration limit (400), a
server-side timeout no client header can lift (504), URI rules against SSRF (403), a
bounded number of requests in flight per ingress replica (429 with ``Retry-After``), and
a 400 with the decoding reason for anything that is not a decodable clip.
"""


import asyncio
import dataclasses
import json
import sys
import time
import uuid
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from ray import serve

from ray_emer.config import from_dict
from ray_emer.infer.labeller import LabellerConfig
from ray_emer.media import MediaConfig
from ray_emer.serve import security
from ray_emer.serve.analyzer import ClipModel, decode_media, thumbnails
from ray_emer.serve.page import DEMO_PAGE

PUBLIC_PATHS = {"/healthz", "/"}


@dataclasses.dataclass
class ServeArgs:
    checkpoint: str = ""  # an exported checkpoint directory (local or s3://)
    engine: Literal["hf", "vllm"] = "hf"
    model_name: str = "ray-emer"  # the id /v1/models lists and answers carry
    auth: bool = True  # false: no API key at all (explicitly asked for)
    api_key: str = ""  # empty: RAY_EMER_API_KEY, RAY_EMER_API_KEY_FILE, else generated and printed
    max_upload_mb: float = 50.0  # request bodies and fetched media (413 above)
    max_duration_s: float = 120.0  # longer clips: 400 (too_long)
    request_timeout_s: float = 60.0  # server-side; x-request-timeout-seconds cannot lift it (504)
    max_inflight: int = 8  # per ingress replica; more: 429 with Retry-After
    allow_hosts: list[str] = dataclasses.field(default_factory=list)  # http(s) media hosts (public addresses only)
    allow_prefixes: list[str] = dataclasses.field(default_factory=list)  # s3:// or local prefixes for video_uri
    frame_size: int = 96  # decoded frame size (the encoder resizes; the page shows these frames)
    use_gpu: bool = False  # one GPU per model replica
    model_cpus: float = 0.5
    decode_cpus: float = 0.25
    max_batch_size: int = 8  # requests per model call
    batch_wait_s: float = 0.02
    labeller: LabellerConfig = dataclasses.field(default_factory=lambda: LabellerConfig(batch_size=8))

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    def media(self) -> MediaConfig:
        return MediaConfig(frame_size=self.frame_size, max_duration_s=self.max_duration_s)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


# ---------------------------------------------------------------- deployments
@serve.deployment(name="Decoder")
class Decoder:
    def __init__(self, media: MediaConfig) -> None:
        self.media = media

    def decode(self, video: bytes | str, suffix: str, audio: bytes | None, audio_suffix: str,
               subtitle: str | None) -> dict:
        return decode_media(video, suffix, audio, audio_suffix, subtitle, self.media)


@serve.deployment(name="Model")
class Model:
    def __init__(self, checkpoint: str, labeller: LabellerConfig, media: MediaConfig, max_batch_size: int,
                 batch_wait_s: float) -> None:
        self.model = ClipModel(checkpoint, labeller, media)
        self.analyze.set_max_batch_size(max_batch_size)
        self.analyze.set_batch_wait_timeout_s(batch_wait_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def analyze(self, rows: list[dict]) -> list[dict]:
        return [dataclasses.asdict(a) for a in self.model.analyze(rows)]


def _ingress_class(args: ServeArgs, api_key: str):
    """The FastAPI ingress, made per application so the body limit and the key are the app's own."""
    api = FastAPI(title="ray_emer", description="Explainable multimodal emotion recognition (AffectGPT)")
    limit = args.max_bytes

    @api.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path[len(request.scope.get("root_path", "")):] or "/"
        if args.auth and path not in PUBLIC_PATHS and not security.bearer_ok(request.headers.get("authorization"),
                                                                             api_key):
            return JSONResponse({"error": "missing or wrong API key (Authorization: Bearer KEY)"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            return JSONResponse({"error": f"request body over {args.max_upload_mb} MB"}, status_code=413)
        return await call_next(request)

    @serve.deployment(name="Ingress")
    @serve.ingress(api)
    class Ingress:
        def __init__(self, decoder, model) -> None:
            self.decoder, self.model = decoder, model
            self.inflight = 0

        # ------------------------------------------------------------ helpers
        async def _body(self, request: Request) -> bytes:
            """The body, counted while it streams in: chunked uploads cannot pass the limit either."""
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPError(413, f"request body over {args.max_upload_mb} MB")
                chunks.append(chunk)
            data = b"".join(chunks)
            request._body = data  # Starlette's form parser reads a consumed stream from here
            return data

        def _media(self, uri: str) -> tuple[bytes | str, str]:
            """An allowed URI -> bytes (data:, http) or the URI itself (allowed storage prefix)."""
            if uri.startswith("data:"):
                return security.decode_data_url(uri, limit)
            kind = security.check_uri(uri, args.allow_hosts, args.allow_prefixes)
            suffix = "." + uri.rsplit(".", 1)[-1].split("?")[0] if "." in uri.rsplit("/", 1)[-1] else ".mp4"
            if kind == "http":
                return security.fetch_http(uri, limit), suffix
            return uri, suffix

        async def _analyze(self, video: bytes | str, suffix: str, audio: bytes | None, audio_suffix: str,
                           subtitle: str | None, frames: bool = False) -> dict:
            if self.inflight >= args.max_inflight:
                raise HTTPError(429, "too many requests in flight; retry shortly", {"Retry-After": "1"})
            self.inflight += 1
            t0 = time.perf_counter()
            try:
                row = await asyncio.wait_for(self._run(video, suffix, audio, audio_suffix, subtitle),
                                             timeout=args.request_timeout_s)
            except TimeoutError as exc:
                raise HTTPError(504, f"the analysis took longer than {args.request_timeout_s} s") from exc
            finally:
                self.inflight -= 1
            decoded, result = row
            result["timings"]["total_s"] = round(time.perf_counter() - t0, 4)
            if frames:
                result["frames"] = thumbnails(decoded["frames"])
            return result

        async def _run(self, video, suffix, audio, audio_suffix, subtitle):
            decoded = await self.decoder.decode.remote(video, suffix, audio, audio_suffix, subtitle)
            if decoded["status"] != "ok":
                raise HTTPError(400, f"cannot decode the clip: {decoded['error']}")
            result = await self.model.analyze.remote(decoded)
            if result.pop("status") != "ok":
                raise HTTPError(500, f"the model failed on this clip: {result['error']}")
            result.pop("error")
            return decoded, result

        @staticmethod
        def _error(exc: Exception):
            if isinstance(exc, HTTPError):
                return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
            status = {security.Forbidden: 403, security.TooLarge: 413, security.BadRequest: 400}[type(exc)]
            return JSONResponse({"error": str(exc)}, status_code=status)

        # ------------------------------------------------------------ routes
        @api.get("/healthz")
        async def healthz(self):
            return {"status": "ok", "model": args.model_name}

        @api.get("/", response_class=HTMLResponse)
        async def page(self):
            return HTMLResponse(DEMO_PAGE.replace("{{MODEL}}", args.model_name))

        @api.get("/v1/models")
        async def models(self):
            return {"object": "list", "data": [{"id": args.model_name, "object": "model", "created": 0,
                                                "owned_by": "ray_emer"}]}

        @api.post("/v1/analyze")
        async def analyze(self, request: Request):
            """Multipart (``file``, optional ``subtitle``, ``audio``) or JSON ``{"video_uri", "subtitle"}``."""
            try:
                ctype = request.headers.get("content-type", "")
                frames = request.query_params.get("frames") in ("1", "true")
                if ctype.startswith("multipart/form-data"):
                    await self._body(request)  # size first: the form parser reads what the stream kept
                    form = await request.form(max_part_size=limit)
                    upload = form.get("file")
                    if upload is None or isinstance(upload, str):
                        raise security.BadRequest("multipart field 'file' (the clip) is missing")
                    audio = form.get("audio")
                    audio_bytes = await audio.read() if audio is not None and not isinstance(audio, str) else None
                    name = upload.filename or "clip.mp4"
                    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ".mp4"
                    audio_suffix = "." + (audio.filename or "a.wav").rsplit(".", 1)[-1] if audio_bytes else ".wav"
                    subtitle = form.get("subtitle")
                    return await self._analyze(await upload.read(), suffix, audio_bytes, audio_suffix,
                                               subtitle if isinstance(subtitle, str) else None, frames)
                body = json.loads(await self._body(request) or b"{}")
                if not isinstance(body, dict) or not isinstance(body.get("video_uri"), str):
                    raise security.BadRequest('send multipart "file" or JSON {"video_uri": ..., "subtitle": ...}')
                video, suffix = self._media(body["video_uri"])
                return await self._analyze(video, suffix, None, ".wav", body.get("subtitle"), frames)
            except (HTTPError, security.Forbidden, security.TooLarge, security.BadRequest) as exc:
                return self._error(exc)
            except json.JSONDecodeError as exc:
                return self._error(security.BadRequest(f"the body is not JSON: {exc}"))

        @api.post("/v1/chat/completions")
        async def chat(self, request: Request):
            """OpenAI chat shape: user content parts ``text`` (the clip's subtitle) and ``video_url``."""
            try:
                body = json.loads(await self._body(request) or b"{}")
                video_url, texts = None, []
                for msg in body.get("messages") or []:
                    if msg.get("role") != "user":
                        continue
                    content = msg.get("content")
                    parts = [{"type": "text", "text": content}] if isinstance(content, str) else content or []
                    for part in parts:
                        if part.get("type") == "text":
                            texts.append(str(part.get("text", "")))
                        elif part.get("type") == "video_url":
                            video_url = (part.get("video_url") or {}).get("url")
                if not video_url:
                    raise security.BadRequest("a user message needs a video_url content part")
                video, suffix = self._media(video_url)
                result = await self._analyze(video, suffix, None, ".wav", " ".join(t for t in texts if t) or None)
            except (HTTPError, security.Forbidden, security.TooLarge, security.BadRequest) as exc:
                return self._error(exc)
            except json.JSONDecodeError as exc:
                return self._error(security.BadRequest(f"the body is not JSON: {exc}"))
            content = (f"{result['description']}\n\nEmotions: {', '.join(result['labels'])} "
                       f"(sentiment: {result['sentiment']})")
            rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            extra = {"labels": result["labels"], "sentiment": result["sentiment"], "timings": result["timings"]}
            if body.get("stream"):
                return StreamingResponse(_sse(rid, created, args.model_name, content, extra),
                                         media_type="text/event-stream")
            return {"id": rid, "object": "chat.completion", "created": created, "model": args.model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 0, "completion_tokens": len(content.split()),
                              "total_tokens": len(content.split())},
                    "ray_emer": extra}

    return Ingress


async def _sse(rid: str, created: int, model: str, content: str, extra: dict):
    """Server-sent events in the OpenAI chunk shape: the role, the content in pieces, the stop, [DONE]."""
    def chunk(delta: dict, finish: str | None = None, **more) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    words = content.split(" ")
    for i in range(0, len(words), 8):
        yield chunk({"content": " ".join(words[i:i + 8]) + (" " if i + 8 < len(words) else "")})
    yield chunk({}, "stop", ray_emer=extra)
    yield "data: [DONE]\n\n"


def build_app(args: dict):
    """The Serve application builder: ``serve_config.yaml``'s ``args`` (unknown keys fail) -> Application.
    (Ray Serve requires a builder of exactly one parameter: ``serve deploy`` refuses any other.)"""
    return build_app_with(args)


def build_app_with(args: dict, deployment_options: dict | None = None):
    """``build_app`` for the Python API, with ``deployment_options`` (name -> ``.options()`` kwargs, e.g. the
    ``deployments`` entries of ``serve_config.yaml``; ``serve deploy`` applies the YAML's itself)."""
    extra = {name: {k: v for k, v in opts.items() if k != "name"} for name, opts in (deployment_options or {}).items()}
    cfg = args if isinstance(args, ServeArgs) else from_dict(ServeArgs, dict(args or {}))
    if not cfg.checkpoint:
        raise ValueError("serve needs a checkpoint (args.checkpoint)")
    cfg.labeller = dataclasses.replace(cfg.labeller, engine=cfg.engine)
    key = ""
    if cfg.auth:
        key, generated = (cfg.api_key, False) if cfg.api_key else security.resolve_api_key()
        if generated:
            print(f"[serve] no API key configured (RAY_EMER_API_KEY / RAY_EMER_API_KEY_FILE); generated one:\n"
                  f"[serve]   Authorization: Bearer {key}", file=sys.stderr, flush=True)
    media = cfg.media()
    decoder = Decoder.options(ray_actor_options={"num_cpus": cfg.decode_cpus}, **extra.get("Decoder", {})).bind(media)
    model_opts = {"num_gpus": 1} if cfg.use_gpu else {"num_cpus": cfg.model_cpus}
    model = Model.options(ray_actor_options=model_opts, **extra.get("Model", {})).bind(
        cfg.checkpoint, cfg.labeller, media, cfg.max_batch_size, cfg.batch_wait_s)
    ingress = _ingress_class(cfg, key)
    return ingress.options(ray_actor_options={"num_cpus": 0.1}, **extra.get("Ingress", {})).bind(decoder, model)
