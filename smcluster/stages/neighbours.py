"""Stage 2: nearest-neighbour search, three-view neighbour filtering and purity.

METHOD.md, Stage 2. Pure functions on arrays; nothing here trains. The three views compose as

    n4q = instance_view(features, q)                                   # (N, 4q)
    n2q = filter_by_strong_view(n4q, features, strong_features, 2 * q)  # (N, 2q)
    # ... train the mining head on n2q, predict weak-view probabilities p (N, C) ...
    nq = filter_by_agreement(n2q, p, q)                                 # (N, q)

Memory stays O(N (D + k)): the search normalises the features chunk by chunk into its index
(a memory-mapped array is read, never copied whole), handles queries in chunks, and the
filters gather candidate rows chunk by chunk; never an N x N matrix.

The index is exact (faiss ``IndexFlatIP`` or a chunked torch top-k) up to ``EXACT_LIMIT``
images and an approximate faiss IVF index above it (``index="auto"``), whose recall against
exact search is estimated on a seeded sample of queries and returned with the neighbours
(``find_neighbours``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "BACKENDS",
    "EXACT_LIMIT",
    "INDEXES",
    "SCORERS",
    "NeighbourSearch",
    "choose_index",
    "filter_by_agreement",
    "filter_by_strong_view",
    "find_neighbours",
    "fuse_views",
    "instance_view",
    "knn_recall",
    "keep_best",
    "knn_search",
    "mine_knn",
    "neighbour_purity",
    "purity_at",
]

# Elements gathered per chunk in the filters (64 MiB of float32).
_GATHER_BUDGET = 1 << 24


def _features(x: np.ndarray, name: str) -> np.ndarray:
    """Validated, L2-normalised float32 copy of an (N, D) feature array."""
    arr = _checked(x, name)
    return _normalised(arr, name)


def _checked(x: np.ndarray, name: str) -> np.ndarray:
    """An (N, D) numeric array, not copied (a memory-mapped array stays mapped)."""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {arr.shape}")
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    return arr


def _normalised(rows: np.ndarray, name: str) -> np.ndarray:
    """Rows as an L2-normalised float32 copy; ValueError on NaN or infinite values."""
    arr = np.array(rows, dtype=np.float32)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    arr /= np.maximum(norms, np.float32(1e-12))
    return arr


def _chunks(x: np.ndarray, size: int, name: str) -> Iterator[tuple[int, np.ndarray]]:
    """(start, normalised rows) of `x`, `size` rows at a time."""
    for start in range(0, x.shape[0], size):
        yield start, _normalised(x[start : start + size], name)


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
    for _, rows in _chunks(database, chunk_size, "features"):
        index.add(rows)
    return _search_in_chunks(index, queries, k, chunk_size)


def _search_in_chunks(
    index: Any, queries: np.ndarray, k: int, chunk_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """All `queries` against a faiss index, chunk by chunk into (M, k) outputs."""
    idx = np.empty((queries.shape[0], k), dtype=np.int64)
    sims = np.empty((queries.shape[0], k), dtype=np.float32)
    for start, rows in _chunks(queries, chunk_size, "queries"):
        s, i = index.search(rows, k)
        sims[start : start + len(rows)] = s
        idx[start : start + len(rows)] = i
    return idx, sims


def _torch_search(
    database: np.ndarray, queries: np.ndarray, k: int, chunk_size: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search as chunked matmul + topk on `device` (CUDA, or CPU for testing)."""
    idx = np.empty((queries.shape[0], k), dtype=np.int64)
    sims = np.empty((queries.shape[0], k), dtype=np.float32)
    with torch.inference_mode():
        db_t = torch.cat(
            [torch.from_numpy(r).to(device) for _, r in _chunks(database, chunk_size, "features")]
        ).T
        for start, rows in _chunks(queries, chunk_size, "queries"):
            q = torch.from_numpy(rows).to(device)
            s, i = (q @ db_t).topk(k, dim=1, largest=True, sorted=True)
            sims[start : start + len(rows)] = s.cpu().numpy()
            idx[start : start + len(rows)] = i.cpu().numpy()
    return idx, sims


SearchFn = Callable[[np.ndarray, np.ndarray, int, int, torch.device], tuple[np.ndarray, np.ndarray]]

BACKENDS: dict[str, SearchFn] = {"faiss": _faiss_search, "torch": _torch_search}


def _drop_self(
    idx: np.ndarray, sims: np.ndarray, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """From (M, k+1) results keep k per row without the row's own index.

    ``rows`` are the database indices of the queries (default 0..M-1). With exact duplicates,
    a row may tie with a duplicate or not appear at all among the k+1; we remove its own index
    where it appears and otherwise the last (least similar) column, so a duplicate is kept as
    a genuine neighbour.
    """
    m, kk = idx.shape
    own = np.arange(m) if rows is None else rows
    drop = idx == own[:, None]
    drop[~drop.any(axis=1), kk - 1] = True
    keep = ~drop
    return idx[keep].reshape(m, kk - 1), sims[keep].reshape(m, kk - 1)


def knn_recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact k nearest neighbours that an approximate search found (recall@k).

    Both are (M, k) index arrays for the same M queries; order within a row does not matter.
    """
    a, e = np.asarray(approx), np.asarray(exact)
    if a.shape != e.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(
            f"approx and exact must be (M, k) arrays of the same shape, got {a.shape}, {e.shape}"
        )
    step = max(1, _GATHER_BUDGET // (a.shape[1] * a.shape[1]))
    found = 0
    for start in range(0, a.shape[0], step):
        block_a, block_e = a[start : start + step], e[start : start + step]
        found += int((block_e[:, :, None] == block_a[:, None, :]).any(axis=2).sum())
    return found / e.size


@dataclass
class SearchOptions:
    """How an index searches: chunking, exact backend, seed and the recall an approximate
    index is tuned to reach (estimated on ``recall_sample`` seeded queries)."""

    chunk_size: int = 4096
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = "faiss"
    seed: int = 0
    target_recall: float = 0.9
    recall_sample: int = 1000
    drop_self: bool = True


@dataclass
class NeighbourSearch:
    """Neighbours found and how: indices int64 (M, k), similarities float32 (M, k), the index
    used, its parameters, and the recall against exact search (1.0 for exact; estimated on a
    seeded sample of queries for an approximate index)."""

    indices: np.ndarray
    similarities: np.ndarray
    index: str
    params: dict[str, Any] = field(default_factory=dict)
    recall: float = 1.0


def _exact_index(
    db: np.ndarray, queries: np.ndarray, k: int, opts: SearchOptions
) -> NeighbourSearch:
    idx, sims = BACKENDS[opts.backend](db, queries, k, opts.chunk_size, opts.device)
    return NeighbourSearch(idx, sims, "exact", {"backend": opts.backend})


def _exact_rows(db: np.ndarray, queries: np.ndarray, k: int, chunk_size: int) -> np.ndarray:
    """Exact top-k indices of a few normalised `queries` (m, D) over `db`, db chunk by chunk."""
    best_s = torch.full((len(queries), 0), -np.inf)
    best_i = torch.zeros((len(queries), 0), dtype=torch.int64)
    q = torch.from_numpy(queries)
    for start, rows in _chunks(db, chunk_size, "features"):
        s = q @ torch.from_numpy(rows).T
        i = torch.arange(start, start + len(rows)).expand(len(queries), -1)
        best_s, pos = torch.cat([best_s, s], 1).topk(min(k, best_s.shape[1] + s.shape[1]), 1)
        best_i = torch.cat([best_i, i], 1).gather(1, pos)
    return best_i.numpy()


def _tune(
    search: Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]],
    settings: Iterable[int],
    db: np.ndarray,
    queries: np.ndarray,
    k: int,
    opts: SearchOptions,
) -> tuple[int, float]:
    """The first setting (growing effort) whose recall on a seeded sample of queries reaches
    ``opts.target_recall``, or the last one; returns (setting, its sample recall)."""
    rng = np.random.default_rng(opts.seed)
    m = min(opts.recall_sample, queries.shape[0])
    rows = np.sort(rng.choice(queries.shape[0], size=m, replace=False))
    sample = _normalised(queries[rows], "queries")
    exact = _exact_rows(db, sample, k, opts.chunk_size)
    exact_s = np.zeros(exact.shape, dtype=np.float32)
    if opts.drop_self:
        exact = _drop_self(exact, exact_s, rows)[0]
    setting, recall = 0, 0.0
    for setting in settings:
        idx, sims = search(sample, setting)
        if opts.drop_self:
            idx = _drop_self(idx, sims, rows)[0]
        recall = knn_recall(idx, exact)
        if recall >= opts.target_recall and not (idx < 0).any():
            break
    return setting, recall


def _doubling(start: int, stop: int) -> list[int]:
    out = [start]
    while out[-1] < stop:
        out.append(min(2 * out[-1], stop))
    return out


def _ivf_index(db: np.ndarray, queries: np.ndarray, k: int, opts: SearchOptions) -> NeighbourSearch:
    """faiss IndexIVFFlat over inner product on normalised rows.

    nlist = 4 sqrt(N) inverted lists (at most N / 39, faiss's fewest training points per
    centroid), k-means trained on a seeded sample of 40 nlist rows with faiss's k-means seeded
    too, so one seed gives one index and the same neighbours on a resumed run; nprobe doubles
    from 1 until the sample recall reaches the target.
    """
    import faiss

    n, d = db.shape
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    rng = np.random.default_rng(opts.seed)
    train_rows = np.sort(rng.choice(n, size=min(n, 40 * nlist), replace=False))
    quantizer = faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = opts.seed
    index.cp.min_points_per_centroid = 1
    index.train(_normalised(db[train_rows], "features"))
    for _, rows in _chunks(db, opts.chunk_size, "features"):
        index.add(rows)

    def search(q: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        index.nprobe = nprobe
        s, i = index.search(q, k)
        return i, s

    nprobe, recall = _tune(search, _doubling(1, nlist), db, queries, k, opts)
    index.nprobe = nprobe
    idx, sims = _search_in_chunks(index, queries, k, opts.chunk_size)
    short = np.flatnonzero((idx < 0).any(axis=1))
    if short.size:  # rows whose probed lists held fewer than k: search every list
        index.nprobe = nlist
        sims[short], idx[short] = index.search(_normalised(queries[short], "queries"), k)
    params = {"nlist": nlist, "nprobe": nprobe, "train_size": len(train_rows)}
    return NeighbourSearch(idx, sims, "ivf", params, recall)


def _hnsw_index(
    db: np.ndarray, queries: np.ndarray, k: int, opts: SearchOptions
) -> NeighbourSearch:
    """faiss IndexHNSWFlat (M = 32) over inner product; efSearch doubles from k until the
    sample recall reaches the target. Built on one thread: HNSW's parallel insertion order
    varies between runs, and one seed must give the same neighbours."""
    import faiss

    index = faiss.IndexHNSWFlat(db.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = 80
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        for _, rows in _chunks(db, opts.chunk_size, "features"):
            index.add(rows)
    finally:
        faiss.omp_set_num_threads(threads)

    def search(q: np.ndarray, ef: int) -> tuple[np.ndarray, np.ndarray]:
        index.hnsw.efSearch = ef
        s, i = index.search(q, k)
        return i, s

    ef, recall = _tune(search, _doubling(max(k, 16), max(k, 16) * 64), db, queries, k, opts)
    index.hnsw.efSearch = ef
    idx, sims = _search_in_chunks(index, queries, k, opts.chunk_size)
    return NeighbourSearch(idx, sims, "hnsw", {"M": 32, "efSearch": ef}, recall)


IndexFn = Callable[[np.ndarray, np.ndarray, int, SearchOptions], NeighbourSearch]

INDEXES: dict[str, IndexFn] = {"exact": _exact_index, "ivf": _ivf_index, "hnsw": _hnsw_index}

# Measured on 2 CPU cores, D = 384, k = 20, 1,000 planted clusters (CPU seconds, exact vs
# IVF at recall >= 0.9): 0.4 vs 0.8 at 5,000 images, 1.4 vs 1.1 at 10^4, 4.7 vs 2.4 at
# 2 x 10^4, 18 vs 6 at 4 x 10^4 (benchmarks/results/scale-*.md). Exact search grows as N^2.
EXACT_LIMIT = 10_000
APPROXIMATE = "ivf"


def choose_index(n: int, device: str | torch.device = "cpu") -> str:
    """``index="auto"``: exact search on an accelerator (fast enough at any N there) or up to
    ``EXACT_LIMIT`` images on the CPU, the approximate ``APPROXIMATE`` index above."""
    return "exact" if torch.device(device).type != "cpu" or n <= EXACT_LIMIT else APPROXIMATE


def find_neighbours(
    features: np.ndarray,
    k: int,
    *,
    queries: np.ndarray | None = None,
    exclude_self: bool = True,
    chunk_size: int = 4096,
    device: str | torch.device = "cpu",
    backend: str | None = None,
    index: str = "auto",
    seed: int = 0,
    target_recall: float = 0.9,
) -> NeighbourSearch:
    """k nearest neighbours by cosine similarity (METHOD.md, Stage 2, step 1), with the index
    used and its recall.

    Rows of `features` (and `queries`) are L2-normalised chunk by chunk as they enter the index,
    so cosine similarity is the inner product and a memory-mapped `features` is never copied
    whole. Results: indices int64 (M, k) and similarities float32 (M, k), each row most similar
    first; M = N, or the number of `queries` when given.

    exclude_self drops each image's own index when searching the database against itself
    (queries is None); it has no effect when `queries` is given, since queries are not rows of
    the database. Exact duplicates of an image are kept as neighbours; only index i is removed.

    index: "exact", "ivf" (faiss IVF, approximate), "hnsw" (faiss HNSW, approximate) or "auto"
    (``choose_index``). An approximate index is tuned until its recall against exact search on
    a seeded sample of 1,000 queries reaches `target_recall`; that recall is returned. `seed`
    fixes the sample and the index's training, so a rerun finds the same neighbours.

    backend (exact search): "faiss" (IndexFlatIP, CPU) or "torch" (chunked matmul + topk on
    `device`); default "torch" when `device` is not the CPU, else "faiss". Peak memory is the
    index (N x D float32), the O(M k) output and one chunk of queries' results (a chunk_size
    x N similarity block for the torch backend).
    """
    db = _checked(features, "features")
    q = db if queries is None else _checked(queries, "queries")
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
    if not 0 < target_recall <= 1:
        raise ValueError(f"target_recall must be in (0, 1], got {target_recall}")
    dev = torch.device(device)
    name = backend if backend is not None else ("faiss" if dev.type == "cpu" else "torch")
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    chosen = choose_index(n, dev) if index == "auto" else index
    if chosen not in INDEXES:
        raise ValueError(f"unknown index {index!r}; choose 'auto' or one of {sorted(INDEXES)}")
    opts = SearchOptions(
        int(chunk_size), dev, name, int(seed), float(target_recall), drop_self=drop_self
    )
    found = INDEXES[chosen](db, q, int(k) + int(drop_self), opts)
    if drop_self:
        found.indices, found.similarities = _drop_self(found.indices, found.similarities)
    return found


def knn_search(features: np.ndarray, k: int, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """(indices int64 (M, k), similarities float32 (M, k)) of ``find_neighbours``; keyword
    arguments (queries, exclude_self, chunk_size, device, backend, index, seed, target_recall)
    go to it."""
    found = find_neighbours(features, k, **kwargs)
    return found.indices, found.similarities


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


def _row_zscores(s: np.ndarray) -> np.ndarray:
    """Each row standardised (mean 0, std 1); a constant row (no evidence) becomes zeros."""
    centred = s - s.mean(axis=1, keepdims=True)
    std = centred.std(axis=1, keepdims=True)
    return np.divide(centred, std, out=np.zeros_like(centred), where=std > 1e-12)


def fuse_views(
    candidates: np.ndarray,
    instance_similarities: np.ndarray,
    features: np.ndarray,
    strong_features: np.ndarray | None,
    probabilities: np.ndarray | None,
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0),
    agreement: str = "dot",
) -> np.ndarray:
    """Fused score of every candidate (N x K float32): the three views as evidence.

    Ours, not the paper's (METHOD.md, "Decisions where the paper is silent"). Per anchor i
    and candidate j of its pool: the instance similarity f_i . f_j, the strong-view similarity
    f(a_i) . f_j (``filter_by_strong_view``'s score; ``strong_features`` may be the mean of
    several strong views, which averages that similarity) and the weak-view agreement
    (``filter_by_agreement``'s score) are each standardised over the anchor's K candidates
    and summed with ``weights`` (instance, strong, weak). A view given as None, or weighted
    0, adds nothing. The paper's successive cuts drop a candidate on one view's say; here a
    candidate that one view ranks low can stay when the others rank it high.
    """
    f = _features(features, "features")
    cand = _check_candidates(candidates, f.shape[0], 1)
    sims = np.asarray(instance_similarities, dtype=np.float32)
    if sims.shape != cand.shape:
        raise ValueError(
            f"instance_similarities has shape {sims.shape} but candidates {cand.shape}; "
            "give one similarity per candidate"
        )
    use_strong = strong_features is not None and weights[1] != 0
    fs = _features(strong_features, "strong_features") if use_strong else None
    if fs is not None and fs.shape != f.shape:
        raise ValueError(
            f"strong_features has shape {fs.shape} but features has {f.shape}; "
            "give one strong-view feature per image"
        )
    p = None if probabilities is None or weights[2] == 0 else np.asarray(probabilities)
    if agreement not in SCORERS:
        raise ValueError(f"unknown agreement score {agreement!r}; choose one of {sorted(SCORERS)}")
    n, k = cand.shape
    width = f.shape[1] + (0 if p is None else p.shape[1])
    step = max(1, _GATHER_BUDGET // max(1, k * width))
    out = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, step):
        c = cand[start : start + step]
        anchors = np.arange(start, start + c.shape[0])
        fused = weights[0] * _row_zscores(sims[start : start + step])
        if fs is not None:
            strong = np.einsum("ckd,cd->ck", f[c], fs[anchors])
            fused = fused + weights[1] * _row_zscores(strong)
        if p is not None:
            fused = fused + weights[2] * _row_zscores(SCORERS[agreement](p, anchors, c))
        out[start : start + step] = fused
    return out


def keep_best(
    candidates: np.ndarray, scores: np.ndarray, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` best-scored candidates of each row and their scores, best first (ties
    keep the candidates' order): int64 (N, keep), float32 (N, keep)."""
    cand = _check_candidates(candidates, len(candidates), keep)
    scores = np.asarray(scores, dtype=np.float32)
    if scores.shape != cand.shape:
        raise ValueError(f"scores has shape {scores.shape} but candidates {cand.shape}")
    order = np.argsort(-np.asarray(scores), axis=1, kind="stable")[:, :keep]
    return np.take_along_axis(cand, order, axis=1), np.take_along_axis(scores, order, axis=1)


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
