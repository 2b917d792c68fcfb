"""The run folder: its layout, atomic files, checkpoints, history and resume checks.

Only this module knows where a run keeps what (CONTRIBUTING.md, "Run folder"); the stages
never read it, the pipeline writes it through ``RunFolder`` and inference reads it back. Every
file is written through a temporary sibling and renamed, so no half-written file is ever seen.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from smcluster.config import Config

FILES = {
    "config": "config.yaml",
    "environment": "environment.json",
    "history": "history.jsonl",
    "features": "features.npy",
    "embeddings": "embeddings.npy",
    "neighbours_knn": "neighbours-knn.npy",
    "neighbours": "neighbours.npy",
    "probabilities": "probabilities.npy",
    "assignments": "assignments.csv",
    "metrics": "metrics.json",
    "images": "images.npz",
}

IN_MEMORY = "<in-memory>"
"""``data.source`` of images handed to the API as arrays; the run stores them in images.npz."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary sibling and rename, so no half-written file is ever seen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


class RunFolder:
    """The files of one run; the only code that knows the layout."""

    def __init__(self, root: str | Path, *, writer: bool = True) -> None:
        self.root = Path(root)
        self.writer = writer

    def path(self, key: str) -> Path:
        return self.root / FILES[key]

    def checkpoint_path(self, name: str) -> Path:
        return self.root / "checkpoints" / f"{name}.pt"

    def exists(self) -> bool:
        return self.path("config").exists()

    def save_json(self, key: str, data: dict[str, Any]) -> None:
        if self.writer:
            text = json.dumps(data, indent=2, default=float) + "\n"
            atomic_write(self.path(key), lambda p: p.write_text(text))

    def load_json(self, key: str) -> dict[str, Any]:
        return json.loads(self.path(key).read_text())

    def save_array(self, key: str, array: np.ndarray) -> None:
        if self.writer:
            atomic_write(self.path(key), lambda p: np.save(p.open("wb"), array))

    def load_array(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        return np.load(path, allow_pickle=False) if path.exists() else None

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        if self.writer:
            atomic_write(self.checkpoint_path(name), lambda p: torch.save(state, p))

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """A checkpoint saved by this run, loaded safely (``weights_only=True``)."""
        path = self.checkpoint_path(name)
        if not path.exists():
            return None
        return torch.load(path, map_location="cpu", weights_only=True)

    def log_epoch(self, stage: str, epoch: int, record: dict[str, Any]) -> None:
        if self.writer:
            line = json.dumps({"stage": stage, "epoch": epoch, **record}, default=float)
            with self.path("history").open("a") as handle:
                handle.write(line + "\n")

    def history(self) -> list[dict[str, Any]]:
        path = self.path("history")
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def resolve_config(root: str | Path, config: Config, *, resume: bool) -> Config:
    """The configuration to run with; checks the output folder without writing anything.

    A new run needs an absent or empty folder; ``resume`` needs a run there and continues
    with its saved configuration (only progress and report switches may change).
    """
    folder = RunFolder(root)
    if folder.exists():
        if not resume:
            raise ValueError(
                f"{folder.root} already holds a run: pass resume=True (--resume) to continue "
                "it, or choose another output folder"
            )
        keep = {"run": {"progress": config.run.progress, "report": config.run.report}}
        saved = Config.load(folder.path("config")).updated(keep)
        if saved.to_dict() != config.to_dict():
            warnings.warn(
                f"resuming {folder.root} with its saved configuration; the settings given now "
                "are ignored",
                stacklevel=3,
            )
        return saved
    if resume:
        raise ValueError(f"nothing to resume: {folder.root} holds no run (no {FILES['config']})")
    check_can_create(folder.root)
    if folder.root.exists() and any(folder.root.iterdir()):
        raise ValueError(f"{folder.root} exists and is not empty: choose a new output folder")
    return config


def check_can_create(folder: Path) -> None:
    """Refuse, before any work, a folder that cannot be made or written: a file in its place
    or above it, or an existing folder above it without write permission."""
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise ValueError(
            f"{existing} is a file, not a folder, so {folder} cannot be created: choose "
            "another output folder"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"no permission to write in {existing}: choose an output folder you can write to"
        )


class EpochCheckpoints:
    """After every epoch of a stage: the ``-last`` checkpoint (unless ``log_only``), then a
    history line, in that order, so history never runs ahead of what a resume restores."""

    def __init__(self, folder: RunFolder, name: str, *, log_only: bool = False) -> None:
        self.folder, self.name, self.log_only = folder, name, log_only

    def __call__(self, epoch: int, model: nn.Module, optimizer, record: dict[str, Any]) -> None:
        if not self.log_only:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
            }
            self.folder.save_checkpoint(f"{self.name}-last", state)
        self.folder.log_epoch(self.name, epoch, record)
