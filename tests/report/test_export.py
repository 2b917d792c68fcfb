"""export_clusters: one folder per cluster, for in-memory data (PNGs) and files (links)."""

from __future__ import annotations

import csv
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smcluster.config import Config
from smcluster.pipeline import load_data
from smcluster.report.export import export_clusters


def clusters_of(run: Path) -> list[tuple[str, int]]:
    with (run / "assignments.csv").open() as handle:
        return [(r["id"], int(r["cluster"])) for r in csv.DictReader(handle)]


def test_in_memory_images_become_pngs_one_folder_per_cluster(
    demo_run: Path, tmp_path: Path
) -> None:
    target = tmp_path / "sorted"
    count = export_clusters(demo_run, target)
    rows = clusters_of(demo_run)
    assert count == len(rows) == 1797
    folders = sorted(p.name for p in target.iterdir())
    assert folders == [f"cluster-{c:03d}" for c in range(10)]
    sizes = Counter(c for _, c in rows)
    for c in range(10):
        assert len(list((target / f"cluster-{c:03d}").iterdir())) == sizes.get(c, 0)
    image_id, cluster = rows[5]
    written = target / f"cluster-{cluster:03d}" / f"{image_id}.png"
    data = load_data(Config.load(demo_run / "config.yaml"))
    expected = data[5][0].permute(1, 2, 0).numpy()[..., 0]
    assert np.array_equal(np.asarray(Image.open(written)), expected)


def test_export_refuses_a_non_empty_target(demo_run: Path, tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an empty folder"):
        export_clusters(demo_run, tmp_path)
    assert (tmp_path / "old.txt").read_text() == "keep me"


def file_run(run_copy: Path, tmp_path: Path) -> list[Path]:
    """Point the copied run's ids at real image files (as a folder data set would)."""
    rows = clusters_of(run_copy)
    files = []
    for i, (_, _) in enumerate(rows):
        klass = tmp_path / "images" / f"class{i % 3}"
        klass.mkdir(parents=True, exist_ok=True)
        path = klass / f"img{i // 3:04d}.png"  # names repeat across class folders
        Image.fromarray(np.full((4, 4), i % 256, dtype=np.uint8)).save(path)
        files.append(path)
    with (run_copy / "assignments.csv").open() as handle:
        table = list(csv.reader(handle))
    for row, path in zip(table[1:], files, strict=True):
        row[0] = str(path)
    with (run_copy / "assignments.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(table)
    return files


@pytest.mark.parametrize("copy", [False, True])
def test_file_images_are_linked_or_copied(run_copy: Path, tmp_path: Path, copy: bool) -> None:
    files = file_run(run_copy, tmp_path)
    target = tmp_path / "out"
    assert export_clusters(run_copy, target, copy=copy) == len(files)
    exported = [p for p in target.rglob("*") if p.is_file() or p.is_symlink()]
    assert len(exported) == len(files)
    assert all(p.is_symlink() != copy for p in exported)
    sources = {os.path.realpath(p) if not copy else None for p in exported}
    if not copy:
        assert sources == {str(f.resolve()) for f in files}
    rows = clusters_of(run_copy)
    first = target / f"cluster-{rows[0][1]:03d}" / files[0].name
    assert first.exists() and first.read_bytes() == files[0].read_bytes()
