"""Lay a run's images out as one folder per cluster: ``TO/cluster-007/...``.

For data read from files (the ids in ``assignments.csv`` are file paths) each image becomes a
symbolic link to its file, or a copy with ``copy=True``; for data held in memory (ids are
indices) each image is written as a PNG, at the size the networks saw. Every cluster gets a
folder, empty clusters an empty one, so the folder count is the number of clusters.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np

from smcluster.report.rundata import RunData, load_run
from smcluster.report.sprites import save_png, tiles
from smcluster.runfolder import check_can_create

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def export_clusters(run: str | Path, to: str | Path, *, copy: bool = False) -> int:
    """Export the images of ``run`` into ``to`` (one folder per cluster); return their number.

    ``to`` must not exist or be empty: an export never mixes with other files. File names
    keep the original names (a clash inside one cluster gets the image's row number
    appended); in-memory images are named by their id.
    """
    target = Path(to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ValueError(
            f"{target} is not an empty folder: export into a new or empty folder (an export "
            "never mixes with other files)"
        )
    check_can_create(target)
    data = load_run(run, images=False)
    paths = [Path(i) for i in data.ids]
    present = [p.is_file() for p in paths]
    if all(present):
        folders = _cluster_folders(data, target)
        return _link_files(data, paths, folders, copy)
    if any(present):
        missing = next(p for p, ok in zip(paths, present, strict=True) if not ok)
        raise ValueError(
            f"{len(present) - sum(present)} of the run's {len(paths)} image files are missing "
            f"(e.g. {missing}); restore them, or run the export from the folder the run was "
            "fitted in if the paths are relative"
        )
    data = load_run(run, images=True)
    if data.images is None:
        raise ValueError(f"cannot export the images of {data.root}: {data.images_note}")
    folders = _cluster_folders(data, target)
    return _write_images(data, folders)


def _cluster_folders(data: RunData, target: Path) -> list[Path]:
    width = max(3, len(str(data.n_clusters - 1)))
    folders = [target / f"cluster-{c:0{width}d}" for c in range(data.n_clusters)]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def _link_files(data: RunData, paths: list[Path], folders: list[Path], copy: bool) -> int:
    taken: set[Path] = set()
    for row, (path, cluster) in enumerate(zip(paths, data.clusters, strict=True)):
        dest = folders[int(cluster)] / path.name
        if dest in taken:
            dest = dest.with_name(f"{path.stem}-{row}{path.suffix}")
        taken.add(dest)
        if copy:
            shutil.copy2(path, dest)
        else:
            os.symlink(path.resolve(), dest)
    return len(paths)


def _write_images(data: RunData, folders: list[Path]) -> int:
    assert data.images is not None
    n = len(data.ids)
    chunk = 2048
    taken: set[Path] = set()
    for start in range(0, n, chunk):
        rows = np.arange(start, min(n, start + chunk))
        pictures = tiles(data.images, rows, size=data.images.image_size)
        for row, picture in zip(rows, pictures, strict=True):
            name = _UNSAFE.sub("_", data.ids[row]).strip("._") or str(row)
            dest = folders[int(data.clusters[row])] / f"{name}.png"
            if dest in taken:
                dest = dest.with_name(f"{name}-{row}.png")
            taken.add(dest)
            save_png(picture, dest)
    return n
