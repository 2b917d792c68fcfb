"""A run killed anywhere and resumed gives what an unbroken run gives (README, "The run folder").

A kill is simulated in the process: a run-folder write raises right after the file of a
stage boundary is written, leaving the folder exactly as a kill there would. The resumed run
must then match one unbroken reference run file for file: assignments, probabilities, the
epochs in history (none twice, none missing) and every metric but the timings.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from smcluster.api import SMCluster
from smcluster.cli import main
from smcluster.data import load_dataset
from smcluster.runfolder import RunFolder, RunFolderError

SETTINGS = {
    "features__epochs": 2,
    "mining__warmup_epochs": 2,
    "clustering__epochs": 3,
    "clustering__self_label": True,
    "clustering__self_label_epochs": 2,
    "clustering__self_label_threshold": 0.12,  # the short SCAN leaves soft predictions
    "run__threads": 1,
    "run__report": False,
    "run__progress": False,
}
FINE_TUNED = {**SETTINGS, "clustering__update_backbone": True}


class Killed(Exception):
    """Stands for a SIGKILL at a stage boundary."""


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    data = load_dataset("digits", image_size=16)
    images = data.as_tensor()[:300].permute(0, 2, 3, 1).squeeze(-1).numpy()
    return images, data.labels[:300]


def fit(out: Path, digits, settings: dict, *, resume: bool = False) -> SMCluster:
    """The paper's method: the run with the most state to resume (EMA target, queue, the
    three-view mining head)."""
    run = SMCluster(10, preset="demo", method="paper", out=out, **settings)
    return run.fit(*digits, resume=resume)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits) -> Path:
    return Path(fit(tmp_path_factory.mktemp("reference") / "run", digits, SETTINGS).run_dir_)


@pytest.fixture(scope="module")
def fine_tuned_reference(tmp_path_factory, digits) -> Path:
    out = tmp_path_factory.mktemp("fine-tuned") / "run"
    return Path(fit(out, digits, FINE_TUNED).run_dir_)


@contextmanager
def killed_after(method: str, name: str, times: int = 1) -> Iterator[None]:
    """Make ``RunFolder.<method>(name, ...)`` raise ``Killed`` after its ``times``-th write."""
    original = getattr(RunFolder, method)
    calls = []

    def write(self: RunFolder, key: str, *args, **kwargs) -> None:
        original(self, key, *args, **kwargs)
        if key == name:
            calls.append(key)
            if len(calls) == times:
                raise Killed(f"after {method}({name!r}) #{times}")

    setattr(RunFolder, method, write)
    try:
        with pytest.raises(Killed):
            yield
    finally:
        setattr(RunFolder, method, original)


def snapshot(run: Path) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in run.rglob("*") if p.is_file()}


def epochs(run: Path) -> list[tuple[str, int]]:
    return [(r["stage"], r["epoch"]) for r in RunFolder(run).history()]


def assert_same_run(run: Path, reference: Path) -> None:
    assert (run / "assignments.csv").read_text() == (reference / "assignments.csv").read_text()
    assert np.array_equal(
        np.load(run / "probabilities.npy"), np.load(reference / "probabilities.npy")
    )
    assert epochs(run) == epochs(reference)
    metrics = RunFolder(run).load_json("metrics")
    expected = RunFolder(reference).load_json("metrics")
    assert set(metrics["timings"]) == set(expected["timings"])
    del metrics["timings"], expected["timings"]
    assert metrics == expected


BOUNDARIES = {
    "inside stage 1": ("save_checkpoint", "features-last", 1),
    "after stage 1": ("save_checkpoint", "features", 1),
    "after features.npy": ("save_array", "embeddings", 1),
    "inside mining": ("save_checkpoint", "mining-head-last", 1),
    "after neighbours.npy": ("save_array", "neighbours", 1),
    "inside stage 3": ("save_checkpoint", "clustering-last", 2),
    "between a history line and its checkpoint": ("log_epoch", "clustering", 2),
    "after stage 3": ("save_checkpoint", "clustering", 1),
    "inside self-labelling": ("save_checkpoint", "selflabel-last", 1),
    "before outputs": ("save_checkpoint", "selflabel", 1),
    "between outputs": ("save_array_rows", "probabilities", 1),
}


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_resume_after_a_kill_matches_an_unbroken_run(boundary, reference, digits, tmp_path) -> None:
    out = tmp_path / "run"
    with killed_after(*BOUNDARIES[boundary]):
        fit(out, digits, SETTINGS)
    before = RunFolder(out).load_progress().seconds
    fit(out, digits, SETTINGS, resume=True)
    assert_same_run(out, reference)
    timings = RunFolder(out).load_json("metrics")["timings"]
    for stage, seconds in before.items():  # the killed process's time still counts
        assert timings[f"{stage}_seconds"] >= round(seconds, 3)
    total = sum(timings[f"{s}_seconds"] for s in ("features", "neighbours", "clustering"))
    assert timings["total_seconds"] == pytest.approx(total, abs=0.01)


@pytest.mark.parametrize(
    "boundary", ["inside stage 3", "inside self-labelling", "after neighbours.npy"]
)
def test_fine_tuned_backbone_resumes_exactly(
    boundary, fine_tuned_reference, digits, tmp_path
) -> None:
    out = tmp_path / "run"
    with killed_after(*BOUNDARIES[boundary]):
        fit(out, digits, FINE_TUNED)
    fit(out, digits, FINE_TUNED, resume=True)
    assert_same_run(out, fine_tuned_reference)


def test_resuming_a_finished_run_changes_nothing(reference, digits, tmp_path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    before = snapshot(out)
    model = fit(out, digits, SETTINGS, resume=True)
    assert snapshot(out) == before
    assert model.metrics_ == RunFolder(reference).load_json("metrics")
    assert np.array_equal(model.labels_, np.load(reference / "probabilities.npy").argmax(1))


def test_torn_history_line_is_dropped_on_resume(reference, digits, tmp_path) -> None:
    out = tmp_path / "run"
    with killed_after("save_checkpoint", "mining-head-last", 1):
        fit(out, digits, SETTINGS)
    with (out / "history.jsonl").open("a") as handle:
        handle.write('{"stage": "mining-head", "epoch": 1, "loss": 2.')
    fit(out, digits, SETTINGS, resume=True)
    assert_same_run(out, reference)


@pytest.mark.parametrize(
    ("boundary", "damaged"),
    [
        ("inside stage 3", "checkpoints/clustering-last.pt"),
        ("before outputs", "neighbours.npy"),
        ("between outputs", "checkpoints/features.pt"),
    ],
)
def test_damaged_file_is_named_and_deleting_it_resumes_exactly(
    boundary, damaged, reference, digits, tmp_path, capsys
) -> None:
    out = tmp_path / "run"
    with killed_after(*BOUNDARIES[boundary]):
        fit(out, digits, SETTINGS)
    path = out / damaged
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RunFolderError, match="delete it and resume"):
        fit(out, digits, SETTINGS, resume=True)
    assert main(["fit", "--out", str(out), "--resume", "--quiet", "--no-report"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("smcluster: error: ") and str(path) in error
    path.unlink()
    fit(out, digits, SETTINGS, resume=True)
    assert_same_run(out, reference)


def test_damaged_output_of_a_finished_run_is_written_again(reference, digits, tmp_path) -> None:
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    metrics = out / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:100])
    with pytest.raises(RunFolderError, match="metrics.json is damaged"):
        fit(out, digits, SETTINGS, resume=True)
    metrics.unlink()
    fit(out, digits, SETTINGS, resume=True)
    assert_same_run(out, reference)


def test_sigkilled_command_line_run_resumes_exactly(digits, tmp_path) -> None:
    """A real SIGKILL of ``smcluster fit`` in stage 3, then ``--resume``."""
    source = tmp_path / "digits.npz"
    np.savez(source, images=digits[0], labels=digits[1])
    flags = (
        f"fit --data {source} --preset demo --clusters 10 --epochs 2 --cluster-epochs 100 "
        "--threads 1 --quiet --no-report --set mining.warmup_epochs=2"
    ).split()
    command = [sys.executable, "-m", "smcluster.cli", *flags]
    unbroken = subprocess.run([*command, "--out", str(tmp_path / "unbroken")], capture_output=True)
    assert unbroken.returncode == 0, unbroken.stderr.decode(errors="replace")[-2000:]

    out = tmp_path / "run"
    process = subprocess.Popen([*command, "--out", str(out)], stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if ("clustering", 0) in epochs(out):
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert not (out / "metrics.json").exists()
    resumed = subprocess.run(
        [*command[:4], "--out", str(out), "--resume", "--quiet", "--no-report"],
        capture_output=True,
    )
    assert resumed.returncode == 0, resumed.stderr.decode(errors="replace")[-2000:]
    assert_same_run(out, tmp_path / "unbroken")
