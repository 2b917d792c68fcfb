"""Choosing the number of clusters without labels, from stored features and mined neighbours.

Stage 1 and 2 run once; this search sits before stage 3 (METHOD.md, Stage 3) when the number
of clusters is unknown. For each candidate K a partition of the images is made cheaply and a
criterion scores it without labels; the K with the highest score is chosen.

Partitions (``PARTITIONS``):

- ``scan``: a few ``ClusterHeads`` trained for a few epochs with the SCAN loss on the stored
  features (``train_heads_on_embeddings``), the lowest-loss head's argmax (``select_head``);
- ``kmeans``: k-means on a PCA-reduced copy of the L2-normalised features (``tries`` random
  starts, each scored);
- ``kmeans1``: one k-means of the same, from k-means++ seeds, the lowest-error of ``tries``
  starts (for scores that a lucky start would flatter).

Scores of a partition (higher is better):

- ``nmi``: normalised mutual information between an image's cluster and its neighbours'
  clusters, over all (anchor, neighbour) pairs. Merging true clusters lowers the entropy of
  the cluster sizes more than it lowers the conditional entropy, and splitting them spreads
  an image's neighbours over the pieces, so both move it down from the true K;
- ``kappa``: the share of (anchor, neighbour) pairs in one cluster, adjusted for the share
  expected by chance given the cluster sizes (Cohen's kappa);
- ``mapeq``: minus the map equation's code length of a random walk on the neighbour graph;
- ``silhouette``: the silhouette of the partition on a sample of the reduced features
  (O(sample^2) distances, never N x N);
- ``probe``: Clest-style transfer (``probe_stability``): a linear classifier fit on one half
  of the images labelled by the partition predicts the other half, scored against that half's
  own k-means (Hungarian accuracy; ``probe-ari``: ARI), minus the same on a Gaussian of the
  same spread (no clusters). Reads no neighbours;
- ``coding``: minus the lossy coding length of the reduced features given the partition (Ma
  et al. 2007; ``coding_score``), distortion a fixed share of the features' variance (ablations
  ``coding-d0.1``, ``coding-d0.5``, ``coding-32d``, ``coding-eps0.5``). Reads no neighbours;
- ``gap``: log within-cluster dispersion of the reference minus that of the features
  (Tibshirani et al. 2001, one reference draw). Reads no neighbours.

The default, ``kmeans-probe``, is the one that found K where the features separate the
classes (benchmarks/README.md, "Choosing the number of clusters on features that separate the
classes"): 10 on MNIST-10k's SimCLR stage-1 features (12, 10, 10), and 100, 200 and 482 on
unseen Omniglot characters embedded by a network trained with labels on other characters (a
stand-in for pretrained features; 8 of 9 searches within 25 %), where ``scan-nmi``, the earlier
default, chose 8-43. No criterion finds K where the features do not separate the classes
(CIFAR-10 and Omniglot after a CPU stage 1, Tiny-ImageNet classes a small network never saw):
the estimate is only as good as the features, and ``how_sure`` says which case a search looks
like from its own score.

The grid has 20 values of K spaced geometrically over the range, and 4 more are tried around
each of the curve's two highest peaks (``peaks``): a peak as narrow as MNIST's at 10-12 falls
between the points of a 10-value grid over 2..2000. Above ``SEARCH_IMAGES`` images the search
reads a random sample of that many (with their own plain kNN, mined again on the sample), so
its cost stops growing with N; a class rarer than about 1 image in 2,500 (20 of the sample's
50,000) may then go uncounted.

``CRITERIA`` names a (partition, score) pair; every score of one partition at one K comes from
the same partition, so recording several criteria of one partition costs one training per K.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score

from smcluster.config import ClusteringConfig, check_cluster_range
from smcluster.engine import seed_everything, stage_seed
from smcluster.models import ClusterHeads
from smcluster.stages.neighbours import knn_search

__all__ = [
    "CRITERIA",
    "PARTITIONS",
    "SCORES",
    "SEARCH_IMAGES",
    "KSearch",
    "SearchInputs",
    "candidate_grid",
    "choose_n_clusters",
    "how_sure",
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
    _null: np.ndarray | None = field(default=None, repr=False)
    _cache: dict[tuple[str, int], Any] = field(default_factory=dict, repr=False)

    @property
    def reduced(self) -> np.ndarray:
        if self._reduced is None:
            self._reduced = pca_reduce(self.embeddings, self.dims, self.seed)
        return self._reduced

    @property
    def null(self) -> np.ndarray:
        """A reference without clusters: a Gaussian with ``reduced``'s covariance.

        The principal axes are uncorrelated, so the covariance is each axis's variance: the
        reference has the data's spread along every axis and no clusters (Tibshirani et al.'s
        2001 reference aligned with the principal components; a Gaussian rather than a
        permutation of each axis, which would keep an axis's own modes).
        """
        if self._null is None:
            rng = np.random.default_rng(stage_seed(self.seed, "choose-k-null", 0))
            x = self.reduced
            noise = rng.standard_normal(x.shape).astype(np.float32)
            self._null = noise * x.std(0, keepdims=True)
        return self._null

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """A fixed random split of the images into two halves (indices A, B)."""

        def split() -> tuple[np.ndarray, np.ndarray]:
            rng = np.random.default_rng(stage_seed(self.seed, "choose-k-halves", 0))
            order = rng.permutation(len(self.embeddings))
            return order[: len(order) // 2], order[len(order) // 2 :]

        return self.cached("halves", 0, split)

    def cached(self, key: str, k: int, make: Callable[[], Any]) -> Any:
        """``make()``, once per (``key``, ``k``): what a score at K needs that its partition
        does not change (a reference's score, a half's own clustering)."""
        if (key, k) not in self._cache:
            self._cache[key, k] = make()
        return self._cache[key, k]


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


def _faiss_kmeans(x: np.ndarray, k: int, seed: int, restarts: int = 1):
    """Faiss k-means (20 iterations, ``restarts`` random starts) of float32 rows, untrained."""
    import faiss

    return faiss.Kmeans(
        x.shape[1],
        k,
        niter=20,
        seed=seed,
        nredo=restarts,
        min_points_per_centroid=1,
        max_points_per_centroid=256,
        verbose=False,
    )


def kmeans(x: np.ndarray, k: int, seed: int, restarts: int = 1) -> np.ndarray:
    """Faiss k-means (20 iterations; the lowest-error of ``restarts``): each row's cluster."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    model = _faiss_kmeans(x, k, seed, restarts)
    model.train(x)
    return model.index.search(x, 1)[1][:, 0].astype(np.int64)


def kmeans_pp(x: np.ndarray, k: int, seed: int, restarts: int = 1) -> np.ndarray:
    """K-means from k-means++ seeds (Arthur and Vassilvitskii 2007, one trial per seed), 20
    faiss iterations, the lowest-error of ``restarts``: each row's cluster.

    Random seeds leave two centres in one true cluster and none in another far more often,
    and a stability score reads those local optima as instability.
    """
    from sklearn.cluster import kmeans_plusplus

    x = np.ascontiguousarray(x, dtype=np.float32)
    best, best_error = None, np.inf
    for attempt in range(max(restarts, 1)):
        init, _ = kmeans_plusplus(x, k, random_state=(seed + attempt) % 2**31)
        model = _faiss_kmeans(x, k, seed)
        model.train(x, init_centroids=np.ascontiguousarray(init, dtype=np.float32))
        error, labels = model.index.search(x, 1)
        if float(error.sum()) < best_error:
            best, best_error = labels[:, 0].astype(np.int64), float(error.sum())
    return best


def kmeans_partition(inputs: SearchInputs, k: int) -> list[np.ndarray]:
    """Faiss k-means (20 iterations) on the PCA-reduced features, ``inputs.tries`` restarts."""
    return [
        kmeans(inputs.reduced, k, stage_seed(inputs.seed, f"choose-k-{k}", attempt))
        for attempt in range(inputs.tries)
    ]


def kmeans_best_partition(inputs: SearchInputs, k: int) -> list[np.ndarray]:
    """The k-means (k-means++ seeds) of the reduced features with the lowest error of
    ``inputs.tries`` restarts: one partition, so a score is not the luckiest of several
    (a stability score would be)."""
    seed = stage_seed(inputs.seed, f"choose-k-{k}", 0)
    return [kmeans_pp(inputs.reduced, k, seed, inputs.tries)]


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


def centroid_transfer(x: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray):
    """Labels of ``x[test]`` by the nearest class mean of ``x[train]`` under ``labels[train]``:
    the closed-form linear classifier (argmax of c.x - |c|^2 / 2) the partition defines."""
    import faiss

    k = int(labels.max()) + 1
    y = labels[train]
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(sums, y, x[train])
    present = np.bincount(y, minlength=k) > 0
    means = (sums[present] / np.bincount(y, minlength=k)[present, None]).astype(np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(means))
    return index.search(np.ascontiguousarray(x[test], dtype=np.float32), 1)[1][:, 0]


def _transfer_agreement(
    inputs: SearchInputs,
    x: np.ndarray,
    labels: np.ndarray,
    key: str,
    agreement: Callable[[np.ndarray, np.ndarray], float],
) -> float:
    """Mean over the two halves of the agreement between the classifier fit on the other
    half's ``labels`` and the half's own k-means at the same K."""
    k = int(labels.max()) + 1
    out = []
    for side, (train, test) in enumerate([inputs.halves(), inputs.halves()[::-1]]):
        seed = stage_seed(inputs.seed, f"choose-k-{key}-{k}", side)
        own = inputs.cached(
            f"{key}-{side}", k, functools.partial(kmeans_pp, x[test], k, seed, inputs.tries)
        )
        out.append(agreement(centroid_transfer(x, labels, train, test), own))
    return float(np.mean(out))


def hungarian_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Share of images on which two labelings agree after the best one-to-one map."""
    from smcluster.metrics import cluster_accuracy

    return cluster_accuracy(b, a)


AGREEMENTS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "ari": adjusted_rand_score,
    "acc": hungarian_accuracy,
}


def probe_stability(inputs: SearchInputs, labels: np.ndarray, agreement: str = "acc") -> float:
    """Clest-style prediction agreement above a no-cluster reference (Dudoit and Fridlyand 2002).

    A linear classifier (nearest class mean, closed form) is fit on a random half of the images
    labelled by the partition; its predictions on the other half are compared with that half's
    own k-means at the same K (the best of ``inputs.tries`` starts), and the halves swap
    roles; ``agreement`` names the comparison in ``AGREEMENTS``: ``acc``, the share of images
    on which the two agree after the best one-to-one map of clusters (Hungarian), or ``ari``.
    The same is done on ``inputs.null`` (a Gaussian of the same spread, no clusters) and its
    agreement is subtracted, so a K is preferred only where the partition transfers better
    than a partition of structureless data does (a k-means of few clusters transfers well on
    any elongated cloud). The ARI variant also rewards a stable split into a few groups of
    true clusters (it chose 2 for 8 planted clusters once in 14 searches; accuracy did not).
    """
    k = int(labels.max()) + 1
    agree = AGREEMENTS[agreement]
    real = _transfer_agreement(inputs, inputs.reduced, labels, "probe-half", agree)

    def reference() -> float:
        null = null_partition(inputs, k)
        return _transfer_agreement(inputs, inputs.null, null, "null-half", agree)

    return real - inputs.cached(f"probe-null-{agreement}", k, reference)


def null_partition(inputs: SearchInputs, k: int) -> np.ndarray:
    """The k-means of ``inputs.null`` at ``k`` (best of ``inputs.tries`` starts), cached."""
    seed = stage_seed(inputs.seed, f"choose-k-null-{k}", 0)
    return inputs.cached("null", k, lambda: kmeans_pp(inputs.null, k, seed, inputs.tries))


def within_dispersion(x: np.ndarray, labels: np.ndarray) -> float:
    """Sum over clusters of the squared distances to the cluster's mean."""
    k = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    sums = np.zeros((k, x.shape[1]))
    np.add.at(sums, labels, x.astype(np.float64))
    present = counts > 0
    return float(
        (x.astype(np.float64) ** 2).sum() - ((sums[present] ** 2).sum(1) / counts[present]).sum()
    )


def gap(inputs: SearchInputs, labels: np.ndarray) -> float:
    """Tibshirani et al.'s (2001) gap: log W_null(K) - log W(K), W the within-cluster sum of
    squares, the reference ``inputs.null`` (one draw, its k-means at the same K); the K of the
    largest gap (not the paper's one-standard-error rule, which needs several draws)."""
    k = int(labels.max()) + 1
    null = inputs.cached(
        "gap-null", k, lambda: np.log(within_dispersion(inputs.null, null_partition(inputs, k)))
    )
    return null - np.log(max(within_dispersion(inputs.reduced, labels), 1e-12))


CODING_DISTORTION = 0.25
"""The coding criterion's distortion eps^2 as a share of the coded features' total variance:
each image is coded to within a quarter of the data's spread (a signal-to-distortion ratio of
4, 6 dB); see ``coding_score``."""

CODING_DIMS = 16
"""The leading principal axes the coding criterion codes: a cluster's covariance costs about
d^2 / 2 numbers, so with few images per cluster more axes bias the length to small K."""


def coding_length(x: np.ndarray, labels: np.ndarray, eps: float) -> float:
    """Bits to code ``x`` (N x d) up to distortion ``eps`` given the partition (Ma et al. 2007).

    Per cluster of n_k vectors with mean mu_k and covariance S_k:
    (n_k + d) / 2 log2 det(I + d / eps^2 S_k) + d / 2 log2(1 + |mu_k|^2 / eps^2), plus the
    membership's n_k log2(n / n_k). O(N d^2 + K d^3), no N x N.
    """
    n, d = x.shape
    k = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=k)
    keep = counts > 0
    xd = x.astype(np.float64)
    sums = np.zeros((k, d))
    np.add.at(sums, labels, xd)
    order = np.argsort(labels, kind="stable")
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])[keep]
    outer = np.add.reduceat(xd[order][:, :, None] * xd[order][:, None, :], starts, axis=0)
    nk = counts[keep].astype(np.float64)
    mu = sums[keep] / nk[:, None]
    cov = outer / nk[:, None, None] - mu[:, :, None] * mu[:, None, :]
    _, logdet = np.linalg.slogdet(np.eye(d) + (d / eps**2) * cov)
    bits = (nk + d) / 2 * logdet / np.log(2) + d / 2 * np.log2(1 + (mu**2).sum(1) / eps**2)
    return float(bits.sum() + (nk * np.log2(n / nk)).sum())


def coding_score(
    inputs: SearchInputs,
    labels: np.ndarray,
    distortion: float = CODING_DISTORTION,
    dims: int = CODING_DIMS,
    eps: float | None = None,
) -> float:
    """Minus the lossy coding length (``coding_length``, bits per image) of the features'
    ``dims`` leading principal axes (of ``inputs.reduced``).

    Splitting a Gaussian cluster saves little in the log-determinant and pays a second model
    (the d / 2 factor and the mean) and membership bits; merging two distinct clusters inflates
    the merged covariance's determinant for every image in it. The criterion does not read the
    neighbours. The distortion is eps^2 = ``distortion`` x the coded features' total variance
    (or a fixed ``eps``): one constant for every data set, in the data's own units, so the
    choice does not change when the features are scaled. A fixed eps on the unit sphere is not
    enough: the spread of L2-normalised stage-1 features varies several-fold between runs
    (total variance 0.13 on Omniglot, 0.8 on planted mixtures), and an eps above the spread
    codes everything as one cluster.
    """
    x = inputs.reduced[:, :dims]
    if eps is None:
        eps = float(np.sqrt(distortion * x.var(0).sum()))
    return -coding_length(x, labels, eps) / len(labels)


PARTITIONS: dict[str, Partition] = {
    "scan": scan_partition,
    "kmeans": kmeans_partition,
    "kmeans1": kmeans_best_partition,
}
SCORES: dict[str, Score] = {
    "nmi": neighbour_nmi,
    "kappa": neighbour_kappa,
    "mapeq": map_equation,
    "silhouette": silhouette,
    "probe": probe_stability,
    "probe-ari": functools.partial(probe_stability, agreement="ari"),
    "coding": coding_score,
    "coding-d0.1": functools.partial(coding_score, distortion=0.1),
    "coding-d0.5": functools.partial(coding_score, distortion=0.5),
    "coding-32d": functools.partial(coding_score, dims=32),
    "coding-eps0.5": functools.partial(coding_score, eps=0.5),
    "gap": gap,
}
CRITERIA: dict[str, tuple[str, str]] = {
    "scan-mapeq": ("scan", "mapeq"),
    "kmeans-mapeq": ("kmeans", "mapeq"),
    "scan-nmi": ("scan", "nmi"),
    "scan-kappa": ("scan", "kappa"),
    "kmeans-nmi": ("kmeans", "nmi"),
    "kmeans-kappa": ("kmeans", "kappa"),
    "kmeans-silhouette": ("kmeans", "silhouette"),
    "kmeans-probe": ("kmeans1", "probe"),
    "kmeans-probe-ari": ("kmeans1", "probe-ari"),
    "kmeans-coding": ("kmeans1", "coding"),
    "kmeans-coding-d0.1": ("kmeans1", "coding-d0.1"),
    "kmeans-coding-d0.5": ("kmeans1", "coding-d0.5"),
    "kmeans-coding-32d": ("kmeans1", "coding-32d"),
    "kmeans-coding-eps0.5": ("kmeans1", "coding-eps0.5"),
    "kmeans-gap": ("kmeans1", "gap"),
}
"""Criterion name -> (partition, score)."""

DEFAULT_CRITERION = "kmeans-probe"
# Images the search reads at most (a random sample of them above this; see the module docstring).
SEARCH_IMAGES = 50_000
SAMPLE_PER_CLUSTER = 25
# The rate the search's short SCAN trainings had when every criterion was measured
# (benchmarks/results/choose-k-*); a run's own stage-3 rate (``clustering.frozen_lr``) may differ.
SEARCH_LR = 1e-2


@dataclass
class KSearch:
    """The outcome of a search: every K tried (ascending), each criterion's score per K, the
    criterion that chose and its choice, the search's wall seconds and the images it read."""

    candidates: list[int]
    scores: dict[str, list[float]]
    criterion: str
    chosen: int
    seconds: float
    images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "reading": self.reading}

    @property
    def reading(self) -> str | None:
        """``how_sure`` of the chosen K's score."""
        score = self.scores[self.criterion][self.candidates.index(self.chosen)]
        return how_sure(self.criterion, score)

    def best(self, criterion: str) -> int:
        """The K another recorded criterion would have chosen (ties: the smaller K)."""
        values = self.scores[criterion]
        return self.candidates[int(np.argmax(values))]


# How far the probe's score at the chosen K (its agreement above the no-cluster reference) can
# be trusted, from the 30 searches of benchmarks/README.md ("How sure"): 9 of the 10 estimates
# with a score of at least CLEAR_PROBE were within 25 % of the true K, 1 of the 17 below
# UNCLEAR_PROBE was, and 2 of the 3 between them.
CLEAR_PROBE, UNCLEAR_PROBE = 0.50, 0.44


def how_sure(criterion: str, score: float) -> str | None:
    """A plain reading of the chosen K's score, for the criterion whose scores were measured
    against right and wrong estimates (``kmeans-probe``); None for the others."""
    if criterion != "kmeans-probe":
        return None
    if score >= CLEAR_PROBE:
        return (
            f"clear (probe score {score:.2f} >= {CLEAR_PROBE:.2f}; in the benchmarks 9 in 10 "
            "such estimates were within 25 % of the true K)"
        )
    if score < UNCLEAR_PROBE:
        return (
            f"unclear (probe score {score:.2f} < {UNCLEAR_PROBE:.2f}: the features show no "
            "clear clusters, and in the benchmarks 1 in 17 such estimates was within 25 %; "
            "give K or a narrow range if you can)"
        )
    return (
        f"uncertain (probe score {score:.2f}, between {UNCLEAR_PROBE:.2f} and "
        f"{CLEAR_PROBE:.2f}, where estimates in the benchmarks were right and wrong alike)"
    )


def candidate_grid(lo: int, hi: int, points: int = 20) -> list[int]:
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


def local_maxima(tried: Sequence[int], values: Sequence[float], count: int) -> list[int]:
    """The ``count`` highest K among those scoring above their neighbours in ``tried``
    (ascending; an end counts against its one neighbour)."""
    v = np.asarray(values, dtype=np.float64)
    padded = np.concatenate([[-np.inf], v, [-np.inf]])
    peaks = [i for i in range(len(v)) if v[i] >= padded[i] and v[i] >= padded[i + 2]]
    peaks.sort(key=lambda i: -v[i])
    return [int(tried[i]) for i in peaks[:count]]


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
    peaks: int = 2,
    dims: int = 32,
    sample: int = 4000,
    max_images: int = SEARCH_IMAGES,
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
    where it peaks; with ``peaks`` > 1 around that many of its highest local maxima, for a
    sharp peak the coarse grid stepped over). Above ``max_images`` images (or
    ``SAMPLE_PER_CLUSTER`` per cluster at the largest K, if more), a random sample of that many
    is searched, with its own plain kNN at the neighbours' q. The heads train on
    ``device`` (default the CPU).
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
    size = max(max_images, SAMPLE_PER_CLUSTER * tried[-1])
    if len(emb) > size:
        rng = np.random.default_rng(stage_seed(seed, "choose-k-sample", 0))
        keep = np.sort(rng.choice(len(emb), size, replace=False))
        emb, stored = emb[keep], np.ascontiguousarray(stored[:, keep])
        nb = knn_search(emb, nb.shape[1])[0]
    short = dataclasses.replace(
        config, batch_size=min(batch_size, config.batch_size), frozen_lr=SEARCH_LR
    )
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
            for best in local_maxima(tried, [scores[name][k] for k in tried], peaks):
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
        images=len(emb),
    )
