"""Precomputed embeddings: an ``.npy`` (N x D) or an ``.npz`` with ``embeddings`` and optional
``ids`` and ``labels``, for stages 2 and 3 without images (METHOD.md, Stage 2 and Stage 3 on
features someone else computed).

An ``.npy`` is memory-mapped (a 10^6 x 384 float32 file is 1.5 GB that is read page by page,
never copied whole); the members of an ``.npz`` (a zip archive, compressed or not) are read
into memory by numpy, so large sets belong in an ``.npy``. Files are read with
``allow_pickle=False``: nothing in a data file can run code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smcluster.data.imageset import check_labels
from smcluster.data.npz import BROKEN_ARCHIVE, read_field
from smcluster.data.strings import StringTable

EMBEDDINGS, IDS, LABELS = "embeddings", "ids", "labels"

# Rows checked for NaN / infinite values at a time (64 MiB of float32 at D = 384).
_CHECK_ROWS = 1 << 16


@dataclass
class Embeddings:
    """N precomputed feature vectors with their ids and, optionally, true labels.

    ``vectors``: N x D float32, a read-only ``np.memmap`` when read from an ``.npy`` of float32.
    ``ids``: N distinct strings ("0".."N-1" when the file has none). ``labels``: int64 (N,)
    non-negative class indices, for metrics only, or None. ``name``: the file's stem.
    """

    vectors: np.ndarray
    ids: StringTable
    labels: np.ndarray | None
    name: str

    def __len__(self) -> int:
        return self.vectors.shape[0]

    @property
    def memory_mapped(self) -> bool:
        return isinstance(self.vectors, np.memmap)


def load_embeddings(path: str | Path, *, mmap: bool = True) -> Embeddings:
    """Read and check an embeddings file; ValueError naming the file and the problem.

    ``.npy``: one N x D numeric array, memory-mapped when ``mmap`` and stored as float32 (other
    numeric dtypes are converted to float32 in memory). ``.npz``: ``embeddings`` (N x D),
    optional ``ids`` (N distinct strings or integers) and ``labels`` (N non-negative integers);
    loaded into memory (zip members cannot be memory-mapped). Checks: 2-D, D >= 1, N >= 2,
    numeric, finite (row chunk by row chunk, so a mapped file is not copied), ids and labels of
    length N, ids distinct.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no embeddings file at {path}")
    try:
        loaded = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, *BROKEN_ARCHIVE) as error:
        raise ValueError(
            f"{path} is not a readable .npy or .npz file (truncated or not numpy's format?): "
            f"{error}"
        ) from error
    ids = labels = None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            fields = sorted(loaded.files)
            if EMBEDDINGS not in fields:
                raise ValueError(
                    f"{path} has no '{EMBEDDINGS}' array (arrays found: "
                    f"{', '.join(fields) or 'none'}); an embeddings .npz needs '{EMBEDDINGS}' "
                    f"(N x D) and may have '{IDS}' and '{LABELS}'"
                )
            vectors = read_field(loaded, EMBEDDINGS, path)
            ids = read_field(loaded, IDS, path) if IDS in fields else None
            labels = read_field(loaded, LABELS, path) if LABELS in fields else None
    else:
        vectors = loaded
    vectors = check_vectors(vectors, path)
    n = vectors.shape[0]
    return Embeddings(
        vectors=vectors,
        ids=check_ids(ids, n, path),
        labels=check_labels(labels, n, str(path)),
        name=path.stem,
    )


def check_vectors(vectors: np.ndarray, path: Path | str) -> np.ndarray:
    """``vectors`` as float32 N x D (N >= 2, D >= 1, finite, checked chunk by chunk so a
    memory-mapped file is not copied whole); a ValueError naming ``path`` otherwise."""
    if vectors.ndim != 2:
        raise ValueError(
            f"{path}: embeddings must be a 2-D array (N x D), got {vectors.ndim}-D shape "
            f"{vectors.shape}"
        )
    n, d = vectors.shape
    if d == 0:
        raise ValueError(f"{path}: embeddings have dimension D = 0; each row needs values")
    if n < 2:
        raise ValueError(f"{path}: {n} embedding(s); clustering needs at least 2 rows")
    if vectors.dtype.kind not in "fiu":
        raise ValueError(f"{path}: embeddings must be numeric, got dtype {vectors.dtype}")
    if vectors.dtype != np.float32:
        vectors = vectors.astype(np.float32)
    for start in range(0, n, _CHECK_ROWS):
        finite = np.isfinite(vectors[start : start + _CHECK_ROWS]).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            raise ValueError(
                f"{path}: embeddings contain NaN or infinite values (first at row {row}); "
                "remove or repair those rows"
            )
    return vectors


def check_ids(ids: np.ndarray | None, n: int, path: Path | str) -> StringTable:
    """N distinct ids as strings ("0".."N-1" when None); a ValueError naming ``path``."""
    if ids is None:
        return StringTable(str(i) for i in range(n))
    if ids.ndim != 1 or ids.dtype.kind not in "USiu":
        raise ValueError(
            f"{path}: ids must be a 1-D array of strings or integers, got dtype {ids.dtype} "
            f"and shape {ids.shape}"
        )
    if ids.shape[0] != n:
        raise ValueError(f"{path}: {ids.shape[0]} ids for {n} embeddings (lengths must match)")
    if ids.dtype.kind == "S":
        ids = np.char.decode(ids, "utf-8")
    unique, counts = np.unique(ids, return_counts=True)
    if unique.shape[0] != n:
        raise ValueError(
            f"{path}: ids must be distinct; {str(unique[np.argmax(counts)])!r} appears "
            f"{int(counts.max())} times"
        )
    return StringTable(str(i) for i in ids.tolist())
