"""How long `write_report` takes on a large run: 1,000 clusters and 20,000 images.

Builds a synthetic run folder in the documented layout (CONTRIBUTING.md, "Run folder") and
times `smcluster.report.write_report` on it. The images are the shared Tiny ImageNet
development set (20,000 x 32 x 32 x 3, 200 classes) when it is found, else random images
written to a temporary `.npz`. Clusters follow the labels (five clusters per class, 15 % of
images moved to a random cluster); features, neighbours and curves are made to match. No
training happens, so this measures the report alone. The target is under a minute on 2 cores.

    python benchmarks/report_speed.py [--images 20000] [--clusters 1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from smcluster.config import Config
from smcluster.metrics import evaluate, knn_accuracy
from smcluster.stages.neighbours import neighbour_purity

REPO = Path(__file__).resolve().parents[1]


def shared_tinyimagenet() -> Path | None:
    env = os.environ.get("SMCLUSTER_SHARED_DATA")
    folder = Path(env) if env else REPO.parent / "shared" / "data"
    path = folder / "tinyimagenet_train_32.npz"
    return path if path.exists() else None


def synthetic_npz(path: Path, n: int, classes: int, rng: np.random.Generator) -> Path:
    """Random smooth colour images, one base colour per class (quick to make)."""
    labels = np.arange(n) % classes
    base = rng.integers(30, 220, size=(classes, 1, 1, 3))
    small = rng.integers(0, 60, size=(n, 8, 8, 3))
    noise = np.repeat(np.repeat(small, 4, axis=1), 4, axis=2)
    images = np.clip(base[labels] + noise - 30, 0, 255).astype(np.uint8)
    np.savez(
        path,
        images=images,
        labels=labels.astype(np.int64),
        class_names=np.asarray([f"class-{j:03d}" for j in range(classes)]),
    )
    return path


def build_run(run: Path, source: Path, n_clusters: int, rng: np.random.Generator) -> None:
    """Write a finished-looking run folder for the images in ``source``."""
    with np.load(source, allow_pickle=False) as f:
        labels = f["labels"].astype(np.int64)
    n = labels.size
    classes = int(labels.max()) + 1
    per_class = max(1, n_clusters // classes)
    clusters = (labels * per_class + rng.integers(0, per_class, n)) % n_clusters
    moved = rng.random(n) < 0.15
    clusters[moved] = rng.integers(0, n_clusters, int(moved.sum()))
    q, dim = 20, 128

    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    features = centres[clusters] + 0.7 * rng.normal(size=(n, dim)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)

    # neighbours: mostly members of the same cluster (purer for the "used" ones)
    order = np.argsort(clusters, kind="stable")
    starts = np.searchsorted(clusters[order], np.arange(n_clusters))
    sizes = np.bincount(clusters, minlength=n_clusters)

    def mine(same: float) -> np.ndarray:
        own = order[
            starts[clusters][:, None]
            + (rng.random((n, q)) * sizes[clusters][:, None]).astype(np.int64)
        ]
        other = rng.integers(0, n, size=(n, q))
        nb = np.where(rng.random((n, q)) < same, own, other)
        rows = np.arange(n)[:, None]
        return np.where(nb == rows, (nb + 1) % n, nb).astype(np.int64)

    knn, used = mine(0.7), mine(0.8)
    logits = rng.normal(size=(n, n_clusters)).astype(np.float32)
    logits[np.arange(n), clusters] += rng.uniform(3, 12, n).astype(np.float32)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    clusters = probabilities.argmax(axis=1)

    run.mkdir(parents=True)
    config = Config().updated(
        {
            "n_clusters": n_clusters,
            "data": {"source": str(source), "image_size": 32, "channels": 3},
            "mining": {"q": q},
        }
    )
    config.save(run / "config.yaml")
    np.save(run / "features.npy", features)
    np.save(run / "embeddings.npy", features)
    np.save(run / "neighbours-knn.npy", knn)
    np.save(run / "neighbours.npy", used)
    np.save(run / "probabilities.npy", probabilities.astype(np.float32))
    with (run / "assignments.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "cluster", "confidence", "label"])
        confidence = probabilities.max(axis=1)
        for i in range(n):
            writer.writerow([i, int(clusters[i]), f"{confidence[i]:.4f}", int(labels[i])])
    with (run / "history.jsonl").open("w") as handle:
        for stage, epochs, start in (
            ("features", 30, 8.0),
            ("mining-head", 10, -3.0),
            ("clustering", 60, -5.0),
        ):
            for e in range(epochs):
                handle.write(
                    json.dumps(
                        {"stage": stage, "epoch": e, "loss": start - np.log1p(e), "seconds": 1.0}
                    )
                    + "\n"
                )
    heads = [{"total": -6.0 - 0.01 * h, "consistency": 1.0, "entropy": 1.4} for h in range(10)]
    metrics = {
        "n_images": n,
        "n_clusters": n_clusters,
        "best_head": 9,
        "heads": heads,
        **evaluate(labels, clusters),
        "neighbour_purity": neighbour_purity(used, labels),
        "neighbour_purity_knn": neighbour_purity(knn, labels),
        "knn_accuracy": knn_accuracy(knn, labels),
        "timings": {
            "features_seconds": 5400.0,
            "neighbours_seconds": 300.0,
            "clustering_seconds": 900.0,
            "total_seconds": 6600.0,
            "n_images": n,
        },
    }
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2))


def save_results(stem: Path, result: dict) -> None:
    """``stem``.json and ``stem``.md with the command, machine and date."""
    import platform
    from datetime import date

    import torch

    result = {
        **result,
        "date": date.today().isoformat(),
        "command": "python benchmarks/report_speed.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    stem.with_suffix(".md").write_text(
        f"# Report generation speed, {result['date']}\n\n"
        f"Command: `{result['command']}`\n\n"
        f"Machine: {result['machine']}; torch {result['torch']}, "
        f"{result['torch_threads']} threads.\n\n"
        "| images | clusters | write_report s | again (embedding cached) s | files | MB |\n"
        "|---|---|---|---|---|---|\n"
        f"| {result['images']:,} | {result['clusters']:,} | {result['seconds']} | "
        f"{result['seconds_cached_embedding']} | {result['files']} | {result['megabytes']} |\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--keep", type=Path, help="build the run here and keep it")
    parser.add_argument("--synthetic", action="store_true", help="ignore the shared data")
    parser.add_argument("--results", type=Path, help="write the timings as JSON + Markdown here")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    temp = Path(tempfile.mkdtemp(prefix="smcluster-report-bench-"))
    try:
        source = None if args.synthetic else shared_tinyimagenet()
        if source is None or args.images != 20000:
            source = synthetic_npz(temp / "images.npz", args.images, 200, rng)
        run = args.keep or temp / "run"
        if run.exists():
            shutil.rmtree(run)
        build_run(run, source, args.clusters, rng)
        print(f"run: {args.images:,} images ({source.name}), {args.clusters:,} clusters")

        from smcluster.report import write_report

        started = time.perf_counter()
        path = write_report(run)
        seconds = time.perf_counter() - started
        files = sum(1 for p in (run / "report").rglob("*") if p.is_file())
        size = sum(p.stat().st_size for p in (run / "report").rglob("*") if p.is_file())
        print(f"write_report: {seconds:.1f} s -> {path} ({files} files, {size / 1e6:.1f} MB)")
        started = time.perf_counter()
        write_report(run)
        again = time.perf_counter() - started
        print(f"again (embedding cached): {again:.1f} s")
        if args.results is not None:
            save_results(
                args.results,
                {
                    "images": args.images,
                    "clusters": args.clusters,
                    "source": source.name,
                    "seconds": round(seconds, 2),
                    "seconds_cached_embedding": round(again, 2),
                    "files": files,
                    "megabytes": round(size / 1e6, 1),
                },
            )
        return 0 if seconds < 60 else 1
    finally:
        if args.keep is None:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
