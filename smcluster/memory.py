"""Memory before work starts: an estimate of a run's peak as a table of named terms, the
memory this machine (or container) has available, and a check that names what to change.

Each term is the bytes one thing holds, the stage it is live in ("all" for things held from
the start to the end) and the setting that shrinks it. The peak is the largest sum over one
stage plus the "all" terms: the stages run one after another. Memory-mapped files count in
the table (their pages are resident while read) but not against the check, since the kernel
can drop them and read them again. More terms (image models, their activations) are more
rows of the same table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MemoryTerm",
    "available_memory",
    "check_memory",
    "estimate_memory",
    "format_bytes",
    "peak_memory",
]

FLOAT, INDEX = 4, 8
# Resident memory of a process that has imported smcluster's stages, torch and faiss.
RUNTIME_BYTES = 1 << 30


@dataclass(frozen=True)
class MemoryTerm:
    """One row of an estimate: what it is, its bytes, when it is live and what shrinks it."""

    name: str
    nbytes: int
    stage: str
    setting: str
    reclaimable: bool = False


def format_bytes(nbytes: float) -> str:
    for unit, size in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def _index_bytes(n: int, d: int, index: str) -> int:
    """faiss index memory: the N x D vectors plus, for IVF, ids, centroids, its training
    sample and the slack of lists grown by doubling (a quarter of the vectors, measured: 5.0 GB
    peak at 10^6 x 384 with the mapped file); for HNSW, 2 M links per vector (M = 32)."""
    vectors = n * d * FLOAT
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    extra = {
        "exact": 0,
        "ivf": n * INDEX + nlist * d * FLOAT + min(n, 40 * nlist) * d * FLOAT + vectors // 4,
        "hnsw": n * 2 * 32 * 4 + n * 8,
    }
    return vectors + extra[index]


def estimate_memory(
    n: int,
    d: int,
    k: int,
    n_clusters: int,
    heads: int,
    views: int = 1,
    *,
    batch_size: int = 512,
    index: str = "exact",
    embeddings_mapped: bool = True,
    search_chunk: int = 4096,
    score_budget: int = 1 << 24,
    probabilities_in_memory: bool = False,
) -> list[MemoryTerm]:
    """The terms of a frozen-feature run's peak (stage 2 search and stage 3 heads; METHOD.md).

    n images, d-dimensional stored features in ``views`` views, k neighbours searched (the
    search asks for k + 1 to drop each image itself), ``heads`` heads of ``n_clusters``
    clusters trained on batches of ``batch_size`` anchors and as many neighbours, scored in
    chunks of anchors and their k neighbours of at most ``score_budget`` logits
    (``stages.clustering.SCORE_BUDGET``). ``index`` is the resolved kNN
    index ("exact", "ivf" or "hnsw", see ``stages.neighbours.choose_index``).
    """
    kk = k + 1
    score_rows = max(1, score_budget // ((1 + k) * heads * n_clusters)) * (1 + k)
    c, h, b = n_clusters, heads, batch_size
    return [
        MemoryTerm(
            "runtime (Python with torch and faiss loaded, measured)",
            RUNTIME_BYTES,
            "all",
            "nothing (a fixed cost)",
        ),
        MemoryTerm(
            "stored embeddings (N x views x D float32)",
            n * views * d * FLOAT,
            "all",
            "give the embeddings as an .npy (memory-mapped); fewer clustering.feature_views",
            reclaimable=embeddings_mapped,
        ),
        MemoryTerm(
            "kNN index (N x D float32 and its lists)",
            _index_bytes(n, d, index),
            "neighbours",
            "mining.index (exact holds the least); a smaller embedding dimension D",
        ),
        MemoryTerm(
            "kNN search output (N x (k + 1) ids and similarities)",
            n * kk * (INDEX + FLOAT),
            "neighbours",
            "mining.q",
        ),
        MemoryTerm(
            "kNN query chunk (rows, results)",
            search_chunk * (d * FLOAT + kk * (INDEX + FLOAT)),
            "neighbours",
            "the search chunk size",
        ),
        MemoryTerm("neighbour lists (N x k int64)", n * k * INDEX, "all", "mining.q"),
        MemoryTerm(
            "head parameters with gradients and Adam moments (4 x heads x C x D)",
            4 * h * c * (d + 1) * FLOAT,
            "clustering",
            "clustering.heads",
        ),
        MemoryTerm(
            "head training batch (anchors and neighbours: inputs, logits, softmax, gradients)",
            2 * b * (d * FLOAT + 4 * h * c * FLOAT),
            "clustering",
            "clustering.batch_size or clustering.heads",
        ),
        MemoryTerm(
            "head scoring chunk (anchors and their k neighbours, all heads)",
            score_rows * (d * FLOAT + 3 * h * c * FLOAT),
            "clustering",
            "the scoring budget (score_heads' budget)",
        ),
        MemoryTerm(
            "probabilities (N x C float32 output)",
            n * c * FLOAT,
            "outputs",
            "write probabilities chunk by chunk to a memory-mapped .npy",
            reclaimable=not probabilities_in_memory,
        ),
    ]


def peak_memory(terms: list[MemoryTerm], *, reclaimable: bool = True) -> tuple[str, int]:
    """(stage, bytes) of the largest stage total, "all" terms counted in every stage;
    ``reclaimable=False`` leaves memory-mapped terms out."""
    kept = [t for t in terms if reclaimable or not t.reclaimable]
    stages = {t.stage for t in kept if t.stage != "all"} or {"all"}
    base = sum(t.nbytes for t in kept if t.stage == "all")
    totals = {s: base + sum(t.nbytes for t in kept if t.stage == s) for s in stages}
    stage = max(sorted(totals), key=totals.__getitem__)
    return stage, totals[stage]


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def available_memory(proc: str | Path = "/proc", cgroup: str | Path = "/sys/fs/cgroup") -> int:
    """Bytes this process can still use: /proc/meminfo's MemAvailable, or less when a cgroup
    (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) limits it, minus what the group uses.
    Without either (not Linux), ``psutil`` if installed, else 0 (unknown)."""
    candidates: list[int] = []
    try:
        for line in (Path(proc) / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                candidates.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    root = Path(cgroup)
    for limit_name, used_name in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        limit = _read_int(root / limit_name)
        if limit is not None and limit < 1 << 60:
            candidates.append(max(0, limit - (_read_int(root / used_name) or 0)))
    if candidates:
        return min(candidates)
    try:
        import psutil
    except ImportError:
        return 0
    return int(psutil.virtual_memory().available)


def check_memory(estimate: list[MemoryTerm], available: int | None = None) -> tuple[str, int]:
    """Raise ValueError when the estimate's peak (memory-mapped terms left out) exceeds the
    available memory, naming the largest term of the peak stage and the setting that shrinks
    it. Returns (stage, bytes) of the peak. ``available`` defaults to ``available_memory()``;
    0 means unknown and passes."""
    room = available_memory() if available is None else available
    stage, need = peak_memory(estimate, reclaimable=False)
    if room <= 0 or need <= room:
        return stage, need
    live = [t for t in estimate if not t.reclaimable and t.stage in (stage, "all")]
    biggest = max(live, key=lambda t: t.nbytes)
    raise ValueError(
        f"this run needs about {format_bytes(need)} of memory at its peak ({stage} stage) but "
        f"{format_bytes(room)} is available; the largest part is the {biggest.name} at "
        f"{format_bytes(biggest.nbytes)}: change {biggest.setting}"
    )
