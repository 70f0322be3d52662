"""A long upload at the endpoint: its segments, labelled as they are cut, as a timeline (no Ray here).

The Decoder streams the upload's segment rows (``analyzer.decode_segments``); each goes to the Model as soon as it
is cut (the Model batches what arrives together), and ``timeline_entries`` yields the segments in time order, each
as soon as it and those before it are labelled. The answer (``recording_answer``) is the timeline plus a summary
of the whole: the labels that hold longest, the prevailing sentiment, and a description that says it is a
summary (``timeline.summarize``). Streamed, each segment is an event as it comes.
"""

from __future__ import annotations

import asyncio
import base64
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

from ray_emer.timeline import cue_text, segment_entry, summarize


def _entry(row: dict, result: dict | None, error: str = "", frame: bool = False) -> dict:
    """A decoded segment and its analysis (None: not labelled, ``error`` says why) -> its timeline segment."""
    rec = row["record"]
    if result is not None and result.get("status", "ok") == "ok":
        entry = segment_entry({**rec, **result, "status": "ok"})
    else:
        why = error or (result or {}).get("error") or row.get("error") or "not labelled"
        entry = segment_entry({**rec, "description": "", "labels": [], "sentiment": "", "status": "error",
                               "error": why})
    if frame and rec.get("thumbnail"):  # ?frames=1: the segment's middle frame (the demo page's timeline)
        entry["frame"] = "data:image/jpeg;base64," + base64.b64encode(rec["thumbnail"]).decode()
    return entry


async def _settle(row: dict, task: asyncio.Future | None, frame: bool) -> dict:
    if task is None:
        return _entry(row, None, frame=frame)
    try:
        return _entry(row, await task, frame=frame)
    except Exception as exc:  # noqa: BLE001 - one segment's failure is its own entry; the timeline goes on
        return _entry(row, None, f"the model failed on this segment: {type(exc).__name__}: {str(exc)[:200]}", frame)


async def timeline_entries(rows: AsyncIterator[dict], analyze: Callable[[dict], Awaitable[dict]],
                           frames: bool = False) -> AsyncIterator[dict]:
    """Decoded segment rows as they are cut -> timeline segments in time order, each as soon as it (and every one
    before it) is labelled, while the decoder goes on cutting (with ``frames``: its middle frame as a JPEG data
    URL, ``frame``). A decoder that fails raises, after the segments it cut."""
    pending: deque = deque()
    arrived, state = asyncio.Event(), {"finished": False, "failure": None}

    async def read() -> None:
        try:
            async for row in rows:
                pending.append((row, asyncio.ensure_future(analyze(row)) if row["status"] == "ok" else None))
                arrived.set()
        except Exception as exc:  # noqa: BLE001 - raised once the segments before it are out
            state["failure"] = exc
        finally:
            state["finished"] = True
            arrived.set()

    reader = asyncio.ensure_future(read())
    try:
        while True:
            arrived.clear()
            if pending:
                row, task = pending[0]
                if task is not None:
                    await asyncio.wait([task])
                pending.popleft()
                yield await _settle(row, task, frames)
            elif state["finished"]:
                break
            else:
                await arrived.wait()
        if state["failure"] is not None:
            raise state["failure"]
    finally:
        reader.cancel()
        for _, task in pending:
            if task is not None:
                task.cancel()


def recording_answer(segments: list[dict], total_s: float) -> dict:
    """``/v1/analyze``'s answer for a recording: the summary (description, labels, sentiment), its timings and
    the timeline."""
    labelled = sum("error" not in s for s in segments)
    timings = {"segments": len(segments), "labelled": labelled,
               "duration_s": segments[-1]["end_s"] if segments else 0.0, "total_s": round(total_s, 4)}
    return {**summarize(segments), "timings": timings, "timeline": segments}


def segment_line(segment: dict) -> str:
    """A segment as a line of a streamed chat answer: its time, labels, sentiment and explanation."""
    start, end = segment["start_s"], segment["end_s"]
    clock = f"[{int(start // 60)}:{start % 60:04.1f}-{int(end // 60)}:{end % 60:04.1f}]"
    return f"{clock} {cue_text(segment)}: {segment['description']}\n"
