"""Stage 3: SCAN clustering with several heads, head selection and optional self-labelling.

METHOD.md, Stage 3. The clustering model is a backbone (from stage 1) and ``ClusterHeads``;
each step samples one neighbour per anchor and minimises the SCAN loss of every head at once.
Two ways to feed it, chosen by ``clustering.update_backbone``:

- frozen backbone: the heads read stored backbone features of a few weak views of every image
  (``embedding_views``), a fast path on a CPU and SCAN's choice for ImageNet;
- updated backbone: images are augmented (weak view) and passed through the backbone, which is
  fine-tuned together with the heads (SCAN's choice for small data sets).

Both paths share ``train_scan``; they differ only in the ``fetch`` function that turns a batch
of indices into the model's input.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from lightning_fabric import Fabric
from sklearn.metrics import normalized_mutual_info_score
from torch import Tensor, nn
from torch.optim import Optimizer
from tqdm.auto import tqdm

from smcluster.config import ClusteringConfig, HeadSelection
from smcluster.engine import Shard, batch_indices, seed_everything, stage_seed
from smcluster.losses import entropy, scan_loss, self_label_loss
from smcluster.metrics import cluster_accuracy
from smcluster.models import ClusterHeads

Fetch = Callable[[Tensor], Tensor]
EpochCallback = Callable[[int, nn.Module, torch.optim.Optimizer, dict[str, Any]], None]
# Stored features: a tensor or a numpy array (a memory-mapped .npy stays mapped), N x E or
# V x N x E; only the rows a batch or chunk needs are read and converted to float32.
Stored = Tensor | np.ndarray

# Logits computed per head-scoring chunk (64 MiB of float32), whatever N, C and the heads.
SCORE_BUDGET = 1 << 24


class ClusteringModel(nn.Module):
    """A feature network followed by cluster heads; logits are (heads, batch, clusters)."""

    def __init__(self, features: nn.Module, heads: ClusterHeads) -> None:
        super().__init__()
        self.features = features
        self.heads = heads

    def forward(self, x: Tensor) -> Tensor:
        return self.heads(self.features(x))


def stage3_optimizer(params: list[nn.Parameter], lr: float, weight_decay: float) -> Optimizer:
    """Adam with decoupled weight decay (AdamW) for stage 3 (METHOD.md, Stage 3: Adam).

    Decision where METHOD.md is silent on the form of the decay: SCAN's code adds the decay to
    the gradient (``Adam(weight_decay=...)``), and Adam then rescales the sum. A head's per-class
    gradient shrinks as the number of clusters grows, so with 964 clusters that added term
    dominated, held the weights small and kept every prediction soft (mean top probability
    0.15; benchmarks/README.md). Decoupled decay shrinks weights by ``lr * weight_decay`` per
    step whatever the gradient's scale.
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


SCHEDULE_IMAGE_CAP = 4
"""``stage3_schedule`` never trains on more than this many times the images of the configured
epochs: its cost on a CPU at most quadruples."""


def stage3_schedule(config: ClusteringConfig, n: int, n_clusters: int) -> ClusteringConfig:
    """``config`` with the batch and epochs stage 3 trains ``n`` items into ``n_clusters``
    with (METHOD.md, Decisions: the stage-3 schedule of ``best``; benchmarks/README.md):

    - a batch of at least ``batch_per_cluster`` x K images: the entropy term spreads a
      batch's mean prediction over K clusters, which a batch smaller than K cannot do with
      confident predictions;
    - at least ``min_steps`` optimizer steps: a small data set, or a large batch, gives few
      steps per epoch, and the heads had not converged in them;
    - the configured epochs at least, and at most ``SCHEDULE_IMAGE_CAP`` times as many.

    With both rules off (0, SCAN's and the paper's methods) ``config`` comes back unchanged.
    """
    if config.batch_per_cluster <= 0 and config.min_steps <= 0:
        return config
    batch = max(config.batch_size, math.ceil(config.batch_per_cluster * n_clusters))
    epochs = math.ceil(config.min_steps / max(n // min(batch, n), 1))
    epochs = max(config.epochs, min(epochs, SCHEDULE_IMAGE_CAP * config.epochs))
    return dataclasses.replace(config, batch_size=batch, epochs=epochs)


def train_scan(
    model: nn.Module,
    fetch: Fetch,
    neighbours: Tensor,
    config: ClusteringConfig,
    *,
    lr: float,
    epochs: int,
    seed: int,
    fabric: Fabric | None = None,
    stage: str = "clustering",
    checkpoint: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    weights: Tensor | None = None,
) -> nn.Module:
    """Minimise the SCAN loss of every head (summed) with ``stage3_optimizer``; returns the
    unwrapped model.

    ``weights`` (N x q, like ``neighbours``) weight each sampled (anchor, neighbour) pair in
    the consistency term (``losses.scan_loss``; fused mining's ``mining.weighting``).

    ``lr`` is ``config.lr`` (SCAN's 1e-4) when a backbone is trained with the heads and
    ``config.frozen_lr`` for heads alone on stored features.

    ``fetch(indices)`` returns the model input for those images (already augmented, on the
    model's device). With a ``fabric`` of several processes, each process trains on its share
    of every batch and gradients are averaged.
    """
    n = len(neighbours)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = stage3_optimizer(params, lr, config.weight_decay)
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch = int(checkpoint["epoch"]) + 1
    wrapped, shard = model, Shard()
    if fabric is not None:
        wrapped, optimizer = fabric.setup(model, optimizer)
        shard = Shard.of(fabric)
    batch = min(config.batch_size, n)
    steps = max(n // batch, 1)
    rank_zero = fabric is None or fabric.is_global_zero
    for epoch in range(start_epoch, epochs):
        seed_everything(stage_seed(seed, stage, epoch))
        wrapped.train()
        started, totals = time.perf_counter(), torch.zeros(3)
        bar = tqdm(
            batch_indices(n, batch, shuffle=True, drop_last=True, shard=shard),
            total=steps,
            desc=f"{stage} {epoch + 1}/{epochs}",
            disable=not (progress and rank_zero),
            leave=False,
        )
        for idx in bar:
            pick = torch.randint(neighbours.shape[1], (len(idx),))
            partners = neighbours[idx, pick]
            inputs = fetch(torch.cat([idx, partners]))
            logits = wrapped(inputs)
            anchor, neighbour = logits.chunk(2, dim=1)
            pair_weights = None if weights is None else weights[idx, pick]
            total, consistency, spread = scan_loss(
                anchor, neighbour, config.entropy_weight, pair_weights
            )
            loss = total.sum()
            optimizer.zero_grad(set_to_none=True)
            if fabric is not None:
                fabric.backward(loss)
            else:
                loss.backward()
            optimizer.step()
            heads = len(total)
            totals += torch.tensor(
                [
                    float(loss.detach()) / heads,
                    float(consistency.detach().mean()),
                    float(spread.detach().mean()),
                ]
            )
            bar.set_postfix(loss=f"{float(loss.detach()) / heads:.4f}", refresh=False)
        elapsed = time.perf_counter() - started
        mean = totals / steps
        record = {
            "loss": float(mean[0]),
            "consistency": float(mean[1]),
            "entropy": float(mean[2]),
            "seconds": elapsed,
            "images_per_s": steps * batch / max(elapsed, 1e-9),
        }
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, optimizer, record)
    return model


def train_heads_on_embeddings(
    heads: ClusterHeads,
    views: Stored,
    neighbours: Tensor,
    config: ClusteringConfig,
    *,
    epochs: int,
    seed: int,
    stage: str = "clustering",
    checkpoint: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    weights: Tensor | None = None,
) -> ClusteringModel:
    """``train_scan`` for heads alone on stored features of V views (V x N x E, or N x E for
    one view; a tensor or a numpy array such as a memory-mapped .npy, read batch by batch).

    The heads train on centred features at ``config.frozen_lr`` and the mean is folded into
    their biases at the end (``embedding_mean``), so they read raw backbone features after.
    ``heads`` must already be on the device the features should be fetched to.
    """
    shift = embedding_mean(views)
    model = ClusteringModel(nn.Identity(), heads)
    train_scan(
        model,
        embedding_fetch(views, heads.weight.device, shift),
        neighbours,
        config,
        lr=config.frozen_lr,
        epochs=epochs,
        seed=seed,
        stage=stage,
        checkpoint=checkpoint,
        on_epoch_end=on_epoch_end,
        progress=progress,
        weights=weights,
    )
    heads.fold_input_shift(shift)
    return model


def _rows(stored: Stored, rows: np.ndarray | Tensor | slice) -> Tensor:
    """Rows of an N x E store as a float32 CPU tensor, reading only those rows."""
    if isinstance(stored, Tensor):
        return stored[rows].float()
    picked = stored[rows.numpy() if isinstance(rows, Tensor) else rows]
    return torch.from_numpy(np.array(picked, dtype=np.float32))  # a copy: the map is read-only


@torch.no_grad()
def head_probability_chunks(
    heads: ClusterHeads, embeddings: Stored, head: int, chunk: int = 8192
) -> Iterator[tuple[int, Tensor]]:
    """(first row, soft assignments chunk x clusters float32 on the CPU) of one head,
    ``embeddings`` (N x E) read ``chunk`` rows at a time: for writers that stream an N x C
    output to disk without holding it."""
    heads.eval()
    layer = heads.head(head)
    for start in range(0, len(embeddings), chunk):
        rows = _rows(embeddings, slice(start, start + chunk)).to(layer.weight.device)
        yield start, torch.softmax(layer(rows), dim=-1).cpu()


def head_probabilities(
    heads: ClusterHeads,
    embeddings: Stored,
    head: int,
    chunk: int = 8192,
    out: np.ndarray | None = None,
) -> Tensor | np.ndarray:
    """Soft assignments of one head: N x clusters, float32 on the CPU.

    With ``out`` (an N x C float32 array, e.g. ``np.lib.format.open_memmap`` of the output
    file) each chunk is written into it and ``out`` is returned.
    """
    parts = []
    for start, p in head_probability_chunks(heads, embeddings, head, chunk):
        if out is None:
            parts.append(p)
        else:
            out[start : start + len(p)] = p.numpy()
    return torch.cat(parts) if out is None else out


@torch.no_grad()
def head_loss(
    probabilities: Tensor, neighbours: Tensor, entropy_weight: float, chunk: int = 8192
) -> dict[str, float]:
    """SCAN's loss of one head over the whole data set, with all q neighbours of each image."""
    consistency = 0.0
    for start in range(0, len(probabilities), chunk):
        p = probabilities[start : start + chunk]
        nb = probabilities[neighbours[start : start + chunk]]
        dots = (p.unsqueeze(1) * nb).sum(-1).clamp_min(1e-7)
        consistency += float(-dots.log().sum())
    consistency /= neighbours.numel()
    spread = float(entropy(probabilities.mean(dim=0)))
    return {
        "total": consistency - entropy_weight * spread,
        "consistency": consistency,
        "entropy": spread,
    }


@torch.no_grad()
def score_heads(
    heads: ClusterHeads,
    embeddings: Stored,
    neighbours: Tensor | np.ndarray,
    entropy_weight: float,
    labels: np.ndarray | None = None,
    *,
    sample: int | None = None,
    seed: int = 0,
    budget: int = SCORE_BUDGET,
) -> list[dict[str, float]]:
    """Every head's SCAN loss over the data set and the other head-selection criteria.

    Per head: ``total`` / ``consistency`` / ``entropy`` (SCAN's loss, METHOD.md, Stage 3) and
    the label-free criteria of ``HEAD_SELECTION``: ``agreement`` (share of (image, neighbour)
    pairs with the same argmax), ``confidence`` (mean top probability) and ``consensus``
    (mean NMI of the head's assignments with each other head's).

    All heads are scored in one pass over chunks of anchors: each chunk's anchors and their
    neighbours are read from ``embeddings`` (N x E) and their probabilities computed, the
    consistency term and the mean prediction are accumulated, and nothing N x C is held, so
    memory is one chunk of at most ``budget`` logits whatever N, C and the number of heads.
    The cost is (1 + q) forward passes over the data; ``sample`` uses that many of each
    image's q neighbours (drawn with ``seed``), an unbiased estimate of the consistency term
    for 1 + sample passes. With ``labels`` (for reporting only) each head's ACC is added.
    """
    heads.eval()
    nb = neighbours.numpy() if isinstance(neighbours, Tensor) else np.asarray(neighbours)
    n, q = nb.shape
    used = q if sample is None else min(q, int(sample))
    h, c = len(heads), heads.n_clusters
    rows = max(1, budget // ((1 + used) * h * c))
    device = heads.weight.device
    rng = np.random.default_rng(seed)
    mass = torch.zeros(h, c, dtype=torch.float64)
    consistency = torch.zeros(h, dtype=torch.float64)
    agreement = torch.zeros(h, dtype=torch.float64)
    confidence = torch.zeros(h, dtype=torch.float64)
    predicted = np.empty((h, n), dtype=np.int32)
    for start in range(0, n, rows):
        partners = nb[start : start + rows]
        if used < q:
            pick = np.argsort(rng.random(partners.shape), axis=1)[:, :used]
            partners = np.take_along_axis(partners, pick, axis=1)
        r = len(partners)
        wanted = np.concatenate([np.arange(start, start + r), partners.reshape(-1)])
        order = np.argsort(wanted, kind="stable")  # read a mapped file in file order
        x = _rows(embeddings, wanted[order])[torch.from_numpy(np.argsort(order))]
        p = torch.softmax(heads(x.to(device)), dim=-1)
        anchor, partner = p[:, :r], p[:, r:].reshape(h, r, used, c)
        dots = torch.einsum("hrc,hrqc->hrq", anchor, partner).clamp_min(1e-7)
        consistency -= dots.log().sum(dim=(1, 2)).double().cpu()
        mass += anchor.sum(dim=1).double().cpu()
        top, own = anchor.max(dim=-1)
        confidence += top.sum(dim=1).double().cpu()
        same = own.unsqueeze(-1) == partner.argmax(dim=-1)
        agreement += same.sum(dim=(1, 2)).double().cpu()
        predicted[:, start : start + r] = own.cpu().numpy()
    consistency /= n * used
    agreement /= n * used
    confidence /= n
    spread = entropy(mass / n)
    consensus = head_consensus(predicted)
    scores = []
    for i in range(h):
        score = {
            "total": float(consistency[i] - entropy_weight * spread[i]),
            "consistency": float(consistency[i]),
            "entropy": float(spread[i]),
            "agreement": float(agreement[i]),
            "confidence": float(confidence[i]),
            "consensus": consensus[i],
        }
        if labels is not None:
            score["acc"] = cluster_accuracy(labels, predicted[i])
        scores.append(score)
    return scores


def head_consensus(predicted: np.ndarray) -> list[float]:
    """Each head's mean NMI with every other head's assignments (H x N cluster ids in), a
    stability criterion: heads that land in the partition most heads agree on score high.
    One head has nothing to agree with: 1.0."""
    h = len(predicted)
    nmi = np.eye(h)
    for a in range(h):
        for b in range(a + 1, h):
            nmi[a, b] = nmi[b, a] = normalized_mutual_info_score(predicted[a], predicted[b])
    return [float((nmi[i].sum() - 1) / (h - 1)) if h > 1 else 1.0 for i in range(h)]


HeadScores = list[dict[str, float]]


def _lowest(key: str) -> Callable[[HeadScores], int]:
    return lambda scores: min(range(len(scores)), key=lambda h: scores[h][key])


def _highest(key: str) -> Callable[[HeadScores], int]:
    return lambda scores: max(range(len(scores)), key=lambda h: scores[h][key])


# Label-free head-selection criteria on ``score_heads``' output; "loss" is SCAN's and
# METHOD.md's (Stage 3), the others are ours (METHOD.md, "Decisions where the paper is
# silent"): the lowest loss missed the best head by up to 15 ACC points in one run.
HEAD_SELECTION: dict[HeadSelection, Callable[[HeadScores], int]] = {
    "loss": _lowest("total"),
    "agreement": _highest("agreement"),
    "confidence": _highest("confidence"),
    "consensus": _highest("consensus"),
}


def selected_heads(scores: HeadScores) -> dict[str, int]:
    """The head every criterion of ``HEAD_SELECTION`` would keep (recorded with the run, so a
    benchmark can count how often each picks the head with the best ACC)."""
    return {name: pick(scores) for name, pick in HEAD_SELECTION.items()}


def select_head(heads: ClusterHeads, scores: HeadScores, criterion: HeadSelection = "loss") -> int:
    """Keep the head ``criterion`` (a key of ``HEAD_SELECTION``) picks; record it in ``heads``."""
    best = HEAD_SELECTION[criterion](scores)
    heads.select(best)
    return best


def _as_views(views: Stored) -> Stored:
    """V x N x E stored views; an N x E store is one view (no copy for a mapped array)."""
    return views[None] if views.ndim == 2 else views


def embedding_fetch(views: Stored, device: torch.device, shift: Tensor | None = None) -> Fetch:
    """Fetch from stored features of V augmented views (V x N x E, or N x E for one view; a
    tensor or a numpy array, e.g. memory-mapped): a random view per image, only the batch's
    rows read.

    ``shift`` (E) is subtracted from every fetched feature (see ``embedding_mean``).
    """
    offset = None if shift is None else shift.to(device).float()
    stored = _as_views(views)

    def fetch(idx: Tensor) -> Tensor:
        view = torch.randint(len(stored), (len(idx),))
        if isinstance(stored, Tensor):
            x = stored[view, idx].to(device).float()
        else:
            rows = np.ascontiguousarray(stored[view.numpy(), idx.numpy()], dtype=np.float32)
            x = torch.from_numpy(rows).to(device)
        return x if offset is None else x - offset

    return fetch


@torch.no_grad()
def embedding_mean(views: Stored, chunk: int = 65536) -> Tensor:
    """The mean stored feature over all views and images (E, float32).

    Heads on frozen features train on centred features (our Decision; METHOD.md, Stage 3 is
    silent): backbone outputs after a ReLU share a large common component, which leaves
    Adam's steps on a linear head badly conditioned and SCAN stuck in poorer partitions
    (MNIST-10k, paper features: ACC 64 raw vs 75 centred; see benchmarks/README.md). The
    mean is folded into the heads' biases afterwards (``ClusterHeads.fold_input_shift``), so
    the kept heads read raw backbone features like any other. A numpy store (memory-mapped or
    not) is summed ``chunk`` rows at a time.
    """
    flat = views.reshape(-1, views.shape[-1])
    total = torch.zeros(flat.shape[1], dtype=torch.float64)
    for start in range(0, len(flat), chunk):
        total += _rows(flat, slice(start, start + chunk)).double().sum(dim=0)
    return (total / max(len(flat), 1)).float()


def image_fetch(data, augment: Callable[[Tensor], Tensor], device: torch.device) -> Fetch:
    """Fetch images by index, move them to ``device`` and augment them."""
    tensor = data.as_tensor()

    def fetch(idx: Tensor) -> Tensor:
        images = tensor[idx] if tensor is not None else torch.stack([data[int(i)][0] for i in idx])
        return augment(images.to(device).float() / 255.0)

    return fetch


def train_self_label(
    model: nn.Module,
    weak: Fetch,
    strong: Fetch,
    n: int,
    config: ClusteringConfig,
    *,
    lr: float,
    seed: int,
    checkpoint: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> nn.Module:
    """SCAN's self-labelling (METHOD.md, Stage 3 optional extension) on a single-head model.

    Confident weak-view predictions (> threshold) are the targets of the strong view. ``lr``
    is ``config.self_label_lr`` (SCAN's 1e-4) when a backbone is trained with the head and
    ``config.frozen_self_label_lr`` for a head alone on stored features
    (``self_label_on_embeddings``). ``checkpoint`` (from ``on_epoch_end``'s state) resumes
    after its last finished epoch, as in ``train_scan``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = stage3_optimizer(params, lr, config.weight_decay)
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch = int(checkpoint["epoch"]) + 1
    batch = min(config.batch_size, n)
    steps = max(n // batch, 1)
    for epoch in range(start_epoch, config.self_label_epochs):
        seed_everything(stage_seed(seed, "selflabel", epoch))
        model.train()
        started, loss_sum, confident = time.perf_counter(), 0.0, 0
        bar = tqdm(
            batch_indices(n, batch, shuffle=True, drop_last=True),
            total=steps,
            desc=f"self-label {epoch + 1}/{config.self_label_epochs}",
            disable=not progress,
            leave=False,
        )
        for idx in bar:
            with torch.no_grad():
                weak_logits = model(weak(idx))
            loss, count = self_label_loss(
                weak_logits, model(strong(idx)), config.self_label_threshold
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            confident += count
        if confident == 0:
            warnings.warn(
                f"self-labelling epoch {epoch + 1}: no image was predicted with confidence above "
                f"{config.self_label_threshold}, so nothing was learned; lower "
                "clustering.self_label_threshold or train stage 3 longer",
                stacklevel=2,
            )
        record = {
            "loss": loss_sum / steps,
            "confident": confident / (steps * batch),
            "seconds": time.perf_counter() - started,
        }
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, optimizer, record)
    return model


def self_label_on_embeddings(
    head: nn.Linear,
    weak_views: Tensor,
    strong_views: Tensor,
    config: ClusteringConfig,
    *,
    seed: int,
    checkpoint: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
) -> nn.Linear:
    """``train_self_label`` for one head alone on stored features (V x N x E each).

    At ``config.frozen_self_label_lr`` (our Decision; SCAN fine-tunes the whole network at
    1e-4, under which a linear head alone barely moves), on features centred by the weak
    views' mean as ``train_heads_on_embeddings`` trains the heads; the mean is folded back
    into the bias at the end, so the head reads raw features before and after. ``head`` must
    already be on the device the features should be fetched to.
    """
    device = head.weight.device
    shift = embedding_mean(weak_views).to(device)
    with torch.no_grad():
        head.bias += head.weight @ shift
    train_self_label(
        head,
        embedding_fetch(weak_views, device, shift),
        embedding_fetch(strong_views, device, shift),
        weak_views.shape[1],
        config,
        lr=config.frozen_self_label_lr,
        seed=seed,
        checkpoint=checkpoint,
        on_epoch_end=on_epoch_end,
        progress=progress,
    )
    with torch.no_grad():
        head.bias -= head.weight @ shift
    return head
