"""The 2-D map of the stage-1 features, coloured by cluster (the paper's Fig. 2).

PaCMAP keeps both local and global structure and installs as a pure wheel on top of numba and
faiss (already a dependency); when it cannot be imported or fails, PCA stands in and the page
says so. Large runs are mapped on a random sample (``sample`` points), which is what a reader
can see anyway. The result is cached in ``RUN/report/embedding.npz`` so that writing the
report again is quick.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smcluster.runfolder import UNREADABLE, atomic_write

PCA_DIMS = 50
"""PaCMAP runs on the features' first principal components (as PaCMAP does by default)."""


@dataclass
class Embedding:
    """2-D coordinates of the sampled images ``indices`` and how they were made."""

    indices: np.ndarray
    xy: np.ndarray
    method: str
    note: str | None = None


def embed(
    features: np.ndarray,
    *,
    sample: int = 5000,
    seed: int = 0,
    cache: Path | None = None,
    stamp: str = "",
) -> Embedding:
    """Map ``features`` (N x D) to 2-D on at most ``sample`` random rows.

    ``cache`` (a ``.npz`` path) is read when its ``stamp`` (what the features were, e.g. the
    file's size and time) and sample size match, and written otherwise.
    """
    n = features.shape[0]
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(n, size=sample, replace=False)) if n > sample else np.arange(n)
    key = f"{stamp}|{n}|{indices.size}|{seed}"
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    x = np.ascontiguousarray(features[indices], dtype=np.float32)
    method, note = "PaCMAP", None
    try:
        xy = _pacmap(x, seed)
    except Exception as error:  # ImportError or a numerical failure: PCA still shows the shape
        method, note = "PCA", f"PaCMAP unavailable ({type(error).__name__}: {error}); PCA shown"
        xy = _pca(x)
    result = Embedding(indices, _normalise(xy), method, note)
    if note is None:
        _write_cache(cache, key, result)
    return result


def _pacmap(x: np.ndarray, seed: int) -> np.ndarray:
    if os.environ.get("SMCLUSTER_REPORT_NO_PACMAP"):
        raise ImportError("disabled by SMCLUSTER_REPORT_NO_PACMAP")
    import numba
    import pacmap

    if x.shape[0] < 20:
        raise ValueError(f"too few points ({x.shape[0]}) for PaCMAP")
    neighbours = int(min(10, x.shape[0] - 2))
    reduced = _pca(x, PCA_DIMS) if x.shape[1] > PCA_DIMS else x
    quiet = logging.getLogger("pacmap.pacmap")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it warns about the seed and our own PCA
    threads = numba.get_num_threads()
    # On a few thousand points PaCMAP's parallel kernels spend more time synchronising
    # threads than computing (6x slower with 2 threads on 2 busy cores than with one).
    numba.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = pacmap.PaCMAP(
                n_components=2,
                n_neighbors=neighbours,
                random_state=seed,
                verbose=False,
                apply_pca=False,
            )
            return np.asarray(model.fit_transform(reduced, init="pca"), dtype=np.float32)
    finally:
        numba.set_num_threads(threads)
        quiet.setLevel(level)


def _pca(x: np.ndarray, dims: int = 2) -> np.ndarray:
    """Projection on the first ``dims`` principal axes (eigenvectors of the D x D covariance,
    cheaper than an SVD of the N x D data)."""
    x = x.astype(np.float64)
    centred = x - x.mean(axis=0, keepdims=True)
    values, vectors = np.linalg.eigh(centred.T @ centred)
    axes = vectors[:, np.argsort(values)[::-1][:dims]]
    return np.ascontiguousarray(centred @ axes, dtype=np.float32)


def _normalise(xy: np.ndarray) -> np.ndarray:
    """Into [0, 1] x [0, 1], keeping the aspect ratio (extreme 0.5 % of points clipped)."""
    xy = np.nan_to_num(np.asarray(xy, dtype=np.float64))
    if xy.shape[1] < 2:
        xy = np.concatenate([xy, np.zeros_like(xy)], axis=1)
    low = np.percentile(xy, 0.25, axis=0)
    high = np.percentile(xy, 99.75, axis=0)
    span = float(max((high - low).max(), 1e-12))
    centre = (low + high) / 2
    out = (xy - centre) / span + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _read_cache(cache: Path | None, key: str) -> Embedding | None:
    """The cached map, or None when absent, stale or unreadable (it is then made again)."""
    if cache is None or not cache.exists():
        return None
    try:
        with np.load(cache, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            note = str(f["note"]) or None
            return Embedding(f["indices"], f["xy"], str(f["method"]), note)
    except (KeyError, *UNREADABLE):
        return None


def _write_cache(cache: Path | None, key: str, result: Embedding) -> None:
    if cache is None:
        return
    arrays = {
        "key": key,
        "indices": result.indices,
        "xy": result.xy,
        "method": result.method,
        "note": result.note or "",
    }
    atomic_write(cache, lambda p: np.savez(p.open("wb"), **arrays))
