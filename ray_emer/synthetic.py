"""A labelled synthetic EMER archive: short H.264/AAC clips with subtitles, gold
descriptions that cite the clues, and gold open-vocabulary labels.

The emotion is spread over three modalities, each of which can be *full* (shows its
whole cue), *partial* (only half of it, e.g. a frown without the brows, which fits
both sad and angry) or *neutral*:
- face: a drawn face whose mouth curve and brow shape vary (plus eye size);
- voice: a voiced tone whose pitch, loudness and syllable rate vary;
- words: a subtitle that states the feeling, or neutral words.
So a good share of clips cannot be labelled from one modality alone (neutral words in
an angry voice; a frown that only the voice disambiguates). ``coarse=True`` makes the
descriptions and labels noisier (a wrong clue or a wrong label at ``noise`` rate),
standing in for automatically annotated stage-1 data. Deterministic for a seed.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json

import av
import cv2
import numpy as np

from ray_emer import storage
from ray_emer.config import ConfigError
from ray_emer.progress import say

EMOTIONS = ("happy", "sad", "angry", "surprised", "worried", "neutral")

# mouth: curve in [-1, 1] or "open"; brow: rest | inner_up | lowered | raised
FACE = {
    "happy": {"mouth": 1.0, "brow": "rest"},
    "sad": {"mouth": -1.0, "brow": "inner_up"},
    "angry": {"mouth": -1.0, "brow": "lowered"},
    "surprised": {"mouth": "open", "brow": "raised"},
    "worried": {"mouth": 0.0, "brow": "inner_up"},
    "neutral": {"mouth": 0.0, "brow": "rest"},
}
MOUTH_TEXT = {
    1.0: "the corners of the mouth turn up into a smile",
    -1.0: "the corners of the mouth turn down",
    0.0: "the mouth stays relaxed",
    "open": "the mouth falls wide open",
}
BROW_TEXT = {
    "rest": "the brows stay at rest",
    "inner_up": "the inner ends of the brows are raised",
    "lowered": "the brows are drawn down and together",
    "raised": "the brows shoot up and the eyes widen",
}
# pitch (Hz), energy (amplitude), tempo (syllables/s)
VOICE = {
    "happy": {"pitch": 260.0, "energy": 0.6, "tempo": 5.0},
    "sad": {"pitch": 120.0, "energy": 0.15, "tempo": 2.0},
    "angry": {"pitch": 140.0, "energy": 0.8, "tempo": 6.0},
    "surprised": {"pitch": 320.0, "energy": 0.6, "tempo": 2.5},
    "worried": {"pitch": 240.0, "energy": 0.2, "tempo": 5.5},
    "neutral": {"pitch": 180.0, "energy": 0.35, "tempo": 3.5},
}
PITCH_TEXT = {260.0: "high", 120.0: "low", 140.0: "low", 320.0: "very high", 240.0: "high", 180.0: "even"}
ENERGY_TEXT = {0.6: "loud", 0.15: "very quiet", 0.8: "very loud", 0.2: "quiet", 0.35: "moderate"}
TEMPO_TEXT = {5.0: "quick", 2.0: "slow", 6.0: "rapid", 2.5: "slow, drawn-out", 5.5: "hurried", 3.5: "steady"}
WORDS = {
    "happy": ["This is the best news I've had all year!", "I'm so glad you came, really.", "We did it, I can't stop smiling."],
    "sad": ["I miss her every single day.", "Nothing I do seems to matter anymore.", "I guess it's over between us."],
    "angry": ["Don't you dare lie to me again!", "I told you a hundred times to stop.", "Get out of my office right now."],
    "surprised": ["Wait, you're here? Since when?", "No way, that can't be true!", "You won the whole thing?"],
    "worried": ["What if they don't call back?", "I hope nothing happened to him.", "I'm not sure we'll make it in time."],
}
NEUTRAL_WORDS = [
    "The meeting is at three o'clock.",
    "I took the bus this morning.",
    "Put the box on the table, please.",
    "We have two more pages to read.",
    "It rained a little yesterday.",
    "The shop closes at six.",
]
SYNONYMS = {
    "happy": ["joyful", "cheerful", "pleased"],
    "sad": ["upset", "disappointed", "sorrowful"],
    "angry": ["irritated", "furious", "annoyed"],
    "surprised": ["astonished", "amazed", "shocked"],
    "worried": ["anxious", "nervous", "uneasy"],
    "neutral": ["calm"],
}
STATES = ("full", "partial", "neutral")


@dataclasses.dataclass
class SynthConfig:
    clips: int = 24
    seed: int = 0
    coarse: bool = False
    noise: float = 0.3  # coarse only: share of clips with a wrong clue or a wrong label
    fps: int = 10
    size: int = 128
    min_duration_s: float = 1.5
    max_duration_s: float = 3.5
    split_fractions: list[float] = dataclasses.field(default_factory=lambda: [0.7, 0.15, 0.15])


@dataclasses.dataclass
class ClipSpec:
    clip_id: str
    emotion: str
    face_state: str
    voice_state: str
    text_state: str
    face: dict
    voice: dict
    subtitle: str
    description: str
    labels: list[str]
    split: str
    duration_s: float
    corruption: str = ""


# ---------------------------------------------------------------- clip specification
def _modality_states(rng: np.random.Generator, emotion: str) -> tuple[str, str, str]:
    if emotion == "neutral":
        return "neutral", "neutral", "neutral"
    while True:
        face, voice = rng.choice(STATES, p=[0.4, 0.3, 0.3]), rng.choice(STATES, p=[0.4, 0.3, 0.3])
        text = rng.choice(("full", "neutral"), p=[0.45, 0.55])
        if face != "neutral" or voice != "neutral" or text != "neutral":
            return str(face), str(voice), str(text)


def _face_cue(rng: np.random.Generator, emotion: str, state: str) -> dict:
    full, rest = FACE[emotion], FACE["neutral"]
    if state == "full":
        return dict(full)
    if state == "neutral":
        return dict(rest)
    keep = "mouth" if full["mouth"] != rest["mouth"] and (full["brow"] == rest["brow"] or rng.random() < 0.5) else "brow"
    return {**rest, keep: full[keep]}


def _voice_cue(rng: np.random.Generator, emotion: str, state: str) -> dict:
    full, rest = VOICE[emotion], VOICE["neutral"]
    if state == "full":
        return dict(full)
    if state == "neutral":
        return dict(rest)
    if rng.random() < 0.5:
        return {**rest, "pitch": full["pitch"]}
    return {**rest, "energy": full["energy"], "tempo": full["tempo"]}


def _labels(rng: np.random.Generator, emotion: str) -> list[str]:
    syn = SYNONYMS[emotion]
    k = int(rng.integers(0, min(2, len(syn)) + 1))
    return [emotion] + [str(s) for s in rng.choice(syn, size=k, replace=False)]


def _describe(face: dict, voice: dict, subtitle: str, text_state: str, emotion: str, labels: list[str]) -> str:
    face_txt = f"{MOUTH_TEXT[face['mouth']]}, and {BROW_TEXT[face['brow']]}"
    voice_txt = (
        f"the voice is {PITCH_TEXT[voice['pitch']]} in pitch, {ENERGY_TEXT[voice['energy']]}, "
        f"with a {TEMPO_TEXT[voice['tempo']]} pace"
    )
    words_txt = (
        f"which openly expresses a {emotion} feeling" if text_state == "full" else "which carries little emotion on its own"
    )
    return (
        f"In the video, {face_txt}. In the audio, {voice_txt}. "
        f'The subtitle says "{subtitle}", {words_txt}. '
        f"Weighing the facial, vocal and verbal clues together, "
        f"the person's emotional state is most likely {', '.join(labels)}."
    )


def _corrupt(rng: np.random.Generator, spec: ClipSpec) -> None:
    """Coarse annotation noise: a clue from another emotion, or another emotion's labels."""
    if rng.random() < 0.5:
        other = str(rng.choice([e for e in EMOTIONS if FACE[e] != spec.face]))
        wrong_face = FACE[other]
        spec.description = _describe(wrong_face, spec.voice, spec.subtitle, spec.text_state, spec.emotion, spec.labels)
        spec.corruption = f"wrong_clue:{other}"
    else:
        other = str(rng.choice([e for e in EMOTIONS if e != spec.emotion]))
        spec.labels = _labels(rng, other)
        spec.description = _describe(spec.face, spec.voice, spec.subtitle, spec.text_state, other, spec.labels)
        spec.corruption = f"wrong_label:{other}"


def make_spec(cfg: SynthConfig, index: int) -> ClipSpec:
    """The (deterministic) content of clip ``index`` for ``cfg.seed``."""
    rng = np.random.default_rng([cfg.seed, index])
    emotion = str(rng.choice(EMOTIONS))
    face_state, voice_state, text_state = _modality_states(rng, emotion)
    face, voice = _face_cue(rng, emotion, face_state), _voice_cue(rng, emotion, voice_state)
    pool = WORDS[emotion] if text_state == "full" else NEUTRAL_WORDS
    subtitle = str(rng.choice(pool))
    labels = _labels(rng, emotion)
    split = str(rng.choice(("train", "val", "test"), p=np.asarray(cfg.split_fractions) / sum(cfg.split_fractions)))
    duration = float(np.round(rng.uniform(cfg.min_duration_s, cfg.max_duration_s), 2))
    desc = _describe(face, voice, subtitle, text_state, emotion, labels)
    spec = ClipSpec(f"synth_{index:05d}", emotion, face_state, voice_state, text_state, face, voice,
                    subtitle, desc, labels, split, duration)
    if cfg.coarse and rng.random() < cfg.noise:
        _corrupt(rng, spec)
    return spec


# ---------------------------------------------------------------- rendering
def _brow_points(kind: str, side: int, cx: int, cy: int, s: float) -> tuple[tuple[int, int], tuple[int, int]]:
    inner_x, outer_x = cx + side * int(6 * s), cx + side * int(22 * s)
    base = cy - int(22 * s)
    inner_dy, outer_dy = {"rest": (0, 0), "inner_up": (-8, 3), "lowered": (7, -3), "raised": (-10, -10)}[kind]
    return (inner_x, base + int(inner_dy * s)), (outer_x, base + int(outer_dy * s))


def render_frame(spec: ClipSpec, size: int, t: float, rng: np.random.Generator, bg: tuple[int, int, int]) -> np.ndarray:
    """One RGB frame ``[size, size, 3]`` of the face at time ``t`` (talking animation)."""
    img = np.full((size, size, 3), bg, np.uint8)
    s = size / 128
    cx, cy = size // 2 + int(rng.integers(-2, 3)), size // 2 + int(rng.integers(-2, 3))
    cv2.ellipse(img, (cx, cy), (int(40 * s), int(50 * s)), 0, 0, 360, (224, 186, 150), -1)
    eye_r = int((7 if spec.face["brow"] == "raised" else 5) * s)
    for side in (-1, 1):
        cv2.circle(img, (cx + side * int(15 * s), cy - int(10 * s)), eye_r, (40, 30, 30), -1)
        p0, p1 = _brow_points(spec.face["brow"], side, cx, cy, s)
        cv2.line(img, p0, p1, (60, 40, 30), max(1, int(3 * s)))
    talk = 0.5 + 0.5 * np.sin(2 * np.pi * spec.voice["tempo"] * t)
    my, half = cy + int(22 * s), int(16 * s)
    if spec.face["mouth"] == "open":
        cv2.ellipse(img, (cx, my), (int(9 * s), int((11 + 3 * talk) * s)), 0, 0, 360, (90, 20, 30), -1)
    else:
        curve = float(spec.face["mouth"])
        xs = np.linspace(-half, half, 17)
        ys = curve * 8 * s * (1 - (xs / half) ** 2) - curve * 4 * s  # y grows downwards: a smile sags in the middle
        upper = np.stack([cx + xs, my + ys], 1).astype(np.int32)
        lower = np.stack([cx + xs[::-1], my + ys[::-1] + talk * 4 * s], 1).astype(np.int32)
        cv2.fillPoly(img, [np.concatenate([upper, lower])], (150, 40, 50))
    return img


def render_audio(spec: ClipSpec, sr: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced tone: harmonics of the pitch, syllable bursts at the tempo, at the energy."""
    n = int(spec.duration_s * sr)
    t = np.arange(n) / sr
    f0 = spec.voice["pitch"] * (1 + 0.03 * np.sin(2 * np.pi * 5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / sr
    tone = sum(np.sin(k * phase) / k for k in range(1, 5))
    bursts = np.clip(np.sin(np.pi * spec.voice["tempo"] * t), 0, None) ** 2
    wave = spec.voice["energy"] * 0.6 * tone * bursts + 0.003 * rng.standard_normal(n)
    return np.clip(wave, -1, 1).astype(np.float32)


def encode_clip(frames: list[np.ndarray], audio: np.ndarray | None, fps: int, sr: int = 16000,
                vcodec: str = "h264", fmt: str = "mp4") -> bytes:
    """Mux RGB frames (and optional mono float audio) into container bytes with PyAV."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        vs = out.add_stream(vcodec, rate=fps)
        vs.height, vs.width = frames[0].shape[:2]
        vs.pix_fmt = "yuv420p"
        if vcodec in ("h264", "libx264"):
            vs.options = {"threads": "1"}
        aus = out.add_stream("aac", rate=sr, layout="mono") if audio is not None else None
        for img in frames:
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode())
        if aus is not None:
            for start in range(0, len(audio), 1024):
                chunk = audio[start : start + 1024]
                frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
                frame.sample_rate, frame.pts = sr, start
                out.mux(aus.encode(frame))
            out.mux(aus.encode())
    return buf.getvalue()


def render_clip(spec: ClipSpec, cfg: SynthConfig, index: int) -> bytes:
    rng = np.random.default_rng([cfg.seed, index, 1])
    bg = tuple(int(v) for v in rng.integers(60, 200, size=3))
    n = max(1, int(round(spec.duration_s * cfg.fps)))
    frames = [render_frame(spec, cfg.size, i / cfg.fps, rng, bg) for i in range(n)]
    return encode_clip(frames, render_audio(spec, 16000, rng), cfg.fps)


# ---------------------------------------------------------------- archive
MANIFEST_COLUMNS = ["clip_id", "video_uri", "subtitle", "description", "labels", "split", "emotion",
                    "face_state", "voice_state", "text_state", "corruption"]


def write_archive(out: str, cfg: SynthConfig) -> str:
    """Write ``cfg.clips`` clips under ``out/clips/`` and ``out/manifest.csv``; returns its URI."""
    rows = []
    for i in range(cfg.clips):
        spec = make_spec(cfg, i)
        uri = storage.join(out, "clips", f"{spec.clip_id}.mp4")
        storage.write_bytes(uri, render_clip(spec, cfg, i))
        rows.append({
            "clip_id": spec.clip_id, "video_uri": uri, "subtitle": spec.subtitle,
            "description": spec.description, "labels": json.dumps(spec.labels), "split": spec.split,
            "emotion": spec.emotion, "face_state": spec.face_state, "voice_state": spec.voice_state,
            "text_state": spec.text_state, "corruption": spec.corruption,
        })
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=MANIFEST_COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    manifest = storage.join(out, "manifest.csv")
    storage.write_text(manifest, text.getvalue())
    return manifest


def emotion_of(label: str) -> str:
    """The synthetic emotion a label names (``joyful`` -> ``happy``), or the label itself."""
    label = str(label).strip().lower()
    for emotion, synonyms in SYNONYMS.items():
        if label == emotion or label in synonyms:
            return emotion
    return label


def synth_job(cfg: SynthConfig, log=say, out: str = "") -> dict:
    """``ray-emer synth``: write the archive; returns its manifest URI and settings."""
    if not out:
        raise ConfigError("synth needs --out (a folder or s3:// prefix)")
    return {"manifest": write_archive(out, cfg), "clips": cfg.clips, "seed": cfg.seed, "coarse": cfg.coarse}


def length_mix_rows(n: int, video_dim: int, audio_dim: int, seed: int = 0, frames: int = 8) -> list[dict]:
    """``n`` feature rows (random features) whose texts have the lengths of real EMER data: descriptions of
    200-600 characters, subtitles of 0-200, 1-4 labels; for measuring padding and step cost, not learning."""
    rng = np.random.default_rng(seed)
    sentences = [s for lines in WORDS.values() for s in lines] + NEUTRAL_WORDS
    clue = [f"the {part} {word}" for part in ("face", "voice", "brow", "mouth", "tone")
            for word in ("tightens", "drops", "rises", "trembles", "softens", "stays even")]

    def text(lo: int, hi: int, pool: list[str]) -> str:
        want, out = int(rng.integers(lo, hi + 1)), ""
        while len(out) < want:
            out += (" " if out else "") + str(pool[int(rng.integers(len(pool)))])
        return out[:want].rstrip()

    labels = [w for syn in SYNONYMS.values() for w in syn] + list(EMOTIONS)
    return [{"clip_id": f"mix{i:05d}", "subtitle": text(0, 200, sentences) if rng.random() > 0.1 else "",
             "description": text(200, 600, clue + sentences),
             "labels": [str(x) for x in rng.choice(labels, size=int(rng.integers(1, 5)), replace=False)],
             "split": "train", "status": "ok", "has_video": True, "has_audio": True,
             "video_feats": rng.standard_normal((frames, video_dim)).astype(np.float32),
             "audio_feats": rng.standard_normal((frames, audio_dim)).astype(np.float32)} for i in range(n)]
