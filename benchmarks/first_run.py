"""The first run a newcomer types: ``smcluster fit --data FILE --clusters K --out RUN`` and
nothing else, on every shared data set at its native size (the ``auto`` preset decides).

For each set: the settings auto chose and the budget it printed, wall time, peak memory and
ACC/NMI/ARI, beside k-means on raw pixels (at most 32 px, as in benchmarks/quality.py) on the
same images. Each fit runs as its own process; peak memory is its maximum resident set.

    python benchmarks/first_run.py
    python benchmarks/first_run.py --sets omniglot_background mnist

Results: ``benchmarks/results/first-run-<date>.json`` and ``.md``; run folders under
``runs/bench/first-run``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import _kmeans, machine, measured, shared_data_dir  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"

SETS: dict[str, int] = {
    "mnist": 10,
    "cifar10_test": 10,
    "cifar10_lossless_subset": 10,
    "omniglot_background": 964,
    "tinyimagenet_train_32": 200,
}
"""The shared sets and their number of classes, the K a user would give."""

PIXEL_SIZE = 32

CHOSEN = (
    "data.image_size",
    "features.backbone",
    "features.width",
    "features.batch_size",
    "features.epochs",
    "features.queue_length",
    "mining.q",
    "clustering.heads",
    "clustering.epochs",
    "clustering.batch_size",
    "run.time_budget",
)


def pixel_kmeans(path: Path, k: int, seed: int) -> dict[str, Any]:
    """k-means on the raw pixels, images area-resized to at most 32 px."""
    import torch
    import torch.nn.functional as F

    from smcluster.metrics import evaluate

    started = time.perf_counter()
    with np.load(path, allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    x = torch.from_numpy(images).float()
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    if x.shape[-1] > PIXEL_SIZE:
        x = F.interpolate(x, size=(PIXEL_SIZE, PIXEL_SIZE), mode="area")
    pred = _kmeans(x.reshape(len(x), -1).numpy() / 255.0, k, seed)
    scores = {key: float(v) for key, v in evaluate(labels, pred).items()}
    return {**scores, "seconds": time.perf_counter() - started}


def setting(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def first_run(name: str, k: int, args: argparse.Namespace) -> dict[str, Any]:
    path = shared_data_dir(args.shared_data) / f"{name}.npz"
    out = args.work / name
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    exe = Path(sys.executable).with_name("smcluster")
    cmd = [str(exe) if exe.exists() else "smcluster", "fit", "--data", str(path)]
    cmd += ["--clusters", str(k), "--out", str(out)]
    log = out.parent / f"{name}.log"
    code, wall, peak = measured(cmd, log)
    record: dict[str, Any] = {
        "set": name,
        "clusters": k,
        "command": " ".join(["smcluster", *cmd[1:]])
        .replace(str(path), f"{name}.npz")
        .replace(str(out), f"runs/{name}"),
        "exit_code": code,
        "wall_seconds": wall,
        "peak_rss_mb": peak,
        "log_head": [line for line in log.read_text().splitlines() if "it/s" not in line][:8],
    }
    if code == 0:
        config = yaml.safe_load((out / "config.yaml").read_text())
        metrics = json.loads((out / "metrics.json").read_text())
        record["chosen"] = {key: setting(config, key) for key in CHOSEN}
        record["metrics"] = {key: metrics.get(key) for key in ("acc", "nmi", "ari", "knn_accuracy")}
        record["timings"] = metrics.get("timings", {})
    record["pixels_kmeans"] = pixel_kmeans(path, k, seed=0)
    return record


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def render(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [
        f"# First run with the auto preset, {doc['date']}",
        "",
        "Command, from the repository root:",
        "",
        f"    {doc['command']}",
        "",
        "Each set ran as `smcluster fit --data SET.npz --clusters K --out RUN`, nothing else.",
        f"Machine: {m['cpu_cores']} CPU cores, {m['platform']}, torch {m['torch']}, "
        f"GPU {m['cuda'] or 'none'}.",
        "",
        "| set | K | exit | budget s | wall s | peak MB | ACC | NMI | ARI | kNN acc "
        "| k-means pixels ACC | image size | backbone | batch | epochs s1 | q "
        "| heads x epochs s3 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        c, mt = r.get("chosen", {}), r.get("metrics", {})
        lines.append(
            f"| {r['set']} | {r['clusters']} | {r['exit_code']} "
            f"| {c.get('run.time_budget') or '-'} | {r['wall_seconds']:.0f} "
            f"| {r['peak_rss_mb']:.0f} | {_pct(mt.get('acc'))} | {_pct(mt.get('nmi'))} "
            f"| {_pct(mt.get('ari'))} | {_pct(mt.get('knn_accuracy'))} "
            f"| {_pct(r['pixels_kmeans']['acc'])} | {c.get('data.image_size', '-')} "
            f"| {c.get('features.backbone', '-')} | {c.get('features.batch_size', '-')} "
            f"| {c.get('features.epochs', '-')} | {c.get('mining.q', '-')} "
            f"| {c.get('clustering.heads', '-')} x {c.get('clustering.epochs', '-')} |"
        )
    lines += ["", "What auto printed (first lines of each log):", ""]
    for r in doc["runs"]:
        lines += [f"- {r['set']}:", "", *[f"      {line}" for line in r["log_head"]], ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=sorted(SETS), default=list(SETS))
    parser.add_argument("--shared-data", help="folder of the shared .npz sets")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "first-run")
    parser.add_argument("--tag", default=dt.date.today().isoformat())
    parser.add_argument("--render", type=Path, help="rewrite the .md of a results .json")
    args = parser.parse_args(argv)
    if args.render:
        doc = json.loads(args.render.read_text())
        for run in doc["runs"]:
            run["log_head"] = [line for line in run["log_head"] if "it/s" not in line]
        args.render.write_text(json.dumps(doc, indent=2) + "\n")
        args.render.with_suffix(".md").write_text(render(doc))
        return
    stem = RESULTS / f"first-run-{args.tag}"
    runs = []
    for name in args.sets:
        runs.append(first_run(name, SETS[name], args))
        doc = {
            "date": dt.date.today().isoformat(),
            "command": "python benchmarks/first_run.py " + " ".join(argv or sys.argv[1:]),
            "machine": machine(),
            "runs": runs,
        }
        stem.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
        stem.with_suffix(".md").write_text(render(doc))
    print(stem.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
