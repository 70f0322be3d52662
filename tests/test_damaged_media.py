"""Damaged real-world media decodes as a player plays it: packets the decoder rejects are skipped and
counted (``skipped_packets``); a clip fails (``damaged``) only when less than ``media.min_decoded_share``
of its video or audio packets decoded. Clips are generated here in several codecs and containers and
damaged at packet positions PyAV reports; a seeded mutation fuzz checks nothing but ``MediaError``
ever comes out, in bounded time and memory."""

from __future__ import annotations

import io
import json
import time

import av
import numpy as np
import psutil
import pytest

from ray_emer.cli import main
from ray_emer.config import ConfigError
from ray_emer.data.extraction import ExtractConfig, extract_sequential
from ray_emer.features.decode import decode_row
from ray_emer.features.shards import read_shards
from ray_emer.media import MediaConfig, MediaError, decode_clip
from ray_emer.schema import feature_schema

# name -> (container format, video encoder, audio encoder, audio rate)
CLIPS = {
    "h264_aac.mp4": ("mp4", "libx264", "aac", 16000),
    "mpeg4_mp3.avi": ("avi", "mpeg4", "libmp3lame", 44100),
    "mpeg4_ac3.avi": ("avi", "mpeg4", "ac3", 48000),
    "vp9_opus.webm": ("webm", "libvpx-vp9", "libopus", 48000),
}
FPS, SECONDS = 10, 3.0


def _frames(n: int, size: int = 64) -> list[np.ndarray]:
    """Moving bars over noise: real content, so every codec writes real P/B frames."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = rng.integers(0, 30, (size, size, 3), dtype=np.uint8)
        img[..., 0] += np.uint8(i * 7 % 200)
        img[(i * 3) % size : (i * 3) % size + 10, :, 1] = 220
        out.append(img)
    return out


def encode_av(fmt: str, vcodec: str, acodec: str, rate: int) -> bytes:
    """Interleaved video (64x64 at 10 fps) and a 220 Hz mono tone, ``SECONDS`` long."""
    t = np.arange(int(rate * SECONDS)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        vs = out.add_stream(vcodec, rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        aus = out.add_stream(acodec, rate=rate, layout="mono")
        step = aus.codec_context.frame_size or 1024
        at = 0
        for i, img in enumerate(_frames(int(FPS * SECONDS))):
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
            while at < len(tone) and at / rate <= (i + 1) / FPS:
                chunk = np.pad(tone[at : at + step], (0, max(0, at + step - len(tone))))
                frame = av.AudioFrame.from_ndarray(chunk[None], format="flt", layout="mono")
                frame.sample_rate, frame.pts = rate, at
                out.mux(aus.encode(frame))
                at += step
        out.mux(vs.encode())
        out.mux(aus.encode())
    return buf.getvalue()


def payloads(data: bytes, kind: str) -> list[tuple[int, int]]:
    """(offset, size) of every ``kind`` packet's payload in the file: from ``packet.pos`` (MP4/AVI: the payload
    itself; Matroska: the block, whose header comes first), located by the packet's own bytes."""
    out = []
    with av.open(io.BytesIO(data)) as container:
        for packet in container.demux():
            if packet.size and packet.stream.type == kind:
                at = data.find(bytes(packet), packet.pos)
                assert 0 <= at - packet.pos < 64, (kind, packet.pos, at)
                out.append((at, packet.size))
    return out


def damage(data: bytes, spans: list[tuple[int, int]], fill: int = 0xFF) -> bytes:
    out = bytearray(data)
    for at, size in spans:
        out[at : at + size] = bytes([fill]) * size
    return bytes(out)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    have = av.codecs_available
    missing = [enc for _, v, a, _ in CLIPS.values() for enc in (v, a) if enc not in have]
    assert not missing, f"this PyAV build lacks encoders {missing}"
    return {name: encode_av(*spec) for name, spec in CLIPS.items()}


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_clean_clips_decode_with_nothing_skipped(clips, tmp_path, name):
    s = decode_clip(_write(tmp_path, name, clips[name]), cfg=MediaConfig(frame_size=32)).summary()
    assert s["has_video"] and s["has_audio"] and s["skipped_packets"] == 0, s


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_a_damaged_video_packet_is_skipped_and_counted(clips, tmp_path, name):
    """A middle video packet overwritten: decord refuses the clip, PyAV skips that packet and samples the rest."""
    data = clips[name]
    video = payloads(data, "video")
    path = _write(tmp_path, name, damage(data, [video[len(video) // 2]]))
    clip = decode_clip(path, cfg=MediaConfig(frame_size=32))
    s = clip.summary()
    assert s["skipped_packets"] >= 1 and s["video_backend"] == "pyav", s
    assert s["has_video"] and s["has_audio"] and s["frames_shape"] == [8, 32, 32, 3]
    assert clip.frames.std() > 1 and clip.audio.std() > 0.05  # real frames and the tone, not zeros


@pytest.mark.parametrize("name", sorted(CLIPS))
def test_damaged_audio_packets_are_skipped_and_counted(clips, tmp_path, name):
    """The first and a middle audio packet overwritten (the trailer case: one bad packet used to reject the
    whole clip as truncated). Video is untouched, so decord still reads it."""
    data = clips[name]
    audio = payloads(data, "audio")
    path = _write(tmp_path, name, damage(data, [audio[0], audio[len(audio) // 2]]))
    clean = decode_clip(_write(tmp_path, "clean_" + name, data), cfg=MediaConfig(frame_size=32))
    clip = decode_clip(path, cfg=MediaConfig(frame_size=32))
    s = clip.summary()
    assert s["has_audio"] and clip.audio.std() > 0.05, s
    np.testing.assert_array_equal(clip.frames, clean.frames)  # the video is the same
    if name.endswith(".webm"):
        # Opus: ffmpeg's parser drops a packet it cannot frame and the decoder conceals any other bytes, so
        # the decoder rejects nothing: nothing to skip or count, and the clip still decodes.
        assert s["skipped_packets"] == 0, s
    else:
        assert s["skipped_packets"] == 2, s


def test_too_little_decoded_fails_with_the_share_and_the_setting_moves_the_line(clips, tmp_path):
    data = clips["h264_aac.mp4"]
    audio = payloads(data, "audio")
    bad = audio[: len(audio) * 3 // 4]  # three quarters of the audio packets
    path = _write(tmp_path, "mostly_bad_audio.mp4", damage(data, bad))
    with pytest.raises(MediaError) as info:
        decode_clip(path, cfg=MediaConfig(frame_size=32))
    err = info.value
    n, k = len(audio), len(bad)
    assert err.reason == "damaged" and "damaged" in str(err)
    assert f"{n - k} of {n} audio packets decoded ({(n - k) / n:.0%}), {k} skipped" in err.detail
    assert "media.min_decoded_share is 0.5" in err.detail
    s = decode_clip(path, cfg=MediaConfig(frame_size=32, min_decoded_share=0.2)).summary()
    assert s["has_audio"] and s["skipped_packets"] == k


def test_mostly_damaged_video_fails_as_damaged(clips, tmp_path):
    data = clips["mpeg4_mp3.avi"]
    video = payloads(data, "video")
    bad = video[1 : len(video) * 3 // 4]  # the key frame kept: the rest still decodes, too little of it
    path = _write(tmp_path, "mostly_bad_video.avi", damage(data, bad))
    with pytest.raises(MediaError) as info:
        decode_clip(path, cfg=MediaConfig(frame_size=32))
    assert info.value.reason == "damaged" and "video packets decoded" in info.value.detail, info.value
    clip = decode_clip(path, cfg=MediaConfig(frame_size=32, min_decoded_share=0.1))
    assert clip.skipped_packets > 1 and clip.video_backend == "pyav"
    # the 8 frames are sampled over the frames that decoded (not the header's count): 8 different frames
    assert len(np.unique(clip.frames.reshape(8, -1), axis=0)) == 8


def test_share_zero_keeps_whatever_decodes(clips, tmp_path):
    """Every audio packet damaged: the default fails (0 decoded); share 0 keeps the video, audio absent."""
    data = clips["h264_aac.mp4"]
    audio = payloads(data, "audio")
    path = _write(tmp_path, "no_good_audio.mp4", damage(data, audio))
    with pytest.raises(MediaError, match=f"0 of {len(audio)} audio packets decoded"):
        decode_clip(path, cfg=MediaConfig(frame_size=32))
    s = decode_clip(path, cfg=MediaConfig(frame_size=32, min_decoded_share=0.0)).summary()
    assert s["has_video"] and not s["has_audio"] and s["skipped_packets"] == len(audio), s


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_share_out_of_range_is_a_config_error(share):
    with pytest.raises(ConfigError, match="min_decoded_share"):
        MediaConfig(min_decoded_share=share)


def test_damaged_header_fields_name_a_reason(clips, tmp_path):
    """Tags that are not UTF-8 any more decode (as a player shows garbled tags); a codec id no decoder knows
    is unsupported_codec, not a crash inside the probe."""
    buf = io.BytesIO()
    title = "ÅÅÅÅÅÅ"
    with av.open(buf, "w", format="mp4") as out:
        out.metadata["title"] = title
        vs = out.add_stream("libx264", rate=FPS)
        vs.width, vs.height, vs.pix_fmt = 64, 64, "yuv420p"
        for img in _frames(10):
            out.mux(vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(vs.encode())
    raw = title.encode()
    assert buf.getvalue().count(raw) == 1
    tagged = _write(tmp_path, "bad_tag.mp4", buf.getvalue().replace(raw, raw[:-1] + b"A"))  # cut a UTF-8 pair
    assert decode_clip(tagged, cfg=MediaConfig(frame_size=32)).summary()["has_video"]
    data = clips["h264_aac.mp4"]
    unknown = _write(tmp_path, "unknown_codec.mp4", data.replace(b"avc1", b"zzzz"))
    with pytest.raises(MediaError) as info:
        decode_clip(unknown)
    assert info.value.reason == "unsupported_codec" and "video stream" in str(info.value)


def test_decode_cli_on_a_damaged_audio_packet(clips, tmp_path, capsys):
    data = clips["h264_aac.mp4"]
    path = _write(tmp_path, "trailer.mp4", damage(data, payloads(data, "audio")[:1]))
    assert main(["decode", path, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["skipped_packets"] == 1 and out["has_audio"], out
    assert main(["decode", path, "--json", "--min-decoded-share", "1.0"]) == 1  # every packet required
    captured = capsys.readouterr()
    assert captured.out == "" and "damaged" in captured.err and "47 of 48 audio packets" in captured.err


def test_feature_rows_carry_skipped_packets(clips, tmp_path):
    """decode_row and the feature table: the count on ok rows, -1 on rows that did not decode."""
    data = clips["h264_aac.mp4"]
    damaged = _write(tmp_path, "damaged.mp4", damage(data, payloads(data, "audio")[:3]))
    media = MediaConfig(frame_size=32)
    assert decode_row({"clip_id": "a", "video_uri": damaged}, media)["skipped_packets"] == 3
    row = decode_row({"clip_id": "b", "video_uri": str(tmp_path / "missing.mp4")}, media)
    assert row["status"] == "error" and row["skipped_packets"] == -1
    assert feature_schema((8, 4), (8, 4)).field("skipped_packets").type == "int32"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"clip_id,video_uri\na,{damaged}\nb,{tmp_path / 'missing.mp4'}\n")
    cfg = ExtractConfig(input=str(manifest), output=str(tmp_path / "features"), progress=False)
    extract_sequential(cfg)
    table = read_shards(str(tmp_path / "features"), columns=["clip_id", "status", "skipped_packets"])
    assert table.schema.field("skipped_packets").type == "int32"
    rows = {r["clip_id"]: r for r in table.to_pylist()}
    assert rows["a"]["status"] == "ok" and rows["a"]["skipped_packets"] == 3
    assert rows["b"]["status"] == "error" and rows["b"]["skipped_packets"] == -1


# ---------------------------------------------------------------- mutation fuzz
FUZZ_CASES, FUZZ_SEED = 100, 20240515
CASE_LIMIT_S, TOTAL_LIMIT_S, RSS_LIMIT_MB = 10.0, 30.0, 300


def _mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    out = bytearray(data)
    kind = ("flips", "truncate", "burst", "flips+truncate")[int(rng.integers(4))]
    if "flips" in kind:
        for _ in range(int(rng.integers(1, 40))):
            out[int(rng.integers(len(out)))] ^= int(rng.integers(1, 256))
    if "truncate" in kind:
        out = out[: int(rng.integers(1, len(out)))]
    if kind == "burst":
        at, size = int(rng.integers(len(out))), int(rng.integers(8, 600))
        out[at : at + size] = rng.bytes(len(out[at : at + size]))
    return kind, bytes(out)


@pytest.mark.timeout(120)
def test_mutation_fuzz_only_media_errors_in_bounded_time_and_memory(clips, tmp_path):
    """Random byte flips, bursts and truncations of every clip (fixed seed): each decodes to the documented
    shapes or raises MediaError with a named reason, never ``decode_failed`` (the wrapper's name for an
    unexpected exception), each within CASE_LIMIT_S, all within TOTAL_LIMIT_S, RSS growth under RSS_LIMIT_MB."""
    rng = np.random.default_rng(FUZZ_SEED)
    names = sorted(clips)
    cfg = MediaConfig(frame_size=32)
    proc = psutil.Process()
    decode_clip(_write(tmp_path, names[0], clips[names[0]]), cfg=cfg)  # warm-up: libraries loaded before RSS
    rss0, t_all = proc.memory_info().rss, time.perf_counter()
    outcomes: dict[str, int] = {}
    for case in range(FUZZ_CASES):
        name = names[case % len(names)]
        kind, data = _mutate(clips[name], rng)
        path = _write(tmp_path, f"fuzz_{case}_{name}", data)
        t0 = time.perf_counter()
        try:
            clip = decode_clip(path, cfg=cfg)
            assert clip.frames.shape == (8, 32, 32, 3) and clip.audio.shape == (8, 32000)
            assert np.isfinite(clip.audio).all() and clip.skipped_packets >= 0
            outcome = "skipped" if clip.skipped_packets else "ok"
        except MediaError as exc:
            assert exc.reason != "decode_failed", f"case {case} ({kind} {name}): unexpected {exc.detail}"
            outcome = exc.reason
        elapsed = time.perf_counter() - t0
        assert elapsed < CASE_LIMIT_S, f"case {case} ({kind} {name}) took {elapsed:.1f} s"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    total = time.perf_counter() - t_all
    growth_mb = (proc.memory_info().rss - rss0) / 2**20
    print(f"fuzz: {FUZZ_CASES} cases in {total:.1f} s, RSS +{growth_mb:.0f} MiB, outcomes {outcomes}")
    assert total < TOTAL_LIMIT_S and growth_mb < RSS_LIMIT_MB
    assert outcomes.get("skipped", 0) > 0 and len(outcomes) >= 3  # the mutations do reach the decoders


def _adts(rate: int, layout: str, seconds: float = 1.0) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    channels = 1 if layout == "mono" else 2
    buf = io.BytesIO()
    with av.open(buf, "w", format="adts") as out:
        stream = out.add_stream("aac", rate=rate, layout=layout)
        for at in range(0, len(tone), 1024):
            chunk = np.pad(tone[at : at + 1024], (0, max(0, at + 1024 - len(tone))))
            frame = av.AudioFrame.from_ndarray(np.tile(chunk, (1, channels)), format="flt", layout=layout)
            frame.sample_rate, frame.pts = rate, at
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return buf.getvalue()


def test_audio_that_changes_rate_and_layout_midstream_decodes(clips, tmp_path):
    """1 s of 16 kHz mono then 1 s of 44.1 kHz stereo in one ADTS stream (spliced broadcasts; a damaged AAC
    header does the same to one frame): the resampler is rebuilt for the new format, as a player does."""
    from ray_emer.media.audio import decode_audio

    path = _write(tmp_path, "spliced.aac", _adts(16000, "mono") + _adts(44100, "stereo"))
    track = decode_audio(path)
    assert track.stats.skipped == 0 and 2.0 <= track.wave.size / 16000 <= 2.3, track.wave.size
    video = _write(tmp_path, "video.mp4", clips["h264_aac.mp4"])
    assert decode_clip(video, path, MediaConfig(frame_size=32)).summary()["has_audio"]
