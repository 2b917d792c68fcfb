"""Memory before work starts: an estimate of a run's peak as a table of named terms, the
memory this machine (or container) has available, and a check that names what to change.

Each term is the bytes one thing holds, the stage it is live in ("all" for things held from
the start to the end) and the setting that shrinks it. The peak is the largest sum over one
stage plus the "all" terms: the stages run one after another. Memory-mapped files count in
the table (their pages are resident while read) but not against the check, since the kernel
can drop them and read them again. Image models add rows of the same table
(``image_model_terms``): the network's states, its activations (measured once by a forward
pass on PyTorch's "meta" device, which computes shapes and no numbers), the views, the queue.

``available_memory`` honours /proc/meminfo, cgroup limits, the process's RLIMIT_AS and
RLIMIT_DATA, and ``SMCLUSTER_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix), an override for
machines whose limits smcluster cannot read (and for tests: an RLIMIT_AS low enough to stop a
run also stops torch from mapping its libraries).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from smcluster.config import Config

__all__ = [
    "MemoryTerm",
    "available_memory",
    "check_memory",
    "estimate_memory",
    "fit_batch_to_memory",
    "format_bytes",
    "image_model_terms",
    "peak_memory",
]

LIMIT_ENV = "SMCLUSTER_MEMORY_LIMIT"
ACTIVATION_FACTOR = 1.0
"""Bytes autograd keeps per byte of layer outputs in a training step (saved inputs of
convolutions, BatchNorm and ReLU masks, the gradients of the largest layers while they flow).
Measured (benchmarks/results/memory-estimate-*.md): with 1 the estimate is 1.2-1.4x the
measured peak of small CNNs and ResNet-18 at 28-64 px; with 2 it was up to 2.5x, enough to
refuse runs that fit."""
VIEW_COPIES = 6
"""Float copies of a batch of images while the two views are made (input, crops, colour ops)."""

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


def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1048576"`` -> bytes; a ValueError naming ``LIMIT_ENV``."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    value = text.strip().upper().removesuffix("B")
    scale = units.get(value[-1:], 1)
    number = value[:-1] if value[-1:] in units else value
    try:
        return int(float(number) * scale)
    except ValueError:
        raise ValueError(
            f"{LIMIT_ENV}={text!r} is not a size: give bytes or a number with K, M or G"
        ) from None


def _process_sizes(proc: Path) -> dict[str, int]:
    """VmSize and VmData of this process in bytes (/proc/self/status)."""
    sizes: dict[str, int] = {}
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmSize", "VmData") and value.split():
                sizes[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return sizes


def _rlimits() -> dict[str, int]:
    """Soft RLIMIT_AS and RLIMIT_DATA in bytes, where set."""
    try:
        import resource
    except ImportError:
        return {}
    limits = {"VmSize": resource.RLIMIT_AS, "VmData": resource.RLIMIT_DATA}
    found = {key: resource.getrlimit(which)[0] for key, which in limits.items()}
    return {k: v for k, v in found.items() if v != resource.RLIM_INFINITY and v >= 0}


def available_memory(
    proc: str | Path = "/proc",
    cgroup: str | Path = "/sys/fs/cgroup",
    rlimits: dict[str, int] | None = None,
) -> int:
    """Bytes this process can still use: the least of /proc/meminfo's MemAvailable, a cgroup
    limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``) minus what the group uses, a
    process limit (RLIMIT_AS less the process's virtual size, RLIMIT_DATA less its data size;
    ``rlimits`` maps "VmSize"/"VmData" to a limit, default this process's) and
    ``SMCLUSTER_MEMORY_LIMIT``. Without any (not Linux), ``psutil`` if installed, else 0
    (unknown)."""
    candidates: list[int] = []
    if os.environ.get(LIMIT_ENV):
        candidates.append(parse_bytes(os.environ[LIMIT_ENV]))
    sizes = _process_sizes(Path(proc))
    for key, limit in (_rlimits() if rlimits is None else rlimits).items():
        candidates.append(max(0, limit - sizes.get(key, 0)))
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


@functools.cache
def _network_bytes(backbone: str, channels: int, size: int, width: int, small_stem: bool):
    """(bytes of layer outputs for one image, parameter count, feature size) of a built-in
    backbone, from one forward pass on the meta device (shapes only, no memory, no time)."""
    import torch

    from smcluster.models.backbones import build_backbone

    with torch.device("meta"):
        net = build_backbone(backbone, channels, width=width, small_stem=small_stem)
    total = 0

    def count(module, inputs, output) -> None:
        nonlocal total
        total += output.numel() * output.element_size()

    hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    with torch.no_grad():
        net(torch.empty(1, channels, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return total, sum(p.numel() for p in net.parameters()), net.out_dim


def image_model_terms(config: Config, n: int, channels: int, size: int) -> list[MemoryTerm]:
    """The terms of a run that trains an image model (stage 1, and stage 3 when it fine-tunes
    the backbone) for ``n`` images of ``channels`` channels at ``size`` px (METHOD.md,
    Stage 1), followed by stages 2-3 on its stored features (``estimate_memory``).

    Activations: the layer outputs of one image times ``ACTIVATION_FACTOR``, for the two views
    of a batch through the online network (the target network runs without gradients, one
    BatchNorm group at a time). A pretrained backbone (its size is not known here) counts no
    model terms.
    """
    from smcluster.config import stage1_training
    from smcluster.models.pretrained import is_pretrained

    f, c, m = config.features, config.clustering, config.mining
    b = min(f.batch_size, n)
    k = 4 * m.q if m.method == "three-view" else m.q
    terms = [
        MemoryTerm(
            "images in memory (N x C x S x S uint8)",
            n * channels * size * size,
            "all",
            "data.image_size",
        )
    ]
    embedding_dim = 512
    if not is_pretrained(f.backbone):
        per_image, params, embedding_dim = _network_bytes(
            f.backbone, channels, size, f.width, f.small_stem
        )
        heads = embedding_dim * f.projector_hidden + 2 * f.projector_hidden * f.out_dim
        online = params + heads + f.out_dim * f.predictor_hidden
        batch_setting = "features.batch_size (or data.image_size, features.backbone)"
        if stage1_training(f) != "frozen":
            terms += [
                MemoryTerm(
                    "feature model (online weights, gradients, momentum; target weights)",
                    (3 * online + params + heads) * FLOAT,
                    "features",
                    "features.backbone or features.width",
                ),
                MemoryTerm(
                    "activations (2 views x batch x layer outputs per image x "
                    f"{ACTIVATION_FACTOR:g})",
                    int(ACTIVATION_FACTOR * 2 * b * per_image),
                    "features",
                    batch_setting,
                ),
                MemoryTerm(
                    f"augmented views ({VIEW_COPIES} float copies of the batch)",
                    VIEW_COPIES * b * channels * size * size * FLOAT,
                    "features",
                    batch_setting,
                ),
                MemoryTerm(
                    "queue and its logits (queue x out_dim; 2 views x batch x queue x 3)",
                    (f.queue_length * f.out_dim + 6 * b * (f.queue_length + 1)) * FLOAT,
                    "features",
                    "features.queue_length",
                ),
                MemoryTerm(
                    "BatchNorm groups (per-group outputs, concatenated)",
                    2 * 2 * b * (f.projector_hidden + f.out_dim) * FLOAT,
                    "features",
                    "features.batch_size",
                ),
            ]
        if c.update_backbone:
            terms.append(
                MemoryTerm(
                    "stage-3 backbone activations (anchors and neighbours x batch)",
                    int(ACTIVATION_FACTOR * 2 * min(c.batch_size, n) * per_image)
                    + 4 * params * FLOAT,
                    "clustering",
                    "clustering.batch_size (or data.image_size)",
                )
            )
    terms.append(
        MemoryTerm(
            "stage-1 features (N x out_dim)", n * f.out_dim * FLOAT, "all", "features.out_dim"
        )
    )
    from smcluster.config import cluster_range
    from smcluster.stages.clustering import stage3_schedule

    most = cluster_range(config.n_clusters, n)[1]
    terms += estimate_memory(
        n,
        embedding_dim,
        k,
        most,
        c.heads,
        c.feature_views,
        batch_size=stage3_schedule(c, n, most).batch_size,
        embeddings_mapped=False,
        probabilities_in_memory=True,
    )
    return terms


def fit_batch_to_memory(
    config: Config,
    n: int,
    channels: int,
    size: int,
    *,
    adjustable: bool,
    available: int | None = None,
) -> tuple[Config, str]:
    """The memory guard of an image run, before any work: the estimated peak
    (``image_model_terms``) against the memory available.

    When it does not fit and the peak is stage 1 (or stage 3 fine-tuning the backbone) and
    ``adjustable`` (the batch was chosen by ``auto``, not by the user), the batch is halved
    until it fits (at least 8); otherwise a ValueError names the setting to change with the
    numbers (``check_memory``). Returns the configuration to run and a line saying what it
    takes (and what was lowered).
    """
    room = available_memory() if available is None else available
    lowered = ""
    while True:
        terms = image_model_terms(config, n, channels, size)
        stage, need = peak_memory(terms, reclaimable=False)
        section = {"features": "features", "clustering": "clustering"}.get(stage)
        batch = getattr(config, section).batch_size if section else 0
        if room <= 0 or need <= room or not adjustable or section is None or batch <= 8:
            break
        if section == "clustering" and not config.clustering.update_backbone:
            break
        smaller = max(8, batch // 2)
        lowered = lowered or f"{section}.batch_size {batch}"
        config = config.updated({section: {"batch_size": smaller}})
        lowered_to = smaller
    stage, need = check_memory(terms, room)
    line = f"memory: about {format_bytes(need)} at the peak ({stage} stage)"
    if lowered:
        line += (
            f"; auto lowered {lowered} -> {lowered_to} to fit the {format_bytes(room)} available"
        )
    return config, line
