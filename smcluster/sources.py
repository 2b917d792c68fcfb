"""Stage 1 as one of several feature sources: train a feature model, load one, or read a file.

METHOD.md, Stage 1 trains the paper's feature model; stages 2 and 3 apply unchanged on top of
any features. A source turns a run into ``StageOne``, the one thing stages 2 and 3 read:

- ``train`` (``features.train`` scratch or contrastive): the paper's model or SimCLR, from
  random weights or from a pretrained backbone's, checkpointed and resumed per epoch;
- ``frozen`` (the default for a pretrained ``features.backbone``): the backbone as it is,
  its features extracted once and cached in the run folder;
- ``embeddings`` (``data.embeddings``): a file of precomputed features; no images, so no
  augmented views (plain kNN mining, heads on the one stored view).

A frozen backbone passes over the data once for the plain features (mined after L2
normalisation, read raw by the heads), ``clustering.feature_views`` times for the weak views
the heads train on, and once more for the strong view of the three-view mining (METHOD.md,
Stage 2; ``mining.strong_views`` times for an average of several): 1 + V + 1 passes, 6 with
the defaults (5 with plain kNN mining).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from smcluster.budget import with_run_eta
from smcluster.config import Config, stage1_training
from smcluster.data.embeddings import Embeddings
from smcluster.engine import seed_everything
from smcluster.models.pretrained import load_pretrained
from smcluster.stages.clustering import Stored
from smcluster.stages.features import (
    build_feature_model,
    extract_features,
    mining_features,
    stage1_backbone,
    train_features,
)

if TYPE_CHECKING:
    from smcluster.pipeline import RunContext


@dataclass
class StageOne:
    """What stage 1 hands to stages 2 and 3.

    ``features`` (N x D) are mined (normalised by the search); ``embeddings`` (N x E) are what
    the heads read; ``weak_embeddings()`` gives V x N x E (or N x E) features of weak views and
    ``strong_features()`` N x D features of strong views, both made on first use and None
    without images; ``backbone`` maps images to embeddings (None for a file of embeddings).
    """

    features: np.ndarray
    embeddings: np.ndarray
    weak_embeddings: Callable[[], Stored]
    strong_features: Callable[[], np.ndarray] | None = None
    backbone: nn.Module | None = None


def feature_source(config: Config) -> str:
    """The name of the source ``config`` asks for (a key of ``FEATURE_SOURCES``)."""
    if config.data.embeddings is not None:
        return "embeddings"
    return "frozen" if stage1_training(config.features) == "frozen" else "train"


def _views(run: RunContext, network: Callable[[Tensor], Tensor], view, count: int, seed: int):
    """``count`` passes of ``network`` over views of every image (count x N x E, float16)."""

    def make() -> Tensor:
        seed_everything(seed)
        return torch.stack(
            [
                extract_features(network, run.data, run.config, run.fabric, view=view).half()
                for _ in range(count)
            ]
        )

    return _once(make)


def _once(make: Callable[[], object]) -> Callable[[], object]:
    cache: list[object] = []

    def get() -> object:
        if not cache:
            cache.append(make())
        return cache[0]

    return get


def _normalised(network: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda x: nn.functional.normalize(network(x).float(), dim=1)


def _cached_arrays(
    run: RunContext, backbone: nn.Module, mined: Callable[[Tensor], Tensor] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mining features and backbone features of the un-augmented images, saved once; with
    ``mined`` None the mining features are the normalised backbone features (no second pass)."""
    features = run.folder.load_array("features")
    embeddings = run.folder.load_array("embeddings")
    if features is None or embeddings is None:
        c, d, f = run.config, run.data, run.fabric
        embeddings = extract_features(backbone, d, c, f).numpy()
        if mined is None:
            features = nn.functional.normalize(torch.from_numpy(embeddings), dim=1).numpy()
        else:
            features = extract_features(mined, d, c, f).numpy()
        run.folder.save_array("features", features)
        run.folder.save_array("embeddings", embeddings)
    return features, embeddings


def _image_source(
    run: RunContext, backbone: nn.Module, mined: Callable[[Tensor], Tensor] | None = None
) -> StageOne:
    """The arrays and lazy views shared by every source that has images and a network;
    ``mined`` maps images to the features stage 2 mines (None: the normalised backbone)."""
    config = run.config
    seed = config.run.seed
    features, embeddings = _cached_arrays(run, backbone, mined)
    mined = mined or _normalised(backbone)
    weak = _views(run, backbone, run.views.weak, config.clustering.feature_views, seed + 1)

    def strong() -> np.ndarray:
        """Mining features of a strong view; with ``mining.strong_views`` V > 1 the mean of V
        (normalised) views, whose dot product with a feature is the mean similarity."""
        seed_everything(seed + 2)
        view, count = run.views.strong, config.mining.strong_views
        total = extract_features(mined, run.data, config, run.fabric, view=view)
        for _ in range(count - 1):
            total += extract_features(mined, run.data, config, run.fabric, view=view)
        return (total / count).numpy()

    return StageOne(features, embeddings, weak, strong, backbone)


def trained_source(run: RunContext) -> StageOne:
    """Stage 1 proper: the saved feature model, or train it (continuing from its last epoch)."""
    config, data, folder = run.config, run.data, run.folder
    final = folder.load_checkpoint("features")
    if final is not None:
        model = build_feature_model(config, data.channels, len(data))
        model.load_state_dict(final["model"])
        model = model.to(run.fabric.device)
    else:
        on_epoch_end = run.epoch_checkpoints("features", "features")
        if config.run.progress:
            later = run.progress.budget.get("later_seconds")
            on_epoch_end = with_run_eta(on_epoch_end, config.features.epochs, later, run.say)
        model = train_features(
            data,
            config,
            run.fabric,
            checkpoint=folder.resume_point("features"),
            on_epoch_end=on_epoch_end,
        )
        folder.save_checkpoint(
            "features",
            {"model": model.state_dict(), "channels": data.channels, "image_size": data.image_size},
        )
        rows = [r for r in folder.history() if r["stage"] == "features"]
        if rows:
            run.say(
                f"stage 1 ({config.features.model}, {stage1_training(config.features)}): "
                f"{len(rows)} epochs, final loss {rows[-1]['loss']:.4f}, "
                f"{np.mean([r['images_per_s'] for r in rows]):.0f} images/s"
            )
    encoder = model.online.eval()
    return _image_source(run, encoder.backbone, mining_features(encoder, config))


def frozen_source(run: RunContext) -> StageOne:
    """A pretrained backbone used as it is; it is saved as the run's stage-1 checkpoint, so
    ``predict`` on a finished run needs neither the weights file nor the network."""
    config, data, folder = run.config, run.data, run.folder
    f = config.features
    saved = folder.load_checkpoint("features")
    if saved is None:
        backbone = load_pretrained(f.backbone, weights=f.weights, download=f.download)
        state = {f"online.backbone.{k}": v for k, v in backbone.state_dict().items()}
        folder.save_checkpoint(
            "features", {"model": state, "channels": data.channels, "image_size": data.image_size}
        )
        run.say(f"stage 1 (frozen {f.backbone}): {backbone.out_dim}-d features")
    else:
        backbone = stage1_backbone(config, saved)
    return _image_source(run, backbone.to(run.fabric.device).eval())


def embeddings_source(run: RunContext) -> StageOne:
    """A file of precomputed embeddings (memory-mapped ``.npy`` stays mapped): both what is
    mined and what the heads read; no images, so no views beyond the stored one."""
    vectors = run.embeddings.vectors
    return StageOne(features=vectors, embeddings=vectors, weak_embeddings=lambda: vectors)


FEATURE_SOURCES: dict[str, Callable[[RunContext], StageOne]] = {
    "train": trained_source,
    "frozen": frozen_source,
    "embeddings": embeddings_source,
}


def resolve_for_source(config: Config) -> tuple[Config, list[str]]:
    """Settings a source cannot honour, changed before the run starts, with a note each.

    Precomputed embeddings have no images to augment, so the three-view mining (METHOD.md,
    Stage 2) falls back to plain kNN.
    """
    notes: list[str] = []
    if config.data.embeddings is not None and config.mining.method != "knn":
        notes.append(
            f"mining.method={config.mining.method} needs images to augment; precomputed "
            "embeddings are mined with plain kNN"
        )
        config = config.updated({"mining": {"method": "knn", "weighting": "none"}})
    return config, notes


def embeddings_with_images(embeddings: Embeddings, images) -> Embeddings:
    """Embeddings whose rows are ``images`` (same count), named by the images' ids so the
    report and the assignments list the same images."""
    if images is None:
        return embeddings
    if len(images) != len(embeddings):
        raise ValueError(
            f"the embeddings file has {len(embeddings)} rows but the images {len(images)}: "
            "give the images the embeddings were computed from, in the same order"
        )
    labels = embeddings.labels if embeddings.labels is not None else images.labels
    return Embeddings(embeddings.vectors, images.ids, labels, embeddings.name)
