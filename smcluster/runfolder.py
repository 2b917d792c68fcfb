"""The run folder: its layout, atomic files, checkpoints, history, progress and resume checks.

Only this module knows where a run keeps what (CONTRIBUTING.md, "Run folder"); the stages
never read it, the pipeline writes it through ``RunFolder`` and inference reads it back. Every
file but ``history.jsonl`` is written through a temporary sibling and renamed, so no
half-written file is ever seen; history is appended to, and a line torn by a kill is dropped
when the run is resumed. A file damaged some other way (a truncated copy, a full disk) raises
``RunFolderError`` naming it: deleting it and resuming redoes the step that wrote it.
"""

from __future__ import annotations

import json
import os
import pickle
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from smcluster.config import Config

FILES = {
    "config": "config.yaml",
    "environment": "environment.json",
    "history": "history.jsonl",
    "progress": "progress.json",
    "features": "features.npy",
    "embeddings": "embeddings.npy",
    "neighbours_knn": "neighbours-knn.npy",
    "neighbours": "neighbours.npy",
    "neighbour_weights": "neighbour-weights.npy",
    "probabilities": "probabilities.npy",
    "assignments": "assignments.csv",
    "metrics": "metrics.json",
    "images": "images.npz",
    "input_embeddings": "input-embeddings.npz",
    "image_cache": "images-cache.npy",
    "k_search": "k-search.json",
}

OUTPUTS = ("probabilities", "metrics", "assignments")
"""The files a finished run hands back; ``_write_outputs`` writes them in this order."""

IN_MEMORY = "<in-memory>"
"""``data.source`` of images handed to the API as arrays; the run stores them in images.npz."""

UNREADABLE = (
    ValueError,
    EOFError,
    OSError,
    RuntimeError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
    yaml.YAMLError,
)
"""What numpy, torch, json and yaml raise on a truncated or corrupt file."""


class RunFolderError(ValueError):
    """A file of a run folder cannot be read; the message names it and what to do."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary sibling and rename, so no half-written file is ever seen."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


@dataclass
class Progress:
    """What a run has done beyond its arrays and checkpoints (``progress.json``).

    ``seconds`` per stage summed over every process that worked on the run, stage 2's
    diagnostics of its intermediate neighbour sets (not kept as arrays), and whether the
    outputs were written; so a resumed run reports what an unbroken one would. ``budget``:
    what a time budget's calibration measured and chose (``budget.Plan.record``);
    ``image_cache``: what resizing the images to the working size once cost.
    """

    seconds: dict[str, float] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    finished: bool = False
    budget: dict[str, Any] = field(default_factory=dict)
    image_cache: dict[str, Any] = field(default_factory=dict)


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

    def read(self, path: Path, load: Callable[[Path], Any], fix: str | None = None) -> Any:
        """``load(path)``, or a one-line ``RunFolderError`` naming the damaged file and ``fix``
        (by default: delete it and resume, which redoes the step that wrote it)."""
        try:
            return load(path)
        except UNREADABLE as error:
            reason = next(iter(str(error).splitlines()), "") or type(error).__name__
            fix = fix or (
                f"delete it and resume the run (smcluster fit --out {self.root} --resume), "
                "which redoes the step that wrote it"
            )
            raise RunFolderError(f"{path} is damaged ({reason}): {fix}") from error

    def save_json(self, key: str, data: dict[str, Any]) -> None:
        if self.writer:
            text = json.dumps(data, indent=2, default=float) + "\n"
            atomic_write(self.path(key), lambda p: p.write_text(text))

    def load_json(self, key: str) -> dict[str, Any]:
        return self.read(self.path(key), lambda p: json.loads(p.read_text()))

    def save_array(self, key: str, array: np.ndarray) -> None:
        if self.writer:
            atomic_write(self.path(key), lambda p: np.save(p.open("wb"), array))

    def save_array_rows(
        self, key: str, shape: tuple[int, int], rows: Iterable[np.ndarray]
    ) -> np.ndarray:
        """A float32 ``shape`` array written from consecutive blocks of rows, so an N x C
        output never sits whole in memory; returns it memory-mapped (in memory where this
        process does not write)."""
        if not self.writer:
            return np.concatenate(list(rows)).astype(np.float32)

        def write(path: Path) -> None:
            header = {"descr": "<f4", "fortran_order": False, "shape": shape}
            with path.open("wb") as handle:
                np.lib.format.write_array_header_1_0(handle, header)
                for block in rows:
                    handle.write(np.ascontiguousarray(block, dtype="<f4").tobytes())

        atomic_write(self.path(key), write)
        return np.load(self.path(key), mmap_mode="r")

    def load_array(self, key: str) -> np.ndarray | None:
        path = self.path(key)
        if not path.exists():
            return None
        return self.read(path, lambda p: np.load(p, allow_pickle=False))

    def save_checkpoint(self, name: str, state: dict[str, Any]) -> None:
        if self.writer:
            atomic_write(self.checkpoint_path(name), lambda p: torch.save(state, p))

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """A checkpoint saved by this run, loaded safely (``weights_only=True``)."""
        path = self.checkpoint_path(name)
        if not path.exists():
            return None
        return self.read(path, lambda p: torch.load(p, map_location="cpu", weights_only=True))

    def resume_point(self, stage: str) -> dict[str, Any] | None:
        """The ``{stage}-last`` checkpoint a stage continues from (None: from the start).

        History lines of that stage's later epochs are dropped first: they were logged by a
        process killed before their checkpoint was saved (or the checkpoint was deleted), and
        the epochs will be trained and logged again, so history never holds an epoch twice.
        """
        checkpoint = self.load_checkpoint(f"{stage}-last")
        last = -1 if checkpoint is None else int(checkpoint["epoch"])
        rows = self.history()
        kept = [r for r in rows if r["stage"] != stage or r["epoch"] <= last]
        if len(kept) < len(rows):
            self._rewrite_history(kept)
        return checkpoint

    def log_epoch(self, stage: str, epoch: int, record: dict[str, Any]) -> None:
        if self.writer:
            line = json.dumps({"stage": stage, "epoch": epoch, **record}, default=float)
            with self.path("history").open("a") as handle:
                handle.write(line + "\n")

    def history(self) -> list[dict[str, Any]]:
        """Every logged epoch; a last line torn by a kill (no newline, not JSON) is skipped."""
        path = self.path("history")
        if not path.exists():
            return []
        text = path.read_text()
        lines = text.split("\n")
        rows = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                if number == len(lines):  # the unterminated last line
                    continue
                raise RunFolderError(
                    f"{path}, line {number}, is not a JSON record ({error}): delete that line "
                    f"and resume the run (smcluster fit --out {self.root} --resume)"
                ) from error
        return rows

    def repair_history(self) -> None:
        """Drop a last line torn by a kill (a complete one only gets its newline back)."""
        path = self.path("history")
        if not self.writer or not path.exists():
            return
        text = path.read_text()
        if text and not text.endswith("\n"):
            self._rewrite_history(self.history())

    def _rewrite_history(self, rows: list[dict[str, Any]]) -> None:
        if self.writer:
            text = "".join(json.dumps(r, default=float) + "\n" for r in rows)
            atomic_write(self.path("history"), lambda p: p.write_text(text))

    def load_progress(self) -> Progress:
        path = self.path("progress")
        if not path.exists():
            return Progress()

        def load(p: Path) -> Progress:
            data = json.loads(p.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return Progress(**{k: v for k, v in data.items() if k in Progress.__annotations__})

        return self.read(path, load)

    def save_progress(self, progress: Progress) -> None:
        self.save_json("progress", asdict(progress))

    def finished(self) -> bool:
        """Whether the run wrote all its outputs (runs older than progress.json: all exist)."""
        if not all(self.path(key).exists() for key in OUTPUTS):
            return False
        return not self.path("progress").exists() or self.load_progress().finished


def _leaves(tree: dict[str, Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out |= _leaves(value, f"{name}.") if isinstance(value, dict) else {name}
    return out


def load_saved_config(path: Path) -> Config:
    """A run's ``config.yaml``: every setting must be there, since a truncated file would
    otherwise load with defaults in place of the run's settings."""
    fix = "the run cannot be resumed without its settings; start a new run"
    folder = RunFolder(path.parent)
    config = folder.read(path, Config.load, fix)
    written = folder.read(path, lambda p: yaml.safe_load(p.read_text()), fix)
    missing = sorted(_leaves(config.to_dict()) - _leaves(written))
    if missing:
        raise RunFolderError(
            f"{path} is incomplete (no {', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): it was truncated or written by an older "
            f"smcluster; {fix}"
        )
    return config


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
        saved = load_saved_config(folder.path("config")).updated(keep)
        given = config
        if IN_MEMORY in (config.data.source, config.data.embeddings):  # the run stored them
            given = given.updated({"data": saved.to_dict()["data"]})
        if _chose_clusters(folder, config.n_clusters):  # config.yaml holds the chosen number
            given = given.updated({"n_clusters": saved.n_clusters})
        if saved.to_dict() != given.to_dict():
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


def _chose_clusters(folder: RunFolder, request: int | str) -> bool:
    """Whether the run chose its number of clusters in the range ``request`` names."""
    if not isinstance(request, str) or not folder.path("k_search").exists():
        return False
    return folder.load_json("k_search").get("request") == request


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


class StageClock:
    """Charges wall time to the stage being worked on and keeps the sums in ``progress``.

    Each ``charge(stage)`` adds the time since the previous one and saves the progress, so
    a run's timings add up over every process that worked on it, up to its last epoch.
    """

    def __init__(self, folder: RunFolder, progress: Progress) -> None:
        self.folder, self.progress = folder, progress
        self.mark = time.perf_counter()

    def charge(self, stage: str) -> None:
        now = time.perf_counter()
        seconds = self.progress.seconds
        seconds[stage] = seconds.get(stage, 0.0) + now - self.mark
        self.mark = now
        self.folder.save_progress(self.progress)


class EpochCheckpoints:
    """After every epoch of a stage: charge its time, log its history line, then save the
    ``-last`` checkpoint; a resume drops history lines beyond that checkpoint
    (``RunFolder.resume_point``), so a kill between the two leaves no duplicate epoch."""

    def __init__(self, folder: RunFolder, name: str, clock: StageClock, timed_as: str) -> None:
        self.folder, self.name, self.clock, self.timed_as = folder, name, clock, timed_as

    def __call__(self, epoch: int, model: nn.Module, optimizer, record: dict[str, Any]) -> None:
        self.clock.charge(self.timed_as)
        self.folder.log_epoch(self.name, epoch, record)
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        self.folder.save_checkpoint(f"{self.name}-last", state)
