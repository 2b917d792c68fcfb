"""Stage 2 composed: plain kNN and three-view mining on features with known classes."""

from __future__ import annotations

import numpy as np
import torch

from smcluster.config import Config
from smcluster.stages.mining import MINING_METHODS, MiningInputs, images_needed
from smcluster.stages.neighbours import neighbour_purity


def two_class_features(n: int = 200, seed: int = 0):
    """Two noisy classes on the sphere; the strong view is a noisier copy of each feature."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    centres = rng.normal(size=(2, 8))
    features = centres[labels] + 1.2 * rng.normal(size=(n, 8))
    strong = features + 0.3 * rng.normal(size=(n, 8))
    return features.astype(np.float32), strong.astype(np.float32), labels


def inputs(method: str, q: int = 5) -> tuple[MiningInputs, np.ndarray]:
    features, strong, labels = two_class_features()
    config = Config.from_dict(
        {
            "n_clusters": 2,
            "mining": {"method": method, "q": q, "warmup_epochs": 5},
            "clustering": {"heads": 2, "batch_size": 50},
            "run": {"progress": False},
        }
    ).validate()
    embeddings = torch.from_numpy(features)[None]
    return MiningInputs(features, lambda: strong, lambda: embeddings, config), labels


def test_plain_mining_is_the_q_nearest_other_images() -> None:
    mining, labels = inputs("knn")
    result = MINING_METHODS["knn"](mining)
    assert result.neighbours.shape == (200, 5)
    assert not (result.neighbours == np.arange(200)[:, None]).any()
    assert neighbour_purity(result.neighbours, labels) > 0.6


def test_three_view_mining_keeps_q_of_its_4q_instance_candidates() -> None:
    mining, labels = inputs("three-view")
    result = MINING_METHODS["three-view"](mining)
    instance, strong = result.steps["instance"], result.steps["strong"]
    assert instance.shape == (200, 20) and strong.shape == (200, 10)
    assert result.neighbours.shape == (200, 5) and result.head is not None
    for i in range(200):
        assert set(strong[i]) <= set(instance[i])
        assert set(result.neighbours[i]) <= set(strong[i])
    assert np.array_equal(result.knn, instance[:, :5])
    assert neighbour_purity(result.neighbours, labels) > 0.5


def test_images_needed_counts_the_candidates() -> None:
    assert images_needed(Config.from_dict({"mining": {"method": "knn", "q": 7}})) == 8
    assert images_needed(Config.from_dict({"mining": {"method": "three-view", "q": 7}})) == 29
