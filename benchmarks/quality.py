"""Clustering quality of the method against its baselines, on labelled data.

Suites (see ``SUITES``):

- ``smoke``: the embedded digits (1,797 images, 10 classes), every variant, under 5 minutes
  on 2 cores (``make bench-smoke``).
- ``cpu``: the shared labelled ``.npz`` sets (``$SMCLUSTER_SHARED_DATA``, default
  ``../shared/data`` next to the repository): MNIST 10k, CIFAR-10 test, Omniglot background at
  100, 200 and 964 classes, Tiny-ImageNet-200 at 32 px; settings are the ``cpu-*`` presets,
  with fewer epochs (and one seed) on CIFAR-10 and the two largest sets, so that each data set
  finishes in about 90 minutes.
- ``paper``: the paper's settings (``paper-*`` presets, ResNet-50) on STL-10, CIFAR-10 and
  CIFAR-100-20 (named sets, ``--root``/``--download``) and on ImageNet subsets given as image
  folders (``$SMCLUSTER_IMAGENET_SUBSETS/<name>``); needs a GPU.

Variants (one row each): (a) k-means on raw pixels; (a2) SCAN loss on raw-pixel kNN neighbours;
(b) k-means on the full method's stage-1 backbone features; (c) SCAN baseline = SimCLR
features + kNN mining; (d) paper features + kNN; (e) SimCLR + three-view; (f) the full method;
(g) full + self-labelling. Stage 1 is trained once per feature model and data set/seed and
reused (``--features-from``) by the other variants of that model, so the stage-1 cost of (c),
(e) is counted once and so is that of (d), (f), (g), (b): the table's stage-1 seconds are those
of the run that trained it. Each variant runs as its own process; peak memory is that process's
maximum resident set (``os.wait4``).

    python benchmarks/quality.py --suite smoke
    python benchmarks/quality.py --suite cpu --threads 2
    python benchmarks/quality.py --suite cpu --dataset omniglot-964 --epochs 30 --cluster-epochs 60

Results: ``benchmarks/results/<suite>-<date>.json`` and ``.md`` (``--results``); run folders
under ``--work`` (default ``runs/bench/<suite>``). Each finished variant is appended to the
JSON at once, so an interrupted benchmark keeps what it measured; ``--resume`` skips runs that
are already in that JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from smcluster.metrics import DIAGNOSTICS, SCORES

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class Variant:
    key: str
    name: str
    kind: str  # "cli" (a run of `smcluster fit`) or a baseline in BASELINES
    args: tuple[str, ...] = ()
    features_from: str | None = None  # key of the variant whose stage 1 this one reuses


VARIANTS: tuple[Variant, ...] = (
    Variant("a", "k-means on raw pixels", "kmeans-pixels"),
    Variant("a2", "SCAN loss on raw-pixel kNN", "scan-pixels"),
    Variant("f", "full method (paper features + three-view)", "cli", ("--method", "paper")),
    Variant("b", "k-means on stage-1 features of (f)", "kmeans-features", features_from="f"),
    Variant("d", "paper features + kNN", "cli", ("--method", "paper", "--mining", "knn"), "f"),
    Variant("g", "full + self-label", "cli", ("--method", "paper", "--self-label"), "f"),
    Variant("c", "SCAN baseline (SimCLR + kNN)", "cli", ("--method", "scan")),
    Variant("e", "SimCLR + three-view", "cli", ("--method", "scan", "--mining", "three-view"), "c"),
    # The default (``--method best``) trains the same stage 1 as (c), so it reuses it.
    Variant("h", "the default (best measured method)", "cli", (), features_from="c"),
)
VARIANT_ORDER = ("a", "a2", "b", "c", "d", "e", "f", "g", "h")


@dataclass(frozen=True)
class DataSpec:
    """One data set of a suite: where it comes from and the settings it runs with."""

    name: str
    source: str  # "digits", a shared file name, a named public set, or "imagenet:<subset>"
    preset: str
    clusters: int
    classes_kept: int | None = None  # keep the first K classes (Omniglot subsets)
    subset: int | None = None  # keep the first N images of the train split (MNIST 10k)
    sets: tuple[str, ...] = ()  # extra `--set` overrides
    epochs: int | None = None  # None: the preset's
    cluster_epochs: int | None = None
    seeds: int = 3


@dataclass(frozen=True)
class Suite:
    name: str
    data: tuple[DataSpec, ...]
    note: str = ""


SUITES: dict[str, Suite] = {
    "smoke": Suite(
        "smoke",
        (
            DataSpec(
                "digits",
                "digits",
                "demo",
                10,
                epochs=5,
                cluster_epochs=15,
                sets=("mining.warmup_epochs=3",),
                seeds=1,
            ),
        ),
        note="the embedded digits with the demo preset at reduced epochs; a harness check",
    ),
    "cpu": Suite(
        "cpu",
        (
            DataSpec("mnist-10k", "mnist.npz", "cpu-mnist", 10, subset=10_000),
            # 10k colour images: the preset's 30 stage-1 epochs take 40-46 min per feature model.
            DataSpec("cifar10-test", "cifar10_test.npz", "cpu-cifar10", 10, epochs=10),
            DataSpec(
                "omniglot-100", "omniglot_background.npz", "cpu-omniglot", 100, classes_kept=100
            ),
            DataSpec(
                "omniglot-200", "omniglot_background.npz", "cpu-omniglot", 200, classes_kept=200
            ),
            # The two largest sets, on budgets that fit the suite's 90 minutes per data set.
            DataSpec(
                "omniglot-964",
                "omniglot_background.npz",
                "cpu-omniglot",
                964,
                epochs=8,
                cluster_epochs=20,
                seeds=1,
            ),
            DataSpec(
                "tinyimagenet-200",
                "tinyimagenet_train_32.npz",
                "cpu-tinyimagenet",
                200,
                epochs=3,
                cluster_epochs=20,
                seeds=1,
            ),
        ),
        note="shared labelled data, cpu-* presets (small CNN)",
    ),
    "paper": Suite(
        "paper",
        (
            DataSpec("stl10", "stl10", "paper-stl10", 10),
            DataSpec("cifar10", "cifar10", "paper-stl10", 10, sets=("data.image_size=32",)),
            DataSpec("cifar100-20", "cifar100-20", "paper-stl10", 20, sets=("data.image_size=32",)),
            DataSpec("imagenet-10", "imagenet:imagenet-10", "paper-imagenet", 10),
            DataSpec("imagenet-dogs", "imagenet:imagenet-dogs", "paper-imagenet", 15),
            DataSpec("imagenet-50", "imagenet:imagenet-50", "paper-imagenet", 50),
            DataSpec("imagenet-100", "imagenet:imagenet-100", "paper-imagenet", 100),
            DataSpec("imagenet-200", "imagenet:imagenet-200", "paper-imagenet", 200),
            DataSpec("imagenet-1000", "imagenet:imagenet-1000", "paper-imagenet", 1000, seeds=1),
        ),
        note="the paper's settings (ResNet-50, 300 + 100 epochs); GPU scale",
    ),
}

METRIC_KEYS = (
    *SCORES,
    *DIAGNOSTICS,
    "neighbour_purity_instance",
    "neighbour_purity_strong",
    "features_seconds",
    "neighbours_seconds",
    "clustering_seconds",
    "total_seconds",
    "features_images_per_s",
    "clustering_images_per_s",
    "wall_seconds",
    "peak_rss_mb",
)


# --------------------------------------------------------------------------- pure helpers


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaNs are dropped."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not clean:
        return float("nan"), float("nan")
    mean = sum(clean) / len(clean)
    if len(clean) < 2:
        return mean, 0.0
    var = sum((v - mean) ** 2 for v in clean) / (len(clean) - 1)
    return mean, math.sqrt(var)


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, variant): mean, std and seed count of every metric."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in records:
        if r.get("error"):
            continue
        groups.setdefault((r["dataset"], r["variant"]), []).append(r)
    rows = []
    for (dataset, variant), group in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "variant": variant, "seeds": len(group)}
        for key in METRIC_KEYS:
            values = [g["metrics"][key] for g in group if g["metrics"].get(key) is not None]
            if values:
                row[key] = mean_std(values)
        rows.append(row)
    order = {k: i for i, k in enumerate(VARIANT_ORDER)}
    rows.sort(key=lambda r: (r["dataset"], order.get(r["variant"], 99)))
    return rows


def _cell(value: tuple[float, float] | None, scale: float = 100.0, digits: int = 1) -> str:
    if value is None or math.isnan(value[0]):
        return "-"
    mean, std = value
    text = f"{mean * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if std > 0 else "")


def render_table(rows: list[dict[str, Any]], many_classes: dict[str, bool] | None = None) -> str:
    """Markdown table of aggregated rows (percentages for scores, seconds, MB)."""
    names = {v.key: v.name for v in VARIANTS}
    many_classes = many_classes or {}
    header = (
        "| data set | variant | seeds | ACC | NMI | ARI | wP / wR / wF | purity (used) | "
        "purity kNN | purity 4q / 2q | kNN acc | stage 1 s | stage 2 s | stage 3 s | "
        "img/s s1 / s3 | wall s | peak MB |"
    )
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        prf = "-"
        if many_classes.get(r["dataset"]) and r.get("weighted_f") is not None:
            prf = " / ".join(
                _cell(r.get(k), digits=1)
                for k in ("weighted_precision", "weighted_recall", "weighted_f")
            )
        s1 = r.get("features_images_per_s")
        s3 = r.get("clustering_images_per_s")
        rate = f"{_cell(s1, 1, 0) if s1 else '-'} / {_cell(s3, 1, 0) if s3 else '-'}"
        four = _cell(r.get("neighbour_purity_instance"))
        two = _cell(r.get("neighbour_purity_strong"))
        lines.append(
            "| "
            + " | ".join(
                [
                    r["dataset"],
                    f"({r['variant']}) {names.get(r['variant'], r['variant'])}",
                    str(r["seeds"]),
                    _cell(r.get("acc")),
                    _cell(r.get("nmi")),
                    _cell(r.get("ari")),
                    prf,
                    _cell(r.get("neighbour_purity")),
                    _cell(r.get("neighbour_purity_knn")),
                    f"{four} / {two}" if four != "-" else "-",
                    _cell(r.get("knn_accuracy")),
                    _cell(r.get("features_seconds"), 1, 0),
                    _cell(r.get("neighbours_seconds"), 1, 0),
                    _cell(r.get("clustering_seconds"), 1, 0),
                    rate,
                    _cell(r.get("wall_seconds"), 1, 0),
                    _cell(r.get("peak_rss_mb"), 1, 0),
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def select_variants(keys: list[str] | None) -> list[Variant]:
    """The variants to run, in an order where every reused stage 1 is trained first."""
    wanted = set(keys) if keys else {v.key for v in VARIANTS}
    unknown = wanted - {v.key for v in VARIANTS}
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {list(VARIANT_ORDER)}")
    needed = set(wanted)
    for v in VARIANTS:
        if v.key in wanted and v.features_from:
            needed.add(v.features_from)
    return [v for v in VARIANTS if v.key in needed]


def shared_data_dir(arg: str | None) -> Path:
    """``--shared-data``, else ``$SMCLUSTER_SHARED_DATA``, else ``../shared/data`` from the repo."""
    if arg:
        return Path(arg)
    env = os.environ.get("SMCLUSTER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_cores": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------- data


def prepare_data(spec: DataSpec, shared: Path, cache: Path) -> str:
    """The ``--data`` argument for ``spec``: a name, a folder, or a subset ``.npz`` in ``cache``."""
    if spec.source in ("digits", "stl10", "cifar10", "cifar100-20", "cifar100"):
        return spec.source
    if spec.source.startswith("imagenet:"):
        root = os.environ.get("SMCLUSTER_IMAGENET_SUBSETS")
        if not root:
            raise FileNotFoundError(
                f"{spec.name}: set SMCLUSTER_IMAGENET_SUBSETS to a folder holding one image "
                f"folder per subset (class sub-folders), e.g. {spec.source.split(':')[1]}/"
            )
        return str(Path(root) / spec.source.split(":", 1)[1])
    path = shared / spec.source
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: point --shared-data or SMCLUSTER_SHARED_DATA at the shared data"
        )
    if spec.classes_kept is None and spec.subset is None:
        return str(path)
    out = cache / f"{spec.name}.npz"
    if out.exists():
        return str(out)
    with np.load(path, allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
        names = f["class_names"] if "class_names" in f.files else None
        keep = np.ones(len(labels), dtype=bool)
        if "split" in f and spec.subset is not None:
            keep &= f["split"] == 0
        if spec.classes_kept is not None:
            keep &= labels < spec.classes_kept
        idx = np.flatnonzero(keep)
        if spec.subset is not None:
            idx = idx[: spec.subset]
        payload = {"images": images[idx], "labels": labels[idx]}
        if names is not None:
            payload["class_names"] = names[: int(labels[idx].max()) + 1]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp.npz")
    np.savez(tmp, **payload)
    tmp.replace(out)
    return str(out)


# --------------------------------------------------------------------------- running


def measured(
    cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> tuple[int, float, float]:
    """Run ``cmd``; returns (exit status, wall seconds, peak resident MB of that process)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    peak_mb = usage.ru_maxrss / 1024.0  # Linux reports kilobytes
    return code, wall, peak_mb


def fit_command(
    spec: DataSpec,
    data: str,
    out: Path,
    seed: int,
    variant: Variant,
    opts: argparse.Namespace,
    features_from: Path | None,
) -> list[str]:
    exe = Path(sys.executable).with_name("smcluster")
    cmd = [str(exe) if exe.exists() else "smcluster", "fit", "--data", data]
    cmd += ["--clusters", str(spec.clusters), "--preset", spec.preset, "--out", str(out)]
    cmd += ["--seed", str(seed), "--threads", str(opts.threads), "--no-report", "--quiet"]
    epochs = opts.epochs if opts.epochs is not None else spec.epochs
    cluster_epochs = opts.cluster_epochs if opts.cluster_epochs is not None else spec.cluster_epochs
    if epochs is not None:
        cmd += ["--epochs", str(epochs)]
    if cluster_epochs is not None:
        cmd += ["--cluster-epochs", str(cluster_epochs)]
    if opts.root:
        cmd += ["--root", opts.root]
    if opts.download:
        cmd.append("--download")
    if opts.accelerator:
        cmd += ["--accelerator", opts.accelerator]
    for s in (*spec.sets, *(opts.set or [])):
        cmd += ["--set", s]
    cmd += list(variant.args)
    if features_from is not None:
        cmd += ["--features-from", str(features_from)]
    return cmd


def baseline_command(
    kind: str,
    spec: DataSpec,
    data: str,
    out: Path,
    seed: int,
    opts: argparse.Namespace,
    features_from: Path | None,
) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "baseline", kind, "--data", data]
    cmd += ["--clusters", str(spec.clusters), "--preset", spec.preset, "--out", str(out)]
    cmd += ["--seed", str(seed), "--threads", str(opts.threads)]
    cluster_epochs = opts.cluster_epochs if opts.cluster_epochs is not None else spec.cluster_epochs
    if cluster_epochs is not None:
        cmd += ["--cluster-epochs", str(cluster_epochs)]
    if opts.root:
        cmd += ["--root", opts.root]
    for s in (*spec.sets, *(opts.set or [])):
        cmd += ["--set", s]
    if features_from is not None:
        cmd += ["--features-from", str(features_from)]
    return cmd


STAGE1_COST = ("features_seconds", "features_images_per_s")


def read_metrics(run: Path, stage1: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's figures; ``stage1`` (``stage1_cost``) replaces its stage-1 cost when stage 1
    was copied."""
    metrics = json.loads((run / "metrics.json").read_text())
    flat: dict[str, Any] = {k: metrics.get(k) for k in METRIC_KEYS if k in metrics}
    flat.update({k: v for k, v in metrics.get("timings", {}).items() if k in METRIC_KEYS})
    flat.update(stage1 or {})
    return flat


def stage1_cost(source: Path, record: dict[str, Any] | None) -> dict[str, Any]:
    """Stage-1 seconds and images/s of the run a variant copied its stage 1 from.

    Taken from that run's record in the results when it has one: the record already carries
    the cost of whichever run trained stage 1, while the run's own metrics.json gives only the
    copying time when it copied stage 1 too (``--stage1-from``).
    """
    if record is not None and "metrics" in record:
        figures = record["metrics"]
    elif (source / "metrics.json").exists():
        figures = json.loads((source / "metrics.json").read_text()).get("timings", {})
    else:
        figures = {}
    return {k: figures[k] for k in STAGE1_COST if k in figures}


def stage1_source(folder: Path, dataset: str, seed: int, key: str) -> Path:
    """The earlier run of the same variant whose stage 1 ``--stage1-from`` reuses."""
    run = folder / dataset / f"seed{seed}" / key
    if not (run / "metrics.json").exists():
        raise SystemExit(
            f"--stage1-from: no finished run at {run}; give the work folder of an earlier run "
            "of this suite (moved aside first, as this run clears its own run folders)"
        )
    return run


def run_suite(opts: argparse.Namespace) -> Path:
    suite = SUITES[opts.suite]
    specs = [s for s in suite.data if not opts.dataset or s.name in opts.dataset]
    if opts.dataset:
        missing = set(opts.dataset) - {s.name for s in specs}
        if missing:
            raise SystemExit(
                f"unknown data sets {sorted(missing)} in suite {suite.name}: "
                f"{[s.name for s in suite.data]}"
            )
    variants = select_variants(opts.variants)
    work = Path(opts.work or REPO / "runs" / "bench" / suite.name)
    shared = shared_data_dir(opts.shared_data)
    date = dt.date.today().isoformat()
    results_dir = Path(opts.results or RESULTS)
    results_dir.mkdir(parents=True, exist_ok=True)
    stem = results_dir / f"{suite.name}-{opts.tag or date}"
    json_path = Path(f"{stem}.json")  # not with_suffix: a tag may hold a dot
    command = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in opts.argv)
    doc: dict[str, Any] = {"suite": suite.name, "date": date, "runs": []}
    if opts.resume and json_path.exists():
        doc = json.loads(json_path.read_text())
    doc.setdefault("commands", [])
    if command not in doc["commands"]:
        doc["commands"].append(command)
    doc.update(
        {
            "note": suite.note,
            "machine": machine(),
            "threads": opts.threads,
            "settings": {
                **doc.get("settings", {}),
                **{s.name: _spec_settings(s, opts) for s in specs},
            },
            "variants": {v.key: v.name for v in VARIANTS},
        }
    )
    records = {(r["dataset"], r["seed"], r["variant"]): r for r in doc["runs"]}
    done = {key for key, r in records.items() if not r.get("error")}
    env = dict(os.environ)
    for spec in specs:
        data = prepare_data(spec, shared, work / "data")
        seeds = opts.seeds if opts.seeds is not None else list(range(spec.seeds))
        for seed in seeds:
            runs: dict[str, Path] = {}
            stage1_of: dict[str, Path] = {}  # the run that trained each variant's stage 1
            for v in variants:
                out = work / spec.name / f"seed{seed}" / v.key
                runs[v.key] = out
                source = None  # the run whose stage 1 this one copies (--features-from)
                if v.features_from:
                    source = runs[v.features_from]
                    stage1_of[v.key] = stage1_of[v.features_from]
                elif v.kind == "cli" and opts.stage1_from:
                    source = stage1_source(Path(opts.stage1_from), spec.name, seed, v.key)
                    stage1_of[v.key] = source
                else:
                    stage1_of[v.key] = out
                if (spec.name, seed, v.key) in done:
                    continue
                if out.exists():
                    shutil.rmtree(out)
                out.parent.mkdir(parents=True, exist_ok=True)
                if v.kind == "cli":
                    cmd = fit_command(spec, data, out, seed, v, opts, source)
                else:
                    cmd = baseline_command(v.kind, spec, data, out, seed, opts, source)
                print(
                    f"[{time.strftime('%H:%M:%S')}] {spec.name} seed {seed} ({v.key}) {v.name}",
                    flush=True,
                )
                code, wall, peak = measured(cmd, out.parent / f"{v.key}.log", env)
                record: dict[str, Any] = {
                    "dataset": spec.name,
                    "seed": seed,
                    "variant": v.key,
                    "command": " ".join(shlex.quote(str(c)) for c in _portable(cmd, work, shared)),
                }
                if code != 0:
                    tail = (out.parent / f"{v.key}.log").read_text()[-2000:]
                    record["error"] = f"exit {code}: {tail}"
                    print(f"    failed ({code}); see {out.parent / (v.key + '.log')}", flush=True)
                else:
                    cost = None
                    source_run = stage1_of[v.key]
                    if v.kind == "cli" and source_run != out:
                        key = (spec.name, seed, source_run.name)
                        same_seed = source_run.parent == out.parent
                        cost = stage1_cost(source_run, records.get(key) if same_seed else None)
                    metrics = read_metrics(out, cost)
                    metrics["wall_seconds"] = round(wall, 2)
                    metrics["peak_rss_mb"] = round(peak, 1)
                    record["metrics"] = metrics
                    print(
                        "    "
                        + ", ".join(
                            f"{k} {metrics[k]:.3f}"
                            for k in ("acc", "nmi", "ari", "neighbour_purity")
                            if metrics.get(k) is not None
                        )
                        + f", {wall:.0f} s, {peak:.0f} MB",
                        flush=True,
                    )
                records[(spec.name, seed, v.key)] = record
                doc["runs"] = list(records.values())
                write_results(doc, stem, {s.name: s.clusters >= 100 for s in suite.data})
    return json_path


def _portable(cmd: list[str], work: Path, shared: Path) -> list[str]:
    """The command as written in the results: no machine-specific absolute paths."""
    out = []
    pairs = (
        (str(shared), "$SMCLUSTER_SHARED_DATA"),
        (str(work), "$WORK"),
        (str(REPO), "."),
        (sys.executable, "python"),
    )
    for c in cmd:
        c = str(c)
        for prefix, repl in pairs:
            c = c.replace(prefix, repl)
        if c.endswith("/smcluster"):
            c = "smcluster"
        out.append(c)
    return out


def _spec_settings(spec: DataSpec, opts: argparse.Namespace) -> dict[str, Any]:
    from smcluster.config import preset

    s = asdict(spec)
    chosen = preset(spec.preset)
    if s["epochs"] is None:
        s["epochs"] = chosen.get("features", {}).get("epochs")
    if s["cluster_epochs"] is None:
        s["cluster_epochs"] = chosen.get("clustering", {}).get("epochs")
    if opts.epochs is not None:
        s["epochs"] = opts.epochs
    if opts.cluster_epochs is not None:
        s["cluster_epochs"] = opts.cluster_epochs
    s["extra_sets"] = list(opts.set or [])
    return s


def write_results(doc: dict[str, Any], stem: Path, many: dict[str, bool]) -> None:
    doc["summary"] = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()}
        for row in aggregate(doc["runs"])
    ]
    tmp = Path(f"{stem}.json.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=_json_default))
    tmp.replace(Path(f"{stem}.json"))
    md = render_markdown(doc, many)
    tmp = Path(f"{stem}.md.tmp")
    tmp.write_text(md)
    tmp.replace(Path(f"{stem}.md"))


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def render_markdown(doc: dict[str, Any], many: dict[str, bool]) -> str:
    m = doc["machine"]
    rows = aggregate(doc["runs"])
    lines = [
        f"# Quality benchmark: suite `{doc['suite']}`, {doc['date']}",
        "",
        "Command(s), from the repository root:",
        "",
        "```",
        *doc.get("commands", []),
        "```",
        "",
        f"Machine: {m['cpu_cores']} CPU cores ({m['processor']}), {m['platform']}, "
        f"Python {m['python']}, torch {m['torch']}, GPU {m['cuda'] or 'none'}; "
        f"torch threads per run: {doc['threads']}. Suite: {doc.get('note', '')}.",
        "",
        "Settings per data set:",
        "",
        "| data set | data | preset | clusters | stage-1 epochs | stage-3 epochs | extra |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in doc.get("settings", {}).items():
        extra = ", ".join([*s.get("sets", []), *s.get("extra_sets", [])]) or "-"
        data = s["source"] + (
            f", first {s['classes_kept']} classes" if s.get("classes_kept") else ""
        )
        data += f", first {s['subset']} train images" if s.get("subset") else ""
        lines.append(
            f"| {name} | {data} | {s['preset']} | {s['clusters']} | {s['epochs']} | "
            f"{s['cluster_epochs']} | {extra} |"
        )
    lines += [
        "",
        "Scores in %, mean ± std over seeds (no ± with one seed). Purity (used): neighbour purity "
        "of the neighbours stage 3 trained on; purity kNN: plain kNN at the same q; 4q / 2q: the "
        "three-view intermediate sets. kNN acc: kNN-classifier accuracy of stage-1 features. "
        "Stage-1 seconds of variants that reuse a stage 1 are those of the run that trained it "
        "((f) for b, d, g; (c) for e). wP/wR/wF only for 100+ classes. Peak MB: the variant "
        "process's maximum resident memory.",
        "",
        render_table(rows, many),
        "",
    ]
    if doc.get("notes"):
        lines += ["Notes:", "", *(f"- {n}" for n in doc["notes"]), ""]
    failed = [r for r in doc["runs"] if r.get("error")]
    if failed:
        lines += ["Failed runs:", ""]
        lines += [
            f"- {r['dataset']} seed {r['seed']} ({r['variant']}): {r['error'].splitlines()[0]}"
            for r in failed
        ]
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- baselines


def _baseline_config(args: argparse.Namespace):
    from smcluster.config import Config, preset

    cfg = Config().updated(preset(args.preset))
    sets: dict[str, Any] = {}
    for item in args.set or []:
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        sets.setdefault(section, {})[name] = (
            json.loads(value) if value[:1] in "[{0123456789-tf" else value
        )
    cfg = cfg.updated(sets) if sets else cfg
    over: dict[str, Any] = {"n_clusters": args.clusters, "run": {"seed": args.seed}}
    if args.cluster_epochs is not None:
        over["clustering"] = {"epochs": args.cluster_epochs}
    return cfg.updated(over)


PIXEL_SIZE = 32
"""Pixel baselines see images at most this many pixels wide (ImageNet at 224 px would not fit)."""


def _pixels(args: argparse.Namespace, cfg) -> tuple[np.ndarray, np.ndarray]:
    from smcluster import load_dataset

    size = min(cfg.data.image_size, PIXEL_SIZE)
    data = load_dataset(args.data, image_size=size, channels=cfg.data.channels, root=args.root)
    x = data.as_tensor()
    assert x is not None, "pixel baselines need in-memory data"
    return x.reshape(len(x), -1).float().numpy() / 255.0, np.asarray(data.labels)


def _kmeans(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    # One initialisation above 100 clusters: Lloyd's cost is N x k x D per iteration.
    return KMeans(n_clusters=k, n_init=3 if k <= 100 else 1, random_state=seed).fit_predict(x)


def baseline_kmeans_pixels(args: argparse.Namespace) -> dict[str, Any]:
    cfg = _baseline_config(args)
    started = time.perf_counter()
    x, labels = _pixels(args, cfg)
    pred = _kmeans(x, cfg.n_clusters, args.seed)
    return _finish(labels, pred, {"clustering_seconds": time.perf_counter() - started})


def baseline_kmeans_features(args: argparse.Namespace) -> dict[str, Any]:
    """k-means on the stage-1 backbone features (embeddings.npy) of the run ``--features-from``."""
    from smcluster.metrics import knn_accuracy
    from smcluster.stages.neighbours import mine_knn

    cfg = _baseline_config(args)
    src = Path(args.features_from)
    emb = np.load(src / "embeddings.npy")
    labels = _run_labels(src)
    started = time.perf_counter()
    pred = _kmeans(emb, cfg.n_clusters, args.seed)
    extra = {"clustering_seconds": time.perf_counter() - started}
    extra["knn_accuracy"] = knn_accuracy(
        mine_knn(np.load(src / "features.npy"), cfg.mining.q), labels
    )
    return _finish(labels, pred, extra)


def _run_labels(run: Path) -> np.ndarray:
    import csv

    with open(run / "assignments.csv") as f:
        return np.asarray([int(r["label"]) for r in csv.DictReader(f)])


def baseline_scan_pixels(args: argparse.Namespace) -> dict[str, Any]:
    """SCAN's stage 3 (frozen inputs, cluster heads) on kNN neighbours of normalised pixels."""
    import torch

    from smcluster.models import ClusterHeads
    from smcluster.stages.clustering import (
        ClusteringModel,
        embedding_fetch,
        head_probabilities,
        score_heads,
        select_head,
        train_scan,
    )
    from smcluster.stages.neighbours import mine_knn, neighbour_purity

    cfg = _baseline_config(args)
    x, labels = _pixels(args, cfg)
    x = x - x.mean(axis=0, keepdims=True)
    x /= np.linalg.norm(x, axis=1, keepdims=True).clip(1e-8)
    started = time.perf_counter()
    nb = mine_knn(x, cfg.mining.q)
    mined = time.perf_counter() - started
    c = cfg.clustering
    emb = torch.from_numpy(x.astype(np.float32))
    heads = ClusterHeads(emb.shape[1], cfg.n_clusters, c.heads)
    neighbours = torch.from_numpy(nb)
    started = time.perf_counter()
    train_scan(
        ClusteringModel(torch.nn.Identity(), heads),
        embedding_fetch(emb[None], torch.device("cpu")),
        neighbours,
        c,
        lr=c.frozen_lr,
        epochs=c.epochs,
        seed=args.seed,
        progress=False,
    )
    best = select_head(heads, score_heads(heads, emb, neighbours, c.entropy_weight))
    pred = head_probabilities(heads, emb, best).argmax(1).numpy()
    extra = {
        "neighbours_seconds": mined,
        "clustering_seconds": time.perf_counter() - started,
        "neighbour_purity": neighbour_purity(nb, labels),
        "neighbour_purity_knn": neighbour_purity(nb, labels),
    }
    return _finish(labels, pred, extra)


def _finish(labels: np.ndarray, pred: np.ndarray, extra: dict[str, Any]) -> dict[str, Any]:
    from smcluster.metrics import evaluate

    out = dict(evaluate(labels, pred))
    out.update({k: float(v) for k, v in extra.items()})
    out["timings"] = {k: round(float(v), 3) for k, v in extra.items() if k.endswith("_seconds")}
    out["timings"]["total_seconds"] = round(sum(out["timings"].values()), 3)
    return out


BASELINES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "kmeans-pixels": baseline_kmeans_pixels,
    "scan-pixels": baseline_scan_pixels,
    "kmeans-features": baseline_kmeans_features,
}


def run_baseline(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    metrics = BASELINES[args.kind](args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, default=_json_default))


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["baseline"]:
        p = argparse.ArgumentParser(prog="quality.py baseline")
        p.add_argument("kind", choices=sorted(BASELINES))
        p.add_argument("--data", required=True)
        p.add_argument("--clusters", type=int, required=True)
        p.add_argument("--preset", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--cluster-epochs", type=int)
        p.add_argument("--root")
        p.add_argument("--set", action="append")
        p.add_argument("--features-from")
        run_baseline(p.parse_args(argv[1:]))
        return
    opts = build_parser().parse_args(argv)
    opts.argv = argv
    path = run_suite(opts)
    print(f"results: {path} and {path.parent / (path.stem + '.md')}")


def build_parser() -> argparse.ArgumentParser:
    """The options of a suite run (``main`` without the ``baseline`` sub-command)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="smoke")
    p.add_argument("--dataset", nargs="+", help="run only these data sets of the suite")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds (default: 0..seeds-1 per data set)")
    p.add_argument("--variants", nargs="+", help=f"subset of {list(VARIANT_ORDER)}")
    p.add_argument(
        "--epochs", type=int, help="stage-1 epochs for every data set (default: suite's)"
    )
    p.add_argument("--cluster-epochs", type=int, help="stage-3 epochs (default: suite's)")
    p.add_argument("--set", action="append", help="extra SECTION.KEY=VALUE for every run")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads per run")
    p.add_argument("--accelerator", help="auto | cpu | cuda")
    p.add_argument("--shared-data", help="folder of the shared .npz files")
    p.add_argument("--root", help="where named public sets are stored (paper suite)")
    p.add_argument("--download", action="store_true", help="download named public sets")
    p.add_argument("--work", help="folder for the run folders (default runs/bench/<suite>)")
    p.add_argument(
        "--results", help="folder for <suite>-<date>.json/.md (default benchmarks/results)"
    )
    p.add_argument("--tag", help="file stem after '<suite>-' (default: today's date)")
    p.add_argument("--resume", action="store_true", help="keep and skip runs already in the JSON")
    p.add_argument(
        "--stage1-from",
        metavar="DIR",
        help="work folder of an earlier run of this suite: (f) and (c) reuse its stage 1 "
        "(same settings) instead of training one; the table keeps that run's stage-1 cost",
    )
    return p


if __name__ == "__main__":
    main()
