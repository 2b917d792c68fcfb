"""The run folder's files: damaged ones are named with the fix, torn history lines are
dropped, resume points trim history, progress survives processes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from smcluster.config import Config
from smcluster.runfolder import (
    EpochCheckpoints,
    Progress,
    RunFolder,
    RunFolderError,
    StageClock,
    resolve_config,
)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def folder(tmp_path) -> RunFolder:
    run = RunFolder(tmp_path / "run")
    run.root.mkdir()
    Config().save(run.path("config"))
    return run


def log(folder: RunFolder, stage: str, epochs: range) -> None:
    for epoch in epochs:
        folder.log_epoch(stage, epoch, {"loss": 1.0 / (epoch + 1)})


@pytest.mark.parametrize("keep", [0.0, 0.02, 0.5, 0.98])
def test_truncated_checkpoint_names_the_file_and_the_fix(folder, keep) -> None:
    folder.save_checkpoint("clustering-last", {"model": {"w": torch.randn(64, 64)}, "epoch": 3})
    path = folder.checkpoint_path("clustering-last")
    truncate(path, keep)
    with pytest.raises(RunFolderError, match="delete it and resume") as error:
        folder.load_checkpoint("clustering-last")
    message = str(error.value)
    assert str(path) in message and "\n" not in message


@pytest.mark.parametrize("keep", [0.0, 0.05, 0.5])
def test_truncated_array_names_the_file(folder, keep) -> None:
    folder.save_array("neighbours", np.arange(2000).reshape(200, 10))
    truncate(folder.path("neighbours"), keep)
    with pytest.raises(RunFolderError, match="neighbours.npy is damaged"):
        folder.load_array("neighbours")


def test_truncated_json_and_config_name_the_file(folder) -> None:
    folder.save_json("metrics", {"acc": 0.5, "heads": [{"total": 1.0}] * 5})
    truncate(folder.path("metrics"))
    with pytest.raises(RunFolderError, match="metrics.json is damaged"):
        folder.load_json("metrics")
    truncate(folder.path("config"), 0.3)
    with pytest.raises(RunFolderError, match="config.yaml is (damaged|incomplete).*new run"):
        resolve_config(folder.root, Config(), resume=True)


def test_torn_last_history_line_is_dropped(folder) -> None:
    log(folder, "features", range(3))
    with folder.path("history").open("a") as handle:
        handle.write('{"stage": "features", "epoch": 3, "lo')
    assert [r["epoch"] for r in folder.history()] == [0, 1, 2]
    folder.repair_history()
    log(folder, "features", range(3, 5))
    assert [r["epoch"] for r in folder.history()] == [0, 1, 2, 3, 4]
    assert folder.path("history").read_text().count("\n") == 5


def test_complete_unterminated_history_line_is_kept(folder) -> None:
    log(folder, "features", range(2))
    text = folder.path("history").read_text()
    folder.path("history").write_text(text.rstrip("\n"))
    folder.repair_history()
    log(folder, "features", range(2, 3))
    assert [r["epoch"] for r in folder.history()] == [0, 1, 2]


def test_corrupt_history_line_inside_the_file_is_named(folder) -> None:
    log(folder, "features", range(2))
    with folder.path("history").open("a") as handle:
        handle.write("not json\n")
    log(folder, "features", range(2, 3))
    with pytest.raises(RunFolderError, match="history.jsonl, line 3"):
        folder.history()


def test_resume_point_drops_epochs_after_the_checkpoint(folder) -> None:
    log(folder, "features", range(4))
    log(folder, "clustering", range(3))
    assert folder.resume_point("mining-head") is None
    folder.save_checkpoint("clustering-last", {"epoch": 0})
    assert folder.resume_point("clustering")["epoch"] == 0
    rows = [(r["stage"], r["epoch"]) for r in folder.history()]
    assert rows == [("features", e) for e in range(4)] + [("clustering", 0)]
    folder.checkpoint_path("clustering-last").unlink()
    assert folder.resume_point("clustering") is None
    assert [r["stage"] for r in folder.history()] == ["features"] * 4


def test_epoch_checkpoints_charge_time_and_log_before_saving(folder) -> None:
    progress = Progress(seconds={"features": 5.0})
    clock = StageClock(folder, progress)
    callback = EpochCheckpoints(folder, "mining-head", clock, "neighbours")
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    callback(0, model, optimizer, {"loss": 1.0})
    callback(1, model, optimizer, {"loss": 0.5})
    assert folder.load_checkpoint("mining-head-last")["epoch"] == 1
    assert [r["epoch"] for r in folder.history()] == [0, 1]
    stored = folder.load_progress()
    assert stored.seconds["features"] == 5.0 and stored.seconds["neighbours"] > 0


def test_finished_needs_every_output_and_the_progress_mark(folder) -> None:
    folder.save_array("probabilities", np.full((4, 2), 0.5, dtype=np.float32))
    folder.save_json("metrics", {"acc": 1.0})
    assert not folder.finished()
    folder.path("assignments").write_text("id,cluster,confidence\n")
    assert folder.finished()  # a run from before progress.json
    folder.save_progress(Progress(seconds={"features": 1.0}))
    assert not folder.finished()
    folder.save_progress(Progress(finished=True))
    assert folder.finished()
    assert json.loads(folder.path("progress").read_text())["finished"] is True


def test_damaged_progress_is_named(folder) -> None:
    folder.path("progress").write_text("[1, 2]")
    with pytest.raises(RunFolderError, match="progress.json is damaged"):
        folder.load_progress()
