"""``ray-emer`` console entry. Each subcommand parses its flags and calls one library function."""

from __future__ import annotations

import argparse
import json
import sys

from ray_emer.config import ConfigError, load_config


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config (unknown keys fail)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. --set synth.clips=8 (repeatable)")


def cmd_synth(args: argparse.Namespace) -> int:
    from ray_emer.synthetic import SynthConfig, write_archive

    overrides = [f"clips={args.clips}", f"seed={args.seed}", f"coarse={str(args.coarse).lower()}"]
    if args.noise is not None:
        overrides.append(f"noise={args.noise}")
    cfg = load_config(SynthConfig, args.config, overrides + args.overrides)
    manifest = write_archive(args.out, cfg)
    print(json.dumps({"manifest": manifest, "clips": cfg.clips, "seed": cfg.seed, "coarse": cfg.coarse}))
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from ray_emer import storage
    from ray_emer.media import MediaConfig, MediaError, decode_uri

    cfg = MediaConfig(num_frames=args.num_frames, frame_size=args.size,
                      max_duration_s=args.max_duration, video_backend=args.backend)
    try:
        clip = decode_uri(args.file, args.audio, cfg)
    except (MediaError, storage.StorageError) as exc:
        print(f"ray-emer decode: {exc}", file=sys.stderr)
        return 1
    summary = clip.summary()
    if args.json:
        print(json.dumps(summary))
    else:
        for key, value in summary.items():
            print(f"{key:>14}: {value}")
    return 0


def cmd_manifest(args: argparse.Namespace) -> int:
    from ray_emer.data.manifest import join_published, read_manifest

    table = read_manifest(args.input)
    if args.subtitles or args.reasons or args.openset:
        table = join_published(table, args.subtitles, args.reasons, args.openset)
    if args.output:
        import io

        import pyarrow.parquet as pq

        from ray_emer import storage

        buf = io.BytesIO()
        pq.write_table(table, buf)
        storage.write_bytes(args.output, buf.getvalue())
    print(json.dumps({"rows": table.num_rows, "columns": table.column_names, "output": args.output}))
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from ray_emer.quickstart import QuickstartConfig, run_quickstart

    overrides = ([f"out={args.out}"] if args.out else []) + args.overrides
    cfg = load_config(QuickstartConfig, args.config, overrides)
    print(json.dumps(run_quickstart(cfg, log=lambda m: print(m, file=sys.stderr))))
    return 0


def _wheels(args):
    from ray_emer.eval.wheel import EmotionWheels

    return EmotionWheels.load(args.wheel_dir, args.format_file) if args.wheel_dir else None


def _emit(result: dict, output: str | None) -> None:
    text = json.dumps(result, default=str)
    if output:
        from ray_emer import storage

        storage.write_text(output, text + "\n")
    print(text)


def _report(result: dict, args, experiment: str, params: dict) -> None:
    if not (args.report_dir or args.mlflow_uri):
        return
    from ray_emer.eval.report import write_report
    from ray_emer.tracking import make_tracker

    tracker = make_tracker(args.mlflow_uri, experiment)
    tracker.log_params(params)
    write_report(result, args.report_dir or "report", tracker=tracker)
    tracker.close()


def cmd_eval_unibench(args: argparse.Namespace) -> int:
    from ray_emer.eval.unibench import score_files

    result = score_files(args.kind, args.predictions, args.labels, _wheels(args), args.level)
    _emit(result, args.output)
    _report(result, args, "ray_emer-eval", {"kind": args.kind, "predictions": args.predictions,
                                             "labels": args.labels, "wheel_dir": args.wheel_dir})
    return 0


def cmd_eval_emer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ray_emer.data.manifest import parse_label_list
    from ray_emer.eval.metrics import emer_set_metrics, emer_wheel_metrics, parse_published_list
    from ray_emer.eval.unibench import EvalInputError, read_csv, read_predictions

    if bool(args.groups) == bool(args.wheel_dir):
        raise EvalInputError("give exactly one of --groups or --wheel-dir")
    parsing = args.parsing or ("published" if args.groups else "proper")
    parser = parse_published_list if parsing == "published" else parse_label_list
    labels = read_csv(args.labels, ("name", "openset"))
    gold = {n: parser(v) for n, v in zip(labels["name"], labels["openset"])}
    pred, _ = read_predictions(args.predictions, "ov", set(gold), parser=parser)
    if args.groups:
        result = emer_set_metrics(gold, pred, json.loads(Path(args.groups).read_text()))
    else:
        result = emer_wheel_metrics(gold, pred, _wheels(args))
    _emit(result | {"parsing": parsing}, args.output)
    return 0


def cmd_eval_convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ray_emer.eval.unibench import convert_labels, convert_outputs

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if args.labels:
        path = out / f"labels_{args.dataset}.csv"
        convert_labels(args.labels, args.dataset).to_csv(path, index=False)
        written.append(str(path))
    if args.outputs:
        for ckpt, frame in convert_outputs(args.outputs).items():
            path = out / f"predictions_{args.dataset}_{ckpt}.csv"
            frame.to_csv(path, index=False)
            written.append(str(path))
    print(json.dumps({"written": written}))
    return 0


def cmd_eval_checkpoints(args: argparse.Namespace) -> int:
    from ray_emer.eval.unibench import DATASET_KIND, convert_labels, convert_outputs, score_checkpoints

    kind = DATASET_KIND[args.dataset]
    labels = convert_labels(args.labels, args.dataset)
    col = labels.columns[1]
    gold = dict(zip(labels["name"], labels[col].astype(float) if kind == "sentiment" else labels[col]))
    result = score_checkpoints(kind, gold, convert_outputs(args.outputs), _wheels(args), args.level, args.seed)
    result["title"] = f"MER-UniBench {args.dataset}: checkpoint selection"
    _report(result, args, "ray_emer-eval", {"dataset": args.dataset, "outputs": args.outputs,
                                             "wheel_dir": args.wheel_dir, "seed": args.seed})
    for row in result["checkpoints"]:
        row.pop("detail")
    _emit(result, args.output)
    return 0


def cmd_eval_extract(args: argparse.Namespace) -> int:
    import pandas as pd

    from ray_emer.eval.extract import LexiconExtractor, LLMExtractor, lexicon_sentiment
    from ray_emer.eval.unibench import read_csv

    df = read_csv(args.descriptions, ("name", args.column))
    if args.method == "llm":
        from ray_emer.infer.engine import HFEngine

        extractor = LLMExtractor(HFEngine.from_pretrained(args.model))
    else:
        extractor = LexiconExtractor(_wheels(args), focus=args.focus)
    labels = extractor.extract(list(df[args.column]))
    out = pd.DataFrame({"name": df["name"], "openset": [", ".join(ls) for ls in labels],
                        "sentiment": [lexicon_sentiment(ls) for ls in labels]})
    out.to_csv(args.out, index=False)
    print(json.dumps({"rows": len(out), "out": args.out, "method": args.method}))
    return 0


def cmd_eval_text(args: argparse.Namespace) -> int:
    from ray_emer.eval.text_overlap import text_overlap
    from ray_emer.eval.unibench import EvalInputError, read_csv

    gold_df = read_csv(args.labels, ("name", args.column))
    pred_df = read_csv(args.predictions, ("name", args.column))
    unknown = sorted(set(pred_df["name"]) - set(gold_df["name"]))
    if unknown:
        raise EvalInputError(f"{args.predictions}: names not in the labels, e.g. {unknown[:3]}")
    _emit(text_overlap(dict(zip(gold_df["name"], gold_df[args.column])),
                       dict(zip(pred_df["name"], pred_df[args.column]))), args.output)
    return 0


def _add_wheel_flags(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--wheel-dir", required=required,
                   help="folder with wheel1..5, synonym (.xlsx or .csv) and format.csv, as published")
    p.add_argument("--format-file", help="another inflection table (e.g. the revised format.csv)")
    p.add_argument("--level", type=int, choices=[1, 2], default=1, help="emotion wheel level (default 1)")


def _add_report_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report-dir", help="write report.json, report.md and report.png here")
    p.add_argument("--mlflow-uri", help="log params, metrics and the report files to MLflow "
                                        "(default: $MLFLOW_TRACKING_URI if set)")


def add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="MER-UniBench and EMER metrics, label extraction, reports",
                        description="Score predictions as MER-UniBench / the EMER paper do.")
    es = ev.add_subparsers(dest="eval_command", required=True)

    p = es.add_parser("unibench", help="score one dataset: hit rate | weighted F1 | EW F_s",
                      description="P.csv: name,openset[,sentiment]. L.csv: name + emotion|valence|openset. "
                                  "Prints one JSON object with score, n_scored, n_skipped (+ precision, recall).")
    p.add_argument("--kind", required=True, choices=["basic", "sentiment", "ov"])
    p.add_argument("--predictions", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--output", help="also write the JSON here")
    _add_wheel_flags(p)
    _add_report_flags(p)
    p.set_defaults(func=cmd_eval_unibench)

    p = es.add_parser("emer", help="EMER set metrics: accuracy_s, recall_s, avg",
                      description="Group labels with cached synonym groups (--groups, JSON name -> clusters) or "
                                  "the emotion wheel (--wheel-dir).")
    p.add_argument("--predictions", required=True, help="CSV name,openset")
    p.add_argument("--labels", required=True, help="CSV name,openset")
    p.add_argument("--groups", help="synonym groups JSON (format of ovmerd332_gpt35_synonym_groups_cache.json)")
    p.add_argument("--parsing", choices=["published", "proper"],
                   help="list parsing; default 'published' with --groups (how the cached groups were made)")
    p.add_argument("--output")
    _add_wheel_flags(p)
    p.set_defaults(func=cmd_eval_emer)

    p = es.add_parser("convert", help="published MER-UniBench files -> the P.csv / L.csv contract",
                      description="--labels merbench_*_label*.csv (test rows of DATASET) and/or --outputs the "
                                  "published AffectGPT outputs CSV (one P.csv per checkpoint).")
    p.add_argument("--dataset", required=True, help="mer2023, mer2024, meld, iemocap, cmumosi, cmumosei, sims, simsv2")
    p.add_argument("--labels")
    p.add_argument("--outputs")
    p.add_argument("--out-dir", required=True)
    p.set_defaults(func=cmd_eval_convert)

    p = es.add_parser("checkpoints", help="score every checkpoint; best on test and honest selection",
                      description="Scores each checkpoint of a published outputs file; reports the paper's "
                                  "best-on-test pick and an honest pick made on a held-out half.")
    p.add_argument("--dataset", required=True)
    p.add_argument("--outputs", required=True)
    p.add_argument("--labels", required=True, help="published merbench label CSV")
    p.add_argument("--seed", type=int, default=0, help="seed of the selection/report split")
    p.add_argument("--output")
    _add_wheel_flags(p)
    _add_report_flags(p)
    p.set_defaults(func=cmd_eval_checkpoints)

    p = es.add_parser("extract", help="descriptions -> open-vocabulary labels (+ lexicon sentiment)")
    p.add_argument("--descriptions", required=True, help="CSV with name and a description column")
    p.add_argument("--column", default="description", help="description column (default description)")
    p.add_argument("--method", choices=["lexicon", "llm"], default="lexicon")
    p.add_argument("--focus", choices=["conclusion", "all"], default="conclusion", help="lexicon: part of the text read")
    p.add_argument("--model", help="llm: model name or local path")
    p.add_argument("--out", required=True, help="P.csv with name,openset,sentiment")
    _add_wheel_flags(p)
    p.set_defaults(func=cmd_eval_extract)

    p = es.add_parser("text", help="BLEU-1..4, METEOR, ROUGE-L, CIDEr between descriptions")
    p.add_argument("--predictions", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--column", default="description")
    p.add_argument("--output")
    p.set_defaults(func=cmd_eval_text)


def cmd_model_inspect(args: argparse.Namespace) -> int:
    from ray_emer.model.config import resolve_model_config
    from ray_emer.model.inspect import format_table, inspect_model

    cfg = resolve_model_config(args.preset, args.overrides)
    report = inspect_model(cfg, encoders=not args.no_encoders)
    print(json.dumps(report) if args.json else format_table(report))
    return 0


def cmd_extract(args: argparse.Namespace) -> int:
    from ray_emer.data.features import ExtractConfig

    overrides = [f"{k}={v}" for k, v in (("input", args.input), ("output", args.output), ("preset", args.preset))
                 if v is not None]
    if args.face_crop:
        overrides.append("media.face_crop=true")
    cfg = load_config(ExtractConfig, args.config, overrides + args.overrides)
    if not cfg.input or not cfg.output:
        raise ConfigError("extract needs --input and --output (or input/output in the config)")
    from ray_emer.data.manifest import ManifestError
    from ray_emer.data.pipeline import run_extract
    from ray_emer.storage import StorageError

    try:
        summary = run_extract(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ManifestError, StorageError) as exc:
        print(f"ray-emer extract: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from ray_emer.train.loop import TrainConfig
    from ray_emer.train.run import run_training

    flags = (("features", args.features), ("output", args.output), ("preset", args.preset), ("init", args.init),
             ("max_steps", args.max_steps))
    overrides = [f"{k}={v}" for k, v in flags if v is not None]
    cfg = load_config(TrainConfig, args.config, overrides + args.overrides)
    if not cfg.features or not cfg.output:
        raise ConfigError("train needs --features and --output (or features/output in the config)")
    from ray_emer.storage import StorageError

    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    try:
        if cfg.engine == "ray":
            from ray_emer.train.trainer import run_ray_training

            summary = run_ray_training(cfg, log=log)
        else:
            summary = run_training(cfg, log=log)
    except (StorageError, ValueError) as exc:
        print(f"ray-emer train: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def cmd_label(args: argparse.Namespace) -> int:
    from ray_emer.data.label_job import LabelJobConfig

    flags = (("input", args.input), ("output", args.output), ("checkpoint", args.checkpoint),
             ("labeller.engine", args.engine), ("wheel_dir", args.wheel_dir))
    overrides = [f"{k}={v}" for k, v in flags if v is not None]
    if args.evaluate:
        overrides.append("evaluate=true")
    cfg = load_config(LabelJobConfig, args.config, overrides + args.overrides)
    if not cfg.input or not cfg.output or not cfg.checkpoint:
        raise ConfigError("label needs --input, --output and --checkpoint (or input/output/checkpoint in the config)")
    from ray_emer.data.label_job import run_label
    from ray_emer.data.manifest import ManifestError
    from ray_emer.model.checkpoint import CheckpointError
    from ray_emer.storage import StorageError

    try:
        summary = run_label(cfg, log=lambda m: print(m, file=sys.stderr, flush=True))
    except (ManifestError, StorageError, CheckpointError) as exc:
        print(f"ray-emer label: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, default=str))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ray_emer.serve.run import serve_local

    return serve_local(args.checkpoint, port=args.port, max_upload_mb=args.max_upload_mb, host=args.host,
                       auth=not args.no_auth, engine=args.engine, config=args.config, overrides=args.overrides)


def add_model(sub) -> None:
    mp = sub.add_parser("model", help="AffectGPT model tools", description="Inspect AffectGPT presets and checkpoints.")
    ms = mp.add_subparsers(dest="model_command", required=True)
    p = ms.add_parser("inspect", help="per-component parameter table, built on the meta device (no download)",
                      description="Builds PRESET (or a checkpoint's config.json) on the meta device and prints "
                                  "total and trainable parameters per component. --json prints one object with "
                                  "total_params, trainable_params and components.")
    p.add_argument("preset", help="tiny | affectgpt-qwen2.5-7b | a checkpoint directory")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-encoders", action="store_true", help="leave the frozen CLIP/HuBERT towers out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set trainable.llm=frozen or --set lora.r=8")
    p.set_defaults(func=cmd_model_inspect)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ray-emer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a labelled synthetic archive (clips + manifest.csv)",
                       description="Write N short H.264/AAC clips with subtitles, gold descriptions and "
                                   "open-vocabulary labels under OUT/clips/, and OUT/manifest.csv.")
    p.add_argument("--out", required=True, help="output folder or s3:// prefix")
    p.add_argument("--clips", type=int, default=24, help="number of clips (default 24)")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same archive")
    p.add_argument("--coarse", action="store_true", help="noisy descriptions/labels (stage-1 stand-in)")
    p.add_argument("--noise", type=float, help="with --coarse: share of corrupted clips (default 0.3)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("decode", help="decode one clip: frames + 16 kHz audio windows",
                       description="Decode FILE (a path or s3:// URI) as the pipeline does. Exits 1 with the "
                                   "reason on stderr when the file cannot be decoded.")
    p.add_argument("file")
    p.add_argument("--audio", help="separate audio file (wav, m4a, ...) instead of the container's track")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--num-frames", type=int, default=8)
    p.add_argument("--size", type=int, default=224, help="square frame size after resize + centre crop")
    p.add_argument("--max-duration", type=float, default=600.0, help="longer clips are an error (seconds)")
    p.add_argument("--backend", choices=["auto", "decord", "pyav"], default="auto")
    p.set_defaults(func=cmd_decode)

    p = sub.add_parser("manifest", help="read a folder / s3 prefix / CSV / Parquet into a manifest",
                       description="Build a manifest (one row per clip) and optionally join the published "
                                   "EMER CSV layouts on name.")
    p.add_argument("input", help="folder, s3:// prefix, or .csv/.parquet manifest")
    p.add_argument("--subtitles", help="CSV with columns name,english")
    p.add_argument("--reasons", help="CSV with columns name,reason")
    p.add_argument("--openset", help="CSV with columns name,openset")
    p.add_argument("--output", help="write the manifest as Parquet here")
    p.set_defaults(func=cmd_manifest)

    p = sub.add_parser("quickstart", help="the embedded default job, end to end",
                       description="Synthetic archives (coarse, clean, held-out) -> features (Ray Data) -> stage 1 "
                                   "-> stage 2 (Ray Train) -> labels of the held-out clips (Ray Data) -> scores -> "
                                   "OUT/report/index.html, with MLflow (sqlite:///OUT/mlflow.db by default). "
                                   "Progress on stderr, a JSON summary on stdout.")
    p.add_argument("--out", help="output folder or s3:// prefix (default /tmp/ray_emer_quickstart)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("extract", help="archive -> frozen-encoder features (Parquet), with Ray Data",
                       description="Decode every clip of INPUT (folder, s3:// prefix or manifest) and encode it with "
                                   "the preset's frozen encoders; writes OUTPUT/part-*.parquet (one row per clip: "
                                   "clip_id, status, error, video_feats, audio_feats, ...). Bad clips become error "
                                   "rows; a rerun skips clip ids already written. Joins a running Ray cluster "
                                   "(RAY_ADDRESS, ray job submit) or starts a local one.")
    p.add_argument("--input", help="folder, s3:// prefix, or .csv/.tsv/.parquet manifest")
    p.add_argument("--output", help="directory or s3:// prefix for the Parquet shards")
    p.add_argument("--preset", help="model preset whose encoders run: tiny | affectgpt-qwen2.5-7b (default tiny)")
    p.add_argument("--face-crop", action="store_true", help="Haar face crops instead of whole frames")
    _add_config_flags(p)
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", help="train one AffectGPT stage on cached features",
                       description="Train head + LoRA (per the config's trainable settings) on feature shards; "
                                   "--output receives the exported checkpoint directory (config.json, "
                                   "head.safetensors, adapter/, tokenizer/); --init starts from an earlier "
                                   "stage's export.")
    p.add_argument("--features", help="feature shards (ray-emer extract output)")
    p.add_argument("--output", help="checkpoint directory to export")
    p.add_argument("--preset", help="tiny | affectgpt-qwen2.5-7b (ignored with --init)")
    p.add_argument("--init", help="checkpoint directory of an earlier stage")
    p.add_argument("--max-steps", type=int, help="optimizer steps (default: the configured epochs)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("label", help="label an archive or its features with a checkpoint (Ray Data + HF or vLLM)",
                       description="Generate a description, open-vocabulary labels and a sentiment for every clip of "
                                   "INPUT (feature shards from `ray-emer extract`, or an archive, which is extracted "
                                   "into OUTPUT/_features first). Writes OUTPUT/part-*.parquet (clip_id, description, "
                                   "labels, sentiment, status, error, model, engine, timings), _summary.json, "
                                   "_published/reason.csv and _published/openset.csv. Error rows keep their reason; "
                                   "a rerun skips clips already labelled. Prints progress on stderr and a JSON "
                                   "summary on stdout.")
    p.add_argument("--input", help="feature shards, or a folder / s3:// prefix / manifest of clips")
    p.add_argument("--checkpoint", help="exported checkpoint directory (ray-emer train --output)")
    p.add_argument("--output", help="directory or s3:// prefix for the label shards and exports")
    p.add_argument("--engine", choices=["hf", "vllm"], help="generation engine (default hf; vllm needs the vllm extra)")
    p.add_argument("--evaluate", action="store_true",
                   help="score against the gold labels/descriptions of the input; adds scores and OUTPUT/_report/")
    p.add_argument("--wheel-dir", help="with --evaluate: emotion-wheel tables for EW F_s and wheel-grouped metrics")
    _add_config_flags(p)
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("serve", help="run the endpoint locally (embedded Ray + Ray Serve)",
                       description="Serve CHECKPOINT on http://HOST:PORT: POST /v1/analyze, POST /v1/chat/completions "
                                   "(OpenAI shape), GET /v1/models, GET /healthz and a demo page at /. A bearer API key "
                                   "guards every route but /healthz and the page: RAY_EMER_API_KEY, "
                                   "RAY_EMER_API_KEY_FILE, else one is generated and printed. Stops on SIGINT/SIGTERM.")
    p.add_argument("--checkpoint", required=True, help="exported checkpoint directory (ray-emer train --output)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; 0.0.0.0 to expose)")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="request body limit in MB (413 above)")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    p.add_argument("--no-auth", action="store_true", help="serve without an API key (explicitly unsafe)")
    _add_config_flags(p)
    p.set_defaults(func=cmd_serve)

    add_evaluate(sub)
    add_model(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ray_emer.eval.unibench import EvalInputError
    from ray_emer.eval.wheel import WheelError

    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"ray-emer {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    except (EvalInputError, WheelError) as exc:
        print(f"ray-emer {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
