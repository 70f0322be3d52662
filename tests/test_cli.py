"""The CLI contract scripts outside the repository rely on, run as a subprocess."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration  # every test here runs the CLI as a subprocess


def run_cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "ray_emer.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_decode_json_contract(synth_archive):
    clip = sorted((synth_archive / "clips").glob("*.mp4"))[0]
    out = json.loads(run_cli("decode", str(clip), "--json").stdout)
    assert out["frames_shape"] == [8, 224, 224, 3] and out["audio_shape"] == [8, 32000]
    for key in ("has_audio", "duration_s", "fps", "width", "height", "video_backend"):
        assert key in out
    assert out["video_backend"] in ("decord", "pyav")


def test_decode_error_goes_to_stderr_with_nonzero_exit(bad_media):
    proc = run_cli("decode", str(bad_media / "random.mp4"), "--json", check=False)
    assert proc.returncode == 1 and proc.stdout == ""  # README: 1 for an undecodable file
    assert "random.mp4" in proc.stderr and "not a media file" in proc.stderr


def test_synth_and_config_errors(tmp_path):
    out = json.loads(run_cli("synth", "--out", str(tmp_path / "a"), "--clips", "2", "--seed", "5").stdout)
    assert out["clips"] == 2 and (tmp_path / "a" / "manifest.csv").exists()
    proc = run_cli("synth", "--out", str(tmp_path / "b"), "--set", "clipz=3", check=False)
    assert proc.returncode == 2 and "clipz" in proc.stderr


def test_manifest_command(synth_archive, tmp_path):
    out = json.loads(run_cli("manifest", str(synth_archive / "clips"), "--output", str(tmp_path / "m.parquet")).stdout)
    assert out["rows"] == 12 and (tmp_path / "m.parquet").exists()


@pytest.mark.parametrize("cmd", ["synth", "decode", "manifest", "quickstart"])
def test_help(cmd):
    assert "usage" in run_cli(cmd, "--help").stdout
