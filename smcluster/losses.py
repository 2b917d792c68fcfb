"""Loss functions of the three stages, as small pure functions.

Every function takes logits or embeddings as tensors and returns a scalar tensor (or a small
tuple of them), so each can be unit-tested against a hand-computed case.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def queue_info_nce(online: Tensor, positive: Tensor, queue: Tensor, temperature: float) -> Tensor:
    """InfoNCE of online outputs against one positive each and a queue of negatives.

    METHOD.md, Stage 1, paper Eq. 9: ``-log(exp(s(l,h+)/t) / (exp(s(l,h+)/t) +
    sum_{h- in Q} exp(s(l,h-)/t)))`` averaged over the batch. ``online`` (B x D) carries the
    gradient; ``positive`` (B x D) and ``queue`` (K x D) are target-network outputs and are
    detached here, so no gradient ever reaches the target network. Inputs are L2-normalised
    inside, so callers may pass raw outputs.
    """
    online = F.normalize(online, dim=1)
    positive = F.normalize(positive.detach(), dim=1)
    queue = F.normalize(queue.detach(), dim=1)
    pos = (online * positive).sum(dim=1, keepdim=True)
    neg = online @ queue.T
    logits = torch.cat([pos, neg], dim=1) / temperature
    target = torch.zeros(len(online), dtype=torch.long, device=online.device)
    return F.cross_entropy(logits, target)


def symmetric_queue_info_nce(
    online_a: Tensor,
    online_b: Tensor,
    target_a: Tensor,
    target_b: Tensor,
    queue: Tensor,
    temperature: float,
) -> Tensor:
    """The paper's contrastive loss (METHOD.md, Stage 1, Eq. 10).

    ``1/2 L(l_a, h_b, Q) + 1/2 L(l_b, h_a, Q)``: each online view is pulled to the target
    output of the other view and pushed from the queued negatives.
    """
    return 0.5 * queue_info_nce(online_a, target_b, queue, temperature) + 0.5 * queue_info_nce(
        online_b, target_a, queue, temperature
    )


def nt_xent(z_a: Tensor, z_b: Tensor, temperature: float) -> Tensor:
    """SimCLR's NT-Xent loss with in-batch negatives (SCAN's pretext task, the baseline).

    For 2B embeddings, each one's positive is its other view and the remaining 2B - 2 are
    negatives; the loss is the mean cross-entropy over all 2B anchors.
    """
    z = F.normalize(torch.cat([z_a, z_b], dim=0), dim=1)
    n = len(z_a)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def entropy(probabilities: Tensor, eps: float = 1e-8) -> Tensor:
    """Shannon entropy ``-sum_c p_c log p_c`` of the last dimension (natural log)."""
    p = probabilities.clamp_min(eps)
    return -(p * p.log()).sum(dim=-1)


def scan_loss(
    anchor_logits: Tensor,
    neighbour_logits: Tensor,
    entropy_weight: float,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """SCAN's clustering loss (METHOD.md, Stage 3, paper Eq. 14-15).

    Consistency: ``-mean_x log <Phi(x), Phi(v)>`` for one sampled neighbour ``v`` per anchor.
    Entropy: ``sum_c P_c log P_c`` with ``P`` the mean prediction over the batch, weighted by
    ``entropy_weight`` (lambda); it is minus the entropy, so minimising spreads the images over
    the clusters. Logits are ``(..., batch, clusters)``: leading dimensions (one per head) are
    kept, so several heads are scored in one call. Returns ``(total, consistency, entropy)``
    with ``entropy`` the (positive) entropy of ``P`` and ``total = consistency - lambda *
    entropy``.

    ``weights`` (batch,), >= 0, make the consistency a weighted mean ``-sum_x w_x log <.,.> /
    sum_x w_x`` (ours, not the paper's: fused mining's neighbour weighting, METHOD.md,
    "Decisions where the paper is silent"); unit weights give SCAN's plain mean.
    """
    anchor = F.softmax(anchor_logits, dim=-1)
    neighbour = F.softmax(neighbour_logits, dim=-1)
    similarity = (anchor * neighbour).sum(dim=-1).clamp_min(1e-7)
    if weights is None:
        consistency = -similarity.log().mean(dim=-1)
    else:
        w = weights.to(similarity)
        consistency = -(w * similarity.log()).sum(dim=-1) / w.sum().clamp_min(1e-12)
    spread = entropy(anchor.mean(dim=-2))
    return consistency - entropy_weight * spread, consistency, spread


def self_label_loss(
    weak_logits: Tensor, strong_logits: Tensor, threshold: float = 0.99
) -> tuple[Tensor, int]:
    """SCAN's self-labelling loss (METHOD.md, Stage 3, optional extension).

    Images whose weak-view prediction is more confident than ``threshold`` become pseudo-labels
    for their strong view; cross-entropy is weighted inversely to each pseudo-class's frequency
    among the confident images, so large clusters do not swallow small ones. Returns the loss
    and the number of confident images (zero gives a zero loss that still backpropagates).
    """
    probs = F.softmax(weak_logits.detach(), dim=1)
    confidence, pseudo = probs.max(dim=1)
    mask = confidence > threshold
    count = int(mask.sum())
    if count == 0:
        return strong_logits.sum() * 0.0, 0
    targets = pseudo[mask]
    classes, counts = torch.unique(targets, return_counts=True)
    weight = torch.ones(weak_logits.shape[1], device=weak_logits.device)
    weight[classes] = count / counts.float()
    loss = F.cross_entropy(strong_logits[mask], targets, weight=weight, reduction="mean")
    return loss, count
