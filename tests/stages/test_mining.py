"""Stage 2 composed: plain kNN and three-view mining on features with known classes."""

from __future__ import annotations

import numpy as np
import torch

from smcluster.config import Config
from smcluster.stages import mining as mining_module
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


RING = 9  # images per group: each image's 4q = 8 candidates are the rest of its ring (q = 2)


def planted_rings(groups: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups of 9 images on small rings, each group in its own 3 dimensions.

    Image k of a ring sits at angle 2 pi k / 9 around the group's centre, so its features are
    nearest to the ring's other 8 images (the instance view), most to the images 1 and 2 steps
    away. Its strong-view feature points across the ring, so the strong view keeps the 4
    images 3 and 4 steps away, the 4 that plain features rank last. Returns the features,
    the strong-view features and each image's position on its ring.
    """
    n = groups * RING
    position = np.arange(n) % RING
    angle = 2 * np.pi * position / RING
    group = np.arange(n) // RING
    features = np.zeros((n, 3 * groups), dtype=np.float32)
    strong = np.zeros_like(features)
    rows = np.arange(n)
    for out, sign in ((features, 1.0), (strong, -1.0)):
        out[rows, 3 * group] = 1.0
        out[rows, 3 * group + 1] = sign * 0.5 * np.cos(angle)
        out[rows, 3 * group + 2] = sign * 0.5 * np.sin(angle)
    return features, strong, position


def test_three_view_mining_composes_instance_strong_and_weak_views(monkeypatch) -> None:
    """A planted case where each step's answer is known, so skipping, reordering or reversing
    a step, or mining the strong step with plain features, changes the result."""
    features, strong, position = planted_rings()
    n, q = len(features), 2
    ring = np.arange(n) - position
    # Weak view: two clusters, p_j = (s_j, 1 - s_j) with s rising around the ring. Agreement
    # p_i . p_j rises with s_j when s_i > 1/2 and falls with it otherwise (no ties).
    s = 0.05 + 0.1 * position
    probabilities = torch.from_numpy(np.stack([s, 1 - s], axis=1).astype(np.float32))
    embeddings = torch.randn(1, n, 4)
    trained_on: list[np.ndarray] = []

    def fake_head(weak_embeddings, candidates, config, device, on_epoch_end=None, checkpoint=None):
        assert weak_embeddings is embeddings
        trained_on.append(np.array(candidates))
        return None, probabilities

    monkeypatch.setattr(mining_module, "warm_up_head", fake_head)
    config = Config.from_dict(
        {"n_clusters": 2, "mining": {"method": "three-view", "q": q}, "run": {"progress": False}}
    ).validate()
    result = MINING_METHODS["three-view"](
        MiningInputs(features, lambda: strong, lambda: embeddings, config)
    )

    def at(i: int, steps: list[int]) -> set[int]:
        return {int(ring[i] + (position[i] + d) % RING) for d in steps}

    for i in range(n):
        assert set(result.steps["instance"][i]) == at(i, [1, 2, 3, 4, 5, 6, 7, 8])
        across = at(i, [3, 4, 5, 6])
        assert set(result.steps["strong"][i]) == across
        assert set(trained_on[0][i]) == across
        agreeing = set(sorted(across, key=lambda j: s[j], reverse=bool(s[i] > 0.5))[:q])
        assert agreeing != at(i, [4, 5]), "the weak view must change the strong view's top q"
        assert set(result.neighbours[i]) == agreeing, i
        assert set(result.knn[i]) == at(i, [1, 8])
    assert result.neighbours.shape == (n, q)


def test_images_needed_counts_the_candidates() -> None:
    assert images_needed(Config.from_dict({"mining": {"method": "knn", "q": 7}})) == 8
    assert images_needed(Config.from_dict({"mining": {"method": "three-view", "q": 7}})) == 29
