"""Cheap probes of stages 2 and 3 on finished runs: mining variants, head selection, entropy weight.

Issue 13's items 1 and 3 measured on a run's stored stage 1 (``features.npy``,
``embeddings.npy`` and the stage-1 checkpoint for the augmented views), so no feature model is
trained. For every run folder made by ``smcluster fit`` (with labels in its data):

- mining: neighbour purity at the run's q of plain kNN, the paper's three-view mining and the
  fused mining (``mining.method=fused``) with its fusion weights (``--fusion``), the fused
  ones with ``--strong-views`` strong views averaged;
- stage 3 on each variant's neighbours (and ``fused-weighted``: fused neighbours with
  ``mining.weighting=fused``): the run's heads and epochs on stored weak-view features
  (frozen backbone, as the pipeline's frozen path), every head's ACC, the ACC of the head each
  label-free criterion (``stages.clustering.HEAD_SELECTION``) keeps, the best head's ACC;
- the entropy weight: the same stage 3 on ``--entropy-mining`` neighbours at each weight of
  ``--entropy-weights`` and at 5 log(K) / log(10) (SCAN's 5 at 10 clusters, scaled with log K).

Labels are read only to score. The runs' folders are only read.

    python benchmarks/probes.py runs/bench/cpu/omniglot-200/f-seed0 --threads 2

Results: ``benchmarks/results/probes-<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smcluster.augment import ViewMaker
from smcluster.config import Config
from smcluster.engine import make_fabric, seed_everything, stage_seed
from smcluster.models import ClusterHeads
from smcluster.pipeline import RunContext, load_data
from smcluster.runfolder import Progress, RunFolder, StageClock
from smcluster.sources import FEATURE_SOURCES, StageOne, feature_source
from smcluster.stages.clustering import (
    HEAD_SELECTION,
    score_heads,
    selected_heads,
    stage3_schedule,
    train_heads_on_embeddings,
)
from smcluster.stages.mining import MINING_METHODS, MiningInputs, MiningResult
from smcluster.stages.neighbours import neighbour_purity

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CRITERIA = list(HEAD_SELECTION)


def open_run(folder: Path, overrides: dict[str, Any], threads: int | None) -> tuple[Any, StageOne]:
    """The run's data (with labels) and its stage 1 read back, never written (a reading
    RunFolder); ``overrides`` change settings that only shape the lazy views."""
    config = Config.load(folder / "config.yaml").updated(overrides)
    config = config.updated({"run": {"progress": False, "threads": threads, "devices": 1}})
    data = load_data(config)
    if data.labels is None:
        raise ValueError(f"{folder}: its data have no labels, so nothing can be scored")
    reader = RunFolder(folder, writer=False)
    progress = Progress()
    views = ViewMaker(**config.to_dict()["augment"])
    run = RunContext(
        config,
        data,
        None,
        data,
        make_fabric(config.run),
        reader,
        views,
        lambda _: None,
        progress,
        StageClock(reader, progress),
    )
    return data, FEATURE_SOURCES[feature_source(config)](run)


def mine(
    config: Config, stage_one: StageOne, strong: StageOne, settings: dict[str, Any]
) -> MiningResult:
    """One mining variant on the run's stored features; ``strong`` gives the strong views."""
    varied = config.updated({"mining": settings, "run": {"progress": False}}).validate()
    inputs = MiningInputs(
        stage_one.features, strong.strong_features, stage_one.weak_embeddings, varied
    )
    return MINING_METHODS[varied.mining.method](inputs)


def stage_three(
    config: Config,
    stage_one: StageOne,
    labels: np.ndarray,
    neighbours: np.ndarray,
    weights: np.ndarray | None,
    entropy_weight: float,
) -> dict[str, Any]:
    """The run's heads trained as the pipeline's frozen path does, scored with labels."""
    c = dataclasses.replace(config.clustering, entropy_weight=float(entropy_weight))
    c = stage3_schedule(c, len(neighbours), config.n_clusters)
    seed_everything(stage_seed(config.run.seed, "clustering-init", 0))
    heads = ClusterHeads(stage_one.embeddings.shape[1], config.n_clusters, c.heads)
    nb = torch.from_numpy(neighbours)
    started = time.perf_counter()
    train_heads_on_embeddings(
        heads,
        stage_one.weak_embeddings(),
        nb,
        c,
        epochs=c.epochs,
        seed=config.run.seed,
        progress=False,
        weights=None if weights is None else torch.from_numpy(weights),
    )
    scores = score_heads(heads, stage_one.embeddings, nb, c.entropy_weight, labels)
    picks = selected_heads(scores)
    accs = [s["acc"] for s in scores]
    return {
        "entropy_weight": float(entropy_weight),
        "heads": scores,
        "picks": picks,
        "acc": {name: accs[head] for name, head in picks.items()},
        "best_acc": max(accs),
        "worst_acc": min(accs),
        "seconds": time.perf_counter() - started,
    }


def probe_run(folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    data, stage_one = open_run(folder, {}, args.threads)
    _, averaged = open_run(folder, {"mining": {"strong_views": args.strong_views}}, args.threads)
    config = Config.load(folder / "config.yaml")
    labels = data.labels
    k, q = config.n_clusters, config.mining.q
    fused = {"method": "fused", "strong_views": args.strong_views}
    variants: dict[str, tuple[StageOne, dict[str, Any]]] = {
        "knn": (stage_one, {"method": "knn", "weighting": "none"}),
        "three-view": (stage_one, {"method": "three-view", "strong_views": 1, "weighting": "none"}),
    }
    for weights in args.fusion:
        name = "fused" + ("" if weights == [1, 1, 1] else "-" + "-".join(f"{w:g}" for w in weights))
        variants[name] = (averaged, {**fused, "fusion_weights": weights, "weighting": "none"})
    variants["fused-weighted"] = (
        averaged,
        {**fused, "fusion_weights": args.fusion[0], "weighting": "fused"},
    )
    mining: dict[str, Any] = {}
    neighbour_sets: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for name, (strong, settings) in variants.items():
        started = time.perf_counter()
        result = mine(config, stage_one, strong, settings)
        neighbour_sets[name] = (result.neighbours, result.weights)
        mining[name] = {
            "purity": neighbour_purity(result.neighbours, labels),
            "purity_knn": neighbour_purity(result.knn, labels),
            "seconds": time.perf_counter() - started,
        }
        print(f"{folder} {name}: purity {mining[name]['purity']:.4f}", file=sys.stderr)
    ew = config.clustering.entropy_weight
    clustering = {}
    for name, (nb, w) in neighbour_sets.items():
        clustering[name] = stage_three(config, stage_one, labels, nb, w, ew)
        print(f"{folder} {name}: stage 3 {clustering[name]['acc']}", file=sys.stderr)
    scaled = 5.0 * math.log(k) / math.log(10)
    entropy = []
    nb, w = neighbour_sets[args.entropy_mining]
    for weight in sorted({*args.entropy_weights, round(scaled, 2)}):
        if weight == ew and args.entropy_mining in clustering:
            entropy.append({**clustering[args.entropy_mining], "same_as": args.entropy_mining})
            continue
        entropy.append(stage_three(config, stage_one, labels, nb, w, weight))
        print(f"{folder} entropy {weight}: {entropy[-1]['acc']}", file=sys.stderr)
    return {
        "run": str(folder),
        "data": config.data.source,
        "n_images": len(labels),
        "n_clusters": k,
        "q": q,
        "seed": config.run.seed,
        "feature_model": config.features.model,
        "entropy_weight": ew,
        "entropy_mining": args.entropy_mining,
        "scaled_entropy_weight": scaled,
        "mining": mining,
        "clustering": clustering,
        "entropy": entropy,
    }


def best_head_hits(results: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Per criterion: (stage-3 trainings where it kept a head with the best ACC, trainings);
    a sweep entry that is a mining variant's own training is counted once."""
    hits = {name: 0 for name in CRITERIA}
    total = 0
    for r in results:
        again = [e for e in r["entropy"] if "same_as" not in e]
        for trained in [*r["clustering"].values(), *again]:
            total += 1
            for name in CRITERIA:
                hits[name] += trained["acc"][name] >= trained["best_acc"] - 1e-12
    return {name: (hits[name], total) for name in CRITERIA}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def report_head(title: str, command: str, run_note: str | None = None) -> list[str]:
    """The first lines of a benchmark's Markdown: title and date, command, machine;
    ``run_note`` (default: this process's torch threads) ends the machine line."""
    note = run_note if run_note is not None else f"torch threads {torch.get_num_threads()}"
    return [
        f"# {title}, {dt.date.today():%Y-%m-%d}",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, {note}.",
        "",
    ]


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        *report_head("Probes (stages 2 and 3 on stored stage 1)", command),
        "Scores in %. Stage 3: the run's heads, epochs and settings on stored weak-view "
        "features (frozen backbone); ACC of the head each label-free criterion keeps, and of "
        "the best and worst head (labels only score).",
        "",
        "| run | K | q | mining | purity | purity kNN | "
        + " | ".join(f"ACC {c}" for c in CRITERIA)
        + " | best head | worst head |",
        "|---|---|---|---|---|---|" + "---|" * len(CRITERIA) + "---|---|",
    ]
    for r in results:
        for name, m in r["mining"].items():
            s = r["clustering"][name]
            accs = " | ".join(_pct(s["acc"][c]) for c in CRITERIA)
            lines.append(
                f"| {Path(r['run']).name} | {r['n_clusters']} | {r['q']} | {name} | "
                f"{_pct(m['purity'])} | {_pct(m['purity_knn'])} | {accs} | "
                f"{_pct(s['best_acc'])} | {_pct(s['worst_acc'])} |"
            )
    lines += [
        "",
        "Entropy weight (stage 3 on the `entropy_mining` neighbours; the scaled weight is "
        "5 log K / log 10):",
        "",
        "| run | K | mining | weight | "
        + " | ".join(f"ACC {c}" for c in CRITERIA)
        + " | best head |",
        "|---|---|---|---|" + "---|" * len(CRITERIA) + "---|",
    ]
    for r in results:
        for s in r["entropy"]:
            accs = " | ".join(_pct(s["acc"][c]) for c in CRITERIA)
            lines.append(
                f"| {Path(r['run']).name} | {r['n_clusters']} | {r['entropy_mining']} | "
                f"{s['entropy_weight']:g} | {accs} | {_pct(s['best_acc'])} |"
            )
    hits = best_head_hits(results)
    lines += [
        "",
        "How often each criterion kept a head with the best ACC (over every stage-3 training "
        "above):",
        "",
        "| criterion | best head kept |",
        "|---|---|",
        *(f"| {name} | {h} / {t} |" for name, (h, t) in hits.items()),
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument(
        "--fusion",
        type=lambda t: [float(x) for x in t.split(",")],
        nargs="+",
        default=[[1.0, 1.0, 1.0], [2.0, 1.0, 1.0]],
        help="fusion weights instance,strong,weak of the fused variants (first: also weighted)",
    )
    parser.add_argument("--strong-views", type=int, default=4, help="of the fused variants")
    parser.add_argument("--entropy-weights", type=float, nargs="+", default=[2, 5, 10, 20])
    parser.add_argument("--entropy-mining", default="knn", help="the variant the sweep uses")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tag", default=f"{dt.date.today():%Y-%m-%d}")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    for weights in args.fusion:
        if len(weights) != 3:
            parser.error(f"--fusion takes three weights instance,strong,weak, got {weights}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = [probe_run(folder, args) for folder in args.runs]
    command = "python benchmarks/probes.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    write_results(args.results / f"probes-{args.tag}", command, results, markdown)
    return 0


def write_results(stem: Path, command: str, results: list[dict[str, Any]], render) -> None:
    """``stem``.json (the command and the results) and ``stem``.md (``render(results,
    command)``), also printed."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    text = render(results, command)
    Path(f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
