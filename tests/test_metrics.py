"""Metrics against small tables worked out by hand (METHOD.md, Evaluation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from smcluster.metrics import (
    cluster_accuracy,
    contingency,
    evaluate,
    hungarian_match,
    knn_accuracy,
    many_to_one_accuracy,
    many_to_one_labels,
    matched_confusion,
    weighted_precision_recall_f,
)

# Example A: 7 images, 3 classes, 2 clusters (fewer clusters than classes).
#   cluster 0 holds classes [0, 0, 0]     size 3, majority 0 (3 of the 4 images of class 0)
#   cluster 1 holds classes [0, 1, 1, 2]  size 4, majority 1 (2 of the 2 images of class 1)
#   p = (1, 1/2), r = (3/4, 1), F = (6/7, 2/3)
#   P = 3/7 * 1 + 4/7 * 1/2 = 5/7
#   R = 3/7 * 3/4 + 4/7 * 1 = 25/28
#   F = 3/7 * 6/7 + 4/7 * 2/3 = 110/147
#   ACC: cluster 0 -> class 0 (3), cluster 1 -> class 1 (2): 5/7
A_TRUE = np.array([0, 0, 0, 0, 1, 1, 2])
A_PRED = np.array([0, 0, 0, 1, 1, 1, 1])

# Example B: 7 images, 2 classes (sizes 4 and 3), 3 clusters (more clusters than classes).
#   cluster 0: [0, 0]     size 2, majority 0: p = 1,   r = 2/4, F = 2/3
#   cluster 1: [0, 1]     size 2, tie -> class 0: p = 1/2, r = 1/4, F = 1/3
#   cluster 2: [0, 1, 1]  size 3, majority 1: p = 2/3, r = 2/3, F = 2/3
#   P = (2 + 1 + 2) / 7 = 5/7
#   R = 2/7 * 1/2 + 2/7 * 1/4 + 3/7 * 2/3 = 1/7 + 1/14 + 2/7 = 1/2
#   F = 2/7 * 2/3 + 2/7 * 1/3 + 3/7 * 2/3 = 4/21 + 2/21 + 6/21 = 4/7
#   ACC: cluster 0 -> 0 (2), cluster 2 -> 1 (2), cluster 1 unmatched: 4/7
B_TRUE = np.array([0, 0, 0, 0, 1, 1, 1])
B_PRED = np.array([0, 0, 1, 2, 2, 2, 1])


def test_contingency_by_hand() -> None:
    np.testing.assert_array_equal(contingency(A_TRUE, A_PRED), [[3, 0, 0], [1, 2, 1]])
    np.testing.assert_array_equal(contingency(B_TRUE, B_PRED), [[2, 0], [1, 1], [1, 2]])


def test_weighted_prf_example_a() -> None:
    p, r, f = weighted_precision_recall_f(A_TRUE, A_PRED)
    assert p == pytest.approx(5 / 7)
    assert r == pytest.approx(25 / 28)
    assert f == pytest.approx(110 / 147)


def test_weighted_prf_example_b_more_clusters_than_classes() -> None:
    p, r, f = weighted_precision_recall_f(B_TRUE, B_PRED)
    assert p == pytest.approx(5 / 7)
    assert r == pytest.approx(1 / 2)
    assert f == pytest.approx(4 / 7)
    assert cluster_accuracy(B_TRUE, B_PRED) == pytest.approx(4 / 7)


def test_accuracy_and_match_by_hand() -> None:
    assert cluster_accuracy(A_TRUE, A_PRED) == pytest.approx(5 / 7)
    assert hungarian_match(A_TRUE, A_PRED) == {0: 0, 1: 1}
    # Arbitrary, non-contiguous cluster ids map the same way.
    assert hungarian_match(A_TRUE, np.where(A_PRED == 0, 5, 9)) == {5: 0, 9: 1}


def test_accuracy_invariant_to_relabelling_clusters() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 6, size=300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 6, size=300))
    perm = rng.permutation(6)
    base = evaluate(y_true, y_pred)
    relabelled = evaluate(y_true, perm[y_pred])
    for key, value in base.items():
        assert relabelled[key] == pytest.approx(value), key
    assert 0.6 < base["acc"] < 1.0


def test_perfect_permuted_clustering() -> None:
    y_true = np.repeat(np.arange(5), 4)
    y_pred = np.array([3, 0, 4, 1, 2])[y_true]
    scores = evaluate(y_true, y_pred)
    assert scores == pytest.approx(dict.fromkeys(scores, 1.0))
    np.testing.assert_array_equal(matched_confusion(y_true, y_pred), 4 * np.eye(5, dtype=int))


def test_more_clusters_than_classes_counts_unmatched_as_wrong() -> None:
    # Each class split in two equal clusters: only one half per class can be matched.
    y_true = np.repeat([0, 1], 4)
    y_pred = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    assert cluster_accuracy(y_true, y_pred) == pytest.approx(0.5)
    mapping = hungarian_match(y_true, y_pred)
    assert len(mapping) == 2 and sorted(mapping.values()) == [0, 1]
    # Pure clusters: precision 1, each cluster recalls half its class.
    assert weighted_precision_recall_f(y_true, y_pred) == pytest.approx((1.0, 0.5, 2 / 3))


def test_matched_confusion_by_hand() -> None:
    m = matched_confusion(A_TRUE, A_PRED)
    # Columns: cluster matched to class 0, to class 1, none matched to class 2.
    np.testing.assert_array_equal(m, [[3, 1, 0], [0, 2, 0], [0, 1, 0]])
    assert np.trace(m) / A_TRUE.size == pytest.approx(cluster_accuracy(A_TRUE, A_PRED))
    m = matched_confusion(B_TRUE, B_PRED)
    # Cluster 1 is matched to no class, so its images (one of each class) are left out.
    np.testing.assert_array_equal(m, [[2, 1], [0, 2]])


def test_evaluate_keys_and_sklearn_scores() -> None:
    scores = evaluate(A_TRUE, A_PRED)
    assert list(scores) == [
        "acc",
        "nmi",
        "ari",
        "weighted_precision",
        "weighted_recall",
        "weighted_f",
        "acc_many_to_one",
        "nmi_many_to_one",
    ]
    assert all(isinstance(v, float) for v in scores.values())
    assert scores["nmi"] == pytest.approx(normalized_mutual_info_score(A_TRUE, A_PRED))
    assert scores["ari"] == pytest.approx(adjusted_rand_score(A_TRUE, A_PRED))
    assert scores["weighted_f"] == pytest.approx(110 / 147)


def test_many_to_one_by_hand() -> None:
    # A: cluster 0 -> class 0 (3 of 3), cluster 1 -> class 1 (2 of 4): 5/7, as ACC.
    np.testing.assert_array_equal(many_to_one_labels(A_TRUE, A_PRED), [0, 0, 0, 1, 1, 1, 1])
    assert many_to_one_accuracy(A_TRUE, A_PRED) == pytest.approx(5 / 7)
    # B: cluster 1 holds one image of each class, a tie that goes to class 0; cluster 2 -> 1.
    np.testing.assert_array_equal(many_to_one_labels(B_TRUE, B_PRED), [0, 0, 0, 1, 1, 1, 0])
    assert many_to_one_accuracy(B_TRUE, B_PRED) == pytest.approx(5 / 7)
    # Over-clustering: every class split in two pure clusters. One-to-one ACC counts half of
    # them wrong; many-to-one maps both halves to their class.
    y_true = np.repeat([0, 1], 4)
    y_pred = np.array([0, 0, 7, 7, 2, 2, 5, 5])
    np.testing.assert_array_equal(many_to_one_labels(y_true, y_pred), y_true)
    scores = evaluate(y_true, y_pred)
    assert scores["acc"] == pytest.approx(0.5)
    assert scores["acc_many_to_one"] == pytest.approx(1.0)
    assert scores["nmi_many_to_one"] == pytest.approx(1.0)
    assert scores["nmi"] < 1.0
    assert scores["acc_many_to_one"] == pytest.approx(scores["weighted_precision"])


def test_many_to_one_keys_only_when_the_counts_differ() -> None:
    y_true = np.repeat(np.arange(3), 3)
    assert "acc_many_to_one" not in evaluate(y_true, np.roll(y_true, 1))
    assert "acc_many_to_one" in evaluate(y_true, np.arange(9) % 4)


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="same length"):
        evaluate(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="empty"):
        cluster_accuracy(np.array([], dtype=int), np.array([], dtype=int))
    with pytest.raises(ValueError, match="integer"):
        evaluate(np.array([0.5, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="1-D"):
        evaluate(np.zeros((2, 2), dtype=int), np.zeros((2, 2), dtype=int))


def test_knn_accuracy_planted_ties_go_to_nearest() -> None:
    labels = np.array([0, 0, 0, 1, 1, 2])
    neighbours = np.array(
        [
            [1, 3],  # labels 0, 1: tie -> nearest 0, right
            [3, 0],  # labels 1, 0: tie -> nearest 1, wrong
            [0, 1],  # 0, 0 -> 0, right
            [4, 5],  # 1, 2: tie -> 1, right
            [5, 3],  # 2, 1: tie -> 2, wrong
            [3, 4],  # 1, 1 -> 1, wrong (label 2)
        ]
    )
    assert knn_accuracy(neighbours, labels) == pytest.approx(3 / 6)


def test_knn_accuracy_majority_beats_nearest() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    neighbours = np.array(
        [
            [3, 1, 2],  # 1, 0, 0 -> 0, right
            [3, 4, 0],  # 1, 1, 0 -> 1, wrong
            [0, 1, 3],  # 0, 0, 1 -> 0, right
            [0, 1, 4],  # 0, 0, 1 -> 0, wrong
            [0, 3, 2],  # 0, 1, 0 -> 0, wrong
        ]
    )
    # Voting for the nearest alone would score 1/5 (only row 2).
    assert knn_accuracy(neighbours, labels) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="anchor itself"):
        knn_accuracy(np.array([[0], [0]]), np.array([0, 1]))


def test_metrics_on_real_labels(shared_data: Path) -> None:
    with np.load(shared_data / "mnist.npz", allow_pickle=False) as data:
        y = data["labels"]
    rng = np.random.default_rng(0)
    noisy = np.where(rng.random(y.size) < 0.8, y, rng.integers(0, 10, size=y.size))
    scores = evaluate(y, (noisy + 3) % 10)
    # 80% kept plus 1/10 of the 20% redrawn land on the right digit: ACC about 0.82.
    assert scores["acc"] == pytest.approx(0.82, abs=0.01)
    assert scores["weighted_precision"] == pytest.approx(scores["acc"], abs=0.01)
    assert 0.0 < scores["ari"] < scores["acc"]


def test_evaluate_adds_neighbour_diagnostics() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    neighbours = np.array([[1, 3], [0, 2], [1, 0], [4, 5], [3, 0], [4, 3]])
    scores = evaluate(labels, labels, neighbours)
    assert scores["acc"] == 1.0
    assert scores["neighbour_purity"] == pytest.approx(10 / 12)
    assert scores["knn_accuracy"] == pytest.approx(1.0)
