"""Choosing the number of clusters: each criterion's estimate against the true K.

For every data set and seed: features and neighbours (cheap ones computed here, or a finished
run's ``embeddings.npy`` / ``neighbours.npy``), ``choose_n_clusters`` over the range
``--clusters auto`` searches (``--range auto``, the default) or K_true / 4 .. 4 K_true
(``--range true``, the earlier tables), recording every criterion, each criterion's chosen
K, the ACC / many-to-one ACC / NMI of its own partition at its chosen K and at the true K,
and the search's seconds against one fixed-K stage 3 on the same stored features
(``train_heads_on_embeddings`` at K_true with the configuration's heads, timed over
``--reference-epochs`` epochs and scaled to its epochs).

Features (``--features``):

- ``pixels``: images at most 32 px (area-resized), scaled to [0, 1], centred, projected on
  their 64 leading principal axes; neighbours by ``knn_search`` (q of the data set's cpu
  preset). Cheap and weak: not the method's stage-1 features;
- ``--features-from RUN...`` (alias ``--run``): an existing run's stage-1 embeddings and
  its plain-kNN neighbours (``--neighbours used``: its mined ones), the run need not have
  finished (``run_inputs``); labels from its ``assignments.csv`` or its data source, the
  clustering settings from its ``config.yaml``;
- ``--embeddings FILE.npz...``: precomputed features with labels (the format of ``smcluster
  fit --embeddings``, e.g. ``supervised_features.py``'s), plain-kNN neighbours at ``--q`` and
  the stage 3 a run on those features would train at the true K.

    python benchmarks/choose_k.py --dataset mnist-10k omniglot-100 --seeds 0 1 2
    python benchmarks/choose_k.py --features-from runs/bench/cpu/mnist-10k/f-seed0 --seeds 0

``--names`` labels the run folders in the tables; ``--peaks 2`` refines around each curve's two
highest local maxima (a sharp peak the coarse grid stepped over); ``--time-alone CRITERION...``
also times each named criterion's search on its own.

Results: ``benchmarks/results/choose-k-<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as dt
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smcluster.autoconfig import frozen_settings
from smcluster.config import DEFAULT_METHOD, ClusteringConfig, Config, cluster_range, method
from smcluster.metrics import cluster_accuracy, many_to_one_accuracy
from smcluster.models import ClusterHeads
from smcluster.stages.choose_k import CRITERIA, PARTITIONS, SearchInputs, choose_n_clusters
from smcluster.stages.choose_k import candidate_grid as grid
from smcluster.stages.clustering import stage3_schedule, train_heads_on_embeddings
from smcluster.stages.neighbours import knn_search

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


@dataclass(frozen=True)
class DataSet:
    name: str
    file: str
    classes_kept: int | None  # the first classes (Omniglot); None keeps all
    first: int | None  # the first images (MNIST's 10k); None keeps all
    q: int
    preset: str


DATASETS = {
    d.name: d
    for d in [
        DataSet("mnist-10k", "mnist.npz", None, 10_000, 20, "cpu-mnist"),
        DataSet("cifar-10", "cifar10_test.npz", None, None, 20, "cpu-cifar10"),
        DataSet("omniglot-100", "omniglot_background.npz", 100, None, 10, "cpu-omniglot"),
        DataSet("omniglot-200", "omniglot_background.npz", 200, None, 10, "cpu-omniglot"),
        DataSet("omniglot-964", "omniglot_background.npz", None, None, 10, "cpu-omniglot"),
        DataSet(
            "tinyimagenet-200", "tinyimagenet_train_32.npz", None, None, 10, "cpu-tinyimagenet"
        ),
    ]
}


def shared_data_dir(arg: str | None) -> Path:
    """``--shared-data``, else ``$SMCLUSTER_SHARED_DATA``, else ``../shared/data``."""
    if arg:
        return Path(arg)
    env = os.environ.get("SMCLUSTER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def load_images(spec: DataSet, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    path = folder / spec.file
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: point --shared-data at the shared data")
    with np.load(path, allow_pickle=False) as data:
        images, labels = data["images"], data["labels"].astype(np.int64)
    keep = np.ones(len(labels), dtype=bool)
    if spec.classes_kept is not None:
        keep &= labels < spec.classes_kept
    if spec.first is not None:
        keep &= np.arange(len(labels)) < spec.first
    return images[keep], labels[keep]


def pixel_features(images: np.ndarray, dims: int = 64) -> np.ndarray:
    """Area-resized (<= 32 px) pixels in [0, 1], centred, on their ``dims`` principal axes."""
    from sklearn.decomposition import PCA

    x = torch.from_numpy(images).float() / 255.0
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-1] > 32:
        x = torch.nn.functional.interpolate(x, size=(28, 28), mode="area")
    flat = x.flatten(1).numpy()
    return PCA(dims, random_state=0).fit_transform(flat - flat.mean(0)).astype(np.float32)


def run_inputs(
    run: Path, which: str = "knn"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, ClusteringConfig]:
    """The stage-1 embeddings of an existing run folder (finished or not), its neighbours,
    the labels and its clustering settings.

    Embeddings: ``embeddings.npy``, or the file a run on precomputed embeddings read.
    Neighbours: ``neighbours-knn.npy`` (``which="knn"``: the plain kNN ``--clusters auto``
    searches on) or ``neighbours.npy`` (``"used"``: the run's mined ones); a run whose stage 2
    did not finish gets plain kNN searched here on ``features.npy`` (q of its settings).
    Labels: ``assignments.csv``'s label column, else the run's data source.
    """
    from smcluster.data.embeddings import load_embeddings
    from smcluster.pipeline import load_data

    config = Config.load(run / "config.yaml")
    if (run / "embeddings.npy").exists():
        embeddings = np.load(run / "embeddings.npy")
    elif config.data.embeddings is not None:
        embeddings = np.asarray(load_embeddings(config.data.embeddings).vectors)
    else:
        raise ValueError(f"{run} has no embeddings.npy: its stage 1 has not finished")
    name = {"knn": "neighbours-knn.npy", "used": "neighbours.npy"}[which]
    if (run / name).exists():
        neighbours = np.load(run / name)
    else:
        mined = run / "features.npy"
        features = np.load(mined) if mined.exists() else embeddings
        neighbours = knn_search(features, config.mining.q)[0]
    labels = None
    if (run / "assignments.csv").exists():
        with (run / "assignments.csv").open() as f:
            rows = list(csv.DictReader(f))
        if rows and "label" in rows[0]:
            labels = np.array([int(r["label"]) for r in rows], dtype=np.int64)
    if labels is None and config.data.source is not None:
        labels = load_data(config).labels
    if labels is None and config.data.embeddings is not None:
        labels = load_embeddings(config.data.embeddings).labels
    if labels is None:
        raise ValueError(f"{run}: no labels in its assignments.csv or its data source")
    return embeddings, neighbours, labels, config.clustering


def reference_seconds(
    embeddings: np.ndarray,
    neighbours: np.ndarray,
    k: int,
    config: ClusteringConfig,
    epochs: int,
) -> float:
    """Seconds of one fixed-K stage 3 on stored features (``epochs`` timed, then scaled) at
    ``config``'s batch and epochs: pass ``stage3_schedule``'s to time what a run trains."""
    heads = ClusterHeads(embeddings.shape[1], k, config.heads)
    started = time.perf_counter()
    train_heads_on_embeddings(
        heads,
        torch.from_numpy(embeddings)[None],
        torch.from_numpy(neighbours),
        config,
        epochs=epochs,
        seed=0,
        progress=False,
    )
    return (time.perf_counter() - started) * config.epochs / epochs


def partition_scores(
    inputs: SearchInputs, criterion: str, k: int, labels: np.ndarray
) -> dict[str, float]:
    """ACC, many-to-one ACC and NMI of a criterion's own partition at ``k`` (its best-scoring
    head), against the labels (reporting only)."""
    from sklearn.metrics import normalized_mutual_info_score

    from smcluster.stages.choose_k import SCORES

    partition, score = CRITERIA[criterion]
    candidates = PARTITIONS[partition](inputs, k)
    best = max(candidates, key=lambda p: SCORES[score](inputs, p))
    return {
        "acc": cluster_accuracy(labels, best),
        "acc_many_to_one": many_to_one_accuracy(labels, best),
        "nmi": float(normalized_mutual_info_score(labels, best)),
    }


def embeddings_inputs(
    path: Path, q: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, ClusteringConfig]:
    """A labelled embeddings file's vectors, their plain kNN at ``q``, labels and the stage-3
    settings of ``smcluster fit --embeddings FILE --clusters K`` at the true K (the default
    method's, sized by ``autoconfig.frozen_settings``)."""
    from smcluster.data.embeddings import load_embeddings

    loaded = load_embeddings(path)
    if loaded.labels is None:
        raise ValueError(f"{path} has no labels: the benchmark scores the estimate against them")
    vectors = np.asarray(loaded.vectors, dtype=np.float32)
    stage3 = frozen_settings(len(vectors), len(np.unique(loaded.labels)))["clustering"]
    config = Config().updated(method(DEFAULT_METHOD)).updated({"clustering": stage3})
    return vectors, knn_search(vectors, q)[0], loaded.labels, config.clustering


def measure(
    name: str,
    embeddings: np.ndarray,
    neighbours: np.ndarray,
    labels: np.ndarray,
    config: ClusteringConfig,
    args: argparse.Namespace,
    seed: int,
) -> dict[str, Any]:
    true_k = len(np.unique(labels))
    if args.range == "auto":
        lo, hi = cluster_range("auto", len(labels))
    else:
        lo, hi = max(2, true_k // 4), min(4 * true_k, len(labels) // 2)
    search = choose_n_clusters(
        embeddings,
        neighbours,
        grid(lo, hi, args.points),
        config,
        seed=seed,
        criterion=args.criteria[0],
        record=args.criteria[1:],
        budget_epochs=args.budget_epochs,
        tries=args.tries,
        peaks=args.peaks,
    )
    inputs = SearchInputs(
        embeddings,
        embeddings[None],
        neighbours,
        config,
        seed,
        args.budget_epochs,
        args.tries,
        32,
        4000,
    )
    alone = {}
    for criterion in args.time_alone:
        alone[criterion] = choose_n_clusters(
            embeddings,
            neighbours,
            grid(lo, hi, args.points),
            config,
            seed=seed,
            criterion=criterion,
            budget_epochs=args.budget_epochs,
            tries=args.tries,
            peaks=args.peaks,
        ).seconds
    per_criterion = {}
    for criterion in search.scores:
        chosen = search.best(criterion)
        per_criterion[criterion] = {
            "chosen": chosen,
            "relative_error": chosen / true_k - 1.0,
            "at_chosen": partition_scores(inputs, criterion, chosen, labels),
            "at_true": partition_scores(inputs, criterion, true_k, labels),
        }
    if args.stage3_epochs is not None:
        config = dataclasses.replace(config, epochs=args.stage3_epochs)
    scheduled = stage3_schedule(config, len(labels), true_k)
    reference = reference_seconds(embeddings, neighbours, true_k, scheduled, args.reference_epochs)
    return {
        "dataset": name,
        "seed": seed,
        "n_images": len(labels),
        "true_k": true_k,
        "range": [lo, hi],
        "neighbour_purity": float((labels[neighbours] == labels[:, None]).mean()),
        "search": search.to_dict(),
        "criteria": per_criterion,
        "search_seconds": search.seconds,
        "alone_seconds": alone,
        "reference_stage3_seconds": reference,
        "reference": f"{scheduled.heads} heads x {scheduled.epochs} epochs at batch "
        f"{scheduled.batch_size}, K = {true_k}",
    }


def table(rows: list[dict[str, Any]], criteria: list[str]) -> str:
    """Markdown: per data set, each criterion's estimates over seeds and its partition's ACC."""
    lines = [
        "| data set | true K | kNN purity | criterion | estimates (seeds) | within 25 % | "
        "ACC / NMI at estimate | ACC / NMI at true K | search s (x stage 3) | alone s (x) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        group = [r for r in rows if r["dataset"] == name]
        for criterion in criteria:
            got = [r["criteria"][criterion] for r in group]
            within = sum(abs(g["relative_error"]) <= 0.25 for g in got)
            at_est = np.mean([[g["at_chosen"]["acc"], g["at_chosen"]["nmi"]] for g in got], 0)
            at_true = np.mean([[g["at_true"]["acc"], g["at_true"]["nmi"]] for g in got], 0)
            secs = np.mean([r["search_seconds"] for r in group])
            ratio = np.mean([r["search_seconds"] / r["reference_stage3_seconds"] for r in group])
            timed = [r for r in group if criterion in r.get("alone_seconds", {})]
            own = "-"
            if timed:
                own_s = np.mean([r["alone_seconds"][criterion] for r in timed])
                own_x = np.mean(
                    [r["alone_seconds"][criterion] / r["reference_stage3_seconds"] for r in timed]
                )
                own = f"{own_s:.1f} ({own_x:.2f})"
            lines.append(
                f"| {name} | {group[0]['true_k']} | {group[0]['neighbour_purity']:.2f} | "
                f"{criterion} | {', '.join(str(g['chosen']) for g in got)} | "
                f"{within}/{len(got)} | {at_est[0]:.3f} / {at_est[1]:.3f} | "
                f"{at_true[0]:.3f} / {at_true[1]:.3f} | {secs:.0f} ({ratio:.2f}) | {own} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["mnist-10k"], choices=list(DATASETS))
    parser.add_argument(
        "--features-from",
        "--run",
        dest="run",
        nargs="*",
        type=Path,
        default=[],
        help="run folders whose stage-1 embeddings (and neighbours) to search on",
    )
    parser.add_argument(
        "--neighbours",
        choices=["knn", "used"],
        default="knn",
        help="with --features-from: plain kNN (what --clusters auto uses) or the run's mined",
    )
    parser.add_argument(
        "--embeddings",
        nargs="*",
        type=Path,
        default=[],
        help="labelled embeddings files (.npz with embeddings and labels) to search on",
    )
    parser.add_argument("--q", type=int, default=10, help="with --embeddings: neighbours")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--criteria", nargs="+", default=list(CRITERIA), choices=list(CRITERIA))
    parser.add_argument(
        "--names",
        nargs="*",
        default=[],
        help="with --features-from: a name per run folder for the tables (default: its name)",
    )
    parser.add_argument(
        "--time-alone",
        nargs="*",
        default=[],
        choices=list(CRITERIA),
        help="criteria whose search is also timed on its own (the recorded search's seconds "
        "are the cost of all --criteria at once)",
    )
    parser.add_argument(
        "--points",
        type=int,
        default=20,
        help="candidate K in the grid (default 20, as --clusters auto; the tables before "
        "2026-12-02's supervised ones used 10)",
    )
    parser.add_argument(
        "--range",
        choices=["auto", "true"],
        default="auto",
        help="K searched: auto = what --clusters auto searches (2 to min(N / 5, 2000)); "
        "true = K_true / 4 to 4 K_true (the earlier tables)",
    )
    parser.add_argument("--budget-epochs", type=int, default=5)
    parser.add_argument(
        "--stage3-epochs",
        type=int,
        default=None,
        help="epochs of the fixed-K stage 3 the search is compared with (default: the preset's"
        " or the run's)",
    )
    parser.add_argument("--tries", type=int, default=3)
    parser.add_argument(
        "--peaks",
        type=int,
        default=2,
        help="refine around this many of each criterion's highest local maxima (default 2, "
        "as --clusters auto; the earliest tables used 1)",
    )
    parser.add_argument("--reference-epochs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shared-data", default=None)
    parser.add_argument("--tag", default=dt.date.today().isoformat())
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--merge",
        nargs="*",
        type=Path,
        default=[],
        help="results .json files to merge into one table under --tag (nothing is searched)",
    )
    args = parser.parse_args(argv)
    if args.merge:
        merged = [json.loads(path.read_text()) for path in args.merge]
        rows = [row for doc in merged for row in doc["runs"]]
        args.threads = merged[0]["threads"]
        args.criteria = [c for c in rows[0]["criteria"] if all(c in r["criteria"] for r in rows)]
        write(rows, args, [doc["command"] for doc in merged])
        return
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    given = args.run or args.embeddings
    sources: list[tuple[str, Any]] = [(name, None) for name in args.dataset] if not given else []
    if args.names and len(args.names) != len(args.run):
        parser.error("--names needs one name per --features-from folder")
    sources += [
        (name, run)
        for name, run in zip(args.names or [r.name for r in args.run], args.run, strict=True)
    ]
    sources += [(path.stem, path) for path in args.embeddings]
    for name, run in sources:
        if run is None:
            spec = DATASETS[name]
            images, labels = load_images(spec, shared_data_dir(args.shared_data))
            embeddings = pixel_features(images)
            neighbours = knn_search(embeddings, spec.q)[0]
            config = Config().updated(_preset_clustering(spec.preset)).clustering
            features = "pixels: <= 32 px pixels, PCA to 64 dimensions (not stage-1 features)"
        elif run.is_file():
            embeddings, neighbours, labels, config = embeddings_inputs(run, args.q)
            features = f"embeddings file {run.name}: plain kNN neighbours at q = {args.q}"
        else:
            embeddings, neighbours, labels, config = run_inputs(run, args.neighbours)
            kind = {"knn": "plain kNN", "used": "mined"}[args.neighbours]
            features = f"run folder {run}: its stage-1 embeddings and {kind} neighbours"
        for seed in args.seeds:
            row = measure(name, embeddings, neighbours, labels, config, args, seed)
            row["features"] = features
            rows.append(row)
            print(table([row], args.criteria), flush=True)
    write(rows, args)


def _preset_clustering(preset: str) -> dict[str, Any]:
    from smcluster.config import PRESETS

    return {"clustering": PRESETS[preset].get("clustering", {})}


def write(
    rows: list[dict[str, Any]], args: argparse.Namespace, merged: list[str] | None = None
) -> None:
    """The rows as ``choose-k-<tag>.json`` and ``.md``; ``merged``: the commands of the
    results files they were merged from."""
    args.results.mkdir(parents=True, exist_ok=True)
    stem = args.results / f"choose-k-{args.tag}"
    command = "python benchmarks/choose_k.py " + shlex.join(sys.argv[1:])
    meta = {
        "command": command,
        "merged_from": merged or [],
        "date": dt.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPU cores, {platform.platform()}",
        "threads": args.threads,
        "torch": torch.__version__,
    }
    Path(f"{stem}.json").write_text(json.dumps({**meta, "runs": rows}, indent=1) + "\n")
    features = sorted({r["features"] for r in rows})
    text = [
        f"# Choosing the number of clusters ({meta['date']})",
        "",
        f"Command: `{command}`  ",
        *[f"Merged from: `{c}`  " for c in merged or []],
        f"Machine: {meta['machine']}, {args.threads} torch threads  ",
        "Features: " + "; ".join(features),
        "",
        table(rows, args.criteria),
        "",
    ]
    Path(f"{stem}.md").write_text("\n".join(text))


if __name__ == "__main__":
    main()
