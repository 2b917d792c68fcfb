"""Stage 3 on a finished run's stored stage 1 under changed settings, and neighbour purity of
other kNN inputs: the probes behind the default method (issue 13, items 1 and 3).

For each run folder (made by ``smcluster fit`` on labelled data) and each trial, a JSON object
of ``clustering.*`` settings plus optional ``q`` and ``entropy_weight``, the run's heads are
trained on its stored weak-view features with plain-kNN neighbours at that q (as
``probes.stage_three`` does: the pipeline's frozen path), and the ACC of the head each
label-free criterion keeps is recorded. ``--purity`` adds the neighbour purity of plain kNN at
q = 5, 10, 20 on the mined features, on the backbone features, on the mean of the stored weak
views, and of a shared-neighbour re-ranking of the 4q pool (similarity + lambda x the overlap
of the two images' 30 nearest neighbours). Labels only score.

    python benchmarks/stage3_sweep.py runs/bench/cpu/omniglot-200/seed0/c \\
        --trials '{}' '{"frozen_lr": 0.03}' '{"epochs": 120}' --threads 1 --tag omniglot-200

Results: ``benchmarks/results/stage3-sweep-<tag>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smcluster.config import Config
from smcluster.stages.neighbours import mine_knn, neighbour_purity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probes import (  # noqa: E402
    CRITERIA,
    RESULTS,
    open_run,
    report_head,
    stage_three,
    write_results,
)

REUSE_K = 30  # neighbours per image whose overlap re-ranks the pool


def normalised(x: Any) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.as_tensor(np.asarray(x, dtype=np.float32)), dim=-1)


def knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """Each row's k nearest other rows: the pipeline's own search (``mine_knn``)."""
    return torch.from_numpy(mine_knn(x.numpy(), k))


def shared_neighbour_rerank(x: torch.Tensor, q: int, weight: float) -> torch.Tensor:
    """The q best of each image's 4q pool by similarity + ``weight`` x the share of common
    members of the two images' ``REUSE_K`` nearest neighbours (sets held as sorted indices)."""
    near = knn(x, REUSE_K)
    pool = near[:, : 4 * q] if 4 * q <= REUSE_K else knn(x, 4 * q)
    sets = [set(row.tolist()) for row in near]
    overlap = torch.tensor(
        [[len(sets[i] & sets[j]) / REUSE_K for j in pool[i].tolist()] for i in range(len(x))]
    )
    sim = (x[:, None, :] * x[pool]).sum(-1)
    return pool.gather(1, (sim + weight * overlap).topk(q, dim=1).indices)


def purity_table(stage_one: Any, labels: np.ndarray) -> list[dict[str, Any]]:
    mined, backbone = normalised(stage_one.features), normalised(stage_one.embeddings)
    views = normalised(stage_one.weak_embeddings())
    inputs = {"mined features": mined, "backbone": backbone}
    if views.dim() == 3:
        inputs["mean of weak views"] = torch.nn.functional.normalize(views.mean(0), dim=-1)
    rows = [
        {"input": name, "q": q, "purity": neighbour_purity(knn(x, q).numpy(), labels)}
        for name, x in inputs.items()
        for q in (5, 10, 20)
    ]
    for weight in (0.5, 1.0, 2.0):
        nb = shared_neighbour_rerank(mined, 10, weight)
        rows.append(
            {
                "input": f"mined features, shared-neighbour re-ranking x {weight:g}",
                "q": 10,
                "purity": neighbour_purity(nb.numpy(), labels),
            }
        )
    return rows


def sweep_run(folder: Path, trials: list[dict[str, Any]], args: argparse.Namespace) -> dict:
    data, stage_one = open_run(folder, {}, args.threads)
    config = Config.load(folder / "config.yaml")
    features = normalised(stage_one.features)
    neighbours: dict[int, np.ndarray] = {}  # per q, mined once
    if config.mining.method == "knn":  # the run's own at its q: ties broken as it broke them
        neighbours[config.mining.q] = np.load(folder / "neighbours.npy")
    results = []
    for trial in trials:
        settings = dict(trial)
        q = int(settings.pop("q", config.mining.q))
        weight = float(settings.pop("entropy_weight", config.clustering.entropy_weight))
        varied = config.updated({"clustering": settings}).validate()
        if q not in neighbours:
            neighbours[q] = knn(features, q).numpy()
        r = stage_three(varied, stage_one, data.labels, neighbours[q], None, weight)
        results.append(
            {
                "trial": trial,
                "acc": r["acc"],
                "best_acc": r["best_acc"],
                "worst_acc": r["worst_acc"],
                "seconds": r["seconds"],
            }
        )
        print(f"{folder} {trial}: {r['acc']}", file=sys.stderr, flush=True)
    return {
        "run": "/".join(folder.parts[-3:]),  # data set / seed / variant, no machine path
        "n_clusters": config.n_clusters,
        "q": config.mining.q,
        "seed": config.run.seed,
        "settings": {
            "epochs": config.clustering.epochs,
            "frozen_lr": config.clustering.frozen_lr,
            "batch_size": config.clustering.batch_size,
            "entropy_weight": config.clustering.entropy_weight,
        },
        "trials": results,
        "purity": purity_table(stage_one, data.labels) if args.purity else [],
    }


def markdown(results: list[dict[str, Any]], command: str) -> str:
    pct = "{:.1f}".format
    lines = [
        *report_head("Stage-3 sweep on stored stage 1", command),
        "ACC in % of the head each criterion keeps; a trial changes the run's settings "
        "(`{}`: the run's own).",
        "",
        "| run | K | seed | trial | " + " | ".join(f"ACC {c}" for c in CRITERIA) + " | best head "
        "| s |",
        "|---|---|---|---|" + "---|" * len(CRITERIA) + "---|---|",
    ]
    for r in results:
        name = r["run"]
        for t in r["trials"]:
            accs = " | ".join(pct(100 * t["acc"][c]) for c in CRITERIA)
            lines.append(
                f"| {name} | {r['n_clusters']} | {r['seed']} | `{json.dumps(t['trial'])}` | "
                f"{accs} | {pct(100 * t['best_acc'])} | {t['seconds']:.0f} |"
            )
    purity = [(r, p) for r in results for p in r["purity"]]
    if purity:
        lines += ["", "| run | kNN input | q | purity |", "|---|---|---|---|"]
        for r, p in purity:
            name = r["run"]
            lines.append(f"| {name} | {p['input']} | {p['q']} | {pct(100 * p['purity'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished run folders")
    parser.add_argument("--trials", nargs="+", type=json.loads, default=[{}])
    parser.add_argument("--purity", action="store_true", help="also the kNN-input purity table")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tag", default=f"{dt.date.today():%Y-%m-%d}")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [sweep_run(folder, args.trials, args) for folder in args.runs]
    command = "python benchmarks/stage3_sweep.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    write_results(args.results / f"stage3-sweep-{args.tag}", command, results, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
