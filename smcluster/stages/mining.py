"""Stage 2 composed: SCAN's plain kNN mining, the paper's three-view mining and our fused
mining (the three views as evidence rather than successive cuts).

METHOD.md, Stage 2 and "Decisions where the paper is silent". The array-level steps (kNN
search, the strong-view and agreement filters, the fusion) live in ``stages.neighbours``; this
module strings them together, including the weak-view clustering head the paper leaves
unspecified (the Decision: a briefly trained SCAN head on the 2q neighbour sets, on stored
backbone features of weak views).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from smcluster.config import Config, MiningMethod, NeighbourWeighting, SearchBackend
from smcluster.engine import seed_everything, stage_seed
from smcluster.models import ClusterHeads
from smcluster.stages.clustering import (
    EpochCallback,
    head_probabilities,
    score_heads,
    select_head,
    train_heads_on_embeddings,
)
from smcluster.stages.neighbours import (
    filter_by_agreement,
    filter_by_strong_view,
    fuse_views,
    keep_best,
    knn_search,
)


@dataclass
class MiningInputs:
    """What mining reads: stage-1 features and, for the three views, two lazy extras.

    ``checkpoint`` (from ``on_epoch_end``'s state) continues the weak-view head's warm-up
    after its last finished epoch. ``instance``: the kNN search already made
    (``instance_neighbours``, e.g. for choosing the number of clusters first), not redone.
    """

    features: np.ndarray
    strong_features: Callable[[], np.ndarray]
    weak_embeddings: Callable[[], Tensor]
    config: Config
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    on_epoch_end: EpochCallback | None = None
    checkpoint: dict[str, Any] | None = None
    instance: np.ndarray | None = None


@dataclass
class MiningResult:
    """The neighbours stage 3 trains on, plus the intermediate sets for diagnostics;
    ``weights`` (N x q float32, or None) weight each neighbour in the SCAN loss."""

    neighbours: np.ndarray
    knn: np.ndarray
    steps: dict[str, np.ndarray] = field(default_factory=dict)
    head: ClusterHeads | None = None
    weights: np.ndarray | None = None


def _search_with_similarities(inputs: MiningInputs, k: int) -> tuple[np.ndarray, np.ndarray]:
    config = inputs.config
    backend = BACKEND_CHOICES[config.mining.backend]
    return knn_search(
        inputs.features,
        k,
        backend=backend,
        device=inputs.device,
        index=config.mining.index,
        seed=config.run.seed,
    )


def _search(inputs: MiningInputs, k: int) -> np.ndarray:
    if inputs.instance is not None and inputs.instance.shape[1] >= k:
        return inputs.instance[:, :k]
    return _search_with_similarities(inputs, k)[0]


# "auto": faiss on the CPU, a chunked torch top-k on a GPU (faiss-cpu has no GPU build).
BACKEND_CHOICES: dict[SearchBackend, str | None] = {
    "auto": None,
    "faiss": "faiss",
    "torch": "torch",
}


def mine_plain(inputs: MiningInputs) -> MiningResult:
    """SCAN's mining: the q nearest neighbours of each image's features."""
    knn = _search(inputs, inputs.config.mining.q)
    return MiningResult(neighbours=knn, knn=knn)


def warm_up_head(
    weak_embeddings: Tensor,
    candidates: np.ndarray,
    config: Config,
    device: torch.device,
    on_epoch_end: EpochCallback | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> tuple[ClusterHeads, Tensor]:
    """The weak-view head Phi_c (METHOD.md, Stage 2 Decision) and its weak-view predictions.

    Heads on frozen stage-1 backbone features of weak views (``train_heads_on_embeddings``)
    are trained with the SCAN loss on the 2q candidate sets for ``mining.warmup_epochs``
    epochs; the lowest-loss head predicts p(b) for the weak view b of every image (N x C).
    The heads start from their own seed, so a resumed run builds the heads an unbroken one
    did whatever ran before; ``checkpoint`` continues an interrupted warm-up.
    """
    c = config.clustering
    seed_everything(stage_seed(config.run.seed, "mining-head-init", 0))
    heads = ClusterHeads(weak_embeddings.shape[-1], config.n_clusters, c.heads).to(device)
    neighbours = torch.from_numpy(candidates)
    train_heads_on_embeddings(
        heads,
        weak_embeddings,
        neighbours,
        c,
        epochs=config.mining.warmup_epochs,
        seed=config.run.seed,
        stage="mining-head",
        checkpoint=checkpoint,
        on_epoch_end=on_epoch_end,
        progress=config.run.progress,
    )
    scores = score_heads(
        heads, weak_embeddings[0], neighbours, c.entropy_weight, sample=c.score_sample
    )
    best = select_head(heads, scores, c.head_selection)
    return heads, head_probabilities(heads, weak_embeddings[0], best)


def mine_three_view(inputs: MiningInputs) -> MiningResult:
    """The paper's mining (METHOD.md, Stage 2): 4q instance -> 2q strong -> q weak view."""
    q = inputs.config.mining.q
    instance = _search(inputs, 4 * q)
    strong = filter_by_strong_view(instance, inputs.features, inputs.strong_features(), 2 * q)
    heads, weak_probs = warm_up_head(
        inputs.weak_embeddings(),
        strong,
        inputs.config,
        inputs.device,
        inputs.on_epoch_end,
        inputs.checkpoint,
    )
    final = filter_by_agreement(strong, weak_probs.numpy(), q, score=inputs.config.mining.agreement)
    return MiningResult(
        neighbours=final,
        knn=instance[:, :q],
        steps={"instance": instance, "strong": strong},
        head=heads,
    )


def _sigmoid_of_mean(scores: np.ndarray, fusion_weights: tuple[float, ...]) -> np.ndarray:
    """Weights in (0, 1): the sigmoid of the fused score per unit of fusion weight (a mean
    z-score), so a neighbour the views rank above its pool's average counts more than half."""
    mean_z = scores / float(sum(fusion_weights))
    return (1.0 / (1.0 + np.exp(-mean_z))).astype(np.float32)


# ``mining.weighting``: fused scores of the kept neighbours -> their SCAN-loss weights (None:
# SCAN's unweighted mean). Untuned: benchmarks/probes.py measures whether it helps.
NEIGHBOUR_WEIGHTS: dict[
    NeighbourWeighting, Callable[[np.ndarray, tuple[float, ...]], np.ndarray | None]
] = {
    "none": lambda scores, fusion_weights: None,
    "fused": _sigmoid_of_mean,
}


def mine_fused(inputs: MiningInputs) -> MiningResult:
    """Ours (METHOD.md, "Decisions where the paper is silent"): the 4q instance-view pool
    ranked by ``fuse_views``, the top q kept.

    Why: in every benchmark the paper's successive cuts gave less pure neighbours than plain
    kNN at the same q (benchmarks/results/cpu-2026-11-30.md: Omniglot-200 25.1 against 33.7),
    because the 4q pool starts below the top q and each cut keeps only part of what it lost.
    Here the instance similarity stays in the score and the strong and weak views add to it;
    a candidate is dropped only when the evidence summed over the views is weak. The weak-view
    head (``warm_up_head``) trains on the top q of the pool (plain kNN, the purest set at q
    we have) instead of the strong view's 2q; a view weighted 0 in ``mining.fusion_weights``
    is not computed at all.
    """
    m = inputs.config.mining
    q = m.q
    instance, similarities = _search_with_similarities(inputs, 4 * q)
    strong = inputs.strong_features() if m.fusion_weights[1] > 0 else None
    heads, weak_probs = None, None
    if m.fusion_weights[2] > 0:
        heads, weak_probs = warm_up_head(
            inputs.weak_embeddings(),
            instance[:, :q],
            inputs.config,
            inputs.device,
            inputs.on_epoch_end,
            inputs.checkpoint,
        )
        weak_probs = weak_probs.numpy()
    scores = fuse_views(
        instance, similarities, inputs.features, strong, weak_probs, m.fusion_weights, m.agreement
    )
    neighbours, kept = keep_best(instance, scores, q)
    return MiningResult(
        neighbours=neighbours,
        knn=instance[:, :q],
        steps={"instance": instance},
        head=heads,
        weights=NEIGHBOUR_WEIGHTS[m.weighting](kept, m.fusion_weights),
    )


MINING_METHODS: dict[MiningMethod, Callable[[MiningInputs], MiningResult]] = {
    "knn": mine_plain,
    "three-view": mine_three_view,
    "fused": mine_fused,
}


CANDIDATES_PER_NEIGHBOUR: dict[MiningMethod, int] = {"knn": 1, "three-view": 4, "fused": 4}


def instance_neighbours(inputs: MiningInputs) -> np.ndarray:
    """The one kNN search of the configured mining (q, or 4q for three views), nearest first:
    its first q columns are the plain kNN neighbours."""
    q = inputs.config.mining.q
    return _search(inputs, CANDIDATES_PER_NEIGHBOUR[inputs.config.mining.method] * q)


def images_needed(config: Config) -> int:
    """The fewest images the configured mining can work with (its candidates plus itself)."""
    return CANDIDATES_PER_NEIGHBOUR[config.mining.method] * config.mining.q + 1
