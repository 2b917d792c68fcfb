"""Choosing the number of clusters on planted clusters, where the right K is known."""

from __future__ import annotations

import numpy as np
import pytest

from smcluster.config import ClusteringConfig
from smcluster.stages.choose_k import (
    CRITERIA,
    DEFAULT_CRITERION,
    SearchInputs,
    candidate_grid,
    choose_n_clusters,
    map_equation,
    neighbour_kappa,
    refine_grid,
)
from smcluster.stages.neighbours import knn_search


def planted(k: int, n: int, dim: int = 48, spread: float = 0.8, seed: int = 0):
    """A Gaussian mixture of ``k`` unit-norm centres; ``spread`` is the noise's total norm."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.permutation(np.arange(n) % k)
    x = centres[labels] + spread * rng.normal(size=(n, dim)) / np.sqrt(dim)
    return x.astype(np.float32), labels


@pytest.fixture(scope="module")
def mixtures() -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = {}
    for k, n in [(10, 2000), (40, 4000)]:
        x, labels = planted(k, n)
        out[k] = (x, knn_search(x, 10)[0], labels)
    return out


@pytest.mark.parametrize("true_k", [10, 40])
def test_default_criterion_finds_the_planted_number_of_clusters(mixtures, true_k) -> None:
    x, neighbours, _ = mixtures[true_k]
    search = choose_n_clusters(
        x, neighbours, candidate_grid(true_k // 4, 4 * true_k), ClusteringConfig(), seed=0
    )
    assert search.criterion == DEFAULT_CRITERION
    assert abs(search.chosen - true_k) <= 0.25 * true_k, search
    assert search.candidates == sorted(search.candidates)
    assert len(search.scores[DEFAULT_CRITERION]) == len(search.candidates)
    assert search.seconds > 0


def test_search_is_deterministic_for_a_seed_and_stays_in_range(mixtures) -> None:
    x, neighbours, _ = mixtures[10]
    grid = candidate_grid(6, 16, 5)
    runs = [
        choose_n_clusters(
            x, neighbours, grid, ClusteringConfig(), seed=3, record=list(CRITERIA), budget_epochs=2
        )
        for _ in range(2)
    ]
    assert runs[0].scores == runs[1].scores
    assert runs[0].chosen == runs[1].chosen
    assert set(runs[0].scores) == set(CRITERIA)
    assert min(runs[0].candidates) >= 6 and max(runs[0].candidates) <= 16
    assert set(grid) <= set(runs[0].candidates)


def test_scores_prefer_the_true_partition_to_merged_and_split_ones(mixtures) -> None:
    x, neighbours, labels = mixtures[10]
    inputs = SearchInputs(x, x[None], neighbours, ClusteringConfig(), 0, 1, 1, 32, 2000)
    merged = labels // 2
    split = labels * 2 + (np.arange(len(labels)) % 2)
    true = map_equation(inputs, labels)
    assert true > map_equation(inputs, merged)
    assert true > map_equation(inputs, split)
    # Agreement with neighbours cannot see a merge: it is perfect either way.
    assert neighbour_kappa(inputs, merged) >= neighbour_kappa(inputs, labels)
    assert neighbour_kappa(inputs, split) < neighbour_kappa(inputs, labels)


def test_grids() -> None:
    assert candidate_grid(50, 2000, 10)[0] == 50 and candidate_grid(50, 2000, 10)[-1] == 2000
    grid = candidate_grid(2, 12, 10)
    assert grid == sorted(set(grid)) and len(grid) <= 11
    assert candidate_grid(7, 7) == [7]
    refined = refine_grid([10, 20, 40], 20, 3)
    assert refined and all(10 < k < 40 and k != 20 for k in refined)


def test_bad_inputs_name_the_problem(mixtures) -> None:
    x, neighbours, _ = mixtures[10]
    config = ClusteringConfig()
    with pytest.raises(ValueError, match="unknown criterion"):
        choose_n_clusters(x, neighbours, [5, 10], config, criterion="elbow")
    with pytest.raises(ValueError, match="no candidate"):
        choose_n_clusters(x, neighbours, [], config)
    with pytest.raises(ValueError, match="at least 2"):
        choose_n_clusters(x, neighbours, [1, 10], config)
    with pytest.raises(ValueError, match="more clusters than"):
        choose_n_clusters(x, neighbours, [5, len(x) + 1], config)
    with pytest.raises(ValueError, match="neighbours must be"):
        choose_n_clusters(x, neighbours[:10], [5, 10], config)
