"""The whole method end to end: the demo on the embedded digits, a shared real set, resume,
two processes, and the run folder's contents."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from smcluster.api import SMCluster
from smcluster.config import Config
from smcluster.data import load_dataset
from smcluster.inference import evaluate_run, load_fitted
from smcluster.metrics import SCORES
from smcluster.runfolder import RunFolder

QUICK = {
    "features__epochs": 2,
    "clustering__epochs": 3,
    "mining__warmup_epochs": 2,
    "run__report": False,
    "run__progress": False,
}


def smcluster_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "smcluster.cli", *args]


# Waits in these tests only catch a hung run; a busy machine may be many times slower.
HANG = 3 * 3600


def run_cli(*args: str) -> subprocess.CompletedProcess:
    command = smcluster_command(*args, "--quiet", "--no-report")
    return subprocess.run(command, capture_output=True, text=True, timeout=HANG)


def test_demo_reaches_the_accuracy_bar(demo_run: SMCluster) -> None:
    # k-means on raw pixels gets about 0.79 on the digits; the bar is 0.85. The demo
    # scores 0.94-0.96 depending on thread count and CPU kernels (README, Results).
    assert demo_run.metrics_["acc"] >= 0.85
    assert demo_run.metrics_["nmi"] >= 0.75
    assert len(np.unique(demo_run.labels_)) == 10


def test_demo_stage_one_loss_falls(demo_run: SMCluster) -> None:
    rows = [r for r in RunFolder(demo_run.run_dir_).history() if r["stage"] == "features"]
    assert len(rows) == demo_run.get_config().features.epochs
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3


def test_run_folder_holds_every_artefact(demo_run: SMCluster) -> None:
    run = Path(demo_run.run_dir_)
    for name in [
        "config.yaml",
        "environment.json",
        "history.jsonl",
        "features.npy",
        "embeddings.npy",
        "neighbours.npy",
        "neighbours-knn.npy",
        "probabilities.npy",
        "assignments.csv",
        "metrics.json",
    ]:
        assert (run / name).exists(), name
    for name in ["features", "features-last", "clustering", "clustering-last"]:
        assert (run / "checkpoints" / f"{name}.pt").exists(), name
    mined_by_a_head = Config.load(run / "config.yaml").mining.method != "knn"
    assert (run / "checkpoints" / "mining-head.pt").exists() == mined_by_a_head
    assert not list(run.rglob(".*.tmp"))
    metrics = json.loads((run / "metrics.json").read_text())
    for key in (*SCORES, "neighbour_purity"):
        assert 0.0 <= metrics[key] <= 1.0
    assert len(metrics["heads"]) == 10 and all("acc" in h for h in metrics["heads"])
    assert metrics["heads"][metrics["best_head"]]["total"] == min(
        h["total"] for h in metrics["heads"]
    )
    env = json.loads((run / "environment.json").read_text())
    assert env["seed"] == 0 and env["threads"] >= 1 and "torch" in env
    with (run / "assignments.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 1797 and set(rows[0]) == {"id", "cluster", "confidence", "label"}
    neighbours = np.load(run / "neighbours.npy")
    assert neighbours.shape == (1797, demo_run.get_config().mining.q)
    assert not (neighbours == np.arange(1797)[:, None]).any()


def test_predict_agrees_with_fit(demo_run: SMCluster) -> None:
    data = load_dataset("digits", image_size=16)
    held = data.subset(np.arange(0, 1797, 7))
    predicted = demo_run.predict(held)
    assert (predicted == demo_run.labels_[::7]).mean() >= 0.99
    assert demo_run.transform(held).shape[0] == len(held)


def test_evaluate_recomputes_the_metrics(demo_run: SMCluster) -> None:
    again = evaluate_run(demo_run.run_dir_)
    assert again["acc"] == pytest.approx(demo_run.metrics_["acc"])
    assert load_fitted(demo_run.run_dir_).heads.best_head == demo_run.metrics_["best_head"]


def test_from_run_restores_the_estimator(demo_run: SMCluster) -> None:
    restored = SMCluster.from_run(demo_run.run_dir_)
    assert (restored.labels_ == demo_run.labels_).all()


def test_existing_run_folder_needs_resume(demo_run: SMCluster) -> None:
    with pytest.raises(ValueError, match="already holds a run"):
        SMCluster(10, preset="demo", out=demo_run.run_dir_, **QUICK).fit("digits")


def test_baseline_variants_run(tmp_path) -> None:
    """SCAN's baseline: SimCLR pretext + plain kNN, with self-labelling on."""
    model = SMCluster(
        10,
        preset="demo",
        out=tmp_path / "run",
        features__model="simclr",
        mining__method="knn",
        clustering__self_label=True,
        clustering__self_label_epochs=1,
        **QUICK,
    ).fit("digits")
    assert (Path(model.run_dir_) / "checkpoints" / "selflabel.pt").exists()
    assert model.metrics_["acc"] > 0.3


def test_fine_tuned_backbone_runs(tmp_path) -> None:
    """Stage 3 with the backbone trained too: its loss falls and the backbone moves."""
    import torch

    quick = {**QUICK, "clustering__epochs": 4}
    model = SMCluster(
        10, preset="demo", out=tmp_path / "run", clustering__update_backbone=True, **quick
    ).fit("digits")
    run = Path(model.run_dir_)
    rows = [r for r in RunFolder(run).history() if r["stage"] == "clustering"]
    assert rows[-1]["loss"] < rows[0]["loss"]
    before = torch.load(run / "checkpoints" / "features.pt", weights_only=True)["model"]
    after = torch.load(run / "checkpoints" / "clustering.pt", weights_only=True)["model"]
    key = next(k for k in after if k.startswith("features.trunk") and k.endswith("weight"))
    assert not torch.equal(after[key], before["online.backbone." + key[len("features.") :]])
    assert model.metrics_["acc"] > 0.15  # chance is about 0.11
    assert (model.predict(load_dataset("digits", image_size=16)) == model.labels_).mean() > 0.99


def test_real_shared_set_end_to_end(shared_data, tmp_path) -> None:
    """A 2,000-image MNIST subset from the shared data, through the command line."""
    source = np.load(shared_data / "mnist.npz", allow_pickle=False)
    pick = np.random.default_rng(0).choice(len(source["labels"]), 2000, replace=False)
    subset = tmp_path / "mnist2k.npz"
    np.savez(subset, images=source["images"][pick], labels=source["labels"][pick])
    out = tmp_path / "run"
    flags = "--clusters 10 --preset cpu-mnist --epochs 8 --batch-size 128 --cluster-epochs 50"
    result = run_cli("fit", "--data", str(subset), *flags.split(), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "ACC=" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    # chance is 0.1: eight short epochs already learn (about 0.28 ACC and 0.63 kNN accuracy)
    assert metrics["acc"] > 0.2
    assert metrics["knn_accuracy"] > 0.45


def test_interrupted_run_resumes(tmp_path) -> None:
    out = tmp_path / "run"
    flags = "--preset demo --data digits --clusters 10 --epochs 6 --cluster-epochs 3"
    # A runner started in the background ignores SIGINT and its children inherit that; the
    # run must get Ctrl-C's default behaviour whatever started the tests.
    process = subprocess.Popen(
        smcluster_command("fit", *flags.split(), "--out", str(out), "--quiet", "--no-report"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + HANG
    while time.time() < deadline and process.poll() is None:
        if len(RunFolder(out).history()) >= 2:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=HANG)
    assert not (out / "metrics.json").exists(), (
        f"the run finished despite SIGINT (exit {process.returncode}): "
        f"{stderr.decode(errors='replace')[-2000:]}"
    )
    done = len(RunFolder(out).history())
    assert 2 <= done < 6

    again = run_cli("fit", "--out", str(out), "--resume")
    assert again.returncode == 0, again.stderr
    epochs = [r["epoch"] for r in RunFolder(out).history() if r["stage"] == "features"]
    assert epochs == list(range(6)), "the resumed run repeated or skipped epochs"
    metrics = (out / "metrics.json").read_bytes()
    assert json.loads(metrics)["acc"] > 0.3

    finished = run_cli("fit", "--out", str(out), "--resume")
    assert finished.returncode == 0 and "already finished" in finished.stderr
    assert (out / "metrics.json").read_bytes() == metrics


def test_two_processes_on_cpu(tmp_path) -> None:
    out = tmp_path / "run"
    flags = "--preset demo --data digits --clusters 10 --epochs 2 --cluster-epochs 3"
    hardware = "--accelerator cpu --devices 2 --threads 1"
    result = run_cli("fit", *flags.split(), *hardware.split(), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert json.loads((out / "environment.json").read_text())["world_size"] == 2
    assert 0.0 <= json.loads((out / "metrics.json").read_text())["acc"] <= 1.0
    assert yaml.safe_load((out / "config.yaml").read_text())["run"]["devices"] == 2


def test_variants_reuse_one_feature_model(demo_run: SMCluster, tmp_path) -> None:
    """Plain kNN mining on the demo's stage 1: no feature training, same features."""
    variant = SMCluster(
        10,
        preset="demo",
        out=tmp_path / "knn",
        mining__method="knn",
        run__report=False,
        run__progress=False,
    )
    variant.fit("digits", features_from=demo_run.run_dir_)
    run = Path(variant.run_dir_)
    assert np.array_equal(
        np.load(run / "features.npy"), np.load(Path(demo_run.run_dir_) / "features.npy")
    )
    assert variant.metrics_["neighbour_purity"] == pytest.approx(
        demo_run.metrics_["neighbour_purity_knn"]
    )
    assert variant.metrics_["acc"] > 0.8
    other = SMCluster(10, preset="demo", out=tmp_path / "other", features__epochs=1)
    with pytest.raises(ValueError, match="features settings differ"):
        other.fit("digits", features_from=demo_run.run_dir_)


def test_fused_weighted_mining_runs_and_every_head_selection_is_recorded(tmp_path) -> None:
    model = SMCluster(
        10,
        preset="demo",
        out=tmp_path / "run",
        features__epochs=0,
        mining__method="fused",
        mining__weighting="fused",
        mining__strong_views=2,
        mining__warmup_epochs=1,
        clustering__epochs=2,
        clustering__feature_views=1,
        clustering__head_selection="agreement",
        run__report=False,
        run__progress=False,
    ).fit("digits")
    folder = RunFolder(model.run_dir_)
    weights = folder.load_array("neighbour_weights")
    assert weights.shape == folder.load_array("neighbours").shape
    assert ((weights > 0) & (weights < 1)).all()
    m = model.metrics_
    assert m["head_selection"] == "agreement"
    assert set(m["selected_heads"]) == {"loss", "agreement", "confidence", "consensus"}
    assert m["best_head"] == m["selected_heads"]["agreement"]
    assert {"agreement", "confidence", "consensus", "acc"} <= set(m["heads"][0])
