"""The endpoint's HTTP shapes, apart from the deployments that answer them.

- Errors: ``HTTPError`` and the plain-Python refusals of ``security`` -> a JSON ``{"error": ...}`` answer.
- Requests read: the body (counted while it streams in), a multipart upload (``file``, ``audio``,
  ``subtitle``), the JSON ``{"video_uri", "subtitle"}`` of ``/v1/analyze``, the OpenAI chat ``messages``.
- Answers written: ``/v1/models``, the OpenAI chat completion and its server-sent-event chunks.
The wire shapes are plain dicts, byte for byte what clients (the ``openai`` package, the demo page, scripts)
already parse; the ``TypedDict``s name them.
"""

import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import NotRequired, TypedDict

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.background import BackgroundTask

from ray_emer.serve import security


# ---------------------------------------------------------------- errors
class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


CLIENT_ERRORS = (HTTPError, security.Forbidden, security.TooLarge, security.BadRequest)
STATUS = {security.Forbidden: 403, security.TooLarge: 413, security.BadRequest: 400}


def error_response(exc: Exception) -> JSONResponse:
    """One of ``CLIENT_ERRORS`` -> ``{"error": message}`` with its status (and headers, e.g. Retry-After)."""
    if isinstance(exc, HTTPError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
    return JSONResponse({"error": str(exc)}, status_code=STATUS[type(exc)])


def body_over(max_upload_mb: float) -> str:
    return f"request body over {max_upload_mb} MB"


# ---------------------------------------------------------------- requests
@dataclasses.dataclass
class ClipRequest:
    """One clip to analyze: bytes of an upload (or an allowed storage URI) and what comes with it."""

    video: bytes | str
    suffix: str
    audio: bytes | None = None
    audio_suffix: str = ".wav"
    subtitle: str | None = None


DRAIN_BYTES = 64 * 2**20  # at least this much of a refused body is read (and dropped) before the answer


def drain_bound(max_bytes: int) -> int:
    return max(DRAIN_BYTES, 8 * max_bytes)


async def _drop(chunks: AsyncIterator[bytes], seen: int, bound: int) -> None:
    """Read what is left of a body and drop it, one chunk at a time, up to ``bound`` bytes in all."""
    try:
        async for chunk in chunks:
            seen += len(chunk)
            if seen > bound:
                return
    except Exception:  # noqa: BLE001 - a client that went away has nothing left to read
        return


async def drain(request: Request, max_bytes: int) -> None:
    """Before an early answer (413 for a declared size, 401): read the body and drop it (up to
    ``drain_bound``). Clients that send the whole body before they read (Python's urllib and requests) get a
    connection reset instead of the answer when the server closes first; curl, waiting for 100-continue, does
    not. nginx's lingering close does the same."""
    try:
        chunks = request.stream()
    except RuntimeError:  # already read
        return
    await _drop(chunks, 0, drain_bound(max_bytes))


async def read_body(request: Request, max_bytes: int, max_upload_mb: float) -> bytes:
    """The body, counted while it streams in: chunked uploads cannot pass the limit either. Past the limit the
    rest is read and dropped (``drain``) before the 413, so every client reads it; no more than the limit is held."""
    chunks, size = [], 0
    stream = request.stream()
    async for chunk in stream:
        size += len(chunk)
        if size > max_bytes:
            chunks.clear()
            await _drop(stream, size, drain_bound(max_bytes))
            raise HTTPError(413, body_over(max_upload_mb))
        chunks.append(chunk)
    data = b"".join(chunks)
    request._body = data  # Starlette's form parser reads a consumed stream from here
    return data


def json_body(data: bytes):
    """A request body -> its JSON value (an empty body is ``{}``); not JSON: ``BadRequest``."""
    try:
        return json.loads(data or b"{}")
    except json.JSONDecodeError as exc:
        raise security.BadRequest(f"the body is not JSON: {exc}") from exc


async def clip_from_form(form) -> ClipRequest:
    """A multipart form: ``file`` (the clip), optional ``audio`` (replaces the clip's track) and ``subtitle``."""
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise security.BadRequest("multipart field 'file' (the clip) is missing")
    audio = form.get("audio")
    audio_bytes = await audio.read() if audio is not None and not isinstance(audio, str) else None
    name = upload.filename or "clip.mp4"
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ".mp4"
    audio_suffix = "." + (audio.filename or "a.wav").rsplit(".", 1)[-1] if audio_bytes else ".wav"
    subtitle = form.get("subtitle")
    return ClipRequest(await upload.read(), suffix, audio_bytes, audio_suffix,
                       subtitle if isinstance(subtitle, str) else None)


def analyze_request(body) -> tuple[str, object]:
    """``/v1/analyze``'s JSON ``{"video_uri", "subtitle"}`` -> (video_uri, subtitle as sent)."""
    if not isinstance(body, dict) or not isinstance(body.get("video_uri"), str):
        raise security.BadRequest('send multipart "file" or JSON {"video_uri": ..., "subtitle": ...}')
    return body["video_uri"], body.get("subtitle")


def uri_suffix(uri: str) -> str:
    """The file suffix a media URI names (query string dropped), ``.mp4`` when it names none."""
    return "." + uri.rsplit(".", 1)[-1].split("?")[0] if "." in uri.rsplit("/", 1)[-1] else ".mp4"


def chat_request(body: dict) -> tuple[str, str | None]:
    """OpenAI chat ``messages`` -> (the user's ``video_url``, their ``text`` parts joined: the clip's subtitle)."""
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
    return video_url, " ".join(t for t in texts if t) or None


# ---------------------------------------------------------------- answers
class Analysis(TypedDict):
    """``POST /v1/analyze``'s answer (``frames`` with ``?frames=1``: JPEG data URLs of the decoded frames)."""

    description: str
    labels: list[str]
    sentiment: str
    timings: dict  # decode_s, encode_s, generate_s, model_s, batch, total_s (a recording: segments, total_s, ...)
    frames: NotRequired[list[str]]
    timeline: NotRequired[list[dict]]  # a recording longer than segment.max_s: its segments, in time order


class ChatCompletion(TypedDict):
    """``POST /v1/chat/completions``'s answer: OpenAI's ``chat.completion`` plus ``ray_emer`` (labels, ...)."""

    id: str
    object: str
    created: int
    model: str
    choices: list[dict]
    usage: dict
    ray_emer: dict


def models_list(model: str) -> dict:
    """``GET /v1/models``: OpenAI's model list, with the one model this endpoint serves."""
    return {"object": "list", "data": [{"id": model, "object": "model", "created": 0, "owned_by": "ray_emer"}]}


def chat_content(result: Analysis) -> str:
    """The assistant's message: the description, then the emotions."""
    return f"{result['description']}{emotions_line(result)}"


def emotions_line(result: Analysis) -> str:
    return f"\n\nEmotions: {', '.join(result['labels'])} (sentiment: {result['sentiment']})"


def extra(result: Analysis) -> dict:
    """The ``ray_emer`` part of a chat answer: labels, sentiment, timings (and a recording's timeline)."""
    out = {"labels": result["labels"], "sentiment": result["sentiment"], "timings": result["timings"]}
    if "timeline" in result:
        out["timeline"] = result["timeline"]
    return out


def chat_id() -> tuple[str, int]:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())


def chat_answer(result: Analysis, model: str) -> ChatCompletion:
    """An analysis -> the whole chat completion (a stream is ``sse``'s)."""
    content = chat_content(result)
    rid, created = chat_id()
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": len(content.split()),
                      "total_tokens": len(content.split())},
            "ray_emer": extra(result)}


async def sse(rid: str, created: int, model: str, events: AsyncIterator[dict]) -> AsyncIterator[str]:
    """Analysis events -> server-sent events in the OpenAI chunk shape: the role first, a content chunk per
    ``{"delta": text}``, for ``{"result": analysis}`` the emotions line as the last content, then the stop
    with the ``ray_emer`` extra (labels, sentiment, timings), then ``[DONE]``. ``{"error": message}`` (a
    failure after the stream began) is an ``{"error": {...}}`` event (the ``openai`` client raises it), then
    ``[DONE]``: a stream always ends."""
    def chunk(delta: dict, finish: str | None = None, **more) -> str:
        body = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **more}
        return f"data: {json.dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for event in events:
        if "delta" in event:
            yield chunk({"content": event["delta"]})
        elif "result" in event:
            yield chunk({"content": emotions_line(event["result"])})
            yield chunk({}, "stop", ray_emer=extra(event["result"]))
            break
        else:
            yield f"data: {json.dumps({'error': {'message': event['error'], 'type': 'server_error'}})}\n\n"
            break
    yield "data: [DONE]\n\n"


def _sse_answer(pieces: AsyncIterator[str], on_close) -> StreamingResponse:
    """Server-sent ``pieces`` as the answer; ``on_close()`` (run once only) runs when the last piece is out, before
    the answer ends, or when the client left (also before the stream began: the background task)."""
    async def body():
        try:
            async for piece in pieces:
                yield piece
        finally:
            on_close()

    return StreamingResponse(body(), media_type="text/event-stream", background=BackgroundTask(on_close))


def stream_response(model: str, events: AsyncIterator[dict], on_close) -> StreamingResponse:
    """A streamed chat answer: ``sse`` of ``events``; ``on_close`` as in ``_sse_answer``."""
    rid, created = chat_id()
    return _sse_answer(sse(rid, created, model, events), on_close)


async def _plain_events(events: AsyncIterator[dict]) -> AsyncIterator[str]:
    async for event in events:
        yield f"data: {json.dumps(event)}\n\n"
    yield "data: [DONE]\n\n"


def event_stream(events: AsyncIterator[dict], on_close) -> StreamingResponse:
    """``/v1/analyze?stream=1``: each event (``{"segment"}``, ``{"result"}``, ``{"error"}``) as a server-sent event,
    then ``[DONE]``; ``on_close`` as in ``_sse_answer``."""
    return _sse_answer(_plain_events(events), on_close)
