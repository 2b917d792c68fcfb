"""Stages 2 and 3 on precomputed embeddings at 10^4 .. 10^6 images, beside faiss k-means.

Synthetic embeddings with known labels: a mixture of C = 1,000 Gaussian clusters in D = 384,
their centres grouped in 100 families (sibling clusters are close, as dog breeds are), rows
L2-normalised, written as float32 ``.npy`` and memory-mapped by every stage. Each (N, stage)
runs in its own process; its wall and CPU seconds and peak resident memory (``os.wait4``'s
``ru_maxrss``, memory-mapped pages included) are recorded:

- ``knn-exact``: ``find_neighbours(index="exact")`` (faiss IndexFlatIP), skipped above
  ``--exact-max`` (its N^2 cost is extrapolated instead);
- ``knn-ivf``: the IVF index (``index="ivf"``), its recall against exact search (measured on
  all rows when exact ran, else the index's seeded-sample estimate) and kNN purity;
- ``heads``: stage 3 with ``frozen_settings(N, C)``, the settings smcluster would choose
  itself, on the auto index's neighbours: train, score and select a head, write the
  probabilities chunk by chunk to a memory-mapped ``.npy``; ACC and NMI;
- ``kmeans``: ``faiss.Kmeans`` (K = C, 20 iterations) on the same embeddings; ACC and NMI;
- ``cli`` (``--stages cli``): the whole product as a user runs it, ``smcluster fit
  --embeddings FILE --clusters 1000 --out RUN`` and nothing else (auto's settings, the
  report included); ACC and NMI from its ``assignments.csv``;
- ``cli-auto``: the same with ``--clusters auto``: the number of clusters chosen without
  labels, the search's images and seconds.

    python benchmarks/scale_embeddings.py [--sizes 10000 100000 1000000] [--threads 2]
        [--work /tmp/smcluster-scale] [--exact-max 100000]

Results: ``benchmarks/results/scale-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CLUSTERS, DIM, FAMILIES = 1000, 384, 100
SPREAD, NOISE = 0.6, 1.6


def mixture(path: Path, n: int, seed: int = 0, chunk: int = 100_000) -> None:
    """Write ``n`` rows of the planted mixture to ``path`` (.npy, float32) and the labels
    beside it (``<stem>-labels.npy``), chunk by chunk."""
    rng = np.random.default_rng(seed)
    families = rng.normal(size=(FAMILIES, DIM))
    families /= np.linalg.norm(families, axis=1, keepdims=True)
    offsets = rng.normal(size=(CLUSTERS, DIM))
    offsets /= np.linalg.norm(offsets, axis=1, keepdims=True)
    centres = families[np.arange(CLUSTERS) % FAMILIES] + SPREAD * offsets
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, CLUSTERS, size=n)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, DIM))
    for start in range(0, n, chunk):
        lab = labels[start : start + chunk]
        x = centres[lab] + (NOISE / math.sqrt(DIM)) * rng.normal(size=(len(lab), DIM))
        out[start : start + len(lab)] = x / np.linalg.norm(x, axis=1, keepdims=True)
    out.flush()
    del out
    np.save(path.with_name(path.stem + "-labels.npy"), labels)


def frozen_settings(n: int, n_clusters: int) -> dict[str, Any]:
    """The stage-2/3 settings smcluster's ``auto`` preset chooses for N embeddings and C
    clusters (``smcluster.autoconfig.frozen_settings``), flattened: q, index, batch_size,
    heads, epochs, score_sample."""
    from smcluster.autoconfig import frozen_settings as chosen

    settings = chosen(n, n_clusters)
    return {**settings["mining"], **settings["clustering"]}


def _files(work: Path, n: int) -> dict[str, Path]:
    folder = work / str(n)
    return {
        "embeddings": folder / "embeddings.npy",
        "labels": folder / "embeddings-labels.npy",
        "knn-exact": folder / "knn-exact.npy",
        "knn-ivf": folder / "knn-ivf.npy",
        "probabilities": folder / "probabilities.npy",
    }


def _metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from smcluster.metrics import evaluate

    scores = evaluate(labels, predicted)
    return {"acc": scores["acc"], "nmi": scores["nmi"]}


def write_probabilities(path: Path, shape: tuple[int, int], chunks: Any) -> np.ndarray:
    """Stream (start, chunk) probabilities into an .npy by plain writes (no mapping whose
    dirty pages would count as resident memory); returns each row's argmax."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    offset = header.offset
    del header
    predicted = np.empty(shape[0], dtype=np.int64)
    with open(path, "r+b") as out:
        out.seek(offset)
        for start, p in chunks:
            out.write(p.numpy().astype(np.float32).tobytes())
            predicted[start : start + len(p)] = p.argmax(1).numpy()
    return predicted


def child_knn(work: Path, n: int, index: str) -> dict[str, Any]:
    from smcluster.stages.neighbours import find_neighbours, knn_recall, neighbour_purity

    f = _files(work, n)
    x = np.load(f["embeddings"], mmap_mode="r")
    labels = np.load(f["labels"])
    q = frozen_settings(n, CLUSTERS)["q"]
    found = find_neighbours(x, q, index=index, seed=0, target_recall=0.9)
    np.save(f[f"knn-{index}"], found.indices)
    out = {
        "index": found.index,
        "params": found.params,
        "k": q,
        "sample_recall": found.recall,
        "purity": neighbour_purity(found.indices, labels),
    }
    if index != "exact" and f["knn-exact"].exists():
        out["recall"] = knn_recall(found.indices, np.load(f["knn-exact"]))
    return out


def child_heads(work: Path, n: int) -> dict[str, Any]:
    import torch

    from smcluster.config import ClusteringConfig
    from smcluster.models import ClusterHeads
    from smcluster.stages.clustering import (
        head_probability_chunks,
        score_heads,
        select_head,
        train_heads_on_embeddings,
    )
    from smcluster.stages.neighbours import choose_index

    f = _files(work, n)
    s = frozen_settings(n, CLUSTERS)
    x = np.load(f["embeddings"], mmap_mode="r")
    labels = np.load(f["labels"])
    knn = f[f"knn-{choose_index(n)}"]
    neighbours = torch.from_numpy(np.load(knn))
    config = ClusteringConfig(heads=s["heads"], batch_size=s["batch_size"], epochs=s["epochs"])
    torch.manual_seed(0)
    heads = ClusterHeads(DIM, CLUSTERS, s["heads"])
    seconds: list[float] = []
    started = time.perf_counter()
    train_heads_on_embeddings(
        heads,
        x,
        neighbours,
        config,
        epochs=s["epochs"],
        seed=0,
        progress=False,
        on_epoch_end=lambda e, m, o, r: seconds.append(r["seconds"]),
    )
    trained = time.perf_counter() - started
    scores = score_heads(heads, x, neighbours, config.entropy_weight, sample=s["score_sample"])
    best = select_head(heads, scores)
    scored = time.perf_counter() - started - trained
    predicted = write_probabilities(
        f["probabilities"], (n, CLUSTERS), head_probability_chunks(heads, x, best)
    )
    return {
        "settings": s,
        "train_s": trained,
        "epoch_s": float(np.mean(seconds)),
        "score_s": scored,
        "head": best,
        "clusters_used": int(len(np.unique(predicted))),
        **_metrics(labels, predicted),
    }


def child_kmeans(work: Path, n: int) -> dict[str, Any]:
    import faiss

    f = _files(work, n)
    x = np.load(f["embeddings"], mmap_mode="r")
    labels = np.load(f["labels"])
    # faiss.Kmeans reads all rows (it subsamples 256 per centroid itself).
    kmeans = faiss.Kmeans(DIM, CLUSTERS, niter=20, seed=0, verbose=False)
    kmeans.train(np.ascontiguousarray(x))
    predicted = np.empty(n, dtype=np.int64)
    for start in range(0, n, 65536):
        predicted[start : start + 65536] = kmeans.index.search(
            np.ascontiguousarray(x[start : start + 65536]), 1
        )[1][:, 0]
    return _metrics(labels, predicted)


def _fit_from_the_command_line(work: Path, n: int, clusters: str) -> dict[str, Any]:
    """What a user types: ``smcluster fit --embeddings FILE --clusters CLUSTERS --out RUN``
    and nothing else (the report included); ACC against the planted labels afterwards."""
    import csv
    import shutil

    from smcluster.cli import main as smcluster

    files = _files(work, n)
    run = work / str(n) / f"cli-run-{clusters}"
    if run.exists():
        shutil.rmtree(run)
    argv = ["fit", "--embeddings", str(files["embeddings"]), "--clusters", clusters]
    code = smcluster([*argv, "--out", str(run)])
    if code != 0:
        raise SystemExit(code)
    with open(run / "assignments.csv") as f:
        predicted = np.array([int(row["cluster"]) for row in csv.DictReader(f)])
    settings = json.loads((run / "environment.json").read_text()).get("auto", {})
    metrics = json.loads((run / "metrics.json").read_text())
    out = {
        **_metrics(np.load(files["labels"]), predicted),
        "settings": f"smcluster fit --embeddings FILE --clusters {clusters} (auto: "
        + ", ".join(f"{k}={v}" for k, v in _flat(settings.get("overrides", {})).items())
        + ")",
        "timings": metrics.get("timings", {}),
    }
    if (run / "k-search.json").exists():
        search = json.loads((run / "k-search.json").read_text())
        out["k_search"] = {
            key: search[key] for key in ("chosen", "criterion", "range", "images", "seconds")
        }
    return out


def child_cli(work: Path, n: int) -> dict[str, Any]:
    """``smcluster fit --embeddings FILE --clusters 1000``: the planted number given."""
    return _fit_from_the_command_line(work, n, str(CLUSTERS))


def child_cli_auto(work: Path, n: int) -> dict[str, Any]:
    """``smcluster fit --embeddings FILE --clusters auto``: the number chosen without labels
    (``stages.choose_k``, on a sample above its ``SEARCH_IMAGES``)."""
    return _fit_from_the_command_line(work, n, "auto")


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


CHILDREN = {
    "data": lambda work, n: mixture(_files(work, n)["embeddings"], n) or {},
    "knn-exact": lambda work, n: child_knn(work, n, "exact"),
    "knn-ivf": lambda work, n: child_knn(work, n, "ivf"),
    "heads": child_heads,
    "kmeans": child_kmeans,
    "cli": child_cli,
    "cli-auto": child_cli_auto,
}


def run_child(stage: str, n: int, work: Path, threads: int) -> dict[str, Any]:
    """Run one (N, stage) in a fresh process; its result plus wall, CPU seconds, peak RSS."""
    result = work / str(n) / f"{stage}.json"
    result.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", stage, "--n", str(n), "--work", str(work)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    with open(result.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    row: dict[str, Any] = {
        "n": n,
        "stage": stage,
        "exit": os.waitstatus_to_exitcode(status),
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_mb": usage.ru_maxrss / 1024,
    }
    if row["exit"] == 0 and result.exists():
        row.update(json.loads(result.read_text()))
    print(json.dumps(row), flush=True)
    return row


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    from smcluster.memory import estimate_memory, format_bytes, peak_memory
    from smcluster.stages.neighbours import choose_index

    lines = [
        f"# Stages 2-3 on precomputed embeddings at scale ({meta['date']})",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']}. {meta['note']}",
        "",
        f"Data: {meta['data']}",
        "",
        "Recall is against exact search on all rows where exact search ran, else the index's"
        " estimate on 1,000 seeded queries (marked ~).",
        "",
        "| N | stage | wall s | CPU s | peak MB | index / settings | recall | purity | ACC | NMI |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = ["data", *CHILDREN]
    for r in sorted(rows, key=lambda r: (r["n"], order.index(r["stage"]))):
        if r["stage"] == "data":
            continue
        detail = r.get("params") or r.get("settings") or ""
        if isinstance(detail, dict):
            detail = ", ".join(f"{k}={v}" for k, v in detail.items())
        if "k_search" in r:
            k = r["k_search"]
            detail = (
                f"K = {k['chosen']} chosen by {k['criterion']} over {k['range'][0]}..."
                f"{k['range'][1]} on {k['images']} images in {k['seconds']:.0f} s; {detail}"
            )
        recall = f"{r['recall']:.3f}" if "recall" in r else None
        if r.get("index") == "exact":
            recall = "1 (exact)"
        elif recall is None and r.get("sample_recall") is not None:
            recall = f"~{r['sample_recall']:.3f} (sample)"
        cells = [
            str(r["n"]),
            r["stage"] if r["exit"] == 0 else f"{r['stage']} (exit {r['exit']})",
            f"{r['wall_s']:.0f}",
            f"{r['cpu_s']:.0f}",
            f"{r['peak_mb']:.0f}",
            str(detail),
            recall or "-",
            "-" if "purity" not in r else f"{r['purity']:.3f}",
            "-" if "acc" not in r else f"{r['acc']:.3f}",
            "-" if "nmi" not in r else f"{r['nmi']:.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Memory estimate (``smcluster.memory.estimate_memory`` with these settings; peak stage,"
        " with memory-mapped files / without them) against the largest measured peak:",
        "",
        "| N | estimated peak | without mapped files | measured peak MB |",
        "|---|---|---|---|",
    ]
    for n in meta["sizes"]:
        s = frozen_settings(n, CLUSTERS)
        terms = estimate_memory(
            n,
            DIM,
            s["q"],
            CLUSTERS,
            s["heads"],
            batch_size=s["batch_size"],
            index=choose_index(n),
        )
        stage, full = peak_memory(terms)
        bare = peak_memory(terms, reclaimable=False)[1]
        measured = max((r["peak_mb"] for r in rows if r["n"] == n), default=0.0)
        lines.append(
            f"| {n} | {format_bytes(full)} ({stage}) | {format_bytes(bare)} | {measured:.0f} |"
        )
    lines += ["", "Settings chosen (``frozen_settings``):", ""]
    lines += [
        "| N | q | batch | heads | epochs | index | score sample |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in meta["sizes"]:
        s = frozen_settings(n, CLUSTERS)
        lines.append(
            f"| {n} | {s['q']} | {s['batch_size']} | {s['heads']} | {s['epochs']} | "
            f"{s['index']} | {s['score_sample'] or 'all'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/smcluster-scale"))
    parser.add_argument("--exact-max", type=int, default=100_000)
    parser.add_argument("--stages", nargs="+", default=["knn-exact", "knn-ivf", "heads", "kmeans"])
    parser.add_argument("--note", default="")
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--n", type=int)
    parser.add_argument("--render", type=Path, help="rewrite the .md of a results .json")
    args = parser.parse_args()
    if args.render:
        saved = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(render(saved["rows"], saved["meta"]))
        return
    if args.child:
        out = CHILDREN[args.child](args.work, args.n)
        (args.work / str(args.n) / f"{args.child}.json").write_text(json.dumps(out))
        return
    rows = []
    for n in args.sizes:
        if not _files(args.work, n)["embeddings"].exists():
            rows.append(run_child("data", n, args.work, args.threads))
        for stage in args.stages:
            if stage == "knn-exact" and n > args.exact_max:
                continue
            rows.append(run_child(stage, n, args.work, args.threads))
    date = dt.date.today().isoformat()
    meta = {
        "date": date,
        "command": "python benchmarks/scale_embeddings.py " + shlex.join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores, 24 GB ({platform.machine()})",
        "note": args.note,
        "sizes": args.sizes,
        "data": (
            f"{CLUSTERS} clusters in D = {DIM} (centres in {FAMILIES} families, spread "
            f"{SPREAD}, noise {NOISE}), uniform cluster sizes, rows L2-normalised"
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"scale-{date}"
    if stem.with_suffix(".json").exists():  # keep rows of other sizes from an earlier run
        earlier = json.loads(stem.with_suffix(".json").read_text())
        done = {(r["n"], r["stage"]) for r in rows}
        kept = [r for r in earlier["rows"] if (r["n"], r["stage"]) not in done]
        rows = sorted(kept + rows, key=lambda r: r["n"])
        meta["sizes"] = sorted(set(earlier["meta"]["sizes"]) | set(args.sizes))
        meta["command"] = " and ".join(dict.fromkeys([earlier["meta"]["command"], meta["command"]]))
        meta["note"] = " ".join(dict.fromkeys(filter(None, [earlier["meta"]["note"], args.note])))
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    stem.with_suffix(".md").write_text(render(rows, meta))


if __name__ == "__main__":
    main()
