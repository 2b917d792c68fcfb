"""Stage 1 where the budget decides (issue 13, item 2): kNN accuracy of the stage-1 features
and the final ACC against the number of stage-1 optimizer steps, per feature model.

Each budget is a separate run of ``quality.py`` with ``--epochs E`` (so each gets its whole
cosine and momentum schedule, as a user's run of that length would), one seed. Variant (c)
trains SimCLR and (d) the paper's model, both then mined with plain kNN and clustered with
SCAN's stage 3 at 1e-2, so only stage 1 differs. ``--set`` probes the paper's model (for
example ``features.momentum_base=0.99``); ``--label`` names the probe.

    python benchmarks/stage1_budget.py --dataset mnist-10k --epochs 8 20 40 77 \\
        --variants c d --threads 1 --tag mnist-10k

The quality.py tables of every budget go to ``benchmarks/results/stage1-budget/``; the curve
to ``benchmarks/results/stage1-budget-<tag>[-<label>].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quality  # noqa: E402
from probes import RESULTS, report_head, write_results  # noqa: E402

MODELS = {"c": "SimCLR", "d": "paper", "f": "paper"}


def portable(path: Path) -> Path:
    """``path`` relative to the repository when inside it (what the results record)."""
    return path.relative_to(quality.REPO) if path.is_relative_to(quality.REPO) else path


def steps_of(run: Path) -> int:
    """Stage-1 optimizer steps of a finished run: epochs x (images // batch)."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    images = json.loads((run / "metrics.json").read_text())["n_images"]
    features = config["features"]
    return int(features["epochs"]) * max(images // int(features["batch_size"]), 1)


def curve_rows(doc: dict[str, Any], work: Path, epochs: int) -> list[dict[str, Any]]:
    """One row per finished run of a quality.py results document."""
    rows = []
    for r in doc["runs"]:
        if r.get("error") or r["variant"] not in MODELS or "metrics" not in r:
            continue
        m = r["metrics"]
        run = work / r["dataset"] / f"seed{r['seed']}" / r["variant"]
        rows.append(
            {
                "dataset": r["dataset"],
                "variant": r["variant"],
                "model": MODELS[r["variant"]],
                "epochs": epochs,
                "steps": steps_of(run),
                "knn_accuracy": m.get("knn_accuracy"),
                "acc": m.get("acc"),
                "nmi": m.get("nmi"),
                "features_seconds": m.get("features_seconds"),
            }
        )
    return rows


def markdown(results: list[dict[str, Any]], command: str) -> str:
    pct = "{:.1f}".format
    lines = [
        *report_head(
            "Stage-1 budget curve",
            command,
            "one seed, each budget a separate run with its whole schedule",
        ),
        "| data set | model | variant | stage-1 epochs | steps | kNN accuracy | ACC | NMI | "
        "stage-1 s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["dataset"], r["model"], r["steps"])):
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['variant']} | {r['epochs']} | {r['steps']} | "
            f"{pct(100 * r['knn_accuracy'])} | {pct(100 * r['acc'])} | {pct(100 * r['nmi'])} | "
            f"{r['features_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", required=True, help="a data set of the cpu suite")
    p.add_argument("--epochs", type=int, nargs="+", required=True, help="stage-1 budgets")
    p.add_argument("--variants", nargs="+", default=["c", "d"], help="c: SimCLR, d: paper")
    p.add_argument("--set", action="append", default=[], help="SECTION.KEY=VALUE (a probe)")
    p.add_argument("--label", default="", help="names the probe in the file names")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default=str(quality.REPO / "runs" / "bench" / "stage1-budget"))
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--tag", required=True)
    args = p.parse_args(argv)
    name = args.tag + (f"-{args.label}" if args.label else "")
    results, work_root = Path(args.results).resolve(), Path(args.work).resolve()
    os.chdir(quality.REPO)  # the paths quality.py records are then the repository's own
    raw = portable(results / "stage1-budget")
    rows: list[dict[str, Any]] = []
    for epochs in args.epochs:
        work = portable(work_root / f"{name}-e{epochs}")
        tag = f"stage1-budget-{name}-e{epochs}"
        cmd = ["--suite", "cpu", "--dataset", args.dataset, "--variants", *args.variants]
        cmd += ["--epochs", str(epochs), "--seeds", "0", "--threads", str(args.threads)]
        cmd += ["--work", str(work), "--results", str(raw), "--tag", tag]
        for setting in args.set:
            cmd += ["--set", setting]
        quality.main(cmd)
        doc = json.loads((raw / f"cpu-{tag}.json").read_text())
        rows += curve_rows(doc, work, epochs)
    command = "python benchmarks/stage1_budget.py " + " ".join(shlex.quote(a) for a in argv)
    write_results(results / f"stage1-budget-{name}", command, rows, markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
