"""Everything the report reads from a finished run folder (CONTRIBUTING.md, "Run folder").

The report only reads: it never trains and never writes outside ``RUN/report/``. Files that a
run may lack (labels, features, neighbours, history, images) become ``None`` and the page says
what is missing instead of failing, so a partial or unlabelled run still gets a report.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from smcluster.config import Config
from smcluster.data import ImageSet
from smcluster.runfolder import RunFolder

# File names of the run folder, as written by ``smcluster.pipeline`` (CONTRIBUTING.md).
CONFIG = "config.yaml"
METRICS = "metrics.json"
HISTORY = "history.jsonl"
ASSIGNMENTS = "assignments.csv"
PROBABILITIES = "probabilities.npy"
FEATURES = "features.npy"
NEIGHBOURS = "neighbours.npy"
NEIGHBOURS_KNN = "neighbours-knn.npy"
K_SEARCH = "k-search.json"


@dataclass
class ClusterStats:
    """Per-cluster summary: size, mean confidence and, with labels, majority class and purity."""

    sizes: np.ndarray
    mean_confidence: np.ndarray
    majority: np.ndarray | None = None
    purity: np.ndarray | None = None


@dataclass
class RunData:
    """The arrays and records of one run folder, loaded once for the figures and the page."""

    root: Path
    config: Config
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    ids: list[str]
    clusters: np.ndarray
    confidence: np.ndarray
    labels: np.ndarray | None
    n_clusters: int
    features: np.ndarray | None = None
    neighbours: np.ndarray | None = None
    neighbours_knn: np.ndarray | None = None
    images: ImageSet | None = None
    images_note: str | None = None
    class_names: list[str] | None = None
    k_search: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n_images(self) -> int:
        return len(self.ids)

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def data_name(self) -> str:
        if self.images is not None:
            return self.images.name
        return Path(str(self.config.data.source)).name or str(self.config.data.source)

    @property
    def n_classes(self) -> int:
        """Known classes: the class names, or the largest label + 1; 0 without labels."""
        if self.labels is None:
            return 0
        return max(int(self.labels.max()) + 1, len(self.class_names or []))

    def class_name(self, label: int) -> str:
        """A readable name for class ``label`` (its index when the data has no names)."""
        if self.class_names is not None and 0 <= label < len(self.class_names):
            return self.class_names[label]
        return str(label)

    @cached_property
    def stats(self) -> ClusterStats:
        c = self.n_clusters
        sizes = np.bincount(self.clusters, minlength=c)
        conf_sum = np.bincount(self.clusters, weights=self.confidence, minlength=c)
        mean_conf = np.divide(conf_sum, np.maximum(sizes, 1))
        if self.labels is None:
            return ClusterStats(sizes, mean_conf)
        k = self.n_classes
        table = np.bincount(self.clusters * k + self.labels, minlength=c * k).reshape(c, k)
        majority = table.argmax(axis=1)
        purity = table[np.arange(c), majority] / np.maximum(sizes, 1)
        return ClusterStats(sizes, mean_conf, majority, purity)

    @cached_property
    def members(self) -> list[np.ndarray]:
        """Image indices of each cluster, most confident first (stable for ties)."""
        order = np.lexsort((-self.confidence, self.clusters))
        bounds = np.cumsum(np.bincount(self.clusters, minlength=self.n_clusters))
        return np.split(order, bounds[:-1])


def load_run(run: str | Path, *, images: bool = True) -> RunData:
    """Read a finished run folder; ``images=False`` skips loading the data set.

    Raises FileNotFoundError when ``run`` is not a run folder and ValueError when the run has
    not finished (no assignments yet), each naming the fix.
    """
    root = Path(run)
    if not (root / CONFIG).exists():
        raise FileNotFoundError(f"{root} is not a run folder (no {CONFIG}): pass a run folder")
    config = Config.load(root / CONFIG)
    if not (root / ASSIGNMENTS).exists():
        raise ValueError(
            f"{root} has not finished (no {ASSIGNMENTS}): run `smcluster fit --out {root} "
            "--resume` first"
        )
    ids, clusters, confidence, labels = _read_assignments(root / ASSIGNMENTS)
    probabilities = _load_array(root / PROBABILITIES, mmap=True)  # only its shape is read
    n_clusters = int(config.n_clusters)
    if probabilities is not None and probabilities.shape[0] == len(ids):
        n_clusters = max(n_clusters, int(probabilities.shape[1]))
    n_clusters = max(n_clusters, int(clusters.max()) + 1)
    metrics = RunFolder(root).load_json("metrics") if (root / METRICS).exists() else {}
    data = RunData(
        root=root,
        config=config,
        metrics=metrics,
        history=_read_history(root / HISTORY),
        ids=ids,
        clusters=clusters,
        confidence=confidence,
        labels=labels,
        n_clusters=n_clusters,
    )
    if (root / K_SEARCH).exists():
        data.k_search = RunFolder(root).load_json("k_search")
    for name, attr in (
        (FEATURES, "features"),
        (NEIGHBOURS, "neighbours"),
        (NEIGHBOURS_KNN, "neighbours_knn"),
    ):
        array = _load_array(root / name, mmap=True)
        if array is not None and array.shape[0] != len(ids):
            data.notes.append(f"{name} has {array.shape[0]} rows for {len(ids)} images: ignored")
            array = None
        setattr(data, attr, array)
    if images:
        data.images, data.images_note = _load_images(config, ids)
        if data.images is not None:
            data.class_names = data.images.class_names
    return data


def _read_assignments(
    path: Path,
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray | None]:
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or header[:3] != ["id", "cluster", "confidence"]:
            raise ValueError(
                f"{path}: expected the columns id, cluster, confidence[, label]; "
                "write it again with `smcluster fit --resume`"
            )
        rows = list(reader)
    if not rows:
        raise ValueError(f"{path} lists no images")
    ids = [row[0] for row in rows]
    clusters = np.fromiter((int(row[1]) for row in rows), dtype=np.int64, count=len(rows))
    confidence = np.fromiter((float(row[2]) for row in rows), dtype=np.float64, count=len(rows))
    labels = None
    if len(header) > 3 and header[3] == "label":
        labels = np.fromiter((int(row[3]) for row in rows), dtype=np.int64, count=len(rows))
    return ids, clusters, confidence, labels


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _load_array(path: Path, *, mmap: bool = False) -> np.ndarray | None:
    """The array at ``path`` (None when absent); a damaged file is a ``RunFolderError``
    naming it and how to remake it."""
    if not path.exists():
        return None
    mode = "r" if mmap else None
    return RunFolder(path.parent).read(
        path, lambda p: np.load(p, allow_pickle=False, mmap_mode=mode)
    )


def _load_images(config: Config, ids: list[str]) -> tuple[ImageSet | None, str | None]:
    """The run's images, or None and the reason (the page shows it instead of the galleries).

    The data are trusted only if they list the same image ids in the same order as
    ``assignments.csv``: a run fitted on arrays in memory records a source that may name
    other images.
    """
    from smcluster.pipeline import load_data

    source = config.data.source
    try:
        data = load_data(config)
    except Exception as error:  # any loader failure only removes the galleries
        return None, f"the images could not be loaded from {source!r} ({error})"
    if len(data) != len(ids) or data.ids != ids:
        return None, (
            f"the data source {source!r} does not hold the images of this run "
            f"({len(data)} images there, {len(ids)} in the run; a run fitted on arrays in "
            "memory records no loadable source)"
        )
    return data, None
