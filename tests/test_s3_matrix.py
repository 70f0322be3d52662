"""Every command a user runs, with every path on S3 (one moto endpoint on loopback), first run and rerun.

Each command runs as a subprocess (`ray-emer ...`, as a user types it) against ONE Ray head started for this
module (`ray start --head`, after the S3 endpoint, so its workers inherit the AWS_* variables; the commands join
it through RAY_ADDRESS). The chain, in file order (later steps read what earlier ones wrote):

    synth (plain, --coarse) -> extract (manifest, prefix) -> train stage 1 -> train stage 2 --init s3://
    -> label (features, manifest, manifest --evaluate) -> quickstart --out s3:// -> serve --checkpoint s3://
    -> model import --out s3:// -> evaluate * (s3:// inputs)

Each: exit 0, rows in == rows out (read back with pyarrow over a fresh s3fs, not the project's helpers), no
duplicate clip ids, and a rerun adds nothing (same shards, same ids; extract and label report nothing to do).
Wall seconds per command go to stdout (-s) and to /tmp/s3_matrix_times.txt as a table.

With s3fs's listing cache on in ray_emer/storage.py (as before the fix), both labels of a manifest label every
clip, then exit 2 with 'OUTPUT: no part-*.parquet shards' (the driver's stale listing of its output).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import start_server

pytestmark = [pytest.mark.integration]

BIN = Path(sys.executable).parent
BUCKET = "t-s3-matrix"
B = f"s3://{BUCKET}"
CLIPS = 12  # per synthetic archive
TIMES_FILE = Path("/tmp/s3_matrix_times.txt")
# small labelling: the tiny model's text is noise either way; rows and ids are what is checked
LABEL = ["--set", "labeller.description_tokens=16", "--set", "labeller.label_tokens=12", "--set", "actor_cpus=0.5",
         "--set", "progress=false"]
TRAIN = ["--max-steps", "2", "--set", "scaling.workers=1", "--set", "val_samples=0"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- reading S3 back, independently of ray_emer
def _fs():
    import s3fs

    # a fresh instance and no listing cache: sees what the subprocesses wrote a moment ago
    return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)


def _key(uri: str) -> str:
    return uri.removeprefix("s3://").rstrip("/")


def shards(uri: str) -> tuple[list[str], list[str]]:
    """The ``part-*.parquet`` shards directly under ``uri`` and every clip id they hold (duplicates kept)."""
    fs = _fs()
    files = sorted(fs.glob(f"{_key(uri)}/part-*.parquet"))
    ids: list[str] = []
    for f in files:
        ids += pq.read_table(f, filesystem=fs, columns=["clip_id"]).column("clip_id").to_pylist()
    return files, ids


def check_rows(uri: str, want: list[str]) -> tuple[list[str], list[str]]:
    """Rows in == rows out, no duplicate clip id; returns (shards, ids)."""
    files, ids = shards(uri)
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    assert not dupes, f"{uri}: duplicate clip ids {dupes[:5]}"
    assert sorted(ids) == sorted(want), f"{uri}: {len(ids)} rows for {len(want)} clips in"
    return files, ids


def manifest(uri: str) -> pd.DataFrame:
    with _fs().open(_key(uri)) as fh:
        return pd.read_csv(fh, keep_default_na=False)


def files_under(uri: str) -> list[str]:
    return sorted(_fs().find(_key(uri)))


def write_text(uri: str, text: str) -> None:
    with _fs().open(_key(uri), "w") as fh:
        fh.write(text)


def read_text(uri: str) -> str:
    with _fs().open(_key(uri)) as fh:
        return fh.read().decode()


# ---------------------------------------------------------------- the module's Ray head and the timing table
@dataclasses.dataclass
class Matrix:
    env: dict
    work: Path
    times: list[dict] = dataclasses.field(default_factory=list)
    state: dict = dataclasses.field(default_factory=dict)

    def record(self, command: str, run: str, wall: float, rc, status: str) -> None:
        self.times.append({"command": command, "run": run, "wall_s": round(wall, 1), "rc": rc, "status": status})
        print(f"[s3-matrix] {command:<44} {run:<6} {wall:7.1f} s  rc={rc}  {status}", flush=True)
        self.write_table()

    def write_table(self, total: float | None = None) -> None:
        lines = [f"# tests/test_s3_matrix.py, {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; every path on "
                 f"S3 (moto on loopback), one `ray start --head --num-cpus 4` (RAY_ADDRESS), {os.cpu_count()} cores",
                 f"{'command':<46} {'run':<6} {'wall_s':>7}  {'rc':>3}  status"]
        lines += [f"{t['command']:<46} {t['run']:<6} {t['wall_s']:>7}  {t['rc']!s:>3}  {t['status']}" for t in self.times]
        commands = sum(t["wall_s"] for t in self.times if t["run"] in ("first", "rerun"))
        lines.append(f"{'sum of command wall seconds':<46} {'':<6} {commands:>7.1f}")
        if total is not None:
            lines.append(f"{'module wall seconds (head start to stop)':<46} {'':<6} {total:>7.1f}")
        TIMES_FILE.write_text("\n".join(lines) + "\n")

    @contextlib.contextmanager
    def step(self, command: str, run: str):
        """One command's run: its wall seconds (the subprocess alone) and pass/fail (its checks too)."""
        step = Step(self)
        try:
            yield step
        except BaseException:
            self.record(command, run, step.wall, step.rc, "FAIL")
            raise
        self.record(command, run, step.wall, step.rc, "pass")


class Step:
    def __init__(self, matrix: Matrix) -> None:
        self.matrix, self.wall, self.rc, self.stderr = matrix, 0.0, None, ""

    def run(self, *args: str, rc: int = 0, timeout: float = 420) -> dict:
        """``ray-emer ARGS`` as a user runs it; asserts its exit code, returns its JSON result (last stdout line)."""
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([str(BIN / "ray-emer"), *args], env=self.matrix.env, cwd=self.matrix.work,
                                  capture_output=True, text=True, timeout=timeout)
        finally:
            self.wall += time.perf_counter() - t0
        self.rc, self.stderr = proc.returncode, proc.stderr
        assert proc.returncode == rc, (f"ray-emer {' '.join(args)}: exit {proc.returncode}, expected {rc}\n"
                                       f"stderr tail:\n{proc.stderr[-4000:]}")
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


@pytest.fixture(scope="module")
def matrix(s3_endpoint, tmp_path_factory):
    """A bucket, a work folder (the commands' cwd) and one Ray head the commands join (RAY_ADDRESS)."""
    import boto3

    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    work = tmp_path_factory.mktemp("s3_matrix")
    t_start = time.perf_counter()
    # its own short temp dir: the head's address record (ray_current_cluster) lands there, not in /tmp/ray where
    # another engineer's plain ray.init() would find and join it (and AF_UNIX socket paths stay under 107 bytes)
    temp = tempfile.mkdtemp(prefix="rs3_", dir="/tmp")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "3"}  # (the head's SIGTERM drains 30 s by default)
    env.pop("RAY_ADDRESS", None)
    gcs, dash, agent, client = _port(), _port(), _port(), _port()
    log = work / "ray_head.log"
    with open(log, "w") as fh:
        head = subprocess.Popen([str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=4",
                                 "--disable-usage-stats", f"--temp-dir={temp}", "--include-dashboard=true",
                                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                                 f"--dashboard-agent-listen-port={agent}", f"--ray-client-server-port={client}"],
                                env=env, stdout=fh, stderr=subprocess.STDOUT)
    m = Matrix(env={**env, "RAY_EMER_API_KEY": "s3-matrix-key"}, work=work)
    try:
        record = Path(temp) / "ray_current_cluster"
        deadline = time.time() + 180
        while not (record.exists() and "Ray runtime started" in log.read_text()):
            if time.time() > deadline or head.poll() is not None:
                pytest.fail(f"`ray start --head` did not come up (exit {head.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        m.env["RAY_ADDRESS"] = record.read_text().strip()
        m.record("ray start --head (module fixture)", "setup", time.perf_counter() - t_start, 0, "pass")
        yield m
    finally:
        head.terminate()
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait(timeout=30)
        shutil.rmtree(temp, ignore_errors=True)
        m.write_table(total=time.perf_counter() - t_start)
        print(f"[s3-matrix] table in {TIMES_FILE}:\n{TIMES_FILE.read_text()}", flush=True)


def need(m: Matrix, *keys: str) -> None:
    missing = [k for k in keys if k not in m.state]
    if missing:
        pytest.skip(f"an earlier step of the chain did not finish: {missing}")


# ---------------------------------------------------------------- 1. synth
@pytest.mark.timeout(180)
def test_synth_plain_and_coarse(matrix):
    for name, extra in (("arch", []), ("coarse", ["--coarse"])):
        uri, seed = f"{B}/{name}", {"arch": "1", "coarse": "2"}[name]
        seen = None
        for run in ("first", "rerun"):
            with matrix.step(f"synth {' '.join(extra) or '(plain)'}", run) as step:
                out = step.run("synth", "--out", uri, "--clips", str(CLIPS), "--seed", seed, *extra)
                assert out["manifest"] == f"{uri}/manifest.csv" and out["coarse"] == bool(extra), out
                table = manifest(out["manifest"])
                ids = list(table["clip_id"])
                assert len(ids) == len(set(ids)) == CLIPS
                clips = [f for f in files_under(f"{uri}/clips") if f.endswith(".mp4")]
                assert sorted(Path(c).stem for c in clips) == sorted(ids)
                assert all(v.startswith(f"{uri}/clips/") for v in table["video_uri"])
                if seen is not None:  # a rerun rewrites the same archive, adds nothing
                    assert (ids, clips) == seen
                seen = (ids, clips)
        matrix.state[name] = ids


# ---------------------------------------------------------------- 2. extract
@pytest.mark.timeout(480)
def test_extract_from_manifest_and_from_prefix(matrix):
    need(matrix, "arch", "coarse")
    cases = (("extract --input manifest.csv", f"{B}/arch/manifest.csv", f"{B}/feats", matrix.state["arch"]),
             ("extract --input clips/ prefix", f"{B}/arch/clips", f"{B}/feats_prefix", matrix.state["arch"]),
             ("extract --input manifest.csv (coarse)", f"{B}/coarse/manifest.csv", f"{B}/coarse_feats",
              matrix.state["coarse"]))
    for command, inp, out, want in cases:
        with matrix.step(command, "first") as step:
            first = step.run("extract", "--input", inp, "--output", out, "--set", "progress=false")
            assert first["clips"] == first["processed"] == first["ok"] == len(want) and first["error"] == 0, first
            files, ids = check_rows(out, want)
        with matrix.step(command, "rerun") as step:
            again = step.run("extract", "--input", inp, "--output", out, "--set", "progress=false")
            assert again["processed"] == 0 and again["skipped"] == len(want), again  # nothing to do
            assert "0 to do" in step.stderr
            assert shards(out) == (files, ids)  # not a shard more
    matrix.state.update(feats=f"{B}/feats", coarse_feats=f"{B}/coarse_feats")


# ---------------------------------------------------------------- 3. train stage 1, stage 2 --init s3://
CHECKPOINT_FILES = {"config.json", "head.safetensors", "adapter/adapter_config.json",
                    "adapter/adapter_model.safetensors", "tokenizer/tokenizer.json"}


def _train_twice(m: Matrix, command: str, args: list[str], output: str, run_name: str,
                 runs: tuple[str, ...] = ("first", "rerun")) -> None:
    seen = None
    for run in runs:
        with m.step(command, run) as step:
            out = step.run("train", *args, "--output", output, *TRAIN)
            assert out["steps"] == 2 and out["output"] == output and out["engine"] == "ray", out
            files = [f.removeprefix(_key(output) + "/") for f in files_under(output)]
            assert CHECKPOINT_FILES <= set(files), files
            # Ray Train's run storage sits on S3 beside the export (<output>.ray); one run, its "final" checkpoint
            snapshot = json.loads(read_text(f"{output}.ray/{run_name}/checkpoint_manager_snapshot.json"))
            assert [r["checkpoint_dir_name"] for r in snapshot["checkpoint_results"]] == ["final"], snapshot
            if seen is not None:  # a rerun trains anew into the same files: nothing added
                assert files == seen
                assert "held a finished run of this stage: removed it" in step.stderr
            seen = files


@pytest.mark.timeout(480)
def test_train_stage1_then_stage2_from_s3_init(matrix):
    need(matrix, "feats", "coarse_feats")
    repo = Path(__file__).resolve().parents[1]
    _train_twice(matrix, "train stage 1 (stage1_coarse.yaml)",
                 ["--config", str(repo / "jobs/configs/stage1_coarse.yaml"), "--features", matrix.state["coarse_feats"]],
                 f"{B}/stage1", "stage1_coarse")
    _train_twice(matrix, "train stage 2 --init s3:// (stage2_fine.yaml)",
                 ["--config", str(repo / "jobs/configs/stage2_fine.yaml"), "--features", matrix.state["feats"],
                  "--init", f"{B}/stage1"], f"{B}/stage2", "stage2_fine", runs=("first",))  # a rerun: stage 1's
    matrix.state["checkpoint"] = f"{B}/stage2"


# ---------------------------------------------------------------- 4. label
def _label_twice(m: Matrix, command: str, inp: str, output: str, extra: list[str] = ()) -> tuple[dict, dict]:
    from ray_emer.model.checkpoint import checkpoint_id

    want = m.state["arch"]
    args = ["label", "--input", inp, "--checkpoint", m.state["checkpoint"], "--output", output, *extra, *LABEL]
    with m.step(command, "first") as step:
        first = step.run(*args)
        assert first["rows"] == first["processed"] == first["ok"] == len(want) and first["error"] == 0, first
        files, ids = check_rows(output, want)
        assert {f"{output}/_published/openset.csv", f"{output}/_published/reason.csv", f"{output}/_summary.json"} \
            <= {f"s3://{f}" for f in files_under(output)}
        published = pd.read_csv(_fs().open(f"{_key(output)}/_published/openset.csv"))
        assert sorted(published["name"]) == sorted(want)
        models = {r for f in files for r in pq.read_table(f, filesystem=_fs(), columns=["model"]).column("model")
                  .to_pylist()}
        assert models == {checkpoint_id(m.state["checkpoint"])}
    with m.step(command, "rerun") as step:
        again = step.run(*args)
        assert again["processed"] == 0 and again["skipped"] == again["rows"] == len(want), again  # nothing to do
        assert f"{len(want)} already labelled" in step.stderr and "0 to do" in step.stderr
        assert shards(output) == (files, ids)
    return first, again


@pytest.mark.timeout(300)
def test_label_from_feature_shards(matrix):
    need(matrix, "checkpoint")
    _label_twice(matrix, "label --input feature shards", matrix.state["feats"], f"{B}/labels_features")
    matrix.state["labels"] = f"{B}/labels_features"


@pytest.mark.timeout(360)
def test_label_evaluate_from_a_manifest(matrix):
    """An archive (its manifest) with --evaluate: extracted into OUTPUT/_features first (its rows checked too),
    labelled, and scored against the gold the extracted rows carry."""
    need(matrix, "checkpoint")
    out = f"{B}/labels_evaluate"
    first, again = _label_twice(matrix, "label --input manifest.csv --evaluate", f"{B}/arch/manifest.csv", out,
                                ["--evaluate"])
    assert first["extract"]["ok"] == CLIPS and again["extract"]["ok"] == 0, (first["extract"], again["extract"])
    for summary in (first, again):
        assert summary["scores"]["n_gold"] == CLIPS and summary["scores"]["text"]["n"] == CLIPS, summary["scores"]
    check_rows(f"{out}/_features", matrix.state["arch"])
    assert f"{_key(out)}/_report/report.json" in files_under(out)


# ---------------------------------------------------------------- 5. quickstart --out s3://
QUICK = {"coarse": CLIPS, "clean": CLIPS, "heldout": 6}


@pytest.mark.slow  # ~1.5 min; each of its steps on S3 is in the matrix above
@pytest.mark.timeout(600)
def test_quickstart_out_s3(matrix):
    from ray_emer.model.checkpoint import checkpoint_id

    out = f"{B}/quickstart"
    args = ["quickstart", "--out", out, *[a for k, n in QUICK.items() for a in ("--set", f"{k}.clips={n}")],
            "--set", "stage1_steps=2", "--set", "stage2_steps=2", "--set", "worker_cpus=0.5", "--set", "gallery=2",
            "--set", "samples=1", "--set", "labeller.description_tokens=16", "--set", "labeller.label_tokens=12"]
    # one run: resuming on S3 is the extract and label steps' reruns above (a quickstart rerun costs a minute)
    for run in ("first",):
        with matrix.step("quickstart --out s3://", run) as step:
            summary = step.run(*args, timeout=540)
            assert summary["labels"] == f"{out}/labels" and summary["scores"]["n_gold_labels"] == QUICK["heldout"]
            rows = {}
            for name, n in QUICK.items():
                want = list(manifest(f"{out}/{name}/manifest.csv")["clip_id"])
                assert len(want) == n
                rows[name] = check_rows(summary["stages"]["features"][name], want)
            heldout = list(manifest(f"{out}/heldout/manifest.csv")["clip_id"])
            labels = check_rows(f"{out}/labels", heldout)
            models = {r for f in labels[0] for r in pq.read_table(f, filesystem=_fs(), columns=["model"])
                      .column("model").to_pylist()}
            assert models == {checkpoint_id(summary["stages"]["stage2"])}  # every label is this run's model's
            assert {f"{_key(out)}/report/{f}" for f in ("index.html", "confusion.png", "loss_curves.png")} \
                <= set(files_under(f"{out}/report"))


# ---------------------------------------------------------------- 6. serve --checkpoint s3://
def _serve_once(step: Step, checkpoint: str, clip_uri: str) -> dict:
    """`ray-emer serve` until it says where it listens, one analyze request (an s3:// clip), SIGTERM to its PID;
    the step's wall seconds run from the start to the exit."""
    import requests

    port = _port()
    cmd = [str(BIN / "ray-emer"), "serve", "--checkpoint", checkpoint, "--port", str(port),
           "--set", "labeller.description_tokens=8", "--set", "labeller.label_tokens=8",
           "--set", f"allow_prefixes=[{B}/arch/]"]
    t0 = time.perf_counter()
    proc, lines, reader = start_server(cmd, step.matrix.env, port, cwd=step.matrix.work)
    try:
        r = requests.post(f"http://127.0.0.1:{port}/v1/analyze", json={"video_uri": clip_uri}, timeout=120,
                          headers={"Authorization": f"Bearer {step.matrix.env['RAY_EMER_API_KEY']}"})
        assert r.status_code == 200, r.text
        answer = r.json()
    finally:
        proc.send_signal(signal.SIGTERM)  # to the server's PID, as `kill PID` would
        try:
            step.rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            step.wall = time.perf_counter() - t0
            reader.join(timeout=10)
            step.stderr = "".join(lines)
    assert step.rc == 0, step.stderr[-4000:]
    return answer


@pytest.mark.timeout(420)
def test_serve_checkpoint_s3_answers_and_stops_on_sigterm(matrix):
    need(matrix, "checkpoint", "arch")
    clip = f"{B}/arch/clips/{matrix.state['arch'][0]}.mp4"
    for run in ("first", "rerun"):
        with matrix.step("serve --checkpoint s3:// (1 analyze, SIGTERM)", run) as step:
            answer = _serve_once(step, matrix.state["checkpoint"], clip)
            assert isinstance(answer["description"], str) and isinstance(answer["labels"], list), answer
            assert answer["sentiment"] in ("positive", "negative", "neutral"), answer


# ---------------------------------------------------------------- 7. model import --out s3://
@pytest.mark.timeout(240)
def test_model_import_to_s3(matrix, tmp_path):
    """A tiny published-style checkpoint (as tests/test_importer.py fakes it) and its --preset config on S3; the
    rerun into the same output is refused (the output must be empty) and leaves it as it was."""
    import torch

    from ray_emer.model.affectgpt import build_llm
    from ray_emer.model.config import get_preset
    from ray_emer.model.tokenizer import build_tokenizer
    from test_importer import published_file

    cfg = get_preset("tiny")
    cfg.image_branch = True
    cfg.lora.alpha = 32
    cfg.llm_config["vocab_size"] = len(build_tokenizer(cfg))
    torch.manual_seed(0)
    build_llm(cfg, cfg.llm_config["vocab_size"]).save_pretrained(str(tmp_path / "base"))
    cfg = dataclasses.replace(cfg, init="pretrained", llm_name=str(tmp_path / "base"))
    published_file(tmp_path / "ck.pth", cfg)
    fs = _fs()
    fs.put_file(str(tmp_path / "ck.pth"), f"{BUCKET}/published/ck.pth")
    write_text(f"{B}/published/arch/config.json", cfg.to_json())
    out = f"{B}/imported"
    args = ["model", "import", f"{B}/published/ck.pth", "--out", out, "--preset", f"{B}/published/arch"]
    with matrix.step("model import s3:// --out s3://", "first") as step:
        result = step.run(*args)
        assert result["mapped"]["head"] == 20 and result["source"]["file"] == f"{B}/published/ck.pth", result
        written = files_under(out)
        assert CHECKPOINT_FILES <= {f.removeprefix(_key(out) + "/") for f in written}, written
    with matrix.step("model import s3:// --out s3://", "rerun") as step:
        step.run(*args, rc=2)  # refused by design: import into a new directory
        assert "not empty" in step.stderr
        assert files_under(out) == written
    from ray_emer.model.checkpoint import load_checkpoint

    assert load_checkpoint(out).has_lora


# ---------------------------------------------------------------- 8. evaluate (s3:// inputs)
@pytest.mark.timeout(300)
def test_evaluate_commands_read_s3(matrix, reference_dir):
    fs = _fs()
    r = f"{B}/reference"
    for sub in ("emotion_wheel", "unibench", "ovmerd"):
        for f in sorted((reference_dir / sub).iterdir()):
            fs.put_file(str(f), f"{_key(r)}/{sub}/{f.name}")
    gt = pd.read_csv(reference_dir / "ovmerd" / "emer_v1_100_gt_english.csv").head(12)
    write_text(f"{r}/descriptions.csv", gt.rename(columns={"names": "name", "reasons": "description"})
               [["name", "description"]].to_csv(index=False))
    wheel, uni, ov, ev = f"{r}/emotion_wheel", f"{r}/unibench", f"{r}/ovmerd", f"{B}/evaluate"
    ov_pred, ov_gold = f"{ov}/ovmerd332_example_predicted_openset_mer2024.csv", \
        f"{ov}/ovmerd332_gt_openset_labels_mer2024_check.csv"
    n_ov = len(pd.read_csv(reference_dir / "ovmerd" / "ovmerd332_gt_openset_labels_mer2024_check.csv"))
    mer_labels, mer_outputs = f"{uni}/merbench_mer2023_label_6way.csv", f"{uni}/affectgpt_unibench_outputs_mer2023.csv"
    from ray_emer.eval.unibench import convert_labels

    n_mer = len(convert_labels(reference_dir / "unibench" / "merbench_mer2023_label_6way.csv", "mer2023"))

    def rows(uri: str) -> int:
        return len(pd.read_csv(fs.open(_key(uri))))

    cases = [
        ("evaluate unibench --kind ov", ["unibench", "--kind", "ov", "--wheel-dir", wheel, "--predictions", ov_pred,
                                         "--labels", ov_gold, "--output", f"{ev}/unibench.json"],
         lambda o: o["n_scored"] + o["n_skipped"] == n_ov),
        ("evaluate emer --groups", ["emer", "--predictions", ov_pred, "--labels", ov_gold, "--groups",
                                    f"{ov}/ovmerd332_gpt35_synonym_groups_cache.json", "--output", f"{ev}/emer.json"],
         lambda o: o["n_scored"] + o["n_skipped"] == n_ov),
        ("evaluate convert", ["convert", "--dataset", "mer2023", "--labels", mer_labels, "--outputs", mer_outputs,
                              "--out-dir", f"{ev}/convert"],
         lambda o: rows(f"{ev}/convert/labels_mer2023.csv") == n_mer
         and all(rows(w) == n_mer for w in o["written"] if "/predictions_" in w) and len(o["written"]) == 8),
        ("evaluate checkpoints", ["checkpoints", "--dataset", "mer2023", "--wheel-dir", wheel, "--outputs",
                                  mer_outputs, "--labels", mer_labels, "--output", f"{ev}/checkpoints.json"],
         lambda o: len(o["checkpoints"]) == 7 and round(o["best_on_test"]["score"], 4) == 0.7854),
        ("evaluate extract (lexicon)", ["extract", "--descriptions", f"{r}/descriptions.csv", "--wheel-dir", wheel,
                                        "--out", f"{ev}/lexicon.csv"],
         lambda o: o["rows"] == 12 and rows(f"{ev}/lexicon.csv") == 12),
        ("evaluate text", ["text", "--predictions", f"{r}/descriptions.csv", "--labels", f"{r}/descriptions.csv",
                           "--output", f"{ev}/text.json"],
         lambda o: o["n"] == 12 and o["bleu_4"] > 0.99),
    ]
    if "labels" in matrix.state:  # the label job's published exports, scored against the archive's gold
        gold = manifest(f"{B}/arch/manifest.csv")
        write_text(f"{ev}/gold_openset.csv", pd.DataFrame(
            {"name": gold["clip_id"], "openset": [", ".join(json.loads(v)) for v in gold["labels"]]}).to_csv(index=False))
        write_text(f"{ev}/gold_reason.csv", pd.DataFrame(
            {"name": gold["clip_id"], "reason": gold["description"]}).to_csv(index=False))
        exports = f"{matrix.state['labels']}/_published"
        cases += [
            ("evaluate unibench --kind ov (label exports)",
             ["unibench", "--kind", "ov", "--wheel-dir", wheel, "--predictions", f"{exports}/openset.csv",
              "--labels", f"{ev}/gold_openset.csv"], lambda o: o["n_scored"] + o["n_skipped"] == CLIPS),
            ("evaluate text (label exports)",
             ["text", "--column", "reason", "--predictions", f"{exports}/reason.csv", "--labels",
              f"{ev}/gold_reason.csv"], lambda o: o["n"] == CLIPS),
        ]
    for command, args, check in cases:
        results = []
        for run in ("first", "rerun"):
            with matrix.step(command, run) as step:
                out = step.run("evaluate", *args, timeout=180)
                assert check(out), out
                results.append(out)
        assert results[0] == results[1], command  # the same inputs, the same answer


@pytest.mark.timeout(180)
def test_evaluate_report_dir_on_s3(matrix, reference_dir):
    fs = _fs()
    uni = f"{B}/reference_report/unibench"
    wheel = f"{B}/reference_report/emotion_wheel"
    for name in ("merbench_mer2023_label_6way.csv", "affectgpt_unibench_outputs_mer2023.csv"):
        fs.put_file(str(reference_dir / "unibench" / name), f"{_key(uni)}/{name}")
    for f in sorted((reference_dir / "emotion_wheel").iterdir()):
        fs.put_file(str(f), f"{_key(wheel)}/{f.name}")
    report = f"{B}/evaluate/checkpoints_report"
    with matrix.step("evaluate checkpoints --report-dir s3://", "first") as step:
        step.run("evaluate", "checkpoints", "--dataset", "mer2023", "--wheel-dir", wheel, "--outputs",
                 f"{uni}/affectgpt_unibench_outputs_mer2023.csv", "--labels", f"{uni}/merbench_mer2023_label_6way.csv",
                 "--report-dir", report, timeout=180)
        stray = matrix.work / "s3:"
        if stray.exists():  # what it wrote instead, removed so that it misleads nobody
            shutil.rmtree(stray)
        assert {f"{_key(report)}/report.{x}" for x in ("json", "md", "png")} <= set(files_under(report)), \
            f"no report under {report} (it went to a local folder {stray})"
