"""Clustering metrics and feature diagnostics (METHOD.md, Evaluation).

Everything works from a clusters x classes contingency table built with `np.bincount`, so the
cost is O(N + clusters x classes) and no N x N matrix is ever formed; 1000+ clusters are fine.
Labels and cluster ids may be any integers (they need not be contiguous or start at 0): the
table's rows are the sorted distinct cluster ids and its columns the sorted distinct classes.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = [
    "DIAGNOSTICS",
    "MANY_TO_ONE",
    "SCORES",
    "cluster_accuracy",
    "contingency",
    "evaluate",
    "hungarian_match",
    "knn_accuracy",
    "many_to_one_accuracy",
    "many_to_one_labels",
    "matched_confusion",
    "weighted_precision_recall_f",
]

SCORES = ("acc", "nmi", "ari", "weighted_precision", "weighted_recall", "weighted_f")
"""The keys of ``evaluate`` (METHOD.md, Evaluation), in order."""

MANY_TO_ONE = ("acc_many_to_one", "nmi_many_to_one")
"""Keys ``evaluate`` adds when the number of clusters differs from the number of classes."""

DIAGNOSTICS = ("neighbour_purity", "neighbour_purity_knn", "knn_accuracy")
"""The stage-2 and stage-1 diagnostics a run reports next to ``SCORES``."""

# Elements of the (rows, k, k) vote table built per chunk in `knn_accuracy`.
_VOTE_BUDGET = 1 << 24


def _as_labels(values: np.ndarray, name: str) -> np.ndarray:
    """1-D integer array; integral floats are accepted because saved labels often are."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of integer labels, got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integer labels, got dtype {arr.dtype}")


def _check_pair(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels(y_true, "y_true")
    p = _as_labels(y_pred, "y_pred")
    if t.shape[0] != p.shape[0]:
        raise ValueError(
            f"y_true and y_pred must have the same length, got {t.shape[0]} and {p.shape[0]}"
        )
    if t.shape[0] == 0:
        raise ValueError("y_true and y_pred are empty: need at least one labelled image")
    return t, p


def _table(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(counts clusters x classes, cluster ids, class ids) for validated label arrays."""
    clusters, ci = np.unique(y_pred, return_inverse=True)
    classes, ti = np.unique(y_true, return_inverse=True)
    n_c, n_t = clusters.size, classes.size
    counts = np.bincount(ci * n_t + ti, minlength=n_c * n_t).reshape(n_c, n_t)
    return counts.astype(np.int64, copy=False), clusters, classes


def contingency(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts of images per (cluster, class): shape (distinct clusters, distinct classes).

    Row r is the r-th smallest cluster id in `y_pred`, column s the s-th smallest class in
    `y_true` (so with ids 0..C-1 all present, entry [c, t] is cluster c, class t).
    """
    t, p = _check_pair(y_true, y_pred)
    return _table(t, p)[0]


def _match(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column positions of the one-to-one matching with the most images on it."""
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return rows, cols


def hungarian_match(y_true: np.ndarray, y_pred: np.ndarray) -> dict[int, int]:
    """Best one-to-one mapping cluster id -> class id (Hungarian algorithm).

    With more clusters than classes some clusters get no class and are absent from the dict
    (their images count as wrong in `cluster_accuracy`); with fewer, some classes go unused.
    """
    t, p = _check_pair(y_true, y_pred)
    counts, clusters, classes = _table(t, p)
    rows, cols = _match(counts)
    return {int(clusters[r]): int(classes[c]) for r, c in zip(rows, cols, strict=True)}


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """ACC: share of images whose cluster is mapped to their class by `hungarian_match`."""
    t, p = _check_pair(y_true, y_pred)
    counts = _table(t, p)[0]
    rows, cols = _match(counts)
    return float(counts[rows, cols].sum() / t.shape[0])


def weighted_precision_recall_f(
    y_true: np.ndarray, y_pred: np.ndarray
) -> tuple[float, float, float]:
    """Weighted precision, recall and F (paper Eq. 16-20, METHOD.md Evaluation).

    For cluster c of size L_c whose majority class t has L_{c,t} of its images:
    p_c = L_{c,t} / L_c, r_c = L_{c,t} / |class t|, F_c = 2 p_c r_c / (p_c + r_c), and each is
    averaged over clusters with weight L_c / N. The paper's Eq. 20 prints the recall's
    denominator ambiguously; we use the number of images of class t, which is the standard
    cluster recall. When two classes tie for a cluster's majority, the smaller class id is
    taken (this changes r_c only). Weighted precision equals the clustering's purity.
    """
    t, p = _check_pair(y_true, y_pred)
    counts = _table(t, p)[0].astype(np.float64)
    n = float(t.shape[0])
    sizes = counts.sum(axis=1)
    majority = counts.argmax(axis=1)
    hits = counts[np.arange(counts.shape[0]), majority]
    class_sizes = counts.sum(axis=0)[majority]
    prec = hits / sizes
    rec = hits / class_sizes
    f = 2.0 * prec * rec / (prec + rec)
    w = sizes / n
    return float(w @ prec), float(w @ rec), float(w @ f)


def many_to_one_labels(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Each image's cluster replaced by that cluster's majority class (ties: the smaller class).

    The many-to-one mapping used when there are more clusters than classes (over-clustering):
    several clusters may map to one class, so no cluster is left unmatched as in ACC.
    """
    t, p = _check_pair(y_true, y_pred)
    counts, clusters, classes = _table(t, p)
    majority = classes[counts.argmax(axis=1)]
    return majority[np.searchsorted(clusters, p)]


def many_to_one_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Share of images in their cluster's majority class: the clustering's purity.

    Equals ``weighted_precision``; it reaches 1 by giving every image its own cluster, so read
    it with the number of clusters (and beside the one-to-one ACC).
    """
    t, p = _check_pair(y_true, y_pred)
    counts = _table(t, p)[0]
    return float(counts.max(axis=1).sum() / t.shape[0])


def knn_accuracy(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out kNN-classifier accuracy of features, given their mined neighbours.

    Each image is predicted as the majority label among its k neighbours (row i of
    `neighbours`, nearest first); a tie between labels goes to the label of the nearest
    neighbour among the tied ones. This is the stage-1 diagnostic of METHOD.md, Evaluation:
    it measures the features without training anything. Rows must not contain the image
    itself (mine with `exclude_self=True`), or the score would be inflated.
    """
    nb = np.asarray(neighbours)
    lab = _as_labels(labels, "labels")
    if nb.ndim != 2 or nb.shape[1] == 0 or nb.dtype.kind not in "iu":
        raise ValueError(f"neighbours must be an (N, k) integer array, got {nb.dtype} {nb.shape}")
    n, k = nb.shape
    if n == 0 or n != lab.shape[0]:
        raise ValueError(f"neighbours has {n} rows but labels has {lab.shape[0]}; they must match")
    if nb.min() < 0 or nb.max() >= n:
        raise ValueError(f"neighbours must index 0..{n - 1}, got values {nb.min()}..{nb.max()}")
    rows = np.arange(n)
    if np.any(nb == rows[:, None]):
        raise ValueError("neighbours contain the anchor itself; mine them with exclude_self=True")
    step = max(1, _VOTE_BUDGET // (k * k))
    correct = 0
    for start in range(0, n, step):
        nl = lab[nb[start : start + step]]
        # votes[i, j] = how many of row i's neighbours share neighbour j's label; argmax takes
        # the first (nearest) maximum, which is the documented tie-break.
        votes = (nl[:, :, None] == nl[:, None, :]).sum(axis=2)
        pred = nl[np.arange(nl.shape[0]), votes.argmax(axis=1)]
        correct += int((pred == lab[start : start + step]).sum())
    return correct / n


def evaluate(
    y_true: np.ndarray, y_pred: np.ndarray, neighbours: np.ndarray | None = None
) -> dict[str, float]:
    """All clustering scores of METHOD.md, Evaluation, as fractions in [0, 1] (ARI can be < 0).

    Keys: acc, nmi, ari, weighted_precision, weighted_recall, weighted_f. NMI uses
    scikit-learn's default (arithmetic-mean) normalisation. When the number of distinct
    clusters differs from the number of distinct classes (``MANY_TO_ONE``) also
    ``acc_many_to_one`` (purity: each cluster mapped to its majority class) and
    ``nmi_many_to_one`` (NMI of the classes against those mapped labels), where one-to-one ACC
    alone counts every cluster beyond the number of classes as wrong. With ``neighbours``
    (N x k, each image's mined neighbours, itself excluded) also the intermediate diagnostics
    ``neighbour_purity`` and ``knn_accuracy``.
    """
    t, p = _check_pair(y_true, y_pred)
    wp, wr, wf = weighted_precision_recall_f(t, p)
    extra: dict[str, float] = {}
    if np.unique(p).size != np.unique(t).size:
        mapped = many_to_one_labels(t, p)
        extra["acc_many_to_one"] = many_to_one_accuracy(t, p)
        extra["nmi_many_to_one"] = float(normalized_mutual_info_score(t, mapped))
    if neighbours is not None:
        hits = np.asarray(neighbours)
        extra["neighbour_purity"] = float((t[hits] == t[:, None]).mean())
        extra["knn_accuracy"] = knn_accuracy(hits, t)
    return {
        "acc": cluster_accuracy(t, p),
        "nmi": float(normalized_mutual_info_score(t, p)),
        "ari": float(adjusted_rand_score(t, p)),
        "weighted_precision": wp,
        "weighted_recall": wr,
        "weighted_f": wf,
        **extra,
    }


def matched_confusion(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Confusion matrix classes x classes after Hungarian matching, for the report.

    Entry [t, s] counts images of the t-th class (sorted class ids) that fall in the cluster
    matched to the s-th class, so the diagonal holds the correctly clustered images and
    `trace / N` equals ACC. Images in clusters matched to no class (only when there are more
    clusters than classes) are left out, so a row can sum to less than its class size; a
    class with no matched cluster (fewer clusters than classes) has an all-zero column.
    """
    t, p = _check_pair(y_true, y_pred)
    counts, _, classes = _table(t, p)
    rows, cols = _match(counts)
    out = np.zeros((classes.size, classes.size), dtype=np.int64)
    out[:, cols] = counts[rows].T
    return out
