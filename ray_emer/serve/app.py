"""The Ray Serve application: ``build_app(args)`` (what ``serve_config.yaml`` imports) and its deployments.

    Ingress (FastAPI: auth, limits, URIs, the OpenAI shape, the demo page)
      -> Decoder (CPU: decoding of the upload or an allowed URI; a long one's segments as they are cut)
      -> Model (frozen encoders + head + engine, requests batched with ``serve.batch``;
                one GPU per replica when ``use_gpu``, a fraction of a CPU otherwise)

Secure by default: a bearer API key on every route but ``/healthz`` and the page's HTML (generated and
printed when none is configured; ``auth: false`` turns it off), a body-size limit (413) enforced while the
body streams in, a duration limit (400), a server-side timeout no client header can lift (504), URI rules
against SSRF (403), a bounded number of requests in flight per ingress replica (429 with ``Retry-After``),
and a 400 with the decoding reason for anything that is not a decodable clip.

The settings are ``settings.ServeArgs`` (each application's own, passed to its Ingress), the request and
answer shapes live in ``http``, the refusals in ``security``: this module wires them into deployments.
"""

import asyncio
import dataclasses
import time

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from ray import serve
from ray.exceptions import RayActorError

from ray_emer.infer.labeller import LabellerConfig
from ray_emer.media import MediaConfig
from ray_emer.media.segments import SegmentConfig
from ray_emer.serve import http, security
from ray_emer.serve.analyzer import ClipModel, decode_media, decode_segments, thumbnails
from ray_emer.serve.recordings import recording_answer, segment_line, timeline_entries
from ray_emer.serve.page import DEMO_PAGE
from ray_emer.serve.settings import ServeArgs, api_key, resolve_args

__all__ = ["Decoder", "Ingress", "Model", "ServeArgs", "build_app", "build_app_with"]
PUBLIC_PATHS = {"/healthz", "/"}
# a request whose replica died under it (its node lost, an OOM kill) goes to another replica, at most this often:
# an analysis has no side effects, so running it again is safe
REPLICA_LOSS_RETRIES = 2


# ---------------------------------------------------------------- deployments
@serve.deployment(name="Decoder")
class Decoder:
    def __init__(self, media: MediaConfig, seg: SegmentConfig) -> None:
        self.media, self.seg = media, seg

    def decode(self, video: bytes | str, suffix: str, audio: bytes | None, audio_suffix: str,
               subtitle: str | None) -> dict:
        return decode_media(video, suffix, audio, audio_suffix, subtitle, self.media, self.seg)

    def segments(self, video: bytes | str, suffix: str, audio: bytes | None, audio_suffix: str):
        """A long upload's decoded segments, each as soon as it is cut (called with ``stream=True``)."""
        yield from decode_segments(video, suffix, audio, audio_suffix, self.media, self.seg)


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

    async def stream(self, row: dict):
        """One row, not batched: ``ClipModel.stream``'s events as they come (called with ``stream=True``). The
        work runs in a thread, one event at a time, so the replica's event loop stays free meanwhile."""
        events = self.model.stream(row)
        while (event := await asyncio.to_thread(next, events, None)) is not None:
            yield event


api = FastAPI(title="ray_emer", description="Explainable multimodal emotion recognition (AffectGPT)")


@api.middleware("http")
async def guard(request: Request, call_next):
    """Auth and the declared body size, before routing, by this replica's Ingress (its application's settings)."""
    ingress = serve.get_replica_context().servable_object
    refusal = ingress.refusal(request)
    if refusal is None:
        return await call_next(request)
    await http.drain(request, ingress.args.max_bytes)  # so that the client, still sending, reads the answer
    return refusal


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, decoder, model, args: ServeArgs, key: str) -> None:
        self.decoder, self.model = decoder, model
        self.args, self.key = args, key
        self.inflight = 0

    # ------------------------------------------------------------ helpers
    def refusal(self, request: Request) -> JSONResponse | None:
        """401 without the API key (but on ``PUBLIC_PATHS``), 413 for a declared body over the limit."""
        path = request.url.path[len(request.scope.get("root_path", "")):] or "/"
        if self.args.auth and path not in PUBLIC_PATHS and not security.bearer_ok(request.headers.get("authorization"),
                                                                                  self.key):
            return JSONResponse({"error": "missing or wrong API key (Authorization: Bearer KEY)"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.args.max_bytes:
            return JSONResponse({"error": http.body_over(self.args.max_upload_mb)}, status_code=413)
        return None

    async def _body(self, request: Request) -> bytes:
        return await http.read_body(request, self.args.max_bytes, self.args.max_upload_mb)

    def _media(self, uri: str, subtitle) -> http.ClipRequest:
        """An allowed URI -> bytes (data:, http) or the URI itself (allowed storage prefix)."""
        if uri.startswith("data:"):
            return http.ClipRequest(*security.decode_data_url(uri, self.args.max_bytes), subtitle=subtitle)
        kind = security.check_uri(uri, self.args.allow_hosts, self.args.allow_prefixes)
        video = security.fetch_http(uri, self.args.max_bytes) if kind == "http" else uri
        return http.ClipRequest(video, http.uri_suffix(uri), subtitle=subtitle)

    async def _analyze(self, clip: http.ClipRequest, frames: bool = False) -> http.Analysis:
        self._admit()
        t0 = time.perf_counter()
        try:
            decoded, result = await asyncio.wait_for(self._run(clip, frames), timeout=self.args.request_timeout_s)
        except TimeoutError as exc:
            raise http.HTTPError(504, f"the analysis took longer than {self.args.request_timeout_s} s") from exc
        finally:
            self.inflight -= 1
        result["timings"]["total_s"] = round(time.perf_counter() - t0, 4)
        if frames and decoded is not None:
            result["frames"] = thumbnails(decoded["frames"])
        return result

    def _timeline(self, clip: http.ClipRequest, frames: bool = False):
        """A long upload's timeline segments, each as soon as it and those before it are labelled."""
        rows = self.decoder.options(stream=True).segments.remote(clip.video, clip.suffix, clip.audio,
                                                                 clip.audio_suffix)
        return timeline_entries(rows, self._on_a_live_replica, frames)

    async def _run(self, clip: http.ClipRequest, frames: bool = False) -> tuple[dict | None, dict]:
        decoded = await self.decoder.decode.remote(clip.video, clip.suffix, clip.audio, clip.audio_suffix,
                                                   clip.subtitle)
        if decoded["status"] == "recording":
            return None, recording_answer([s async for s in self._timeline(clip, frames)], 0.0)
        if decoded["status"] != "ok":
            raise http.HTTPError(400, f"cannot decode the clip: {decoded['error']}")
        result = await self._on_a_live_replica(decoded)
        if result.pop("status") != "ok":
            raise http.HTTPError(500, f"the model failed on this clip: {result['error']}")
        result.pop("error")
        return decoded, result

    def _admit(self) -> None:
        if self.inflight >= self.args.max_inflight:
            raise http.HTTPError(429, "too many requests in flight; retry shortly", {"Retry-After": "1"})
        self.inflight += 1

    def _admitted_stream(self, held: list):
        """Admit a streamed answer; -> its release, run once (at the end of the answer, or when the client left),
        which frees the in-flight slot and cancels the model's event streams in ``held``."""
        self._admit()
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                self.inflight -= 1
                for events in held:
                    events.cancel()

        return release

    async def _stream(self, clip: http.ClipRequest):
        """A streamed chat answer. Before its first byte, the refusals are HTTP answers as without a stream (429,
        400, 504 when no text came within the timeout, 500); after it, a failure (the timeout for the whole
        answer included) is an SSE error event that ends the stream."""
        held: list = []  # the model's event stream, once opened: cancelled when the answer ends
        release = self._admitted_stream(held)
        t0, deadline = time.perf_counter(), time.perf_counter() + self.args.request_timeout_s
        try:
            try:
                first = await asyncio.wait_for(self._first_event(clip, held), timeout=self.args.request_timeout_s)
            except TimeoutError as exc:
                raise http.HTTPError(504, f"the analysis took longer than {self.args.request_timeout_s} s") from exc
            if "result" in first and first["result"]["status"] != "ok":
                raise http.HTTPError(500, f"the model failed on this clip: {first['result']['error']}")
        except BaseException:
            release()
            raise
        if "recording" in first:  # a long upload: its segments as lines, as they are labelled
            return http.stream_response(self.args.model_name, self._segment_events(clip, True, True), release)
        return http.stream_response(self.args.model_name, self._events(first, held[0], t0, deadline), release)

    async def _first_event(self, clip: http.ClipRequest, held: list) -> dict:
        """Decode, open the Model's event stream (on another replica when one is lost before its first event)
        and read that first event."""
        decoded = await self.decoder.decode.remote(clip.video, clip.suffix, clip.audio, clip.audio_suffix,
                                                   clip.subtitle)
        if decoded["status"] == "recording":
            return {"recording": True}
        if decoded["status"] != "ok":
            raise http.HTTPError(400, f"cannot decode the clip: {decoded['error']}")
        for attempt in range(REPLICA_LOSS_RETRIES):
            held[:] = [self.model.options(stream=True).stream.remote(decoded)]
            try:
                return await held[0].__anext__()
            except RayActorError:
                await asyncio.sleep(0.5 * (attempt + 1))
        held[:] = [self.model.options(stream=True).stream.remote(decoded)]
        return await held[0].__anext__()  # the last try: its failure is the answer

    async def _events(self, first: dict, events, t0: float, deadline: float):
        """The model's events for ``http.sse``: the result with its ``total_s``, a failure as ``{"error"}``."""
        event = first
        try:
            while "delta" in event:
                yield event
                event = await asyncio.wait_for(events.__anext__(), timeout=max(0.0, deadline - time.perf_counter()))
        except TimeoutError:
            event = {"error": f"the analysis took longer than {self.args.request_timeout_s} s"}
        except Exception as exc:  # noqa: BLE001 - the stream began: its failure is an error event
            event = {"error": f"the model failed on this clip: {type(exc).__name__}: {str(exc)[:300]}"}
        if "result" in event:
            result = event["result"]
            if result.pop("status") != "ok":
                event = {"error": f"the model failed on this clip: {result['error']}"}
            else:
                result.pop("error")
                result["timings"]["total_s"] = round(time.perf_counter() - t0, 4)
        yield event

    async def _segment_events(self, clip: http.ClipRequest, chat: bool, recording: bool = False):
        """A long upload streamed: each segment as an event once labelled (a chat answer: as a line of text),
        then the whole answer. A short clip: its analysis as the one event."""
        t0, deadline = time.perf_counter(), time.perf_counter() + self.args.request_timeout_s
        try:
            if not recording:
                probe = await self.decoder.decode.remote(clip.video, clip.suffix, clip.audio, clip.audio_suffix,
                                                         clip.subtitle)
                recording = probe["status"] == "recording"
            if recording:
                segments, entries = [], self._timeline(clip)
                while True:
                    left = max(0.0, deadline - time.perf_counter())
                    try:
                        segment = await asyncio.wait_for(entries.__anext__(), timeout=left)
                    except StopAsyncIteration:
                        break
                    segments.append(segment)
                    yield {"delta": segment_line(segment)} if chat else {"segment": segment}
                result = recording_answer(segments, time.perf_counter() - t0)
            else:
                _, result = await asyncio.wait_for(self._run(clip), timeout=self.args.request_timeout_s)
                result["timings"]["total_s"] = round(time.perf_counter() - t0, 4)
            yield {"result": result}
        except TimeoutError:
            yield {"error": f"the analysis took longer than {self.args.request_timeout_s} s"}
        except http.HTTPError as exc:
            yield {"error": exc.message}
        except Exception as exc:  # noqa: BLE001 - the stream began: its failure is an error event
            yield {"error": f"the analysis failed: {type(exc).__name__}: {str(exc)[:300]}"}

    def _events_response(self, clip: http.ClipRequest):
        """``/v1/analyze?stream=1``: SSE ``{"segment"}`` ..., ``{"result"}`` (or ``{"error"}``), ``[DONE]``."""
        return http.event_stream(self._segment_events(clip, chat=False), self._admitted_stream([]))

    async def _on_a_live_replica(self, decoded: dict) -> dict:
        """The Model's answer; a replica lost with the request on it (``RayActorError``: its actor or node died) is
        retried on another one, after a short pause in which Serve's router learns of the loss."""
        for attempt in range(REPLICA_LOSS_RETRIES):
            try:
                return await self.model.analyze.remote(decoded)
            except RayActorError:
                await asyncio.sleep(0.5 * (attempt + 1))
        return await self.model.analyze.remote(decoded)  # the last try: its failure is the answer

    # ------------------------------------------------------------ routes
    @api.get("/healthz")
    async def healthz(self):
        return {"status": "ok", "model": self.args.model_name}

    @api.get("/", response_class=HTMLResponse)
    async def page(self):
        return HTMLResponse(DEMO_PAGE.replace("{{MODEL}}", self.args.model_name))

    @api.get("/v1/models")
    async def models(self):
        return http.models_list(self.args.model_name)

    @api.post("/v1/analyze")
    async def analyze(self, request: Request):
        """Multipart (``file``, optional ``subtitle``, ``audio``) or JSON ``{"video_uri", "subtitle"}``."""
        try:
            frames = request.query_params.get("frames") in ("1", "true")
            if request.headers.get("content-type", "").startswith("multipart/form-data"):
                await self._body(request)  # size first: the form parser reads what the stream kept
                clip = await http.clip_from_form(await request.form(max_part_size=self.args.max_bytes))
            else:
                clip = self._media(*http.analyze_request(http.json_body(await self._body(request))))
            if request.query_params.get("stream") in ("1", "true"):
                return self._events_response(clip)
            return await self._analyze(clip, frames)
        except http.CLIENT_ERRORS as exc:
            return http.error_response(exc)

    @api.post("/v1/chat/completions")
    async def chat(self, request: Request):
        """OpenAI chat shape: user content parts ``text`` (the clip's subtitle) and ``video_url``; with
        ``stream: true`` the description streams as it is generated."""
        try:
            body = http.json_body(await self._body(request))
            clip = self._media(*http.chat_request(body))
            if body.get("stream"):
                return await self._stream(clip)
            result = await self._analyze(clip)
        except http.CLIENT_ERRORS as exc:
            return http.error_response(exc)
        return http.chat_answer(result, self.args.model_name)


def build_app(args: dict):
    """The Serve application builder: ``serve_config.yaml``'s ``args`` (unknown keys fail) -> Application.
    (Ray Serve requires a builder of exactly one parameter: ``serve deploy`` refuses any other.)"""
    return build_app_with(args)


def build_app_with(args: dict | ServeArgs, deployment_options: dict | None = None):
    """``build_app`` for the Python API, with ``deployment_options`` (name -> ``.options()`` kwargs, e.g. the
    ``deployments`` entries of ``serve_config.yaml``; ``serve deploy`` applies the YAML's itself)."""
    cfg = resolve_args(args)
    key = api_key(cfg)
    media = cfg.media()
    actor = {"Decoder": {"num_cpus": cfg.decode_cpus}, "Ingress": {"num_cpus": 0.1},
             "Model": {"num_gpus": 1} if cfg.use_gpu else {"num_cpus": cfg.model_cpus}}

    def options(name: str) -> dict:  # the given entries over ours; ray_actor_options merge key by key
        given = {k: v for k, v in (deployment_options or {}).get(name, {}).items() if k != "name"}
        return {**given, "ray_actor_options": {**actor[name], **given.get("ray_actor_options", {})}}

    decoder = Decoder.options(**options("Decoder")).bind(media, cfg.segment)
    model = Model.options(**options("Model")).bind(cfg.checkpoint, cfg.labeller, media, cfg.max_batch_size,
                                                   cfg.batch_wait_s)
    return Ingress.options(**options("Ingress")).bind(decoder, model, cfg, key)
