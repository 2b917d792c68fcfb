"""The image memory estimate (``smcluster.memory.image_model_terms``) against measured peaks.

Each configuration (backbone, image size, batch) trains the paper's feature model for two
steps on random images in a fresh process; its peak resident memory is ``os.wait4``'s
``ru_maxrss``. The estimate is the stage-1 peak of the same settings (runtime term included).
The ratio measured / estimated is reported; the estimate is meant to be on the safe side
(ratio <= 1) and within the factor stated in the results.

    python benchmarks/memory_estimate.py [--threads 2]

Results: ``benchmarks/results/memory-estimate-<date>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CASES = [
    ("small_cnn", 28, 1, 128),
    ("small_cnn", 28, 1, 512),
    ("small_cnn", 32, 3, 256),
    ("resnet18", 32, 3, 64),
    ("resnet18", 32, 3, 256),
    ("resnet18", 64, 3, 32),
    ("resnet18", 64, 3, 128),
]


def settings(backbone: str, size: int, channels: int, batch: int) -> dict[str, Any]:
    small = backbone == "small_cnn"
    return {
        "data": {"image_size": size, "channels": channels},
        "features": {
            "backbone": backbone,
            "width": 32,
            "projector_hidden": 512 if small else 2048,
            "predictor_hidden": 512 if small else 2048,
            "out_dim": 128 if small else 256,
            "queue_length": 4096,
            "batch_size": batch,
            "epochs": 1,
            "warmup_epochs": 0,
        },
        "run": {"progress": False, "report": False},
    }


def child(case: list[Any]) -> None:
    """Two stage-1 steps of one case (the whole data set is two batches)."""
    import numpy as np

    from smcluster.config import Config
    from smcluster.data import from_arrays
    from smcluster.engine import make_fabric
    from smcluster.stages.features import train_features

    backbone, size, channels, batch = case
    config = Config().updated(settings(backbone, size, channels, batch)).validate()
    shape = (2 * batch, size, size) + ((channels,) if channels == 3 else ())
    images = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    train_features(from_arrays(images), config, make_fabric(config.run))


def estimate(case: tuple[str, int, int, int]) -> int:
    from smcluster.config import Config
    from smcluster.memory import image_model_terms

    backbone, size, channels, batch = case
    config = Config().updated(settings(*case)).validate()
    terms = image_model_terms(config, 2 * batch, channels, size)
    stage1 = ("runtime", "images in memory")  # the "all" terms stage 1 holds
    return sum(t.nbytes for t in terms if t.stage == "features" or t.name.startswith(stage1))


def measure(case: tuple[str, int, int, int], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}
    command = [sys.executable, __file__, "--child", json.dumps(list(case))]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    peak = usage.ru_maxrss * 1024
    est = estimate(case)
    row = {
        "backbone": case[0],
        "image_size": case[1],
        "channels": case[2],
        "batch": case[3],
        "exit": os.waitstatus_to_exitcode(status),
        "peak_mb": peak / 2**20,
        "estimate_mb": est / 2**20,
        "ratio": peak / est,
    }
    print(json.dumps(row), flush=True)
    return row


def render(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    ratios = [r["ratio"] for r in rows if r["exit"] == 0]
    lines = [
        f"# Image memory estimate against measured peak ({meta['date']})",
        "",
        f"Command: `{meta['command']}`; {meta['machine']}. Each case trains the paper model for "
        f"two steps on 2 x batch random images in its own process; measured = ru_maxrss.",
        "",
        "| backbone | px | channels | batch | measured MB | estimated MB | measured / estimated |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backbone']} | {r['image_size']} | {r['channels']} | {r['batch']} | "
            f"{r['peak_mb']:.0f} | {r['estimate_mb']:.0f} | {r['ratio']:.2f} |"
        )
    lines += [
        "",
        f"Measured / estimated: {min(ratios):.2f} to {max(ratios):.2f}: the estimate is within a "
        f"factor {max(1 / min(ratios), max(ratios)):.1f} of the measured peak.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child")
    parser.add_argument(
        "--estimate-again",
        type=Path,
        help="recompute the estimates of a results .json (after a change to the estimate) "
        "against its measured peaks, and rewrite its .md",
    )
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.estimate_again:
        saved = json.loads(args.estimate_again.read_text())
        for r in saved["rows"]:
            est = estimate((r["backbone"], r["image_size"], r["channels"], r["batch"]))
            r["estimate_mb"], r["ratio"] = est / 2**20, r["peak_mb"] * 2**20 / est
        note = ". The estimates were recomputed with --estimate-again after the change to "
        note += "memory.ACTIVATION_FACTOR (2 -> 1); the measured peaks are those of the run"
        saved["meta"]["machine"] += note
        args.estimate_again.write_text(json.dumps(saved, indent=1))
        args.estimate_again.with_suffix(".md").write_text(render(saved["rows"], saved["meta"]))
        return
    rows = [measure(case, args.threads) for case in CASES]
    date = dt.date.today().isoformat()
    meta = {
        "date": date,
        "command": "python benchmarks/memory_estimate.py " + " ".join(sys.argv[1:]),
        "machine": f"{os.cpu_count()} CPU cores, {args.threads} threads",
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"memory-estimate-{date}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    stem.with_suffix(".md").write_text(render(rows, meta))


if __name__ == "__main__":
    main()
