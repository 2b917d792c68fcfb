"""Choosing the number of clusters on planted clusters, where the right K is known."""

from __future__ import annotations

import numpy as np
import pytest

from smcluster.config import ClusteringConfig
from smcluster.stages.choose_k import (
    AGREEMENTS,
    CLEAR_PROBE,
    CRITERIA,
    DEFAULT_CRITERION,
    UNCLEAR_PROBE,
    KSearch,
    SearchInputs,
    candidate_grid,
    choose_n_clusters,
    coding_score,
    how_sure,
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


# Criteria that do not read the neighbours (issue 14): they are checked on planted mixtures over
# the whole range ``--clusters auto`` searches, with the neighbours left empty of signal.

NO_GRAPH = ["kmeans-probe", "kmeans-coding"]


def _auto_search(x: np.ndarray, criterion: str, seed: int = 0):
    from smcluster.config import cluster_range

    lo, hi = cluster_range("auto", len(x))
    blind = np.zeros((len(x), 1), dtype=np.int64)  # every image's "neighbour" is image 0
    grid = candidate_grid(lo, hi)
    return choose_n_clusters(
        x, blind, grid, ClusteringConfig(), seed=seed, criterion=criterion, peaks=2
    )


@pytest.mark.parametrize("criterion", NO_GRAPH)
def test_graph_free_criteria_find_eight_clusters_over_the_auto_range(criterion) -> None:
    x, _ = planted(8, 1600)
    search = _auto_search(x, criterion)
    assert abs(search.chosen - 8) <= 0.25 * 8, (search.chosen, search.candidates)
    assert search.candidates[-1] == 320


@pytest.mark.parametrize("seed", [0, 1])
def test_probe_finds_forty_small_clusters(seed) -> None:
    """40 clusters of 20 images: the neighbour-free probe still finds them."""
    x, _ = planted(40, 800, seed=seed)
    search = _auto_search(x, "kmeans-probe", seed)
    assert abs(search.chosen - 40) <= 0.25 * 40, (search.chosen, search.candidates)


def test_coding_length_finds_forty_clusters_with_enough_images_each() -> None:
    """The coding length pays about d^2 / 2 numbers per cluster, so it needs clusters of more
    images than 20 (with 20 it stops near 20 of 40, see the limitation test below)."""
    x, _ = planted(40, 4000)
    search = _auto_search(x, "kmeans-coding")
    assert abs(search.chosen - 40) <= 0.25 * 40, (search.chosen, search.candidates)


def test_coding_length_underestimates_forty_clusters_of_twenty() -> None:
    """Recorded limitation: with 20 images per cluster the model cost wins and K comes out low."""
    x, _ = planted(40, 800)
    assert _auto_search(x, "kmeans-coding").chosen < 30


def test_graph_free_criteria_on_data_without_clusters() -> None:
    """A Gaussian blob: the probe's score stays at the reference's (near 0 at every K), and the
    coding length is shortest with the fewest clusters."""
    x = np.random.default_rng(1).normal(size=(1000, 48)).astype(np.float32)
    probe = _auto_search(x, "kmeans-probe")
    assert max(abs(v) for v in probe.scores["kmeans-probe"]) < 0.1, probe.scores
    structured = _auto_search(planted(8, 1600)[0], "kmeans-probe")
    assert max(structured.scores["kmeans-probe"]) > 0.3
    assert _auto_search(x, "kmeans-coding").chosen == 2


def test_coding_length_prefers_the_true_partition() -> None:
    x, labels = planted(10, 2000)
    inputs = SearchInputs(
        x, x[None], np.zeros((len(x), 1), np.int64), ClusteringConfig(), 0, 1, 1, 32, 2000
    )
    true = coding_score(inputs, labels)
    assert true > coding_score(inputs, labels // 2)
    assert true > coding_score(inputs, labels * 2 + (np.arange(len(labels)) % 2))
    ari = AGREEMENTS["ari"]
    assert ari(labels, labels) == pytest.approx(1.0)
    assert abs(ari(labels, np.random.default_rng(0).permutation(labels))) < 0.01


def test_a_large_set_is_searched_on_a_sample_with_its_own_neighbours(mixtures) -> None:
    x, neighbours, _ = mixtures[10]
    grid = candidate_grid(4, 30, 6)
    search = choose_n_clusters(x, neighbours, grid, ClusteringConfig(), seed=0, max_images=500)
    assert search.images == 750  # 25 images per cluster at the largest K, 30
    assert abs(search.chosen - 10) <= 2.5, search
    again = choose_n_clusters(x, neighbours, grid, ClusteringConfig(), seed=0, max_images=500)
    assert again.scores == search.scores
    whole = choose_n_clusters(x, neighbours, grid, ClusteringConfig(), seed=0)
    assert whole.images == len(x) and whole.scores != search.scores


def test_how_sure_reads_the_probe_score_against_the_measured_thresholds() -> None:
    assert how_sure("kmeans-probe", CLEAR_PROBE).startswith("clear")
    assert how_sure("kmeans-probe", UNCLEAR_PROBE - 0.01).startswith("unclear")
    assert how_sure("kmeans-probe", (CLEAR_PROBE + UNCLEAR_PROBE) / 2).startswith("uncertain")
    assert how_sure("scan-nmi", 0.9) is None
    search = KSearch([5, 10, 20], {"kmeans-probe": [0.2, 0.6, 0.3]}, "kmeans-probe", 10, 1.0)
    assert search.to_dict()["reading"].startswith("clear (probe score 0.60")
