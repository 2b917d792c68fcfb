"""Transfer: a stage 1 trained on one collection, used frozen (``--backbone run:RUN``) on
another, against training from scratch on the target at equal stage-1 compute.

Pairs (``PAIRS``), from the shared data (``$SMCLUSTER_SHARED_DATA`` or ``../shared/data``):

- ``omniglot``: stage 1 on Omniglot background classes 100-963 (17,280 images), clustered on
  classes 0-99 (2,000 images of other characters, 100 clusters);
- ``tiny-cifar``: stage 1 on the Tiny-ImageNet-200 subset (20,000 images at 32 px), clustered
  on the CIFAR-10 test set (10,000 images, 10 clusters).

Both sides use the SCAN baseline's settings (SimCLR stage 1, kNN mining, heads on frozen
features) and the target's ``cpu-*`` preset, so only where the features come from differs.
"Equal wall-clock" is made exact as equal stage-1 work: the scratch run trains for as many
image passes (epochs x images) as the source run did, with the same network at the same image
size, so its stage 1 costs the same; the table gives both measured wall times.

    python benchmarks/transfer.py --pairs omniglot tiny-cifar --threads 2

Results: ``benchmarks/results/transfer-<date>.json`` and ``.md``; run folders under
``runs/bench/transfer``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import machine, measured, shared_data_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
METHOD = ("--feature-model", "simclr", "--mining", "knn")


@dataclass(frozen=True)
class Collection:
    """Part of a shared ``.npz`` set: the classes in ``[first, stop)``."""

    name: str
    file: str
    first: int = 0
    stop: int | None = None


@dataclass(frozen=True)
class Pair:
    source: Collection
    target: Collection
    source_preset: str
    target_preset: str
    clusters: int
    source_epochs: int


PAIRS: dict[str, Pair] = {
    "omniglot": Pair(
        Collection("omniglot-100-963", "omniglot_background.npz", 100),
        Collection("omniglot-0-99", "omniglot_background.npz", 0, 100),
        "cpu-omniglot",
        "cpu-omniglot",
        100,
        source_epochs=5,
    ),
    "tiny-cifar": Pair(
        Collection("tinyimagenet-200", "tinyimagenet_train_32.npz"),
        Collection("cifar10-test", "cifar10_test.npz"),
        "cpu-tinyimagenet",
        "cpu-cifar10",
        10,
        source_epochs=3,
    ),
}


def subset(collection: Collection, shared: Path, cache: Path) -> tuple[str, int]:
    """The ``--data`` path of ``collection`` and its number of images."""
    path = shared / collection.file
    with np.load(path, allow_pickle=False) as f:
        labels = f["labels"]
        keep = labels >= collection.first
        if collection.stop is not None:
            keep &= labels < collection.stop
        if keep.all():
            return str(path), len(labels)
        out = cache / f"{collection.name}.npz"
        if not out.exists():
            cache.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp.npz")
            np.savez(tmp, images=f["images"][keep], labels=labels[keep] - collection.first)
            tmp.replace(out)
    return str(out), int(keep.sum())


def fit(data: str, out: Path, preset: str, clusters: int, args: argparse.Namespace, *extra: str):
    exe = Path(sys.executable).with_name("smcluster")
    cmd = [str(exe) if exe.exists() else "smcluster", "fit", "--data", data, "--out", str(out)]
    cmd += ["--clusters", str(clusters), "--preset", preset, "--seed", str(args.seed)]
    cmd += ["--threads", str(args.threads), "--no-report", "--quiet", *METHOD, *extra]
    if out.exists():
        shutil.rmtree(out)
    code, wall, peak = measured(cmd, out.parent / f"{out.name}.log")
    if code != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({code}); see {out.parent / out.name}.log")
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "command": " ".join(cmd),
        "wall_seconds": wall,
        "peak_rss_mb": peak,
        "acc": metrics.get("acc"),
        "nmi": metrics.get("nmi"),
        "ari": metrics.get("ari"),
        "knn_accuracy": metrics.get("knn_accuracy"),
        "features_seconds": metrics.get("timings", {}).get("features_seconds"),
    }


def run_pair(name: str, pair: Pair, args: argparse.Namespace) -> dict[str, Any]:
    shared = shared_data_dir(args.shared_data)
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    source_data, n_source = subset(pair.source, shared, args.work / "data")
    target_data, n_target = subset(pair.target, shared, args.work / "data")
    epochs = ("--epochs", str(pair.source_epochs))
    source = fit(source_data, work / "source", pair.source_preset, 2, args, *epochs)
    transfer = fit(
        target_data,
        work / "transfer",
        pair.target_preset,
        pair.clusters,
        args,
        "--backbone",
        f"run:{work / 'source'}",
    )
    scratch_epochs = max(1, round(pair.source_epochs * n_source / n_target))
    scratch = fit(
        target_data,
        work / "scratch",
        pair.target_preset,
        pair.clusters,
        args,
        "--epochs",
        str(scratch_epochs),
    )
    return {
        "pair": name,
        "settings": asdict(pair),
        "source_images": n_source,
        "target_images": n_target,
        "scratch_epochs": scratch_epochs,
        "source": source,
        "transfer": transfer,
        "scratch": scratch,
    }


def render(doc: dict[str, Any]) -> str:
    lines = [
        f"# Transfer benchmark, {doc['date']}",
        "",
        "Command, from the repository root:",
        "",
        f"    {doc['command']}",
        "",
        f"Machine: {doc['machine']['cpu_cores']} CPU cores, {doc['machine']['platform']}, "
        f"torch {doc['machine']['torch']}, GPU {doc['machine']['cuda'] or 'none'}; "
        f"{doc['threads']} torch threads; seed {doc['seed']}.",
        "",
        "Both sides: SimCLR stage 1, kNN mining, heads on frozen features, the target's "
        "cpu-* preset. Transfer = stage 1 on the source, used frozen on the target "
        "(`--backbone run:SOURCE`); its wall time is the source run plus the target run. "
        "Scratch = stage 1 on the target for as many image passes as the source run made.",
        "",
        "| pair | source -> target | way | stage-1 image passes | ACC | NMI | ARI "
        "| kNN acc of features | wall s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["pairs"]:
        s = r["settings"]
        route = f"{s['source']['name']} ({r['source_images']}) -> {s['target']['name']} "
        route += f"({r['target_images']}, K={s['clusters']})"
        passes = s["source_epochs"] * r["source_images"]
        rows = (
            ("transfer (frozen run:)", passes, r["transfer"], r["source"]["wall_seconds"]),
            ("scratch", r["scratch_epochs"] * r["target_images"], r["scratch"], 0.0),
        )
        for way, n, m, before in rows:
            knn = m["knn_accuracy"]
            lines.append(
                f"| {r['pair']} | {route} | {way} | {n:,} | {100 * m['acc']:.1f} "
                f"| {100 * m['nmi']:.1f} | {100 * m['ari']:.1f} "
                f"| {'-' if knn is None else f'{100 * knn:.1f}'} "
                f"| {before + m['wall_seconds']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", nargs="+", choices=sorted(PAIRS), default=sorted(PAIRS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-data", help="folder of the shared .npz sets")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "transfer")
    parser.add_argument("--tag", default=dt.date.today().isoformat())
    args = parser.parse_args(argv)
    results = [run_pair(name, PAIRS[name], args) for name in args.pairs]
    doc = {
        "date": dt.date.today().isoformat(),
        "command": "python benchmarks/transfer.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "threads": args.threads,
        "seed": args.seed,
        "pairs": results,
    }
    stem = RESULTS / f"transfer-{args.tag}"
    stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    stem.with_suffix(".md").write_text(render(doc))
    print(render(doc))


if __name__ == "__main__":
    main()
