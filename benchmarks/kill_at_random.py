"""Kill `smcluster fit` at random moments, resume it, and check it ends as an unbroken run.

One unbroken run is the reference; then each of ``--runs`` runs is started in a subprocess,
killed with SIGKILL ``--kills`` times at moments drawn uniformly over the reference's working
time, counted from the moment its run folder appears (so no kill is spent on start-up, and
a busy machine shifts fewer kills past the end; one ``--seed`` fixes them all), continued
with ``smcluster fit --resume`` after each kill and finished. A run counts as identical
when its assignments.csv is byte for byte the reference's, its probabilities.npy equal,
its history holds the same epochs (none twice) and its metrics match but for the timings.
Reference and resumed runs use the same ``--threads``: results can depend on the thread
count.

    python benchmarks/kill_at_random.py [--runs 20] [--seed 0] [--threads 1]

Writes ``results/kill-at-random-<date>.json`` and ``.md``; run folders go to
``runs/bench/kill-at-random/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from smcluster.runfolder import RunFolder

REPO = Path(__file__).resolve().parents[1]
BOUNDARY_FILES = [
    ("config.yaml", "run folder written"),
    ("checkpoints/features.pt", "stage 1 done"),
    ("embeddings.npy", "features.npy and embeddings.npy written"),
    ("neighbours.npy", "stage 2 done"),
    ("checkpoints/clustering.pt", "stage 3 done"),
    ("probabilities.npy", "outputs begun"),
    ("assignments.csv", "finished"),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--kills", type=int, default=1, help="kills per run before it finishes")
    parser.add_argument("--seed", type=int, default=0, help="fixes the kill moments")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--clusters", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=2, help="stage-1 epochs")
    parser.add_argument("--warmup-epochs", type=int, default=40, help="mining head epochs")
    parser.add_argument("--cluster-epochs", type=int, default=100, help="stage-3 epochs")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench" / "kill-at-random")
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "benchmarks" / "results" / f"kill-at-random-{date.today()}",
        help="results path without suffix (.json and .md are written)",
    )
    return parser.parse_args()


def fit_command(args: argparse.Namespace, out: Path, *, resume: bool) -> list[str]:
    command = [sys.executable, "-m", "smcluster.cli", "fit", "--out", str(out)]
    if resume:
        return [*command, "--resume", "--quiet", "--no-report"]
    return [
        *command,
        *f"--data {args.data} --preset {args.preset} --clusters {args.clusters}".split(),
        *f"--epochs {args.epochs} --cluster-epochs {args.cluster_epochs}".split(),
        *f"--threads {args.threads} --quiet --no-report".split(),
        *f"--set mining.warmup_epochs={args.warmup_epochs}".split(),
    ]


def reached(out: Path) -> str:
    """The last stage boundary whose file exists, and the last logged epoch."""
    state = "nothing written"
    for name, meaning in BOUNDARY_FILES:
        if (out / name).exists():
            state = meaning
    rows = RunFolder(out).history() if (out / "config.yaml").exists() else []
    if rows:
        state += f"; last epoch logged: {rows[-1]['stage']} {rows[-1]['epoch']}"
    return state


def wait_for(path: Path, process: subprocess.Popen) -> float:
    """Seconds until ``path`` exists (or the process ends), polled every 20 ms."""
    started = time.perf_counter()
    while not path.exists() and process.poll() is None:
        time.sleep(0.02)
    return time.perf_counter() - started


def killed_at(command: list[str], seconds: float, out: Path) -> bool:
    """Run ``command``, SIGKILL it ``seconds`` after its run folder ``out`` holds a config;
    False when it ended before that."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for(out / "config.yaml", process)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {process.stderr.read().decode()}")
    return False


def finish(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")


def compare(run: Path, reference: Path) -> dict[str, bool]:
    def epochs(path: Path) -> list[tuple[str, int]]:
        return [(r["stage"], r["epoch"]) for r in RunFolder(path).history()]

    def metrics(path: Path) -> dict[str, Any]:
        values = RunFolder(path).load_json("metrics")
        del values["timings"]
        return values

    return {
        "assignments": (run / "assignments.csv").read_bytes()
        == (reference / "assignments.csv").read_bytes(),
        "probabilities": bool(
            np.array_equal(
                np.load(run / "probabilities.npy"), np.load(reference / "probabilities.npy")
            )
        ),
        "history": epochs(run) == epochs(reference),
        "metrics": metrics(run) == metrics(reference),
    }


def main() -> int:
    args = parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    reference = args.work / "reference"
    process = subprocess.Popen(
        fit_command(args, reference, resume=False), stdout=subprocess.DEVNULL
    )
    wait_for(reference / "config.yaml", process)
    started = time.perf_counter()
    if process.wait() != 0:
        raise RuntimeError("the reference run failed")
    duration = time.perf_counter() - started
    print(f"reference: {duration:.1f} s from its run folder to its end", flush=True)

    rng = np.random.default_rng(args.seed)
    moments = rng.uniform(0.0, duration, size=(args.runs, args.kills))
    runs = []
    for i, kills in enumerate(moments):
        out = args.work / f"run-{i:02d}"
        started = time.perf_counter()
        events = []
        for seconds in kills:
            resume = (out / "config.yaml").exists()
            if not resume:  # killed before the run folder existed: start again
                shutil.rmtree(out, ignore_errors=True)
            was_killed = killed_at(fit_command(args, out, resume=resume), float(seconds), out)
            events.append(
                {"kill_at_s": round(float(seconds), 2), "killed": was_killed, "state": reached(out)}
            )
            if not was_killed:
                break
        if not (out / "config.yaml").exists():
            shutil.rmtree(out, ignore_errors=True)
            finish(fit_command(args, out, resume=False))
        else:
            finish(fit_command(args, out, resume=True))
        checks = compare(out, reference)
        identical = all(checks.values())
        runs.append(
            {
                "run": i,
                "kills": events,
                "checks": checks,
                "identical": identical,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        states = "; then ".join(f"{e['kill_at_s']} s: {e['state']}" for e in events)
        print(f"run {i:2d}: {'identical' if identical else 'DIFFERENT'} ({states})", flush=True)

    identical = sum(r["identical"] for r in runs)
    record = {
        "command": " ".join(["python", "benchmarks/kill_at_random.py", *sys.argv[1:]]),
        "fit_command": " ".join(fit_command(args, Path("RUN"), resume=False)[1:]),
        "date": str(date.today()),
        "machine": f"{os.cpu_count()} CPU cores",
        "platform": platform.platform(),
        "threads": args.threads,
        "seed": args.seed,
        "reference_seconds": round(duration, 1),
        "identical": identical,
        "runs": runs,
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    args.results.with_suffix(".md").write_text(markdown(record, args))
    print(f"{identical} of {len(runs)} identical -> {args.results}.json/.md")
    return 0 if identical == len(runs) else 1


def where_killed(record: dict[str, Any]) -> str:
    """How many kills found each state (its first clause), e.g. "stage 2 done: 3"."""
    counts: dict[str, int] = {}
    for run in record["runs"]:
        for event in run["kills"]:
            state = event["state"].split(";")[0] if event["killed"] else "finished before it"
            counts[state] = counts.get(state, 0) + 1
    return ", ".join(f"{state}: {n}" for state, n in counts.items())


def markdown(record: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        f"# Kill at random moments and resume, {record['date']}",
        "",
        f"Command: `{record['command']}`",
        "",
        f"Each run: `smcluster {record['fit_command'].split(' ', 2)[2]}`, "
        f"SIGKILLed {args.kills}x at a moment uniform over the unbroken run's "
        f"{record['reference_seconds']} s from its run folder's creation to its end, then "
        "`smcluster fit --out RUN --resume`.",
        "",
        f"Machine: {record['machine']}, {record['platform']}; {record['threads']} torch thread(s).",
        "",
        f"**{record['identical']} of {len(record['runs'])} identical** to the unbroken run "
        "(assignments.csv byte for byte, probabilities.npy, history epochs, metrics but timings).",
        "",
        f"Where the kills landed: {where_killed(record)}.",
        "",
        "| run | killed at s | state at the kill | identical |",
        "|---|---|---|---|",
    ]
    for run in record["runs"]:
        for event in run["kills"]:
            state = event["state"] if event["killed"] else "finished before the kill"
            mark = "yes" if run["identical"] else "**no**"
            lines.append(f"| {run['run']} | {event['kill_at_s']} | {state} | {mark} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
