"""Long recordings without Ray: cutting at joins (shot cuts, pauses), bounds of segment length, one streamed
decode, identical rows for short clips, resume per segment, timeline JSON / WebVTT / summary, the timeline page."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import webvtt

from ray_emer.data.extraction import ExtractConfig, extract_sequential, read_markers
from ray_emer.features.decode import decode_row, decode_rows
from ray_emer.features.shards import read_shards, written_clip_ids
from ray_emer.media import MediaConfig, probe
from ray_emer.media.recording import stream_segments
from ray_emer.media.segments import Cutter, SegmentConfig, segment_id
from ray_emer.synthetic import SynthConfig, encode_clip
from ray_emer.synthetic_recording import write_recording
from ray_emer.timeline import summarize, timelines, to_vtt
from ray_emer.tracking import TrackingConfig

SMALL = MediaConfig(frame_size=32)
CLIPS = SynthConfig(seed=5, min_duration_s=2.5, max_duration_s=6)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> dict:
    return write_recording(str(tmp_path_factory.mktemp("rec") / "talk.mp4"), CLIPS, 75)


def _segments(path: str, seg: SegmentConfig | None = None) -> list:
    return list(stream_segments(path, probe(path), SMALL, seg or SegmentConfig()))


def joins_found(bounds: list[float], joins: list[float], within: float = 0.5) -> float:
    return sum(any(abs(b - j) <= within for b in bounds) for j in joins) / len(joins)


def test_a_recording_of_joined_clips_is_cut_at_its_joins(recording):
    segs = _segments(recording["path"])
    starts = [s.start_s for s in segs]
    assert joins_found(starts[1:], recording["joins"]) >= 0.8, (starts, recording["joins"])
    assert starts[0] == 0.0 and segs[-1].end_s == pytest.approx(recording["duration_s"], abs=0.15)
    assert all(a.end_s == b.start_s for a, b in zip(segs, segs[1:]))  # contiguous, nothing lost
    assert all(2.0 - 1e-6 <= s.end_s - s.start_s <= 12.0 + 1e-6 for s in segs)
    assert all(s.frames.shape == (8, 32, 32, 3) and s.audio.shape == (8, 32000) for s in segs)
    assert all(s.has_video and s.has_audio and s.thumbnail[:2] == b"\xff\xd8" for s in segs)  # a JPEG each


def test_no_speech_and_no_cuts_gives_max_length_segments(tmp_path):
    still = [np.full((64, 64, 3), 128, np.uint8)] * 400  # 40 s at 10 fps, one shot
    path = tmp_path / "still.mp4"
    path.write_bytes(encode_clip(still, np.zeros(16000 * 40, np.float32), fps=10))
    spans = [(round(s.start_s, 2), round(s.end_s, 2)) for s in _segments(str(path))]
    assert spans == [(0.0, 12.0), (12.0, 24.0), (24.0, 36.0), (36.0, 40.0)]


def test_the_cutter_keeps_min_and_max_and_joins_a_short_tail():
    cfg = SegmentConfig(min_s=2, max_s=12)
    cut = Cutter(cfg)
    assert [cut.candidate(t) for t in (1.0, 3.0, 4.0, 5.5)] == [False, True, False, True]
    assert cut.advance(5.5 + 12 + 1.5) == [17.5]  # no candidate for max_s (and the lag): cut at max_s
    # a 1 s tail joins the segment before; 12 + 1 s would pass max_s: two halves
    assert cut.finish(18.5) == [(0.0, 3.0), (3.0, 5.5), (5.5, 12.0), (12.0, 18.5)]
    short = Cutter(cfg)
    short.candidate(3.0)
    assert short.finish(4.5) == [(0.0, 4.5)]  # a 1.5 s tail joins the segment before
    with pytest.raises(ValueError, match="max_s >= 2"):
        SegmentConfig(min_s=5, max_s=8)


def test_a_short_clip_stays_one_identical_row(synth_archive):
    rec = {"clip_id": "c0", "video_uri": str(sorted((synth_archive / "clips").glob("*.mp4"))[0]), "subtitle": "hi"}
    (row,) = list(decode_rows(rec, SMALL, seg=SegmentConfig()))
    plain = decode_row(rec, SMALL)
    assert np.array_equal(row["frames"], plain["frames"]) and np.array_equal(row["audio"], plain["audio"])
    assert row["record"]["clip_id"] == "c0" and row["record"]["recording_id"] == "c0"
    assert row["record"]["start_s"] == 0.0 and row["record"]["end_s"] == pytest.approx(plain["duration_s"])


def test_segments_get_ids_spans_and_their_own_subtitles(recording):
    rec = {"clip_id": "talk", "video_uri": recording["path"], "subtitle_uri": recording["srt"]}
    rows = list(decode_rows(rec, SMALL, seg=SegmentConfig()))
    assert len(rows) > 5 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        rr = r["record"]
        assert rr["clip_id"] == segment_id("talk", rr["start_s"], rr["end_s"]) and rr["recording_id"] == "talk"
        mid = (rr["start_s"] + rr["end_s"]) / 2
        under = next(s for s in recording["spans"] if s["start_s"] <= mid < s["end_s"])
        if rr["subtitle"] and abs(rr["start_s"] - under["start_s"]) < 0.5:  # a segment that starts at its clip
            assert under["subtitle"] in rr["subtitle"]
    assert sum(bool(r["record"]["subtitle"]) for r in rows) >= len(rows) * 0.7


def test_a_resumed_extraction_redoes_only_the_missing_segments(recording, tmp_path):
    folder = tmp_path / "archive"
    folder.mkdir()
    shutil.copy(recording["path"], folder / "talk.mp4")
    cfg = ExtractConfig(input=str(folder), output=str(tmp_path / "feats"), media=SMALL, progress=False,
                        tracking=TrackingConfig(enabled=False))
    first = extract_sequential(cfg)
    segments = read_markers(cfg.output)["talk"]
    assert first["ok"] == len(segments) > 5
    shards = sorted((tmp_path / "feats").glob("part-*.parquet"))
    for shard in shards[1:4]:  # a job killed part-way: some segments' shards never written
        shard.unlink()
    again = extract_sequential(cfg)
    assert again["processed"] == 1 and again["ok"] == 3  # the recording is decoded again, 3 segments encoded
    ids = written_clip_ids(cfg.output)
    assert sorted(ids) == sorted(segments) and len(ids) == len(set(ids))
    assert extract_sequential(cfg)["processed"] == 0  # complete: not even decoded
    table = read_shards(cfg.output, columns=["clip_id", "recording_id", "start_s", "end_s", "thumbnail"])
    assert set(table.column("recording_id").to_pylist()) == {"talk"} and all(table.column("thumbnail").to_pylist())


def _rows(n: int = 4) -> list[dict]:
    out = [{"clip_id": "rec@0-5000", "recording_id": "rec", "start_s": 0.0, "end_s": 5.0, "description": "d0",
            "labels": ["happy", "joyful"], "sentiment": "positive", "status": "ok", "subtitle": "hello"},
           {"clip_id": "rec@5000-7000", "recording_id": "rec", "start_s": 5.0, "end_s": 7.0, "description": "d1",
            "labels": ["sad"], "sentiment": "negative", "status": "ok", "subtitle": None},
           {"clip_id": "rec@7000-19000", "recording_id": "rec", "start_s": 7.0, "end_s": 19.0, "description": "",
            "labels": [], "sentiment": "", "status": "error", "error": "engine_failed: x"},
           {"clip_id": "clip", "recording_id": "clip", "start_s": 0.0, "end_s": 3.0, "description": "c",
            "labels": ["calm"], "sentiment": "neutral", "status": "ok"}]
    return out[:n]


def test_timelines_json_webvtt_and_the_summary():
    found = timelines(reversed(_rows()))
    assert set(found) == {"rec"}  # a clip is no timeline
    tl = found["rec"]
    assert set(tl) == {"recording_id", "duration_s", "segments"} and tl["duration_s"] == 19.0
    assert [s["start_s"] for s in tl["segments"]] == [0.0, 5.0, 7.0]  # time order
    assert set(tl["segments"][0]) == {"start_s", "end_s", "description", "labels", "sentiment", "subtitle"}
    assert tl["segments"][2]["error"] == "engine_failed: x"
    cues = webvtt.from_string(to_vtt(tl)).captions
    assert [(c.start, c.end, c.text) for c in cues] == [
        ("00:00:00.000", "00:00:05.000", "happy, joyful (positive)"), ("00:00:05.000", "00:00:07.000", "sad (negative)"),
        ("00:00:07.000", "00:00:19.000", "(not labelled)")]
    summary = summarize(tl["segments"])
    assert summary["labels"][:1] == ["happy"] and summary["sentiment"] == "positive"  # 5 s of happy, 2 s of sad
    assert "Summary of 3 segments" in summary["description"]
    assert json.loads(json.dumps(tl)) == tl


def test_the_timeline_page_draws_segments_and_shows_a_description_on_click(chrome, tmp_path):
    from selenium.webdriver.common.by import By

    from ray_emer.eval.timeline_view import timeline_html

    tl = timelines(_rows(3))["rec"]
    jpeg = (np.zeros(0)).tobytes()
    page = tmp_path / "rec.html"
    page.write_text(timeline_html(tl, {"0-5000": b"\xff\xd8" + jpeg}))
    chrome.get(page.as_uri())
    segs = chrome.find_elements(By.CSS_SELECTOR, "svg .seg rect")
    assert [s.get_attribute("fill") for s in segs] == ["#3a9d5d", "#c8453b", "#222"]
    assert len(chrome.find_elements(By.CSS_SELECTOR, "#valence")) == 1
    assert len(chrome.find_elements(By.CSS_SELECTOR, "img.frame")) == 1
    chrome.find_elements(By.CSS_SELECTOR, "svg .seg")[1].click()
    assert chrome.find_element(By.ID, "description").text == "d1"
    assert "sad (negative)" in chrome.find_element(By.ID, "detail").text


def test_the_endpoint_answers_each_segment_once_labelled_in_time_order_while_cutting_goes_on():
    import asyncio

    from ray_emer.serve.recordings import timeline_entries

    def row(i: int, status: str = "ok") -> dict:
        return {"status": status, "error": "damaged: x" if status != "ok" else "",
                "record": {"start_s": float(i), "end_s": float(i + 1), "subtitle": None}}

    async def main() -> list[dict]:
        first_out = asyncio.Event()

        async def rows():
            for i in range(3):
                yield row(i)
            await asyncio.wait_for(first_out.wait(), 5)  # the rest is cut once the first segment is out
            yield row(3, "error")
            yield row(4)

        async def analyze(r: dict) -> dict:
            i = int(r["record"]["start_s"])
            await asyncio.sleep(0.05 * (3 - i) if i < 3 else 0)  # later segments finish first
            return {"status": "ok", "description": f"d{i}", "labels": [f"l{i}"], "sentiment": "neutral"}

        got = []
        async for entry in timeline_entries(rows(), analyze):
            got.append(entry)
            first_out.set()
        return got

    got = asyncio.run(main())
    assert [e["start_s"] for e in got] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [e["description"] for e in got] == ["d0", "d1", "d2", "", "d4"] and got[3]["error"] == "damaged: x"


def test_the_segment_flag_reaches_the_jobs(monkeypatch):
    from ray_emer import cli
    from ray_emer.data import label_job, pipeline

    seen = {}
    monkeypatch.setattr(label_job, "run_label", lambda cfg, log=None: seen.setdefault("label", cfg) and {})
    monkeypatch.setattr(pipeline, "run_extract", lambda cfg, log=None: seen.setdefault("extract", cfg) and {})
    assert cli.main(["label", "--input", "a", "--checkpoint", "c", "--output", "o", "--segment", "off"]) == 0
    assert cli.main(["extract", "--input", "a", "--output", "o"]) == 0
    assert seen["label"].extract.segment.mode == "off" and seen["extract"].segment.mode == "auto"
    assert seen["extract"].segment.max_s == 12.0 and seen["extract"].media.max_duration_s == 14400.0
    with pytest.raises(SystemExit):
        cli.main(["label", "--input", "a", "--checkpoint", "c", "--output", "o", "--segment", "sometimes"])
