"""Choosing the number of clusters without labels, from stored features and mined neighbours.

Stage 1 and 2 run once; this search sits before stage 3 (METHOD.md, Stage 3) when the number
of clusters is unknown. For each candidate K a partition of the images is made cheaply and a
criterion scores it without labels; the K with the highest score is chosen.

Partitions (``PARTITIONS``):

- ``scan``: a few ``ClusterHeads`` trained for a few epochs with the SCAN loss on the stored
  features (``train_heads_on_embeddings``), the lowest-loss head's argmax (``select_head``);
- ``kmeans``: k-means on a PCA-reduced copy of the L2-normalised features.

Scores of a partition (higher is better):

- ``nmi``: normalised mutual information between an image's cluster and its neighbours'
  clusters, over all (anchor, neighbour) pairs. Merging true clusters lowers the entropy of
  the cluster sizes more than it lowers the conditional entropy, and splitting them spreads
  an image's neighbours over the pieces, so both move it down from the true K;
- ``kappa``: the share of (anchor, neighbour) pairs in one cluster, adjusted for the share
  expected by chance given the cluster sizes (Cohen's kappa);
- ``mapeq``: minus the map equation's code length of a random walk on the neighbour graph;
- ``silhouette``: the silhouette of the partition on a sample of the reduced features
  (O(sample^2) distances, never N x N).

The default, ``scan-nmi``, was the one within 25 % of the true K on planted mixtures and on
stage-1 features of digits and MNIST (benchmarks/results/choose-k-*.md); on weak features
(neighbour purity below 0.2) it runs to the top of the range.

``CRITERIA`` names a (partition, score) pair; every score of one partition at one K comes from
the same partition, so recording several criteria of one partition costs one training per K.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smcluster.config import ClusteringConfig, check_cluster_range
from smcluster.engine import seed_everything, stage_seed
from smcluster.models import ClusterHeads

__all__ = [
    "CRITERIA",
    "PARTITIONS",
    "SCORES",
    "KSearch",
    "SearchInputs",
    "candidate_grid",
    "choose_n_clusters",
    "neighbour_kappa",
    "neighbour_nmi",
    "refine_grid",
]


@dataclass
class SearchInputs:
    """What every partition and score may read: the features, their views and neighbours.

    ``reduced`` (PCA of the L2-normalised features) is computed once, on first use.
    """

    embeddings: np.ndarray
    views: np.ndarray
    neighbours: np.ndarray
    config: ClusteringConfig
    seed: int
    epochs: int
    tries: int
    dims: int
    sample: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    _reduced: np.ndarray | None = field(default=None, repr=False)

    @property
    def reduced(self) -> np.ndarray:
        if self._reduced is None:
            self._reduced = pca_reduce(self.embeddings, self.dims, self.seed)
        return self._reduced


Partition = Callable[[SearchInputs, int], np.ndarray]
Score = Callable[[SearchInputs, np.ndarray], float]


def pca_reduce(embeddings: np.ndarray, dims: int, seed: int) -> np.ndarray:
    """L2-normalised features projected on their ``dims`` leading principal axes (float32)."""
    from sklearn.decomposition import PCA

    x = embeddings.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))
    dims = min(dims, x.shape[1], x.shape[0])
    return PCA(dims, random_state=seed).fit_transform(x).astype(np.float32)


def scan_partition(inputs: SearchInputs, k: int) -> list[np.ndarray]:
    """Argmax of each of ``inputs.tries`` SCAN heads trained ``inputs.epochs`` epochs."""
    from smcluster.stages.clustering import (
        head_probabilities,
        train_heads_on_embeddings,
    )

    seed_everything(stage_seed(inputs.seed, f"choose-k-{k}", 0))
    heads = ClusterHeads(inputs.embeddings.shape[1], k, inputs.tries).to(inputs.device)
    neighbours = torch.from_numpy(inputs.neighbours)
    train_heads_on_embeddings(
        heads,
        torch.from_numpy(inputs.views),
        neighbours,
        inputs.config,
        epochs=inputs.epochs,
        seed=inputs.seed,
        stage=f"choose-k-{k}",
        progress=False,
    )
    plain = torch.from_numpy(inputs.embeddings)
    return [head_probabilities(heads, plain, h).argmax(1).numpy() for h in range(len(heads))]


def kmeans_partition(inputs: SearchInputs, k: int) -> list[np.ndarray]:
    """Faiss k-means (20 iterations) on the PCA-reduced features, ``inputs.tries`` restarts."""
    import faiss

    x = np.ascontiguousarray(inputs.reduced)
    out = []
    for attempt in range(inputs.tries):
        kmeans = faiss.Kmeans(
            x.shape[1],
            k,
            niter=20,
            seed=stage_seed(inputs.seed, f"choose-k-{k}", attempt),
            min_points_per_centroid=1,
            max_points_per_centroid=256,
            verbose=False,
        )
        kmeans.train(x)
        out.append(kmeans.index.search(x, 1)[1][:, 0].astype(np.int64))
    return out


def _pair_counts(labels: np.ndarray, neighbours: np.ndarray) -> np.ndarray:
    """Counts of the distinct (anchor cluster, neighbour cluster) pairs, sparse (no K x K)."""
    k = int(labels.max()) + 1
    codes = labels[:, None] * k + labels[neighbours]
    return np.unique(codes.ravel(), return_counts=True)


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def neighbour_nmi(inputs: SearchInputs, labels: np.ndarray) -> float:
    """NMI (arithmetic normalisation) of anchor cluster vs neighbour cluster over all pairs."""
    k = int(labels.max()) + 1
    codes, counts = _pair_counts(labels, inputs.neighbours)
    rows = np.bincount(codes // k, weights=counts, minlength=k)
    cols = np.bincount(codes % k, weights=counts, minlength=k)
    h_rows, h_cols = _entropy(rows), _entropy(cols)
    if h_rows == 0.0 or h_cols == 0.0:
        return 0.0
    mutual = h_rows + h_cols - _entropy(counts.astype(np.float64))
    return mutual / (0.5 * (h_rows + h_cols))


def neighbour_kappa(inputs: SearchInputs, labels: np.ndarray) -> float:
    """Cohen's kappa of "anchor and neighbour share a cluster" against its chance rate."""
    k = int(labels.max()) + 1
    nb = labels[inputs.neighbours]
    agree = float((nb == labels[:, None]).mean())
    anchors = np.bincount(labels, minlength=k) / len(labels)
    partners = np.bincount(nb.ravel(), minlength=k) / nb.size
    chance = float(anchors @ partners)
    return 0.0 if chance >= 1.0 else (agree - chance) / (1.0 - chance)


def _plogp(x: np.ndarray) -> float:
    x = x[x > 0]
    return float((x * np.log2(x)).sum())


def map_equation(inputs: SearchInputs, labels: np.ndarray) -> float:
    """Minus the map equation's code length (bits per step) of a random walk on the kNN graph.

    The two-level description length of Rosvall and Bergstrom (2008) on the symmetrised
    neighbour graph: a module's exit flow pays for splitting a true cluster, and the codebook
    within a module pays for merging two (its entropy of visits grows); so, unlike agreement
    scores, it penalises both directions whatever the number of clusters.
    """
    nb = inputs.neighbours
    n, q = nb.shape
    total = 2.0 * n * q
    node = (q + np.bincount(nb.ravel(), minlength=n)) / total
    anchor = np.repeat(labels, q)
    partner = labels[nb.ravel()]
    cut = anchor != partner
    k = int(labels.max()) + 1
    exits = (np.bincount(anchor[cut], minlength=k) + np.bincount(partner[cut], minlength=k)) / total
    module = np.bincount(labels, weights=node, minlength=k)
    length = (
        _plogp(np.array([exits.sum()]))
        - 2.0 * _plogp(exits)
        - _plogp(node)
        + _plogp(exits + module)
    )
    return -length


def silhouette(inputs: SearchInputs, labels: np.ndarray) -> float:
    """Silhouette of the partition on at most ``inputs.sample`` images of the reduced space."""
    from sklearn.metrics import silhouette_score

    if len(np.unique(labels)) < 2:
        return -1.0
    sample = min(inputs.sample, len(labels))
    return float(
        silhouette_score(inputs.reduced, labels, sample_size=sample, random_state=inputs.seed)
    )


PARTITIONS: dict[str, Partition] = {"scan": scan_partition, "kmeans": kmeans_partition}
SCORES: dict[str, Score] = {
    "nmi": neighbour_nmi,
    "kappa": neighbour_kappa,
    "mapeq": map_equation,
    "silhouette": silhouette,
}
CRITERIA: dict[str, tuple[str, str]] = {
    "scan-mapeq": ("scan", "mapeq"),
    "kmeans-mapeq": ("kmeans", "mapeq"),
    "scan-nmi": ("scan", "nmi"),
    "scan-kappa": ("scan", "kappa"),
    "kmeans-nmi": ("kmeans", "nmi"),
    "kmeans-kappa": ("kmeans", "kappa"),
    "kmeans-silhouette": ("kmeans", "silhouette"),
}
"""Criterion name -> (partition, score)."""

DEFAULT_CRITERION = "scan-nmi"


@dataclass
class KSearch:
    """The outcome of a search: every K tried (ascending), each criterion's score per K, the
    criterion that chose and its choice, and the search's wall seconds."""

    candidates: list[int]
    scores: dict[str, list[float]]
    criterion: str
    chosen: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def best(self, criterion: str) -> int:
        """The K another recorded criterion would have chosen (ties: the smaller K)."""
        values = self.scores[criterion]
        return self.candidates[int(np.argmax(values))]


def candidate_grid(lo: int, hi: int, points: int = 10) -> list[int]:
    """About ``points`` distinct whole numbers spaced geometrically from ``lo`` to ``hi``."""
    if hi == lo:
        return [lo]
    values = np.geomspace(lo, hi, max(points, 2))
    return sorted({int(round(v)) for v in values} | {lo, hi})


def refine_grid(tried: Sequence[int], best: int, points: int = 4) -> list[int]:
    """Up to ``points`` new K spaced geometrically between ``best``'s neighbours in ``tried``."""
    ordered = sorted(tried)
    at = ordered.index(best)
    lo = ordered[max(at - 1, 0)]
    hi = ordered[min(at + 1, len(ordered) - 1)]
    inner = np.geomspace(lo, hi, points + 2)[1:-1] if hi > lo else []
    return sorted({int(round(v)) for v in inner} - set(ordered))


def choose_n_clusters(
    embeddings: np.ndarray,
    neighbours: np.ndarray,
    candidates: Sequence[int],
    config: ClusteringConfig,
    *,
    seed: int = 0,
    criterion: str = DEFAULT_CRITERION,
    record: Sequence[str] = (),
    views: np.ndarray | None = None,
    budget_epochs: int = 5,
    batch_size: int = 128,
    tries: int = 3,
    refine: int = 4,
    rounds: int = 1,
    dims: int = 32,
    sample: int = 4000,
    device: torch.device | None = None,
) -> KSearch:
    """Score every candidate K with ``criterion`` (and the ``record`` ones) and keep the best.

    ``embeddings`` are the N x E stage-1 backbone features of the un-augmented images and
    ``neighbours`` the N x q mined neighbours (stage 2); ``views`` (V x N x E, weak views as
    stage 3 stores them) are what the SCAN heads train on, default the embeddings alone. At
    each K, ``tries`` partitions are made (SCAN heads trained together for ``budget_epochs``
    epochs, where a fixed-K stage 3 trains ``config.heads`` for ``config.epochs``; or k-means
    restarts) and the K scores its best one, so one poor local optimum does not sink a K.
    The SCAN heads train at ``batch_size`` (if below ``config.batch_size``): the same images
    per epoch in more steps, which a few epochs need to converge. After
    the candidates, ``rounds`` times, ``refine`` more K between the best one's neighbours among
    those tried are tried (around each recorded criterion's best, so every curve is refined
    where it peaks). The heads train on ``device`` (default the CPU).
    Deterministic for a ``seed`` on one device.
    """
    started = time.perf_counter()
    names = list(dict.fromkeys([criterion, *record]))
    for name in names:
        if name not in CRITERIA:
            raise ValueError(
                f"unknown criterion {name!r} for choosing the number of clusters; "
                f"choose one of {sorted(CRITERIA)}"
            )
    emb = np.ascontiguousarray(embeddings, dtype=np.float32)
    nb = np.asarray(neighbours)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be an N x E array, got shape {emb.shape}")
    if nb.ndim != 2 or len(nb) != len(emb) or nb.dtype.kind not in "iu":
        raise ValueError(
            f"neighbours must be an integer N x q array with N = {len(emb)}, got {nb.dtype} "
            f"{nb.shape}"
        )
    stored = emb[None] if views is None else np.ascontiguousarray(views, dtype=np.float32)
    if stored.ndim != 3 or stored.shape[1:] != emb.shape:
        raise ValueError(f"views must be V x {emb.shape[0]} x {emb.shape[1]}, got {stored.shape}")
    tried = sorted({int(k) for k in candidates})
    if not tried:
        raise ValueError("no candidate number of clusters given; give at least one K >= 2")
    check_cluster_range(tried[0], tried[-1], len(emb))
    short = dataclasses.replace(config, batch_size=min(batch_size, config.batch_size))
    inputs = SearchInputs(
        emb,
        stored,
        nb.astype(np.int64),
        short,
        seed,
        budget_epochs,
        tries,
        dims,
        sample,
        device or torch.device("cpu"),
    )
    scores: dict[str, dict[int, float]] = {name: {} for name in names}

    def evaluate(ks: Sequence[int]) -> None:
        for k in ks:
            by_partition: dict[str, list[np.ndarray]] = {}
            for name in names:
                partition, score = CRITERIA[name]
                if partition not in by_partition:
                    by_partition[partition] = PARTITIONS[partition](inputs, k)
                scores[name][k] = max(SCORES[score](inputs, p) for p in by_partition[partition])

    evaluate(tried)
    for _ in range(rounds if refine > 0 else 0):
        extra: set[int] = set()
        for name in names:
            best = max(tried, key=lambda k, name=name: scores[name][k])
            extra |= set(refine_grid(tried, best, refine))
        evaluate(sorted(extra))
        tried = sorted(set(tried) | extra)
    chosen = max(tried, key=lambda k: scores[criterion][k])
    return KSearch(
        candidates=tried,
        scores={name: [scores[name][k] for k in tried] for name in names},
        criterion=criterion,
        chosen=chosen,
        seconds=time.perf_counter() - started,
    )
