"""`tunetl` command line: a thin argparse layer over `tunetl.api`.

Heavy libraries (torch, ray, mlflow) are imported inside the commands, so `tunetl --help` is instant.
Exit status: 0 on success, 2 on invalid input, 1 when no trial succeeded or a service is unreachable,
3 when the search finished but some trials failed, 128+N when signal N (Ctrl-C, SIGTERM) stopped it.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

EXIT_INVALID, EXIT_FAILED, EXIT_PARTIAL = 2, 1, 3


def _add_uri(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")


def _add_source_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", help="where cached source models are (<storage>/cache/sources): default the "
                   "storage the meta-model's searches recorded, else ./tunetl_runs")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="tunetl",
        description="Search how to fine-tune a pretrained image classifier on a small dataset.",
    )
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run a search from an experiment YAML")
    p.add_argument("experiment", help="experiment YAML (e.g. experiments/quickstart.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, dotted, YAML-typed (repeatable): --set training.epochs=3")
    p.add_argument("--name", help="MLflow experiment name (default: the YAML's name)")
    p.add_argument("--address", help="Ray cluster address: auto or HOST:PORT (default: $RAY_ADDRESS or local)")
    _add_uri(p)
    p.add_argument("--storage", help="where Ray keeps checkpoints and the source cache (default: ./tunetl_runs)")
    p.add_argument("--resume", action="store_true",
                   help="finish the latest search of this experiment (an unfinished one is resumed anyway)")
    p.add_argument("--new", action="store_true", help="start a new search even if an unfinished one exists")
    p.add_argument("--num-cpus", type=int, help="CPUs for a local Ray (default: all)")
    p.add_argument("--register-model", metavar="NAME",
                   help="register the winner's model under NAME (alias champion if it beats the current one)")
    p.add_argument("--more", type=int, metavar="N",
                   help="add N trials (per seed) to the last finished random/optuna search of this experiment")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("best", help="best configurations recorded in MLflow")
    p.add_argument("--experiment", required=True, action="append", help="MLflow experiment name (repeatable)")
    _add_uri(p)
    p.add_argument("--metric", default="best_val_acc",
                   help="metric to rank by: best_val_acc (a trial's score: its best epoch, the default) or "
                        "val_acc (its last epoch)")
    p.add_argument("--top", type=int, default=5, help="configurations to show (per group)")
    p.add_argument("--group-by", action="append", default=[], help="e.g. images_per_label (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--pareto", nargs="?", const="val_acc,train_seconds", metavar="OBJ,OBJ",
                   help="the Pareto front of a multi-objective search instead (default val_acc,train_seconds)")
    p.set_defaults(func=cmd_best)

    p = sub.add_parser("export", help="write every trial of an experiment to Parquet")
    p.add_argument("--experiment", action="append", help="MLflow experiment name (repeatable)")
    p.add_argument("--from-storage", metavar="DIR",
                   help="read Ray's results under this --storage instead of MLflow (no tracking server needed)")
    p.add_argument("--run", help="with --from-storage: one search folder (NAME_YYYYmmdd-HHMMSS) or experiment name")
    p.add_argument("--out", required=True, help="FILE.parquet")
    _add_uri(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("sync", help="write into MLflow what Ray's results hold and MLflow lacks (after an outage)")
    p.add_argument("--storage", required=True, help="the --storage of `tunetl run`, or one search folder in it")
    p.add_argument("--run", help="one search folder (NAME_YYYYmmdd-HHMMSS) or experiment name (default: all)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: the one the search recorded to)")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser("report", help="plots and tables (PNG, Markdown, CSV, HTML) of an experiment")
    p.add_argument("--experiment", required=True, action="append")
    p.add_argument("--out", required=True, help="output folder")
    _add_uri(p)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("features", help="dataset features of a transfer task (sizes, LogME, LEEP, similarity)")
    p.add_argument("--dataset", required=True, help="builtin:NAME, builtin:NAME[a,b,...] or an ImageFolder path")
    p.add_argument("--source", help="imagenet, a weights file, or a dataset to train a source model on")
    p.add_argument("--backbone", help="default: the meta-model's (--model), else smallcnn")
    p.add_argument("--images-per-label", type=int, help="the subset size you will train on (default: all)")
    p.add_argument("--model", help="registered meta-model: use the source (recipe, cached weights) its searches used")
    _add_uri(p)
    _add_source_storage(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("fit-regressor", help="fit the meta-model (alpha, lr_scale, frozen depth) on recorded searches")
    p.add_argument("--experiment", required=True, action="append", help="MLflow experiment name (repeatable)")
    _add_uri(p)
    p.add_argument("--register", help="register the model under this name (versioned); default tunetl-meta-model")
    p.add_argument("--no-register", action="store_true", help="log the model without registering it")
    p.add_argument("--feature", dest="features", action="append", metavar="feature.NAME",
                   help="an input of the model (repeatable; default: every feature.* finite on all tasks and "
                        "not constant); drop the ones benchmarks/meta_eval.py --drop-column shows do not help")
    p.set_defaults(func=cmd_fit_regressor)

    p = sub.add_parser("predict", help="recommended learning rates and frozen depth for a new dataset")
    p.add_argument("--dataset", required=True, help="builtin:NAME, builtin:NAME[a,b,...] or an ImageFolder path")
    p.add_argument("--source", help="imagenet, a weights file, or a dataset to train a source model on")
    p.add_argument("--backbone", help="default: the backbone of the meta-model's sources")
    p.add_argument("--images-per-label", type=int, help="the subset size you will train on (default: all)")
    p.add_argument("--model", help="registered meta-model NAME, NAME@VERSION or NAME@alias "
                   "(default: tunetl-meta-model)")
    _add_uri(p)
    _add_source_storage(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("classify", help="classify image files with a model a search logged")
    p.add_argument("--model", required=True, help="models:/NAME@champion, models:/NAME/VERSION, runs:/RUN/classifier "
                   "or a model folder")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (walked for images)")
    p.add_argument("--top-k", type=int, default=1, help="most probable labels to show per image")
    p.add_argument("--json", action="store_true")
    _add_uri(p)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("export-model", help="write a logged model as ONNX or TorchScript, checked against PyTorch")
    p.add_argument("--model", required=True, help="models:/NAME@champion, models:/NAME/VERSION, ... (as classify)")
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--out", required=True, help="output file (class names and input shape go to FILE.json)")
    _add_uri(p)
    p.set_defaults(func=cmd_export_model)

    p = sub.add_parser("backbones", help="list the backbones and their stages")
    p.add_argument("--json", action="store_true")
    p.add_argument("names", nargs="*", help="also show these (e.g. timm/convnext_atto) with their stages")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("rank", help="rank pretrained backbones on a dataset without training (LogME, H-score, "
                       "LEEP, NCE)")
    p.add_argument("--dataset", required=True, help="builtin:NAME, builtin:NAME[a,b,...] or an ImageFolder path")
    p.add_argument("--backbones", required=True, nargs="+", help="backbone names, e.g. efficientnet_lite0 "
                   "timm/resnet18.a1_in1k")
    p.add_argument("--images-per-label", type=int, help="images per class scored (default 50)")
    p.add_argument("--source", default="imagenet", help="imagenet (default) or a weights file")
    p.add_argument("--image-size", type=int, help="input size (default: each backbone's own)")
    p.add_argument("--by", default="logme", choices=["logme", "hscore", "leep", "nce"])
    p.add_argument("--threads", type=int, help="torch/BLAS threads (default: the cores the load average leaves "
                   "idle, at least 1)")
    p.add_argument("--experiment", default="tunetl-rank", help="MLflow experiment the ranking is recorded in")
    p.add_argument("--no-record", action="store_true", help="do not record the ranking in MLflow")
    _add_uri(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_rank)
    return ap


def cmd_run(args: argparse.Namespace) -> int:
    from tunetl import api

    try:
        summary = api.run(
            args.experiment,
            overrides=args.overrides,
            name=args.name,
            address=args.address,
            tracking_uri=args.tracking_uri,
            storage=args.storage,
            resume=args.resume,
            new=args.new,
            num_cpus=args.num_cpus,
            register_model=args.register_model,
            more=args.more,
        )
    except api.SearchInterrupted as stop:
        print(f"\ntunetl: {stop}", file=sys.stderr)
        return 128 + (stop.signal or 2)
    print()
    print(f"{summary.num_trials} trial(s), {summary.num_failed} failed, {summary.seconds:.0f} s; "
          f"MLflow experiment {summary.experiment!r}, parent run {summary.parent_run_id}")
    failed = summary.trials[summary.trials["status"] == "FAILED"] if len(summary.trials) else summary.trials
    for _, row in failed.iterrows():
        error = str(row.get("error") or "").strip().splitlines()
        print(f"FAILED trial, MLflow run {row['run_id']}: {error[-1] if error else 'see its tunetl.error tag'}")
    frame = summary.trials
    pivot = api.condition_summary(frame)
    if pivot is not None:
        print("\nBest validation accuracy (%) per condition and images per label, mean over seeds"
              + (":" if "*" not in pivot else "\n(* = ASHA stopped at least one seed early):"))
        print(pivot)
    print()
    print(_best_text(summary.best, api.varying_params(frame)))
    delivery = summary.delivery
    if delivery is not None and delivery.model_test_acc is not None:
        print(f"\nThe winner's model: test accuracy {100 * delivery.model_test_acc:.1f}% on the held-out test split")
    print(f"\nNext: tunetl best --experiment {shlex.quote(summary.experiment)} --group-by images_per_label")
    if delivery is not None and delivery.registered:
        print(f"      tunetl classify --model models:/{delivery.registered}@champion IMAGE...")
    print(f"      mlflow ui --backend-store-uri {summary.tracking_uri}")  # credential-free (adopt_credentials)
    if not summary.ok:
        return EXIT_FAILED
    return EXIT_PARTIAL if summary.num_failed else 0


def _best_text(frame: pd.DataFrame, varying: list[str] | None = None) -> str:
    """The best-config table, showing only parameters that took several values (all when unknown)."""
    from tunetl import api

    if frame.empty:
        return "No trial finished."
    if varying is None:
        varying = api.varying_params(frame) or list(frame.columns)
    keep = [c for c in frame.columns
            if c in varying or c.endswith(("_mean", "_std")) or c in ("n_seeds", "images_per_label")]
    return "Best configurations (accuracy in %, mean over seeds):\n" + api.format_table(frame, keep)


def cmd_best(args: argparse.Namespace) -> int:
    from tunetl import api

    if args.pareto:
        frame = api.pareto(args.experiment, args.tracking_uri, args.pareto)
    else:
        frame = api.best(args.experiment, args.tracking_uri, metric=args.metric, top=args.top,
                         group_by=args.group_by or None)
    if args.json:
        print(frame.to_json(orient="records", indent=2))
    elif args.pareto:
        print(f"Pareto front of {args.pareto} (accuracy in %; no other trial is better on every objective):")
        print(api.format_table(frame))
    else:
        print(_best_text(frame))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tunetl import api
    from tunetl.config import ConfigError

    if bool(args.experiment) == bool(args.from_storage):
        raise ConfigError("export: give --experiment NAME (read MLflow) or --from-storage DIR (read Ray's results)")
    if args.from_storage:
        path = api.export_storage(args.from_storage, args.out, run=args.run)
    else:
        path = api.export(args.experiment, args.out, args.tracking_uri)
    print(f"wrote {path}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from tunetl import api

    for r in api.sync(args.storage, run=args.run, tracking_uri=args.tracking_uri):
        done = ("nothing to add" if not r.changed else
                f"{r.runs_created} run(s) created, {r.params_logged} param(s) and {r.metrics_logged} metric "
                f"value(s) logged, {r.runs_closed} run(s) closed" + (", parent run closed" if r.parent_closed else ""))
        note = f"; {r.duplicates} trial(s) have more than one run" if r.duplicates else ""
        made = " (new parent run)" if r.parent_created else ""
        print(f"{r.search}: {r.trials} trial(s) -> experiment {r.experiment!r}, parent run {r.parent_run_id}{made}: "
              f"{done}{note}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tunetl import api

    index = api.report(args.experiment, args.out, args.tracking_uri)
    print(f"wrote {index} and {index.with_suffix('.html')}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from tunetl import api

    feats = api.features(args.dataset, args.source, args.backbone, storage=args.storage,
                         images_per_label=args.images_per_label, model=args.model, tracking_uri=args.tracking_uri)
    if args.json:
        print(json.dumps({k: (None if v != v else v) for k, v in feats.items()}, indent=2))
    else:
        for key, value in feats.items():
            print(f"{key:36s} {value:.6g}")
    return 0


def cmd_fit_regressor(args: argparse.Namespace) -> int:
    from tunetl import api
    from tunetl.meta.regressor import feature_importance
    from tunetl.tracking.registry import DEFAULT_MODEL_NAME

    register = None if args.no_register else (args.register or DEFAULT_MODEL_NAME)
    model, run_id, version, meta = api.fit_regressor(args.experiment, args.tracking_uri, register, args.features)
    print(f"meta-dataset: {len(meta)} row(s) from {model.n_tasks} task(s); targets: {', '.join(model.targets)}")
    if model.loto:
        print("leave-one-task-out errors, the task's dataset/source pair held out too (and the constant-guess "
              "baseline):")
        for key, value in sorted(model.loto.items()):
            if not key.endswith(("_baseline", "_n", "_q80")):
                base = model.loto.get(f"{key}_baseline")
                print(f"  {key:28s} {value:.3f}" + (f"   (baseline {base:.3f})" if base is not None else ""))
    importance = feature_importance(model)
    if len(importance.columns):
        print("feature importance per part (forest: impurity decrease; ridge: |coefficient|; columns sum to 1):")
        print(importance.to_string(float_format=lambda v: f"{v:.2f}", na_rep="-"))
    where = f"registered as {register} version {version}" if version else "not registered"
    print(f"logged to MLflow run {run_id}; {where}")
    if version:
        print(f"Next: tunetl predict --dataset builtin:digits --model {shlex.quote(f'{register}@{version}')}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tunetl import api
    from tunetl.meta.predict import format_recommendation

    result = api.predict(args.dataset, source=args.source, backbone=args.backbone,
                         images_per_label=args.images_per_label, model=args.model,
                         tracking_uri=args.tracking_uri, storage=args.storage)
    print(json.dumps(result, indent=2) if args.json else format_recommendation(result))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from tunetl import api

    results = api.classify(args.model, args.paths, args.tracking_uri, top_k=args.top_k)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        shown = "  ".join(f"{p['label']} {100 * p['probability']:.1f}%" for p in r["predictions"])
        print(f"{r['path']}\t{shown}")
    return 0


def cmd_export_model(args: argparse.Namespace) -> int:
    from tunetl import api

    r = api.export_model(args.model, args.format, args.out, args.tracking_uri)
    print(f"wrote {r['path']} ({r['format']}); max abs probability difference from PyTorch on {r['images']} "
          f"images: {r['max_abs_diff']:.2g}")
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from tunetl.config import ConfigError
    from tunetl.models import backbone_stages, list_backbones
    from tunetl.models.registry import OFFLINE_IMAGENET

    table = list_backbones()
    for name in args.names:
        try:
            table[name] = backbone_stages(name)
        except ValueError as err:
            raise ConfigError(str(err)) from None
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    for name, stages in table.items():
        offline = "  [imagenet weights offline]" if name in OFFLINE_IMAGENET else ""
        print(f"{name:28s} {len(stages)} stages: {', '.join(stages)}{offline}")
    print("\nAny timm model: backbone timm/<name>, e.g. timm/resnet18.a1_in1k, timm/convnext_atto, "
          "timm/vit_tiny_patch16_224 (name[.pretrained_tag] as timm.list_models / list_pretrained print it); "
          "`tunetl backbones timm/<name>` shows its stages. Its imagenet weights come from the Hugging Face "
          "cache (downloaded when online).")
    return 0


def cmd_rank(args: argparse.Namespace) -> int:
    from tunetl import api

    table, run_id = api.rank_backbones(
        args.dataset, args.backbones, images_per_label=args.images_per_label, source=args.source,
        image_size=args.image_size, by=args.by, experiment=None if args.no_record else args.experiment,
        tracking_uri=args.tracking_uri, threads=args.threads,
    )
    if args.json:
        print(json.dumps({"run_id": run_id, "ranking": json.loads(table.to_json(orient="records"))}, indent=2))
        return 0
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    total = float(table["seconds"].sum())
    print(f"\n{len(table)} backbone(s) on {int(table['images'].iloc[0])} images in {total:.1f} s"
          f" ({table.attrs.get('threads')} thread(s))"
          + (f"; recorded in MLflow run {run_id}" if run_id else ""))
    return 0


def _known_errors() -> tuple[type[BaseException], ...]:
    from tunetl.config import ConfigError
    from tunetl.models.weights import WeightsError
    from tunetl.search.preflight import SearchError

    errors: list[type[BaseException]] = [ConfigError, WeightsError, SearchError]
    try:
        from tunetl.tracking import TrackingError, TrackingUnavailable

        errors += [TrackingError, TrackingUnavailable]
    except ImportError:
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; every line it prints goes through `tunetl.redaction` (no credential reaches a
    terminal), and every error ends in one line with exit 2 (input) or 1 (the rest), a traceback only
    with --debug."""
    from tunetl.redaction import RedactingStream

    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = RedactingStream(out), RedactingStream(err)  # type: ignore[assignment]
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _error(err: BaseException, debug: bool, code: int, text: str | None = None, hint: str = "") -> int:
    if debug:
        import traceback

        traceback.print_exception(err)
    print(f"tunetl: error: {(text if text is not None else str(err)).strip()}{hint}", file=sys.stderr)
    return code


def disk_full(err: BaseException) -> bool:
    """Whether a full disk is behind an error (anywhere in its chain, or only in the text a library
    wrapped it in: Ray and pyarrow re-raise it as their own exceptions)."""
    import errno

    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


DISK_FULL = ("a disk is full (No space left on device): free space where --storage, the MLflow store and "
             "Ray's temporary folder (/tmp/ray, or RAY_TMPDIR) live, then run the same command: an unfinished "
             "search resumes where it stopped")


def _main(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    debug = bool(getattr(args, "debug", False))
    try:
        return func(args)
    except KeyboardInterrupt:
        print("tunetl: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI's last word: one line, never a traceback
        if disk_full(err):
            return _error(err, debug, EXIT_FAILED, DISK_FULL)
        return _failed(err, debug)


def _failed(err: Exception, debug: bool) -> int:
    """Exit 2 for input (a config, weights or search error, a named file), 1 for the rest."""
    from tunetl.config import ConfigError
    from tunetl.models.weights import WeightsError
    from tunetl.search.preflight import SearchError

    if isinstance(err, _known_errors()):
        invalid = isinstance(err, (ConfigError, WeightsError, SearchError))
        return _error(err, debug, EXIT_INVALID if invalid else EXIT_FAILED)
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return _error(err, debug, EXIT_INVALID if err.filename else EXIT_FAILED, f"{where}{err.strerror or err}")
    return _error(err, debug, EXIT_FAILED, f"{type(err).__name__}: {str(err).strip() or 'no message'}",
                  "" if debug else " (run again with --debug for the traceback)")


if __name__ == "__main__":
    sys.exit(main())

