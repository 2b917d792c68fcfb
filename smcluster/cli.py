"""The ``smcluster`` command: a thin layer over the API, the pipeline and the report.

smcluster fit --data digits --clusters 10 --preset demo --out runs/demo
smcluster fit --out runs/demo --resume
smcluster evaluate runs/demo
smcluster predict runs/demo new_images/ --output predictions.csv
smcluster export runs/demo --to sorted/
smcluster report runs/demo
smcluster presets
smcluster presets auto --data omniglot.npz --clusters 964
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from smcluster.autoconfig import AUTO
from smcluster.config import (
    METHODS,
    PRESETS,
    KCriterion,
    MiningMethod,
    load_yaml,
    nested_settings,
    preset,
)

SETTINGS_ORDER = (
    "Settings apply in this order, later ones winning: the defaults, then --method, then "
    "--preset, then the --config file (only the settings it names), then the flags and --set. "
    "The default preset, auto, is chosen from the machine, the data's shape and the cluster "
    "count."
)


def fit_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Map the fit flags onto nested config overrides (only the flags that were given)."""
    from smcluster.budget import parse_duration

    flags = {
        "data.source": args.data,
        "data.image_size": args.image_size,
        "data.channels": args.channels,
        "data.root": args.root,
        "data.download": args.download,
        "data.embeddings": args.embeddings,
        "features.model": args.feature_model,
        "features.backbone": args.backbone,
        "features.train": args.train,
        "features.weights": args.weights,
        "features.download": args.download,
        "features.epochs": args.epochs,
        "features.batch_size": args.batch_size,
        "mining.method": args.mining,
        "mining.q": args.neighbours,
        "clustering.epochs": args.cluster_epochs,
        "clustering.k_criterion": args.k_criterion,
        "clustering.update_backbone": args.update_backbone,
        "clustering.self_label": args.self_label,
        "run.seed": args.seed,
        "run.threads": args.threads,
        "run.workers": args.workers,
        "run.accelerator": args.accelerator,
        "run.devices": args.devices,
        "run.num_nodes": args.num_nodes,
        "run.precision": args.precision,
        "run.report": args.report,
        "run.progress": False if args.quiet else None,
        "run.time_budget": None if args.time_budget is None else parse_duration(args.time_budget),
    }
    settings = {key: value for key, value in flags.items() if value is not None}
    if args.embeddings is not None and args.data is None:
        settings["data.source"] = None
    for item in args.set or []:
        if "=" not in item:
            raise ValueError(f"--set expects SECTION.KEY=VALUE, got {item!r}")
        path, value = item.split("=", 1)
        settings[path] = load_yaml(value, f"--set {item}")
    return nested_settings(settings, separator=".")


def _clusters(text: str) -> int | str:
    """``--clusters``: a whole number, else the text of a range (checked with the settings)."""
    return int(text) if text.strip().isdigit() else text


def cmd_fit(args: argparse.Namespace) -> int:
    from smcluster.api import build_settings
    from smcluster.pipeline import run_pipeline

    config, choice = build_settings(
        args.clusters,
        preset_name=None if args.resume and args.preset == AUTO else args.preset,
        config=args.config,
        overrides=fit_overrides(args),
        method_name=args.method,
    )
    out = (
        args.out or Path("runs") / f"{Path(config.data.source).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    )
    result = run_pipeline(
        config, out, resume=args.resume, log=_log, features_from=args.features_from, auto=choice
    )
    if result.folder.writer:
        _print_metrics(result.metrics, result.folder.root)
        if result.config.run.report and not result.already_finished:
            _maybe_report(result.folder.root)
    return 0


TIMED_STAGES = {
    "features": "features",
    "k_search": "choosing K",
    "neighbours": "neighbours",
    "clustering": "clustering",
}


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _print_metrics(metrics: dict[str, Any], run: Path) -> None:
    from smcluster.metrics import DIAGNOSTICS, MANY_TO_ONE, SCORES

    keys = SCORES + MANY_TO_ONE + DIAGNOSTICS
    shown = {k: metrics[k] for k in keys if k in metrics}
    if shown:
        print("  ".join(f"{k.upper() if len(k) <= 3 else k}={v:.4f}" for k, v in shown.items()))
    t = metrics.get("timings", {})
    if t:
        parts = [
            f"{name} {t[f'{key}_seconds']:.1f}"
            for key, name in TIMED_STAGES.items()
            if f"{key}_seconds" in t
        ]
        print(f"time: {t.get('total_seconds', 0):.1f} s ({', '.join(parts)})")
    print(f"run folder: {run}")


def _maybe_report(run: Path) -> None:
    try:
        from smcluster.report import write_report
    except ImportError:
        return
    path = write_report(run)
    print(f"report: {path}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from smcluster.inference import evaluate_run

    metrics = evaluate_run(args.run)
    print(json.dumps(metrics, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from smcluster.inference import predict_paths

    rows = predict_paths(args.run, [Path(p) for p in args.paths], output=args.output)
    print(f"assigned {rows} images -> {args.output}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from smcluster.report.export import export_clusters

    count = export_clusters(args.run, args.to, copy=args.copy)
    print(f"exported {count} images into {args.to}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from smcluster.report import write_report

    print(f"report: {write_report(args.run)}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    if args.name == AUTO:
        return _show_auto(args)
    names = [args.name] if args.name else sorted(PRESETS)
    for name in names:
        print(f"# {name}")
        print(yaml.safe_dump(preset(name), sort_keys=False))
    if not args.name:
        print(f"# {AUTO} (the default): smcluster presets auto --data DATA --clusters K")
    return 0


def _show_auto(args: argparse.Namespace) -> int:
    """What ``--preset auto`` would choose for this data, machine and cluster count."""
    from smcluster.api import build_settings

    if args.data is None and args.embeddings is None:
        raise ValueError("presets auto needs the data: --data DATA or --embeddings FILE")
    given = {"data.source": args.data, "data.embeddings": args.embeddings}
    if args.backbone is not None:
        given["features.backbone"] = args.backbone
    overrides = nested_settings({k: v for k, v in given.items()}, separator=".")
    _, choice = build_settings(args.clusters, preset_name=AUTO, overrides=overrides)
    print(f"# {AUTO}")
    for line in choice.reasons:
        print(f"# {line}")
    print(yaml.safe_dump(choice.overrides, sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="smcluster",
        description="Cluster unlabelled images into many groups (contrastive features, "
        "three-view neighbour mining, SCAN clustering).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    fit = sub.add_parser(
        "fit", help="run all three stages and write a run folder", description=SETTINGS_ORDER
    )
    fit.add_argument(
        "--config", help="YAML file of settings (see `smcluster presets`); overrides --preset"
    )
    fit.add_argument(
        "--preset",
        choices=[AUTO, *sorted(PRESETS)],
        default=AUTO,
        help="named settings, under --config and flags (default auto: chosen from the machine, "
        "the data's shape and --clusters; see `smcluster presets auto`)",
    )
    fit.add_argument("--data", help="digits | FILE.npz | IMAGE_FOLDER | cifar10 | stl10 | ...")
    fit.add_argument(
        "--clusters",
        type=_clusters,
        help="number of clusters C, or choose it without labels: auto (from 2 to "
        "min(N/5, 2000)) or a range LO:HI",
    )
    fit.add_argument(
        "--k-criterion",
        choices=typing.get_args(KCriterion),
        help="what chooses the number of clusters with --clusters auto or LO:HI (default "
        "kmeans-probe, the one that found it on the features that separate classes; see "
        "benchmarks/README.md)",
    )
    fit.add_argument("--out", type=Path, help="run folder (default runs/<data>-<time>)")
    fit.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted run in --out from its last saved epoch",
    )
    fit.add_argument(
        "--features-from",
        type=Path,
        metavar="RUN",
        help="reuse the finished stage 1 of RUN (same data, feature settings, seed)",
    )
    fit.add_argument("--feature-model", choices=["paper", "simclr"])
    fit.add_argument(
        "--method",
        choices=sorted(METHODS),
        help="a whole method: best (the default: the best measured), paper (METHOD.md exactly), "
        "scan (SimCLR + kNN); under --preset, --config and flags",
    )
    fit.add_argument("--mining", choices=typing.get_args(MiningMethod))
    fit.add_argument("--self-label", action=argparse.BooleanOptionalAction, default=None)
    fit.add_argument(
        "--update-backbone",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="fine-tune the backbone in stage 3 (default: heads on frozen features)",
    )
    fit.add_argument(
        "--embeddings",
        metavar="FILE",
        help="precomputed features (.npy N x D, or .npz with embeddings[, ids, labels]) "
        "instead of stage 1; --data as well shows the images in the report",
    )
    fit.add_argument(
        "--backbone",
        help="small_cnn | resnet18 | resnet34 | resnet50, or a pretrained source: "
        "torchvision:NAME | timm:NAME | open_clip:NAME[@TAG] | run:PATH",
    )
    fit.add_argument(
        "--weights", metavar="FILE", help="weights of a pretrained --backbone (a state dict)"
    )
    fit.add_argument(
        "--train",
        choices=["scratch", "contrastive", "frozen"],
        help="stage 1: train from random weights, train from the pretrained ones, or use the "
        "pretrained backbone as it is (default: frozen for a pretrained source, else scratch)",
    )
    fit.add_argument("--image-size", type=int)
    fit.add_argument("--channels", type=int, choices=[1, 3])
    fit.add_argument("--epochs", type=int, help="stage-1 epochs")
    fit.add_argument(
        "--time-budget",
        metavar="DURATION",
        help="how long the whole run may take (90s, 20m, 1.5h): a short calibration chooses "
        "the stage-1 epochs (up to the preset's or default epochs); not with --epochs",
    )
    fit.add_argument("--cluster-epochs", type=int, help="stage-3 epochs")
    fit.add_argument("--batch-size", type=int, help="stage-1 batch size")
    fit.add_argument("--neighbours", type=int, help="q, the neighbours per image")
    fit.add_argument("--seed", type=int)
    fit.add_argument("--threads", type=int, help="CPU threads for torch (default: all cores)")
    fit.add_argument("--workers", type=int, help="data-loader processes for on-disk data")
    fit.add_argument("--accelerator", help="auto | cpu | cuda")
    fit.add_argument("--devices", type=int, help="processes (GPUs) per node")
    fit.add_argument("--num-nodes", type=int)
    fit.add_argument("--precision", choices=["32-true", "bf16-mixed", "16-mixed"])
    fit.add_argument("--root", help="where named data sets are stored / downloaded")
    fit.add_argument(
        "--download",
        action="store_true",
        default=None,
        help="download a named data set or a pretrained backbone's weights if missing "
        "(nothing is downloaded without it)",
    )
    fit.add_argument(
        "--report",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the HTML report at the end (default on)",
    )
    fit.add_argument("--quiet", action="store_true", help="no progress bars")
    fit.add_argument(
        "--set",
        action="append",
        metavar="SECTION.KEY=VALUE",
        help="any other setting, e.g. --set clustering.entropy_weight=3",
    )
    fit.set_defaults(func=cmd_fit)

    ev = sub.add_parser("evaluate", help="recompute the metrics of a run from its outputs")
    ev.add_argument("run", type=Path)
    ev.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="assign new images with a fitted run")
    pr.add_argument("run", type=Path)
    pr.add_argument("paths", nargs="+", help="image files, folders or an .npz file")
    pr.add_argument("--output", type=Path, default=Path("predictions.csv"))
    pr.set_defaults(func=cmd_predict)

    ex = sub.add_parser("export", help="lay the images out as one folder per cluster")
    ex.add_argument("run", type=Path)
    ex.add_argument("--to", type=Path, required=True)
    ex.add_argument("--copy", action="store_true", help="copy files instead of linking")
    ex.set_defaults(func=cmd_export)

    rp = sub.add_parser("report", help="write RUN/report/index.html")
    rp.add_argument("run", type=Path)
    rp.set_defaults(func=cmd_report)

    ps = sub.add_parser(
        "presets", help="show the named settings, or what auto chooses for some data"
    )
    ps.add_argument("name", nargs="?", choices=[AUTO, *sorted(PRESETS)])
    ps.add_argument("--data", help="auto: the data (as for fit)")
    ps.add_argument("--embeddings", metavar="FILE", help="auto: precomputed features")
    ps.add_argument("--clusters", type=int, help="auto: number of clusters C")
    ps.add_argument("--backbone", help="auto: a pretrained source sizes the frozen path")
    ps.set_defaults(func=cmd_presets)
    return parser


OS_ERROR_ADVICE: dict[type[OSError], str] = {
    PermissionError: "no permission: choose a path you can write to, or change its permissions",
    NotADirectoryError: "part of that path is a file, not a folder: choose another path",
    IsADirectoryError: "that is a folder: name a file",
    FileExistsError: "it already exists: choose another path, or remove it",
    FileNotFoundError: "check that the path exists",
}
"""What to do about an error of the operating system, by its type (else: check the path,
its permissions and the free disk space)."""


def error_message(error: Exception) -> str:
    """One line for an error: our own messages as they are, an OS error as file, reason, advice."""
    if not isinstance(error, OSError) or error.errno is None:
        return str(error)
    advice = next(
        (OS_ERROR_ADVICE[t] for t in type(error).__mro__ if t in OS_ERROR_ADVICE),
        "check the path, its permissions and the free disk space",
    )
    path = error.filename2 if error.filename2 is not None else error.filename
    where = f"{path}: " if path is not None else ""
    return f"{where}{error.strerror or error}; {advice}"


def _show_warning(message: Warning | str, *_: Any, **__: Any) -> None:
    """Warnings as one line each (``warnings.showwarning`` while a command runs)."""
    print(f"smcluster: warning: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return args.func(args)
    except (ValueError, OSError) as error:
        print(f"smcluster: error: {error_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\nsmcluster: interrupted; continue with `smcluster fit --out RUN --resume`",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
