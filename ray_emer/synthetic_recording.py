"""A long synthetic recording: clips of known emotions joined with pauses, written as one H.264/AAC file.

The ground truth of the segmentation tests and of ``benchmarks/timeline.py``: where each clip starts (the joins,
each the start of a pause), which emotion it shows, and its subtitle as timed cues (an ``.srt`` sidecar by stem,
as ``ray-emer label`` pairs them). During a pause the picture already shows the next clip's face, still, and the
voice is silent: a shot cut and a pause mark each join, as in an edited interview. Frames and audio are encoded
as they are rendered: a recording of any length takes the memory of one clip.
"""

from __future__ import annotations

import dataclasses

import av
import numpy as np

from ray_emer import storage
from ray_emer.subtitles import stamp
from ray_emer.synthetic import SynthConfig, make_spec, render_audio, render_frame

SR = 16000


@dataclasses.dataclass
class Span:
    start_s: float  # the join: where the pause before this clip starts (0 for the first)
    end_s: float
    clip_id: str
    emotion: str
    labels: list[str]
    subtitle: str


def write_recording(path: str, cfg: SynthConfig, seconds: float, pause_s: float = 0.6,
                    subtitles: bool = True) -> dict:
    """Clips ``make_spec(cfg, 0..)`` joined with ``pause_s`` pauses until ``seconds`` are filled, into ``path``
    (a local .mp4), with ``<stem>.srt`` beside it when ``subtitles``. Returns ``{"path", "duration_s", "joins",
    "spans", "srt"}`` (``spans``: dicts of ``Span``)."""
    spans: list[Span] = []
    t, i, n_audio = 0.0, 0, 0
    with av.open(path, "w", format="mp4") as out:
        vs = out.add_stream("h264", rate=cfg.fps)
        vs.height = vs.width = cfg.size
        vs.pix_fmt, vs.options = "yuv420p", {"threads": "1"}
        aus = out.add_stream("aac", rate=SR, layout="mono")

        def audio(wave: np.ndarray) -> None:
            nonlocal n_audio
            for s in range(0, len(wave), 1024):
                frame = av.AudioFrame.from_ndarray(wave[None, s:s + 1024], format="flt", layout="mono")
                frame.sample_rate, frame.pts = SR, n_audio
                n_audio += frame.samples
                out.mux(aus.encode(frame))

        def video(img: np.ndarray, count: int) -> None:
            for _ in range(count):
                out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))

        while t < seconds:
            spec = make_spec(cfg, i)
            rng = np.random.default_rng([cfg.seed, i, 1])
            # alternately dark and light backgrounds: consecutive clips are different shots
            bg = tuple(int(v) for v in (rng.integers(40, 110, size=3) if i % 2 else rng.integers(150, 220, size=3)))
            n = max(1, int(round(spec.duration_s * cfg.fps)))
            frames = [render_frame(spec, cfg.size, k / cfg.fps, rng, bg) for k in range(n)]
            start = t
            if i:  # the pause: the next face, still; silence
                gap = int(round(pause_s * cfg.fps))
                video(frames[0], gap)
                audio((0.002 * rng.standard_normal(int(round(gap / cfg.fps * SR)))).astype(np.float32))
                t += gap / cfg.fps
            for img in frames:
                video(img, 1)
            wave = render_audio(spec, SR, rng)
            audio(np.pad(wave, (0, max(0, int(round(n / cfg.fps * SR)) - len(wave))))[:int(round(n / cfg.fps * SR))])
            t += n / cfg.fps
            spans.append(Span(round(start, 3), round(t, 3), spec.clip_id, spec.emotion, list(spec.labels),
                              spec.subtitle))
            i += 1
        out.mux(vs.encode())
        out.mux(aus.encode())
    result = {"path": path, "duration_s": round(t, 3), "joins": [s.start_s for s in spans[1:]],
              "spans": [dataclasses.asdict(s) for s in spans], "srt": ""}
    if subtitles:
        speech = [(s.start_s + (pause_s if k else 0.0), s.end_s, s.subtitle) for k, s in enumerate(spans)]
        text = "\n".join(f"{k + 1}\n{stamp(a, ',')} --> {stamp(b, ',')}\n{line}\n" for k, (a, b, line) in enumerate(speech))
        result["srt"] = path.rsplit(".", 1)[0] + ".srt"
        storage.write_text(result["srt"], text)
    return result
