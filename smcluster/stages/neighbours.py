"""Stage 2: nearest-neighbour search, three-view neighbour filtering and purity.

METHOD.md, Stage 2. Pure functions on arrays; nothing here trains. The three views compose as

    n4q = instance_view(features, q)                                   # (N, 4q)
    n2q = filter_by_strong_view(n4q, features, strong_features, 2 * q)  # (N, 2q)
    # ... train the mining head on n2q, predict weak-view probabilities p (N, C) ...
    nq = filter_by_agreement(n2q, p, q)                                 # (N, q)

Memory stays O(N k): the search handles queries in chunks (one chunk x N similarity block at
a time) and the filters gather candidate rows chunk by chunk, never an N x N matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "SCORERS",
    "filter_by_agreement",
    "filter_by_strong_view",
    "instance_view",
    "knn_search",
    "mine_knn",
    "neighbour_purity",
    "purity_at",
]

# Elements gathered per chunk in the filters (64 MiB of float32).
_GATHER_BUDGET = 1 << 24


def _features(x: np.ndarray, name: str) -> np.ndarray:
    """Validated, L2-normalised float32 copy of an (N, D) feature array."""
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    arr /= np.maximum(norms, np.float32(1e-12))
    return arr


def _faiss_search(
    database: np.ndarray, queries: np.ndarray, k: int, chunk_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search with a faiss IndexFlatIP (CPU)."""
    if device.type != "cpu":
        raise ValueError(
            f"backend 'faiss' runs on the CPU (faiss-cpu), got device {device}; "
            "use backend='torch' to search on an accelerator"
        )
    import faiss  # imported here: loading it next to torch's OpenMP is only paid when used

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(database)
    idx = np.empty((queries.shape[0], k), dtype=np.int64)
    sims = np.empty((queries.shape[0], k), dtype=np.float32)
    for start in range(0, queries.shape[0], chunk_size):
        s, i = index.search(queries[start : start + chunk_size], k)
        sims[start : start + chunk_size] = s
        idx[start : start + chunk_size] = i
    return idx, sims


def _torch_search(
    database: np.ndarray, queries: np.ndarray, k: int, chunk_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search as chunked matmul + topk on `device` (CUDA, or CPU for testing)."""
    idx = np.empty((queries.shape[0], k), dtype=np.int64)
    sims = np.empty((queries.shape[0], k), dtype=np.float32)
    with torch.inference_mode():
        db_t = torch.from_numpy(database).to(device).T
        for start in range(0, queries.shape[0], chunk_size):
            q = torch.from_numpy(queries[start : start + chunk_size]).to(device)
            s, i = (q @ db_t).topk(k, dim=1, largest=True, sorted=True)
            sims[start : start + chunk_size] = s.cpu().numpy()
            idx[start : start + chunk_size] = i.cpu().numpy()
    return idx, sims


SearchFn = Callable[[np.ndarray, np.ndarray, int, int, torch.device], tuple[np.ndarray, np.ndarray]]

BACKENDS: dict[str, SearchFn] = {"faiss": _faiss_search, "torch": _torch_search}


def _drop_self(idx: np.ndarray, sims: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From (N, k+1) results keep k per row without row i's own index.

    With exact duplicates, i may tie with a duplicate or not appear at all among the k+1; we
    remove index i where it appears and otherwise the last (least similar) column, so a
    duplicate of i is kept as a genuine neighbour.
    """
    n, kk = idx.shape
    drop = idx == np.arange(n)[:, None]
    drop[~drop.any(axis=1), kk - 1] = True
    keep = ~drop
    return idx[keep].reshape(n, kk - 1), sims[keep].reshape(n, kk - 1)


def knn_search(
    features: np.ndarray,
    k: int,
    *,
    queries: np.ndarray | None = None,
    exclude_self: bool = True,
    chunk_size: int = 4096,
    device: str | torch.device = "cpu",
    backend: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours by cosine similarity (METHOD.md, Stage 2, step 1).

    Rows of `features` (and `queries`) are L2-normalised here, so cosine similarity is the
    inner product. Returns (indices int64 (M, k), similarities float32 (M, k)), each row sorted
    by similarity, most similar first; M = N, or the number of `queries` when given.

    exclude_self drops each image's own index when searching the database against itself
    (queries is None); it has no effect when `queries` is given, since queries are not rows of
    the database. Exact duplicates of an image are kept as neighbours; only index i is removed.

    backend: "faiss" (IndexFlatIP, CPU) or "torch" (chunked matmul + topk on `device`);
    default "torch" when `device` is not the CPU, else "faiss". Peak memory is the O(M k)
    output plus one chunk_size x N similarity block.
    """
    db = _features(features, "features")
    q = db if queries is None else _features(queries, "queries")
    if q.shape[1] != db.shape[1]:
        raise ValueError(
            f"queries have dimension {q.shape[1]} but features have {db.shape[1]}; they must match"
        )
    n = db.shape[0]
    drop_self = exclude_self and queries is None
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    limit = n - 1 if drop_self else n
    if k > limit:
        raise ValueError(
            f"k={k} neighbours asked of {n} images; k must be at most {limit} "
            f"({'N - 1, since each image is excluded from its own list' if drop_self else 'N'})"
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    dev = torch.device(device)
    name = backend if backend is not None else ("faiss" if dev.type == "cpu" else "torch")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    idx, sims = BACKENDS[name](db, q, int(k) + int(drop_self), int(chunk_size), dev)
    if drop_self:
        idx, sims = _drop_self(idx, sims)
    return idx, sims


def mine_knn(features: np.ndarray, q: int, **kwargs: Any) -> np.ndarray:
    """SCAN's mining: the q nearest neighbours (int64 (N, q)) of each image, itself excluded.

    Keyword arguments go to `knn_search`.
    """
    return knn_search(features, q, **kwargs)[0]


def instance_view(features: np.ndarray, q: int, **kwargs: Any) -> np.ndarray:
    """Instance view N4q (METHOD.md, Stage 2, step 1): the 4q nearest neighbours, int64 (N, 4q).

    The candidate pool that the strong and weak views then cut to 2q and q. Keyword arguments
    go to `knn_search`.
    """
    n = np.asarray(features).shape[0]
    if 4 * q >= n:
        raise ValueError(
            f"the instance view needs 4q = {4 * q} neighbours of {n} images; use q < N / 4"
        )
    return knn_search(features, 4 * q, **kwargs)[0]


def _check_candidates(candidates: np.ndarray, n: int, keep: int) -> np.ndarray:
    cand = np.asarray(candidates)
    if cand.ndim != 2 or cand.dtype.kind not in "iu":
        raise ValueError(
            f"candidates must be an (N, K) integer array, got {cand.dtype} {cand.shape}"
        )
    if cand.shape[0] != n:
        raise ValueError(f"candidates has {cand.shape[0]} rows but there are {n} images")
    if cand.size and (cand.min() < 0 or cand.max() >= n):
        raise ValueError(f"candidates must index 0..{n - 1}, got {cand.min()}..{cand.max()}")
    if not 1 <= keep <= cand.shape[1]:
        raise ValueError(f"keep must be between 1 and K={cand.shape[1]} candidates, got {keep}")
    return cand.astype(np.int64, copy=False)


def _chunked_keep(
    cand: np.ndarray,
    keep: int,
    width: int,
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Keep the `keep` best-scored candidates per row, best first; ties keep candidate order.

    score(anchors (c,), candidates (c, K)) -> (c, K); chunks are sized so that gathering
    `width` values per candidate stays within a fixed memory budget.
    """
    n, k = cand.shape
    step = max(1, _GATHER_BUDGET // max(1, k * width))
    out = np.empty((n, keep), dtype=np.int64)
    for start in range(0, n, step):
        c = cand[start : start + step]
        s = score(np.arange(start, start + c.shape[0]), c)
        order = np.argsort(-s, axis=1, kind="stable")[:, :keep]
        out[start : start + step] = np.take_along_axis(c, order, axis=1)
    return out


def filter_by_strong_view(
    candidates: np.ndarray, features: np.ndarray, strong_features: np.ndarray, keep: int
) -> np.ndarray:
    """Strong view (METHOD.md, Stage 2, step 2): N4q -> N2q.

    For anchor i, keep the `keep` candidates j whose un-augmented feature f(x_j) is most
    cosine-similar to the feature of x_i's strong augmentation, strong_features[i]. Returns
    int64 (N, keep), most similar first (ties keep the candidates' order).
    """
    f = _features(features, "features")
    fs = _features(strong_features, "strong_features")
    if fs.shape != f.shape:
        raise ValueError(
            f"strong_features has shape {fs.shape} but features has {f.shape}; "
            "give one strong-view feature per image"
        )
    cand = _check_candidates(candidates, f.shape[0], keep)

    def score(anchors: np.ndarray, c: np.ndarray) -> np.ndarray:
        return np.einsum("ckd,cd->ck", f[c], fs[anchors])

    return _chunked_keep(cand, keep, f.shape[1], score)


def _dot_scores(p: np.ndarray, anchors: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.einsum("ckd,cd->ck", p[c], p[anchors])


def _argmax_scores(p: np.ndarray, anchors: np.ndarray, c: np.ndarray) -> np.ndarray:
    return p[c, p[anchors].argmax(axis=1)[:, None]]


Scorer = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

SCORERS: dict[str, Scorer] = {"dot": _dot_scores, "argmax": _argmax_scores}


def filter_by_agreement(
    candidates: np.ndarray, probabilities: np.ndarray, keep: int, score: str = "dot"
) -> np.ndarray:
    """Weak view (METHOD.md, Stage 2, step 3): N2q -> N(x), dropping the least-agreeing.

    probabilities[i] is the mining head's prediction p_i for x_i's weak view. The agreement of
    neighbour j with anchor i is p_i . p_j ("dot", the default) or p_j[argmax p_i] ("argmax").
    Returns the `keep` most agreeing candidates, int64 (N, keep), best first (ties keep the
    candidates' order).
    """
    if score not in SCORERS:
        raise ValueError(f"unknown agreement score {score!r}; choose one of {sorted(SCORERS)}")
    p = np.asarray(probabilities)
    if p.ndim != 2 or p.shape[1] == 0 or p.dtype.kind != "f":
        raise ValueError(f"probabilities must be a float (N, C) array, got {p.dtype} {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("probabilities contain NaN or infinite values")
    cand = _check_candidates(candidates, p.shape[0], keep)
    scorer = SCORERS[score]
    width = p.shape[1] if score == "dot" else 1
    return _chunked_keep(cand, keep, width, lambda a, c: scorer(p, a, c))


def _column_hits(neighbours: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per column j of `neighbours`, how many anchors share a label with their j-th neighbour."""
    nb = np.asarray(neighbours)
    lab = np.asarray(labels)
    if nb.ndim != 2 or nb.shape[1] == 0 or nb.dtype.kind not in "iu":
        raise ValueError(f"neighbours must be an (N, k) integer array, got {nb.dtype} {nb.shape}")
    if lab.ndim != 1 or lab.shape[0] != nb.shape[0] or lab.shape[0] == 0:
        raise ValueError(
            f"labels must be 1-D with one label per row of neighbours ({nb.shape[0]}), "
            f"got shape {lab.shape}"
        )
    n = nb.shape[0]
    if nb.min() < 0 or nb.max() >= n:
        raise ValueError(f"neighbours must index 0..{n - 1}, got {nb.min()}..{nb.max()}")
    step = max(1, _GATHER_BUDGET // nb.shape[1])
    hits = np.zeros(nb.shape[1], dtype=np.int64)
    for start in range(0, n, step):
        rows = slice(start, start + step)
        hits += (lab[nb[rows]] == lab[rows, None]).sum(axis=0)
    return hits


def neighbour_purity(neighbours: np.ndarray, labels: np.ndarray) -> float:
    """Share of mined neighbours whose true label equals the anchor's (SCAN's measure).

    METHOD.md, Stage 2: the diagnostic that compares plain kNN with three-view mining.
    """
    hits = _column_hits(neighbours, labels)
    return float(hits.sum() / (hits.size * np.asarray(labels).shape[0]))


def purity_at(neighbours: np.ndarray, labels: np.ndarray, ks: Iterable[int]) -> dict[int, float]:
    """Purity of the first k neighbours of each row, for each k in `ks`.

    Meaningful when rows are sorted most similar first (as `knn_search` returns them): it
    shows how purity falls as more distant neighbours are taken.
    """
    hits = _column_hits(neighbours, labels)
    n = np.asarray(labels).shape[0]
    out: dict[int, float] = {}
    for k in ks:
        if not 1 <= k <= hits.size:
            raise ValueError(f"each k must be between 1 and {hits.size} (the columns), got {k}")
        out[int(k)] = float(hits[:k].sum() / (k * n))
    return out
