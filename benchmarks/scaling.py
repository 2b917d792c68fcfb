"""How time and memory of each stage grow with the number of images N and of clusters C.

Three parts, each measured in its own process (peak resident memory from ``os.wait4``):

- ``n``: the whole pipeline (paper features, three-view mining, frozen-feature heads) on the
  first N MNIST images at 16 px (the ``cpu-mnist`` preset) for 1 stage-1 epoch, 1 mining-head
  epoch and 1 stage-3 epoch, i.e. the per-epoch cost; seconds per stage from ``metrics.json``
  and the epoch seconds from ``history.jsonl``.
- ``mining``: ``knn_search`` alone on random 128-d features, k = 4q = 80 (three-view's
  candidate count for q = 20), as N grows: time and the memory it adds over the process's
  baseline (expected O(N k) output plus one chunk x N similarity block).
- ``clusters``: stage 3 alone (10 SCAN heads on frozen 128-d features, 1 epoch, then the
  head-selection pass) on N random features as C grows 10 -> 1,000.

The log-log slope of time against N (or C) is reported: about 1 means linear growth.

    python benchmarks/scaling.py [--sizes 2000 4000 ... 64000] [--clusters 10 100 1000]
        [--threads 2] [--parts n mining clusters]

Results: ``benchmarks/results/scaling-<date>.json`` and ``.md``. Data: the shared
``mnist.npz`` (``--shared-data``, ``$SMCLUSTER_SHARED_DATA``, default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y against log x (the exponent of a power law)."""
    lx, ly = np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float))
    return float(np.polyfit(lx, ly, 1)[0])


def render_rows(rows: list[dict[str, Any]], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            v = r.get(k)
            if isinstance(v, float):
                cells.append(f"{v:.1f}" if k.endswith("_mb") else f"{v:.2f}")
            else:
                cells.append("-" if v is None else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _measured(cmd: list[str], log: Path) -> tuple[int, float, float]:
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
    return os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_maxrss / 1024


def _mnist_subset(shared: Path, n: int, cache: Path) -> Path:
    out = cache / f"mnist-{n}.npz"
    if not out.exists():
        with np.load(shared / "mnist.npz", allow_pickle=False) as f:
            images, labels = f["images"][:n], f["labels"][:n]
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(out, images=images, labels=labels)
    return out


def part_n(opts: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    exe = Path(sys.executable).with_name("smcluster")
    rows = []
    for n in opts.sizes:
        data = _mnist_subset(opts.shared, n, work / "data")
        out = work / f"n{n}"
        if out.exists():
            import shutil

            shutil.rmtree(out)
        cmd = [
            str(exe),
            "fit",
            "--data",
            str(data),
            "--clusters",
            "10",
            "--preset",
            "cpu-mnist",
            "--epochs",
            "1",
            "--cluster-epochs",
            "1",
            "--set",
            "mining.warmup_epochs=1",
            "--threads",
            str(opts.threads),
            "--no-report",
            "--quiet",
            "--out",
            str(out),
        ]
        load = os.getloadavg()[0]  # other processes on the machine skew the timings
        code, wall, peak = _measured(cmd, work / f"n{n}.log")
        row: dict[str, Any] = {
            "n": n,
            "load_before": load,
            "wall_seconds": wall,
            "peak_rss_mb": peak,
        }
        if code == 0:
            timings = json.loads((out / "metrics.json").read_text())["timings"]
            hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
            for stage in ("features", "mining-head", "clustering"):
                secs = [h["seconds"] for h in hist if h["stage"] == stage and "seconds" in h]
                row[f"{stage.replace('-', '_')}_epoch_s"] = secs[0] if secs else None
            for key in ("features_seconds", "neighbours_seconds", "clustering_seconds"):
                row[key] = timings.get(key)
        else:
            row["error"] = (work / f"n{n}.log").read_text()[-1500:]
        rows.append(row)
        print(
            f"n={n}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)),
            flush=True,
        )
    return rows


def _child(kind: str, args: list[str], opts: argparse.Namespace, work: Path, tag: str) -> dict:
    out = work / f"{tag}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_child",
        kind,
        str(out),
        str(opts.threads),
        *args,
    ]
    code, wall, peak = _measured(cmd, work / f"{tag}.log")
    if code != 0:
        return {"error": (work / f"{tag}.log").read_text()[-1500:], "peak_rss_mb": peak}
    row = json.loads(out.read_text())
    row["peak_rss_mb"] = peak
    row["process_seconds"] = wall
    return row


def part_mining(opts: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows = []
    for n in opts.sizes:
        row = {
            "n": n,
            "k": opts.k,
            **_child("mining", [str(n), str(opts.k)], opts, work, f"mine{n}"),
        }
        row["output_mb"] = n * opts.k * 8 / 2**20
        rows.append(row)
        print(
            f"mining n={n}: {row.get('seconds', float('nan')):.2f} s, "
            f"+{row.get('added_rss_mb', float('nan')):.1f} MB",
            flush=True,
        )
    return rows


def part_clusters(opts: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    rows = []
    for c in opts.clusters:
        row = {
            "clusters": c,
            "n": opts.cluster_n,
            **_child("clusters", [str(opts.cluster_n), str(c)], opts, work, f"heads{c}"),
        }
        rows.append(row)
        print(f"clusters={c}: {row.get('epoch_seconds', float('nan')):.2f} s/epoch", flush=True)
    return rows


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(argv: list[str]) -> None:
    import torch

    kind, out, threads, *rest = argv
    torch.set_num_threads(int(threads))
    rng = np.random.default_rng(0)
    result: dict[str, Any] = {}
    if kind == "mining":
        from smcluster.stages.neighbours import knn_search

        n, k = int(rest[0]), int(rest[1])
        x = rng.standard_normal((n, 128), dtype=np.float32)
        knn_search(x[:256], 8)  # load the backend before the baseline
        base = _rss_mb()
        started = time.perf_counter()
        idx, _ = knn_search(x, k)
        result = {"seconds": time.perf_counter() - started, "added_rss_mb": _rss_mb() - base}
        assert idx.shape == (n, k)
    elif kind == "clusters":
        from smcluster.config import Config
        from smcluster.models import ClusterHeads
        from smcluster.stages.clustering import (
            ClusteringModel,
            embedding_fetch,
            score_heads,
            select_head,
            train_scan,
        )

        n, c = int(rest[0]), int(rest[1])
        cfg = Config().updated({"n_clusters": c}).clustering
        emb = torch.from_numpy(rng.standard_normal((n, 128), dtype=np.float32))
        nb = torch.from_numpy(rng.integers(0, n, size=(n, 20)))
        heads = ClusterHeads(128, c, cfg.heads)
        base = _rss_mb()
        started = time.perf_counter()
        train_scan(
            ClusteringModel(torch.nn.Identity(), heads),
            embedding_fetch(emb[None], torch.device("cpu")),
            nb,
            cfg,
            lr=cfg.frozen_lr,
            epochs=1,
            seed=0,
            progress=False,
        )
        epoch = time.perf_counter() - started
        started = time.perf_counter()
        select_head(heads, score_heads(heads, emb, nb, cfg.entropy_weight))
        result = {
            "epoch_seconds": epoch,
            "selection_seconds": time.perf_counter() - started,
            "added_rss_mb": _rss_mb() - base,
        }
    Path(out).write_text(json.dumps(result))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_child"]:
        child(argv[1:])
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000, 16000, 32000, 64000])
    p.add_argument(
        "--pipeline-sizes",
        type=int,
        nargs="+",
        help="N for the whole-pipeline part (default: --sizes)",
    )
    p.add_argument("--clusters", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    p.add_argument("--cluster-n", type=int, default=20000, help="N for the cluster-count part")
    p.add_argument("--k", type=int, default=80)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--parts",
        nargs="+",
        default=["n", "mining", "clusters"],
        choices=["n", "mining", "clusters"],
    )
    p.add_argument("--note", help="a remark printed under the machine line")
    p.add_argument("--shared-data")
    p.add_argument("--work", help="run folders (default runs/bench/scaling)")
    p.add_argument("--results", help="output folder (default benchmarks/results)")
    opts = p.parse_args(argv)
    env = os.environ.get("SMCLUSTER_SHARED_DATA")
    opts.shared = Path(opts.shared_data or env or REPO.parent / "shared" / "data")
    work = Path(opts.work or REPO / "runs" / "bench" / "scaling")
    work.mkdir(parents=True, exist_ok=True)
    import torch

    date = dt.date.today().isoformat()
    doc: dict[str, Any] = {
        "date": date,
        "command": "python benchmarks/scaling.py " + " ".join(shlex.quote(a) for a in argv),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "torch": torch.__version__,
            "threads": opts.threads,
        },
    }
    results = Path(opts.results or RESULTS)
    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"scaling-{date}"
    if stem.with_suffix(".json").exists():  # keep the other parts measured today
        kept = json.loads(stem.with_suffix(".json").read_text())
        doc = {**{k: v for k, v in kept.items() if k not in opts.parts}, **doc}
        doc["command"] = "; ".join(dict.fromkeys([kept.get("command", ""), doc["command"]]))
    if opts.note:
        doc["note"] = opts.note
    parts = {"clusters": part_clusters, "mining": part_mining, "n": part_n}
    for name in ("clusters", "mining", "n"):
        if name not in opts.parts:
            continue
        if name == "n" and opts.pipeline_sizes:
            sizes, opts.sizes = opts.sizes, opts.pipeline_sizes
            doc[name] = parts[name](opts, work)
            opts.sizes = sizes
        else:
            doc[name] = parts[name](opts, work)
        _write(doc, stem)
    print(f"results: {stem}.json and {stem}.md")


def _slope(rows: list[dict[str, Any]], x: str, y: str) -> float | None:
    pts = [(r[x], r[y]) for r in rows if r.get(y) and r[y] > 0]
    return loglog_slope(*zip(*pts, strict=True)) if len(pts) >= 2 else None


def _write(doc: dict[str, Any], stem: Path) -> None:
    slopes: dict[str, Any] = {}
    if "n" in doc:
        for key in (
            "features_epoch_s",
            "mining_head_epoch_s",
            "clustering_epoch_s",
            "features_seconds",
            "neighbours_seconds",
            "clustering_seconds",
        ):
            slopes[f"n: {key}"] = _slope(doc["n"], "n", key)
    if "mining" in doc:
        slopes["mining: seconds"] = _slope(doc["mining"], "n", "seconds")
        slopes["mining: added_rss_mb"] = _slope(doc["mining"], "n", "added_rss_mb")
    if "clusters" in doc:
        slopes["clusters: epoch_seconds"] = _slope(doc["clusters"], "clusters", "epoch_seconds")
        slopes["clusters: added_rss_mb"] = _slope(doc["clusters"], "clusters", "added_rss_mb")
    doc["loglog_slopes"] = slopes
    (stem.with_suffix(".json")).write_text(json.dumps(doc, indent=1))
    m = doc["machine"]
    md = [
        f"# Scaling benchmark, {doc['date']}",
        "",
        f"```\n{doc['command']}\n```".replace("; ", "\n"),
        "",
        f"Machine: {m['cpu_cores']} CPU cores, torch {m['torch']}, "
        f"{m['threads']} torch threads per process. Peak MB: the measuring process's maximum "
        "resident memory (includes torch, "
        "about 300-400 MB); added MB: growth of that maximum during the measured call.",
        "",
        *([doc["note"], ""] if doc.get("note") else []),
    ]
    if "n" in doc:
        md += [
            "## Whole pipeline vs N (MNIST 16 px, cpu-mnist, 1 epoch per stage)",
            "",
            render_rows(
                doc["n"],
                [
                    "n",
                    "features_epoch_s",
                    "mining_head_epoch_s",
                    "clustering_epoch_s",
                    "features_seconds",
                    "neighbours_seconds",
                    "clustering_seconds",
                    "wall_seconds",
                    "peak_rss_mb",
                    "load_before",
                ],
            ),
            "",
        ]
    if "mining" in doc:
        md += [
            "## kNN search vs N (random 128-d, k = 80)",
            "",
            render_rows(
                doc["mining"], ["n", "k", "seconds", "added_rss_mb", "output_mb", "peak_rss_mb"]
            ),
            "",
        ]
    if "clusters" in doc:
        md += [
            "## Stage 3 (10 heads, frozen 128-d features) vs clusters",
            "",
            render_rows(
                doc["clusters"],
                [
                    "clusters",
                    "n",
                    "epoch_seconds",
                    "selection_seconds",
                    "added_rss_mb",
                    "peak_rss_mb",
                ],
            ),
            "",
        ]
    md += ["## Log-log slopes (1 = linear)", "", "| series | slope |", "|---|---|"]
    md += [f"| {k} | {'-' if v is None else f'{v:.2f}'} |" for k, v in slopes.items()]
    md.append("")
    stem.with_suffix(".md").write_text("\n".join(md))


if __name__ == "__main__":
    _ = math
    main()
