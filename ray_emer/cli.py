"""``ray-emer`` console entry: a table of commands, each mapped onto one library function.

A command with a ``config`` class takes ``--config YAML`` and ``--set key=value`` (parsed by the type of the
field it sets); its flags fill config fields (``to``: a dotted key, typed values, no YAML round trip) and the
function gets ``(cfg, log=...)`` plus any ``kwarg`` flags. A command without one gets its flags as keyword
arguments. The function returns a JSON-able result (printed on stdout; progress goes to stderr) or, for
long-running servers, an exit code. Every error a user can cause is a ``RayEmerError``: caught once, in
``main``, printed as ``ray-emer CMD: message`` on stderr, exit code from the error (2 by default, 1 for a bad
media file).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any

from ray_emer.errors import RayEmerError
from ray_emer.progress import say


@dataclasses.dataclass(frozen=True)
class Flag:
    names: tuple[str, ...]
    to: str = ""  # config commands: the dotted config key it sets; empty: a keyword argument of the function
    opts: dict = dataclasses.field(default_factory=dict)  # argparse options (type, choices, help, ...)


@dataclasses.dataclass(frozen=True)
class Command:
    path: tuple[str, ...]  # ("evaluate", "unibench")
    target: str  # "module:function"
    help: str
    description: str = ""
    config: str = ""  # "module:Class": --config / --set, and the function takes (cfg, log=..., **kwargs)
    flags: tuple[Flag, ...] = ()
    output: Callable[[Any, argparse.Namespace], str | None] | None = None  # stdout text; default: one JSON line


def F(*names: str, to: str = "", **opts) -> Flag:  # noqa: N802 (reads as a table row)
    return Flag(names, to, opts)


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def _table_or_json(formatter: str):
    def output(result, args) -> str:
        return json.dumps(result, default=str) if args.json else _load(formatter)(result)

    return output


def _key_value_lines(summary: dict) -> str:
    return "\n".join(f"{key:>14}: {value}" for key, value in summary.items())


# ---------------------------------------------------------------- shared flag groups
SEGMENT_HELP = ("auto (default): recordings longer than segment.max_s (12 s) are cut at pauses and shot cuts into "
                "2-12 s segments, one row each (clip_id RECORDING@START_MS-END_MS); off: one row per file")
WHEEL = (F("--wheel-dir", help="folder with wheel1..5, synonym (.xlsx or .csv) and format.csv, as published "
                               "(local or s3://)"),
         F("--format-file", help="another inflection table (e.g. the revised format.csv)"),
         F("--level", type=int, choices=[1, 2], default=1, help="emotion wheel level (default 1)"))
REPORT = (F("--report-dir", help="write report.json, report.md and report.png here"),
          F("--mlflow-uri", help="log params, metrics and the report files to MLflow "
                                 "(default: $MLFLOW_TRACKING_URI if set)"))
CHECKPOINT_HELP = ("exported checkpoint directory (ray-emer train --output), or models:/NAME/VERSION, "
                   "models:/NAME@ALIAS, runs:/RUN_ID/PATH (through the MLflow tracking URI)")
PARSING = F("--parsing", choices=["published", "proper"], default="published",
            help="label-list parsing: 'published' (the published scorer's rule, default, for parity) or "
                 "'proper' (the manifest parser)")

COMMANDS: tuple[Command, ...] = (
    Command(("synth",), "ray_emer.synthetic:synth_job", "write a labelled synthetic archive (clips + manifest.csv)",
            "Write N short H.264/AAC clips with subtitles, gold descriptions and open-vocabulary labels under "
            "OUT/clips/, and OUT/manifest.csv.",
            config="ray_emer.synthetic:SynthConfig",
            flags=(F("--out", required=True, help="output folder or s3:// prefix"),
                   F("--clips", to="clips", type=int, help="number of clips (default 24)"),
                   F("--seed", to="seed", type=int, help="random seed; same seed, same archive (default 0)"),
                   F("--coarse", to="coarse", action="store_true", default=None,
                     help="noisy descriptions/labels (stage-1 stand-in)"),
                   F("--noise", to="noise", type=float, help="with --coarse: share of corrupted clips (default 0.3)"))),
    Command(("decode",), "ray_emer.media:decode_summary", "decode one clip: frames + 16 kHz audio windows",
            "Decode FILE (a path or s3:// URI) as the pipeline does. Exits 1 with the reason on stderr when the "
            "file cannot be decoded.",
            flags=(F("file"),
                   F("--audio", help="separate audio file (wav, m4a, ...) instead of the container's track"),
                   F("--json", action="store_true", help="print one JSON object"),
                   F("--num-frames", type=int, default=8),
                   F("--size", type=int, default=224, help="square frame size after resize + centre crop"),
                   F("--max-duration", type=float, default=600.0, help="longer clips are an error (seconds)"),
                   F("--backend", choices=["auto", "decord", "pyav"], default="auto"),
                   F("--min-decoded-share", type=float, default=0.5,
                     help="packets the decoder rejects are skipped (skipped_packets); fail only when less than "
                          "this share of the video or audio packets decoded (default 0.5)")),
            output=lambda result, args: json.dumps(result) if args.json else _key_value_lines(result)),
    Command(("manifest",), "ray_emer.data.published:build_manifest",
            "read a folder / s3 prefix / CSV / Parquet into a manifest, optionally from a published layout",
            "Build a manifest (one row per clip) from videos, or, with --reasons and/or --openset, from the published "
            "EMER / MER-Caption / OV-MERD CSVs matched by name to the videos of INPUT (by file stem; a video extension "
            "in a name and case differences are tolerated). The published names are the rows: a name with no video "
            "stays a row with an empty video_uri (extraction: not_found) unless --drop-unmatched; videos without a "
            "published row are left out. Both are counted (JSON) and listed in <output stem>.unmatched.csv.",
            flags=(F("input", help="folder, s3:// prefix, or .csv/.parquet manifest (the videos)"),
                   F("--subtitles", help="CSV name,english (e.g. subtitle_chieng.csv; also name,subtitle(s))"),
                   F("--reasons", help="CSV name,reason: descriptions (also names,reasons; name,english of the "
                                       "OV-MERD descriptions file)"),
                   F("--openset", help="CSV name,openset: open-vocabulary label lists"),
                   F("--split", help="split of every row (default: kept, or 'train' with --val-fraction)"),
                   F("--val-fraction", type=float, default=0.0,
                     help="share of the rows with a video drawn into split 'val' (deterministic per --seed)"),
                   F("--seed", type=int, default=0, help="seed of the val draw (default 0)"),
                   F("--drop-unmatched", action="store_true",
                     help="leave published names without a video out of the manifest (still reported)"),
                   F("--output", help="write the manifest as Parquet here"))),
    Command(("quickstart",), "ray_emer.quickstart:run_quickstart", "the embedded default job, end to end",
            "Synthetic archives (coarse, clean, held-out) -> features (Ray Data) -> stage 1 -> stage 2 (Ray Train) "
            "-> labels of the held-out clips (Ray Data) -> scores -> OUT/report/index.html, with MLflow "
            "(sqlite:///OUT/mlflow.db by default). Progress on stderr, a JSON summary on stdout.",
            config="ray_emer.quickstart:QuickstartConfig",
            flags=(F("--out", to="out", help="output folder or s3:// prefix (default /tmp/ray_emer_quickstart)"),)),
    Command(("extract",), "ray_emer.data.pipeline:run_extract",
            "archive -> frozen-encoder features (Parquet), with Ray Data",
            "Decode every clip of INPUT (folder, s3:// prefix or manifest) and encode it with the preset's frozen "
            "encoders; writes OUTPUT/part-*.parquet (one row per clip: clip_id, status, error, video_feats, "
            "audio_feats, ...). Bad clips become error rows; a rerun skips clip ids already written. Joins a "
            "running Ray cluster (RAY_ADDRESS, ray job submit) or starts a local one.",
            config="ray_emer.data.extraction:ExtractConfig",
            flags=(F("--input", to="input", help="folder, s3:// prefix, or .csv/.tsv/.parquet manifest"),
                   F("--output", to="output", help="directory or s3:// prefix for the Parquet shards"),
                   F("--preset", to="preset",
                     help="model preset whose encoders run: tiny | affectgpt-qwen2.5-0.5b | affectgpt-qwen2.5-7b "
                          "(default tiny)"),
                   F("--face-crop", to="media.face_crop", action="store_true", default=None,
                     help="Haar face crops instead of whole frames"),
                   F("--asr", to="asr.enabled", action="store_true", default=None,
                     help="transcribe the audio of clips without a subtitle (subtitle_source asr); backend: "
                          "--set asr.backend=offline (PocketSphinx, English, bundled; default) | whisper "
                          "(--set asr.model=NAME_OR_DIR, asr.language=zh)"),
                   F("--segment", to="segment.mode", choices=["auto", "off"], help=SEGMENT_HELP))),
    Command(("train",), "ray_emer.train.run:run_stage", "train one AffectGPT stage on cached features",
            "Train head + LoRA (per the config's trainable settings) on feature shards, locally or with Ray Train + "
            "FSDP2 (scaling.engine); --output receives the exported checkpoint directory (config.json, "
            "head.safetensors, adapter/, tokenizer/); --init starts from an earlier stage's export.",
            config="ray_emer.train.loop:TrainConfig",
            flags=(F("--features", to="features", help="feature shards (ray-emer extract output)"),
                   F("--output", to="output", help="checkpoint directory to export"),
                   F("--preset", to="preset",
                     help="tiny | affectgpt-qwen2.5-0.5b | affectgpt-qwen2.5-7b (ignored with --init)"),
                   F("--init", to="init", help="checkpoint of an earlier stage: a directory, or models:/NAME/VERSION, "
                                               "models:/NAME@ALIAS, runs:/RUN_ID/PATH"),
                   F("--max-steps", to="max_steps", type=int, help="optimizer steps (default: the configured epochs)"),
                   F("--register", to="tracking.register_as", metavar="NAME",
                     help="register the export as a new version of model NAME in the MLflow Model Registry "
                          "(the run linked, config and scores as tags); the summary names models:/NAME/VERSION"))),
    Command(("label",), "ray_emer.data.label_job:run_label",
            "label an archive or its features with a checkpoint (Ray Data + HF or vLLM)",
            "Generate a description, open-vocabulary labels and a sentiment for every clip of INPUT (feature shards "
            "from `ray-emer extract`, or an archive, which is extracted into OUTPUT/_features first). Writes "
            "OUTPUT/part-*.parquet (clip_id, description, labels, sentiment, status, error, model, engine, "
            "timings, recording_id, start_s, end_s), _summary.json, _published/{reason,openset}.csv and, per "
            "segmented recording, _timelines/ID.json, .vtt, .html. Error rows keep their reason; a rerun skips "
            "clips already labelled. Progress on stderr, a JSON summary on stdout.",
            config="ray_emer.data.label_job:LabelJobConfig",
            flags=(F("--input", to="input", help="feature shards, or a folder / s3:// prefix / manifest of clips"),
                   F("--checkpoint", to="checkpoint", help=CHECKPOINT_HELP),
                   F("--output", to="output", help="directory or s3:// prefix for the label shards and exports"),
                   F("--engine", to="labeller.engine", choices=["hf", "vllm"],
                     help="generation engine (default hf; vllm needs the vllm extra)"),
                   F("--evaluate", to="evaluate", action="store_true", default=None,
                     help="score against the gold labels/descriptions of the input (and the consistency of labels "
                          "and descriptions); adds scores and OUTPUT/_report/"),
                   F("--segment", to="extract.segment.mode", choices=["auto", "off"], help=SEGMENT_HELP),
                   F("--wheel-dir", to="wheel_dir",
                     help="emotion-wheel tables: the vocabulary with which each description states its labels, and, "
                          "with --evaluate, EW F_s and wheel-grouped metrics"))),
    Command(("serve",), "ray_emer.serve.run:serve_local", "run the endpoint locally (embedded Ray + Ray Serve)",
            "Serve CHECKPOINT on http://HOST:PORT: POST /v1/analyze, POST /v1/chat/completions (OpenAI shape), "
            "GET /v1/models, GET /healthz and a demo page at /. A bearer API key guards every route but /healthz "
            "and the page: RAY_EMER_API_KEY, RAY_EMER_API_KEY_FILE, else one is generated and printed. Stops on "
            "SIGINT/SIGTERM.",
            config="ray_emer.serve.settings:ServeArgs",
            flags=(F("--checkpoint", to="checkpoint", required=True, help=CHECKPOINT_HELP),
                   F("--port", type=int, default=8000),
                   F("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 to expose)"),
                   F("--max-upload-mb", to="max_upload_mb", type=float, help="request body limit in MB (413 above)"),
                   F("--engine", to="engine", choices=["hf", "vllm"], help="generation engine (default hf)"),
                   F("--no-auth", to="auth", action="store_const", const=False, default=None,
                     help="serve without an API key (explicitly unsafe)")),
            output=lambda result, args: None),
    Command(("evaluate", "unibench"), "ray_emer.eval.flows:unibench",
            "score one dataset: hit rate | weighted F1 | EW F_s",
            "P.csv: name,openset[,sentiment]. L.csv: name + emotion|valence|openset (local or s3://). Prints one "
            "JSON object with score, n_scored, n_skipped (+ precision, recall) and the parsing rule.",
            flags=(F("--kind", required=True, choices=["basic", "sentiment", "ov"]),
                   F("--predictions", required=True), F("--labels", required=True),
                   F("--output", help="also write the JSON here"), PARSING, *WHEEL, *REPORT)),
    Command(("evaluate", "emer"), "ray_emer.eval.flows:emer", "EMER set metrics: accuracy_s, recall_s, avg",
            "Group labels with cached synonym groups (--groups, JSON name -> clusters) or the emotion wheel "
            "(--wheel-dir).",
            flags=(F("--predictions", required=True, help="CSV name,openset"),
                   F("--labels", required=True, help="CSV name,openset"),
                   F("--groups", help="synonym groups JSON (format of ovmerd332_gpt35_synonym_groups_cache.json)"),
                   F("--parsing", choices=["published", "proper"],
                     help="list parsing; default 'published' with --groups (how the cached groups were made), "
                          "else 'proper'"),
                   F("--output"), *WHEEL)),
    Command(("evaluate", "convert"), "ray_emer.eval.flows:convert",
            "published MER-UniBench files -> the P.csv / L.csv contract",
            "--labels merbench_*_label*.csv (test rows of DATASET) and/or --outputs the published AffectGPT outputs "
            "CSV (one P.csv per checkpoint).",
            flags=(F("--dataset", required=True,
                     help="mer2023, mer2024, meld, iemocap, cmumosi, cmumosei, sims, simsv2"),
                   F("--labels"), F("--outputs"), F("--out-dir", required=True))),
    Command(("evaluate", "checkpoints"), "ray_emer.eval.flows:checkpoints",
            "score every checkpoint; best on test and honest selection",
            "Scores each checkpoint of a published outputs file; reports the paper's best-on-test pick and an "
            "honest pick made on a held-out half.",
            flags=(F("--dataset", required=True), F("--outputs", required=True),
                   F("--labels", required=True, help="published merbench label CSV"),
                   F("--seed", type=int, default=0, help="seed of the selection/report split"),
                   F("--output"), PARSING, *WHEEL, *REPORT)),
    Command(("evaluate", "extract"), "ray_emer.infer.text_labels:extract_labels",
            "descriptions -> open-vocabulary labels (+ lexicon sentiment)",
            flags=(F("--descriptions", required=True, help="CSV with name and a description column"),
                   F("--column", default="description", help="description column (default description)"),
                   F("--method", choices=["lexicon", "llm"], default="lexicon"),
                   F("--focus", choices=["conclusion", "all"], default="conclusion",
                     help="lexicon: part of the text read"),
                   F("--model", help="llm: model name or local path"),
                   F("--out", required=True, help="P.csv with name,openset,sentiment"),
                   *WHEEL[:2])),
    Command(("evaluate", "text"), "ray_emer.eval.flows:text", "BLEU-1..4, METEOR, ROUGE-L, CIDEr between descriptions",
            flags=(F("--predictions", required=True), F("--labels", required=True),
                   F("--column", default="description"), F("--output"))),
    Command(("model", "inspect"), "ray_emer.model.inspect:inspect_preset",
            "per-component parameter table, built on the meta device (no download)",
            "Builds PRESET (or a checkpoint's config.json) on the meta device and prints total and trainable "
            "parameters per component. --json prints one object with total_params, trainable_params and components.",
            flags=(F("preset", help="tiny | affectgpt-qwen2.5-0.5b | affectgpt-qwen2.5-7b | a checkpoint dir"),
                   F("--json", action="store_true"),
                   F("--no-encoders", dest="encoders", action="store_false",
                     help="leave the frozen CLIP/HuBERT towers out"),
                   F("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. --set trainable.llm=frozen or --set lora.r=8")),
            output=_table_or_json("ray_emer.model.inspect:format_table")),
    Command(("model", "import"), "ray_emer.model.importer:import_published",
            "published AffectGPT checkpoint (.pth) -> a ray_emer checkpoint directory",
            "Reads the released AffectGPT training checkpoint (projectors, pre-fusion, LoRA; torch.load weights_only, "
            "or a flat .safetensors), checks every key and shape against PRESET built on the meta device, writes "
            "config.json, head.safetensors, adapter/ (PEFT) and tokenizer/ to OUT and prints one JSON object: mapped, "
            "ignored (optimizer, scaler, config, epoch), tokenizer and differences. Needs no network: without "
            "--tokenizer or a local copy of the preset's tokenizer, tokenizer/ is resolved where it is loaded.",
            flags=(F("file", help="the published checkpoint_*.pth (local or s3://)"),
                   F("--out", required=True, help="new checkpoint directory (local or s3://; must be empty)"),
                   F("--preset", default="affectgpt-qwen2.5-7b",
                     help="affectgpt-qwen2.5-7b (default) | a checkpoint directory whose config.json to use"),
                   F("--tokenizer", metavar="PATH", help="a local tokenizer folder to write as tokenizer/ (default: "
                                                         "the preset's, if a local copy exists; else resolved at load)"))),
)
GROUP_HELP = {"evaluate": ("MER-UniBench and EMER metrics, label extraction, reports",
                           "Score predictions as MER-UniBench / the EMER paper do."),
              "model": ("AffectGPT model tools", "Inspect AffectGPT presets and checkpoints.")}
# flags that only shape the output, not the function's arguments
OUTPUT_ONLY = {"json"}


def _dest(flag: Flag) -> str:
    if "dest" in flag.opts:
        return flag.opts["dest"]
    name = flag.names[0]
    return name.lstrip("-").replace("-", "_") if name.startswith("-") else name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-emer", description="ray_emer: explainable multimodal emotion "
                                     "recognition at cluster scale.")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, Any] = {}
    for cmd in COMMANDS:
        where = sub
        if len(cmd.path) == 2:
            group = cmd.path[0]
            if group not in groups:
                help_, desc = GROUP_HELP[group]
                gp = sub.add_parser(group, help=help_, description=desc)
                groups[group] = gp.add_subparsers(dest=f"{group}_command", required=True)
            where = groups[group]
        p = where.add_parser(cmd.path[-1], help=cmd.help, description=cmd.description or cmd.help)
        for flag in cmd.flags:
            opts = dict(flag.opts)
            if flag.to:
                opts["dest"] = "cfg:" + flag.to
                if opts.get("action") in (None, "store") and "choices" not in opts:
                    opts.setdefault("metavar", flag.names[0].lstrip("-").upper().replace("-", "_"))
            p.add_argument(*flag.names, **opts)
        if cmd.config:
            p.add_argument("--config", dest="_config", metavar="YAML", help="YAML run config (unknown keys fail)")
            p.add_argument("--set", dest="_overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="dotted override, parsed by the type of the field it sets, e.g. "
                                "--set tracking.enabled=false (repeatable)")
        p.set_defaults(_command=cmd)
    return parser


def call(cmd: Command, args: argparse.Namespace):
    """Run ``cmd``'s library function with what ``args`` holds."""
    func = _load(cmd.target)
    ns = vars(args)
    kwargs = {_dest(f): ns[_dest(f)] for f in cmd.flags if not f.to and _dest(f) not in OUTPUT_ONLY}
    if not cmd.config:
        return func(**kwargs)
    from ray_emer.config import load_config

    values = {f.to: ns["cfg:" + f.to] for f in cmd.flags if f.to and ns["cfg:" + f.to] is not None}
    cfg = load_config(_load(cmd.config), ns["_config"], ns["_overrides"], values=values)
    return func(cfg, log=say, **kwargs)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cmd: Command = args._command
    # stdout carries the result only: while the command runs, whatever else writes to sys.stdout (Ray's forwarded
    # worker and raylet lines, library prints) goes to stderr, so `ray-emer ... | jq` always parses
    out, sys.stdout = sys.stdout, sys.stderr
    try:
        try:
            result = call(cmd, args)
        except RayEmerError as exc:
            print(f"ray-emer {' '.join(cmd.path)}: {exc}", file=sys.stderr)
            return exc.exit_code
        text = (cmd.output or (lambda result, args: json.dumps(result, default=str)))(result, args)
        if text is not None:
            out.write(text + "\n")
            out.flush()
    finally:
        sys.stdout = out
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
