"""Stage 2 composed: plain kNN and three-view mining on features with known classes."""

from __future__ import annotations

import numpy as np
import pytest
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
    assert images_needed(Config.from_dict({"mining": {"method": "fused", "q": 7}})) == 29


def views_that_disagree(strong_noise: float = 2.5, weak_signal: float = 1.5, n: int = 400):
    """Four classes whose plain features are noisy (plain kNN is impure), a strong view with
    noise of its own (its errors differ from the instance view's) and weak-view predictions
    that know the class only loosely; each view alone ranks many wrong candidates high."""
    classes = 4
    rng = np.random.default_rng(0)
    labels = np.arange(n) % classes
    centres = 2.0 * rng.normal(size=(classes, 16))
    features = (centres[labels] + 2.5 * rng.normal(size=(n, 16))).astype(np.float32)
    strong = (centres[labels] + strong_noise * rng.normal(size=(n, 16))).astype(np.float32)
    logits = weak_signal * np.eye(classes)[labels] + rng.normal(size=(n, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return features, strong, torch.from_numpy(probabilities.astype(np.float32)), labels


def fused_config(q: int, weights=(1.0, 1.0, 1.0), weighting: str = "none") -> Config:
    settings = {
        "n_clusters": 4,
        "mining": {"method": "fused", "q": q, "fusion_weights": list(weights)},
        "run": {"progress": False},
    }
    settings["mining"]["weighting"] = weighting
    return Config.from_dict(settings).validate()


def mine_fused_with(monkeypatch, config: Config, features, strong, probabilities):
    """Fused mining with the weak-view head replaced by planted predictions."""
    trained_on: list[np.ndarray] = []

    def fake_head(weak_embeddings, candidates, config, device, on_epoch_end=None, checkpoint=None):
        trained_on.append(np.array(candidates))
        return None, probabilities

    monkeypatch.setattr(mining_module, "warm_up_head", fake_head)
    embeddings = torch.from_numpy(features)[None]
    result = MINING_METHODS["fused"](
        MiningInputs(features, lambda: strong, lambda: embeddings, config)
    )
    return result, trained_on


def test_fused_mining_is_purer_than_plain_knn_where_the_views_disagree(monkeypatch) -> None:
    features, strong, probabilities, labels = views_that_disagree()
    q = 10
    result, trained_on = mine_fused_with(
        monkeypatch, fused_config(q), features, strong, probabilities
    )
    knn = MINING_METHODS["knn"](inputs_for(features, strong, q))
    assert np.array_equal(result.knn, knn.neighbours)
    assert np.array_equal(trained_on[0], knn.neighbours), "the head trains on the top q"
    fused, plain = (
        neighbour_purity(result.neighbours, labels),
        neighbour_purity(knn.neighbours, labels),
    )
    assert fused > plain + 0.05, (fused, plain)
    for i in range(len(labels)):
        assert set(result.neighbours[i]) <= set(result.steps["instance"][i])
    assert result.weights is None


def test_fused_mining_keeps_plain_knn_purity_where_successive_cuts_lose_it(monkeypatch) -> None:
    """Weak strong and weak views (the benchmarks' case): the paper's cuts fall below plain
    kNN, the fusion does not."""
    features, strong, probabilities, labels = views_that_disagree(8.0, 0.4)
    q = 10
    result, _ = mine_fused_with(monkeypatch, fused_config(q), features, strong, probabilities)
    plain = neighbour_purity(result.knn, labels)
    three_view = MINING_METHODS["three-view"](
        MiningInputs(features, lambda: strong, lambda: None, fused_config(q))
    )
    assert neighbour_purity(three_view.neighbours, labels) < plain
    assert neighbour_purity(result.neighbours, labels) >= plain


def test_fused_mining_with_only_the_instance_view_is_plain_knn(monkeypatch) -> None:
    features, strong, probabilities, _ = views_that_disagree()
    config = fused_config(10, weights=(1.0, 0.0, 0.0))
    result, trained_on = mine_fused_with(monkeypatch, config, features, strong, probabilities)
    assert trained_on == [], "a view weighted 0 is not computed"
    assert np.array_equal(result.neighbours, result.knn)


def test_fused_weighting_gives_each_kept_neighbour_a_weight_that_falls_with_its_rank(
    monkeypatch,
) -> None:
    features, strong, probabilities, labels = views_that_disagree()
    config = fused_config(10, weighting="fused")
    result, _ = mine_fused_with(monkeypatch, config, features, strong, probabilities)
    w = result.weights
    assert w.shape == result.neighbours.shape and w.dtype == np.float32
    assert ((w > 0) & (w < 1)).all() and (np.diff(w, axis=1) <= 0).all()
    same = labels[result.neighbours] == labels[:, None]
    assert w[same].mean() > w[~same].mean()


def inputs_for(features: np.ndarray, strong: np.ndarray, q: int) -> MiningInputs:
    config = Config.from_dict(
        {"n_clusters": 4, "mining": {"method": "knn", "q": q}, "run": {"progress": False}}
    ).validate()
    return MiningInputs(features, lambda: strong, lambda: None, config)


def test_neighbour_weighting_needs_fused_mining() -> None:
    with pytest.raises(ValueError, match="mining.weighting='fused'.*mining.method=fused"):
        Config.from_dict({"mining": {"method": "knn", "weighting": "fused"}}).validate()
