"""Stage 2: exact kNN search, the strong- and weak-view filters, purity (METHOD.md, Stage 2)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smcluster.metrics import knn_accuracy
from smcluster.stages.neighbours import (
    BACKENDS,
    EXACT_LIMIT,
    choose_index,
    filter_by_agreement,
    filter_by_strong_view,
    find_neighbours,
    instance_view,
    knn_recall,
    knn_search,
    mine_knn,
    neighbour_purity,
    purity_at,
)

BACKEND_NAMES = sorted(BACKENDS)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _brute_force(db: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool):
    sims = _unit(queries).astype(np.float64) @ _unit(db).astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    idx = np.argsort(-sims, axis=1)[:, :k]
    return idx, np.take_along_axis(sims, idx, axis=1)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_knn_search_matches_brute_force(backend: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 12)).astype(np.float32) * rng.uniform(0.5, 3.0, size=(150, 1))
    idx, sims = knn_search(x, 7, backend=backend)
    ref_idx, ref_sims = _brute_force(x, x, 7, exclude_self=True)
    assert idx.dtype == np.int64 and sims.dtype == np.float32 and idx.shape == (150, 7)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)
    assert np.all(np.diff(sims, axis=1) <= 0)

    queries = rng.normal(size=(20, 12)).astype(np.float32)
    idx, sims = knn_search(x, 150, queries=queries, backend=backend)
    ref_idx, ref_sims = _brute_force(x, queries, 150, exclude_self=False)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(sims, ref_sims, atol=1e-5)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_chunking_gives_the_same_answer(backend: str) -> None:
    x = np.random.default_rng(2).normal(size=(101, 8)).astype(np.float32)
    whole = knn_search(x, 5, backend=backend, chunk_size=4096)
    chunked = knn_search(x, 5, backend=backend, chunk_size=7)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_allclose(whole[1], chunked[1], atol=1e-6)


@pytest.mark.parametrize("backend", BACKEND_NAMES)
def test_exclude_self_keeps_exact_duplicates(backend: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    x[[1, 2]] = x[0]  # a triple of identical images
    x[10:16] = x[9]  # seven identical images, more than k + 1
    idx, sims = knn_search(x, 2, backend=backend)
    assert not np.any(idx == np.arange(40)[:, None])
    for i, others in [(0, {1, 2}), (1, {0, 2}), (2, {0, 1})]:
        assert set(idx[i]) == others
        np.testing.assert_allclose(sims[i], 1.0, atol=1e-5)
    for i in range(9, 16):
        assert set(idx[i]) <= set(range(9, 16)) - {i}
        np.testing.assert_allclose(sims[i], 1.0, atol=1e-5)


def test_knn_search_errors() -> None:
    x = np.random.default_rng(4).normal(size=(10, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="at most 9"):
        knn_search(x, 10)
    assert knn_search(x, 9)[0].shape == (10, 9)
    assert knn_search(x, 10, queries=x[:3])[0].shape == (3, 10)
    with pytest.raises(ValueError, match="at most 10"):
        knn_search(x, 11, queries=x[:3])
    with pytest.raises(ValueError, match="positive"):
        knn_search(x, 0)
    with pytest.raises(ValueError, match="unknown backend"):
        knn_search(x, 3, backend="annoy")
    with pytest.raises(ValueError, match="backend='torch'"):
        knn_search(x, 3, backend="faiss", device="cuda")
    with pytest.raises(ValueError, match="dimension"):
        knn_search(x, 3, queries=x[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        knn_search(np.full((4, 2), np.nan, dtype=np.float32), 1)
    with pytest.raises(ValueError, match="q < N / 4"):
        instance_view(x, 3)


def test_mine_knn_and_instance_view() -> None:
    x = np.random.default_rng(5).normal(size=(60, 8)).astype(np.float32)
    n4q = instance_view(x, 3)
    assert n4q.shape == (60, 12)
    np.testing.assert_array_equal(mine_knn(x, 3), n4q[:, :3])
    np.testing.assert_array_equal(mine_knn(x, 3, backend="torch"), n4q[:, :3])


def _planted(seed: int):
    """Four classes along orthogonal axes; every anchor's 6 candidates hold 4 images of its
    class and 2 planted images of the next class, at shuffled positions."""
    rng = np.random.default_rng(seed)
    n_anchor, n_pool, dim = 20, 40, 8
    n = n_anchor + n_pool
    labels = rng.integers(0, 4, size=n)
    labels[n_anchor:] = np.arange(n_pool) % 4
    axes = np.eye(dim, dtype=np.float32)
    noise = 0.05 * rng.normal(size=(n, dim)).astype(np.float32)
    pool = n_anchor + np.arange(n_pool)
    right, planted = [], []
    for i in range(n):
        right.append(rng.choice(pool[labels[pool] == labels[i]], size=4, replace=False))
        planted.append(rng.choice(pool[labels[pool] == (labels[i] + 1) % 4], 2, replace=False))
    cand = np.concatenate([np.stack(right), np.stack(planted)], axis=1)
    cand = rng.permuted(cand, axis=1)
    return rng, labels, axes, noise, cand, np.stack(right), np.stack(planted)


def test_filter_by_strong_view_drops_exactly_the_planted() -> None:
    rng, labels, axes, noise, cand, right, planted = _planted(6)
    n_anchor = 20
    # Pool images sit on their class axis. An anchor's own feature leans to the next class (so
    # the planted images are its closest candidates), but its strong view sits on its class.
    features = axes[labels] + noise
    features[:n_anchor] = axes[(labels[:n_anchor] + 1) % 4] + 0.5 * axes[labels[:n_anchor]]
    strong = axes[labels] + 0.05 * rng.normal(size=features.shape).astype(np.float32)

    kept = filter_by_strong_view(cand, features, strong, keep=4)
    assert kept.shape == (len(labels), 4) and kept.dtype == np.int64
    for i in range(len(labels)):
        assert set(kept[i]) == set(right[i])
        scores = _unit(features[kept[i]]) @ _unit(strong[i : i + 1])[0]
        assert np.all(np.diff(scores) <= 0)
    # The anchors' own features would keep the planted ones: the test tells the views apart.
    own = filter_by_strong_view(cand, features, features, keep=2)
    for i in range(n_anchor):
        assert set(own[i]) == set(planted[i])


@pytest.mark.parametrize("score", ["dot", "argmax"])
def test_filter_by_agreement_drops_exactly_the_planted(score: str) -> None:
    _, labels, _, _, cand, right, _ = _planted(7)
    probs = np.full((len(labels), 4), 0.05, dtype=np.float32)
    probs[np.arange(len(labels)), labels] = 0.85
    kept = filter_by_agreement(cand, probs, keep=4, score=score)
    assert kept.shape == (len(labels), 4) and kept.dtype == np.int64
    for i in range(len(labels)):
        assert set(kept[i]) == set(right[i])


def test_agreement_scorers_differ_as_defined() -> None:
    # Anchor 0 predicts (0.55, 0.45, 0). Candidate 1 = (0, 1, 0): dot 0.45, p_j[argmax] = 0.
    # Candidate 2 = (0.5, 0, 0.5): dot 0.275, p_j[argmax] = 0.5.
    probs = np.array([[0.55, 0.45, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]], dtype=np.float32)
    cand = np.array([[1, 2], [0, 2], [0, 1]])
    assert filter_by_agreement(cand, probs, keep=1, score="dot")[0, 0] == 1
    assert filter_by_agreement(cand, probs, keep=1, score="argmax")[0, 0] == 2
    # Equal scores keep the candidates' order.
    flat = np.full((3, 3), 1 / 3, dtype=np.float32)
    np.testing.assert_array_equal(filter_by_agreement(cand, flat, keep=2), cand)
    with pytest.raises(ValueError, match="unknown agreement score"):
        filter_by_agreement(cand, probs, keep=1, score="cosine")
    with pytest.raises(ValueError, match="keep"):
        filter_by_agreement(cand, probs, keep=3)
    with pytest.raises(ValueError, match="index"):
        filter_by_agreement(cand + 1, probs, keep=1)


def test_neighbour_purity_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    neighbours = np.array([[1, 2], [0, 3], [3, 0], [1, 2]])
    # Hits per column: first (1, 1, 1, 0) = 3, second (0, 0, 0, 1) = 1; 4 of 8 pairs.
    assert neighbour_purity(neighbours, labels) == pytest.approx(0.5)
    assert purity_at(neighbours, labels, [1, 2]) == pytest.approx({1: 0.75, 2: 0.5})
    with pytest.raises(ValueError, match="between 1 and 2"):
        purity_at(neighbours, labels, [3])


def test_raw_mnist_neighbours_are_pure(shared_data: Path) -> None:
    with np.load(shared_data / "mnist.npz", allow_pickle=False) as data:
        images, labels = data["images"][:2000], data["labels"][:2000]
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    neighbours, sims = knn_search(x, 20)
    # Near-ties may swap places between backends; the similarities must agree.
    torch_sims = knn_search(x, 20, backend="torch", chunk_size=512)[1]
    np.testing.assert_allclose(sims, torch_sims, atol=1e-5)
    np.testing.assert_array_equal(neighbours, mine_knn(x, 20))
    # Measured: purity 0.80 at q = 20 (0.93 at q = 1), leave-one-out 20-NN accuracy 0.90;
    # chance is about 0.1.
    purity = neighbour_purity(neighbours, labels)
    assert purity > 0.75
    at = purity_at(neighbours, labels, [1, 5, 20])
    assert at[1] > at[5] > at[20] == pytest.approx(purity)
    assert knn_accuracy(neighbours, labels) > 0.85


def _mixture(n: int, dim: int, clusters: int, seed: int = 0, noise: float = 0.5):
    """Gaussian clusters on the sphere, their centres in families of five (close siblings)."""
    rng = np.random.default_rng(seed)
    families = _unit(rng.normal(size=(clusters // 5, dim)))
    centres = _unit(
        families[np.arange(clusters) % len(families)]
        + 0.6 * _unit(rng.normal(size=(clusters, dim)))
    )
    labels = rng.integers(0, clusters, size=n)
    x = centres[labels] + noise / np.sqrt(dim) * rng.normal(size=(n, dim))
    return x.astype(np.float32), labels


@pytest.mark.parametrize(("index", "n"), [("ivf", 20_000), ("hnsw", 4_000)])
def test_approximate_index_recall_against_exact_search(index: str, n: int) -> None:
    x, labels = _mixture(n, 32, 100)
    exact = find_neighbours(x, 10, index="exact")
    found = find_neighbours(x, 10, index=index, target_recall=0.9)
    assert found.index == index and exact.index == "exact" and exact.recall == 1.0
    recall = knn_recall(found.indices, exact.indices)
    assert recall >= 0.9
    assert found.recall == pytest.approx(recall, abs=0.03)  # the sample's estimate is honest
    assert not (found.indices == np.arange(n)[:, None]).any()
    assert np.all(np.diff(found.similarities, axis=1) <= 1e-6)
    assert neighbour_purity(found.indices, labels) > 0.5


def test_ivf_is_deterministic_for_a_seed_and_tunes_nprobe() -> None:
    x, _ = _mixture(5_000, 16, 50, seed=1, noise=1.0)
    first = find_neighbours(x, 8, index="ivf", seed=3)
    again = find_neighbours(x, 8, index="ivf", seed=3)
    np.testing.assert_array_equal(first.indices, again.indices)
    assert first.params == again.params and first.recall == again.recall
    assert first.params["nlist"] == 5_000 // 39  # 4 sqrt(N) capped at 39 training rows each
    other = find_neighbours(x, 8, index="ivf", seed=4)
    assert not np.array_equal(first.indices, other.indices)
    # A stricter target probes more lists and finds more of the exact neighbours.
    strict = find_neighbours(x, 8, index="ivf", seed=3, target_recall=0.99)
    assert strict.params["nprobe"] > first.params["nprobe"] and strict.recall >= 0.99


def test_auto_index_is_exact_below_the_limit_and_on_accelerators() -> None:
    x, _ = _mixture(500, 8, 10)
    assert find_neighbours(x, 5).index == "exact"
    assert choose_index(EXACT_LIMIT) == "exact"
    assert choose_index(EXACT_LIMIT + 1) == "ivf"
    assert choose_index(10 * EXACT_LIMIT, "cuda") == "exact"
    with pytest.raises(ValueError, match="unknown index 'annoy'"):
        find_neighbours(x, 5, index="annoy")
    with pytest.raises(ValueError, match="target_recall"):
        find_neighbours(x, 5, index="ivf", target_recall=1.5)


def test_memory_mapped_features_give_the_same_neighbours(tmp_path: Path) -> None:
    x, _ = _mixture(300, 8, 10)
    np.save(tmp_path / "x.npy", x * 3.0)
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    for backend in BACKEND_NAMES:
        idx, sims = knn_search(mapped, 6, backend=backend, chunk_size=64)
        ref_idx, ref_sims = knn_search(x, 6, backend=backend)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(sims, ref_sims, atol=1e-6)
    assert not mapped.flags.writeable  # read, never normalised in place


def test_knn_recall_by_hand() -> None:
    exact = np.array([[1, 2, 3], [0, 2, 3]])
    assert knn_recall(np.array([[3, 2, 1], [0, 5, 6]]), exact) == pytest.approx(4 / 6)
    with pytest.raises(ValueError, match="same shape"):
        knn_recall(exact[:, :2], exact)
