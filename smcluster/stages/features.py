"""Stage 1: the contrastive feature model (METHOD.md, Stage 1) and SimCLR, SCAN's pretext.

The paper's model is close to MoBY (MoCo + BYOL): an online encoder with a predictor, an EMA
target encoder without one, and a FIFO queue of target outputs used as negatives in a
symmetric InfoNCE. ``train_features`` runs either model under Lightning Fabric;
``extract_features`` turns a trained encoder into the arrays stage 2 and 3 read.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from lightning_fabric import Fabric
from torch import Tensor, nn
from tqdm.auto import tqdm

from smcluster.augment import ViewMaker
from smcluster.config import Config, FeatureModel, MiningFeatures, stage1_training
from smcluster.engine import (
    Shard,
    batch_indices,
    iterate_images,
    map_batches,
    seed_everything,
    stage_seed,
)
from smcluster.losses import nt_xent, symmetric_queue_info_nce
from smcluster.models import MLP, Backbone, build_backbone
from smcluster.models.pretrained import build_pretrained, is_pretrained, load_pretrained
from smcluster.momentum import MomentumQueue, cosine_lr, cosine_momentum, ema_update


class Encoder(nn.Module):
    """Backbone followed by a projector MLP (the paper's F + g)."""

    def __init__(
        self, backbone: Backbone, hidden_dim: int, out_dim: int, out_bn: bool = False
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = MLP(backbone.out_dim, hidden_dim, out_dim, out_bn=out_bn)

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))


def grouped_forward(
    module: Callable[[Tensor], Tensor], x: Tensor, group_size: int, order: Tensor | None = None
) -> Tensor:
    """``module`` on consecutive groups of rows of ``x[order]``, returned in ``x``'s order.

    Each group gets its own BatchNorm statistics, as each GPU's share of the batch does in
    MoCo. The ``len(x) // group_size`` groups are near-equal, so none is smaller than
    ``group_size``; ``group_size`` 0 runs the whole batch at once.
    """
    if order is not None:
        x = x[order]
    groups = len(x) // group_size if group_size > 0 else 1
    if groups <= 1:
        out = module(x)
    else:
        out = torch.cat([module(chunk) for chunk in x.tensor_split(groups)])
    return out if order is None else out[order.argsort()]


class PaperFeatureModel(nn.Module):
    """Online encoder + predictor, EMA target encoder and queue (METHOD.md, Stage 1).

    ``forward(view_a, view_b)`` returns the symmetric queue InfoNCE of Eq. 10 and the target
    outputs of both views, which ``after_step`` enqueues (all-gathered under several
    processes, as MoCo does) after the EMA update of Eq. 7 with the momentum of Eq. 8.

    BatchNorm and a queue do not mix naively (MoCo, Sec. 3.3): if an image's online output
    and its positive target output are normalised with the statistics of the same images,
    the network can tell the current batch's targets from the queued ones by those statistics
    and lowers the loss without learning the images. Our Decision (the paper is silent): each
    view runs through the online network in groups of ``bn_group_size`` images and through the
    target network in groups of a random permutation ("shuffling BN" on one device), so an
    image's two outputs see the statistics of different images.

    The target network is a copy of the online one made here, so ``backbone`` should carry
    its fitted input statistics already (``build_feature_model(..., data=...)``).
    """

    def __init__(self, backbone: Backbone, config: Config, n_images: int) -> None:
        super().__init__()
        f = config.features
        self.online = Encoder(backbone, f.projector_hidden, f.out_dim, f.projector_out_bn)
        self.predictor = MLP(f.out_dim, f.predictor_hidden, f.out_dim)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.queue = MomentumQueue(queue_length_for(config, n_images), f.out_dim)
        self.temperature = f.temperature
        self.momentum_base = f.momentum_base
        self.group_size = f.bn_group_size

    def _online(self, x: Tensor) -> Tensor:
        return self.predictor(self.online(x))

    def forward(self, view_a: Tensor, view_b: Tensor) -> tuple[Tensor, Tensor]:
        l_a = grouped_forward(self._online, view_a, self.group_size)
        l_b = grouped_forward(self._online, view_b, self.group_size)
        with torch.no_grad():
            both = torch.cat([view_a, view_b])
            order = torch.randperm(len(both), device=both.device)
            h_a, h_b = grouped_forward(self.target, both, self.group_size, order).chunk(2)
        loss = symmetric_queue_info_nce(
            l_a, l_b, h_a, h_b, self.queue.vectors.clone(), self.temperature
        )
        return loss, torch.cat([h_a, h_b]).detach()

    def after_step(self, step: int, total_steps: int, targets: Tensor | None) -> None:
        ema_update(self.target, self.online, cosine_momentum(step, total_steps, self.momentum_base))
        if targets is not None:
            self.queue.enqueue(targets)


class SimCLRFeatureModel(nn.Module):
    """SimCLR (NT-Xent with in-batch negatives), SCAN's pretext task and our baseline."""

    def __init__(self, backbone: Backbone, config: Config, n_images: int) -> None:
        super().__init__()
        del n_images
        f = config.features
        self.online = Encoder(backbone, f.projector_hidden, f.out_dim, f.projector_out_bn)
        self.temperature = f.simclr_temperature

    def forward(self, view_a: Tensor, view_b: Tensor) -> tuple[Tensor, None]:
        z_a, z_b = self.online(torch.cat([view_a, view_b])).chunk(2)
        return nt_xent(z_a, z_b, self.temperature), None

    def after_step(self, step: int, total_steps: int, targets: Tensor | None) -> None:
        del step, total_steps, targets


FEATURE_MODELS: dict[FeatureModel, type[nn.Module]] = {
    "paper": PaperFeatureModel,
    "simclr": SimCLRFeatureModel,
}

# Which output of the online encoder stage 2 mines with (METHOD.md, Stage 2 Decision).
MINING_FEATURES: dict[MiningFeatures, Callable[[Encoder, Tensor], Tensor]] = {
    "projector": lambda encoder, x: encoder(x),
    "backbone": lambda encoder, x: encoder.backbone(x),
}


def training_batch(config: Config, n_images: int) -> int:
    """The batch ``train_features`` uses: the setting, or the whole data set when smaller."""
    return min(config.features.batch_size, n_images)


def queue_length_for(config: Config, n_images: int) -> int:
    """METHOD.md Stage 1 Decision: the setting, capped at N minus one batch (at least 1).

    The batch is the one training uses (``training_batch``). A queue shorter than that batch
    gives each image fewer negatives than one batch, and with N at most one batch it holds a
    single one; that setting learns little, so it warns and names the setting to change.
    """
    f = config.features
    batch = training_batch(config, n_images)
    length = max(min(f.queue_length, n_images - batch), 1)
    if length < batch and f.queue_length < n_images - batch:
        warnings.warn(
            f"features.queue_length={f.queue_length} is shorter than one batch ({batch}), so "
            f"each image has only {length} negatives; raise features.queue_length to at least "
            f"{batch}",
            stacklevel=2,
        )
    elif length < batch:
        warnings.warn(
            f"{n_images} images are few for features.batch_size={f.batch_size}: the queue is "
            f"capped at N minus one batch, so each image has only {length} negative(s); set "
            f"features.batch_size to at most {max(n_images // 2, 1)}",
            stacklevel=2,
        )
    return length


def build_feature_model(
    config: Config, channels: int, n_images: int, data: Any | None = None
) -> nn.Module:
    """The configured feature model for ``n_images`` images of ``channels`` channels.

    With ``data``, the backbone's input normalisation is fitted to it before the model copies
    its online network into the target network, so both see the same statistics from the
    first step (METHOD.md, Stage 1: the target starts as the online network). A pretrained
    source (``models.pretrained``) keeps its own preprocessing; with ``data`` and
    ``features.train=contrastive`` it starts from its pretrained weights, otherwise from random
    ones (to train from scratch, or to load a saved state into).
    """
    f = config.features
    if not is_pretrained(f.backbone):
        backbone = build_backbone(f.backbone, channels, width=f.width, small_stem=f.small_stem)
        if data is not None:
            fit_normalization(backbone, data)
    elif data is not None and stage1_training(f) == "contrastive":
        backbone = load_pretrained(f.backbone, weights=f.weights, download=f.download)
    else:
        backbone = build_pretrained(f.backbone)
    return FEATURE_MODELS[f.model](backbone, config, n_images)


def stage1_backbone(
    config: Config, checkpoint: dict[str, Any], *, load_weights: bool = True
) -> nn.Module:
    """The online backbone F saved in a stage-1 checkpoint (``{"model", "channels", ...}``).

    Rebuilds the configured architecture and loads its ``online.backbone.*`` weights, for
    prediction with a finished run and for a ``run:PATH`` backbone source.
    """
    f = config.features
    if is_pretrained(f.backbone):
        backbone: nn.Module = build_pretrained(f.backbone)
    else:
        channels = int(checkpoint["channels"])
        backbone = build_backbone(f.backbone, channels, width=f.width, small_stem=f.small_stem)
    if load_weights:
        prefix = "online.backbone."
        state = checkpoint["model"]
        backbone.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
    return backbone


def fit_normalization(backbone: Backbone, data, sample: int = 4096) -> None:
    """Set the backbone's input statistics from (a seeded sample of) the data."""
    n = len(data)
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(0))[: min(sample, n)]
    images = torch.stack([data[int(i)][0] for i in idx]).float() / 255.0
    backbone.normalize.fit(images)


EpochCallback = Callable[[int, nn.Module, torch.optim.Optimizer, dict[str, Any]], None]


def train_features(
    data,
    config: Config,
    fabric: Fabric,
    *,
    checkpoint: dict[str, Any] | None = None,
    on_epoch_end: EpochCallback | None = None,
    on_step: Callable[[], bool] | None = None,
) -> nn.Module:
    """Train the configured feature model on ``data`` and return it (unwrapped).

    ``checkpoint`` (from ``on_epoch_end``'s state) resumes after its last finished epoch; each
    epoch draws from its own seed, so a resumed run sees the augmentations an unbroken one
    would have seen. ``on_step`` is called after every step; True stops the training there
    (a time budget's calibration times steps with it, ``budget``).
    """
    f = config.features
    seed_everything(config.run.seed)
    model = build_feature_model(config, data.channels, len(data), data)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=f.lr, momentum=0.9, weight_decay=f.weight_decay)
    start_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        start_epoch = int(checkpoint["epoch"]) + 1
    wrapped, optimizer = fabric.setup(model, optimizer)
    views = ViewMaker(**config.to_dict()["augment"])
    shard = Shard.of(fabric)
    batch = training_batch(config, len(data))
    steps_per_epoch = max(len(data) // batch, 1)
    total = f.epochs * steps_per_epoch
    warmup = f.warmup_epochs * steps_per_epoch
    base_lr = f.lr * batch / 256
    for epoch in range(start_epoch, f.epochs):
        seed_everything(stage_seed(config.run.seed, "features", epoch))
        wrapped.train()
        started, seen, loss_sum = time.perf_counter(), 0, 0.0
        batches = batch_indices(len(data), batch, shuffle=True, drop_last=True, shard=shard)
        bar = tqdm(
            iterate_images(data, batches, config.run.workers),
            total=steps_per_epoch,
            desc=f"features {epoch + 1}/{f.epochs}",
            disable=not (config.run.progress and fabric.is_global_zero),
            leave=False,
        )
        for step_in_epoch, (images, _) in enumerate(bar):
            step = epoch * steps_per_epoch + step_in_epoch
            lr = cosine_lr(step, total, base_lr, warmup)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = images.to(fabric.device)
            view_a, view_b = views.view_a(x), views.view_b(x)
            with fabric.autocast():
                loss, targets = wrapped(view_a, view_b)
            optimizer.zero_grad(set_to_none=True)
            fabric.backward(loss)
            optimizer.step()
            if targets is not None and fabric.world_size > 1:
                targets = fabric.all_gather(targets).reshape(-1, targets.shape[-1])
            model.after_step(step + 1, total, targets)
            if on_step is not None and on_step():
                return model
            seen += len(images) * fabric.world_size
            loss_sum += float(loss.detach())
            elapsed = time.perf_counter() - started
            bar.set_postfix(
                loss=f"{loss_sum / (step_in_epoch + 1):.4f}",
                img_s=f"{seen / elapsed:.0f}",
                refresh=False,
            )
        elapsed = time.perf_counter() - started
        record = {
            "loss": loss_sum / steps_per_epoch,
            "lr": lr,
            "seconds": elapsed,
            "images_per_s": seen / max(elapsed, 1e-9),
        }
        if on_epoch_end is not None:
            on_epoch_end(epoch, model, optimizer, record)
    return model


def mining_features(encoder: Encoder, config: Config) -> Callable[[Tensor], Tensor]:
    """The L2-normalised features stage 2 mines with (METHOD.md, Stage 2 Decision)."""
    project = MINING_FEATURES[config.features.mining_features]
    return lambda x: nn.functional.normalize(project(encoder, x).float(), dim=1)


@torch.no_grad()
def extract_features(
    network: Callable[[Tensor], Tensor],
    data,
    config: Config,
    fabric: Fabric,
    *,
    view: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``network``'s output for every image (N x D float32 on the CPU), optionally of a view.

    ``network`` is ``mining_features(encoder, config)`` for stage 2 or ``encoder.backbone``
    for the clustering heads; ``view`` is an augmentation applied to each batch first.
    """
    if isinstance(network, nn.Module):
        network.eval()

    def fn(images: Tensor) -> Tensor:
        x = images.float() / 255.0
        if view is not None:
            x = view(x)
        with fabric.autocast():
            return network(x).float()

    return map_batches(
        fn,
        data,
        batch_size=max(config.features.batch_size, 256),
        device=fabric.device,
        fabric=fabric,
        workers=config.run.workers,
        progress="features" if config.run.progress else None,
    )
