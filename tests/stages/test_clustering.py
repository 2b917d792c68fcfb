"""Stage 3: SCAN training of several heads, head scoring and selection."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from smcluster.config import ClusteringConfig
from smcluster.data.embeddings import load_embeddings
from smcluster.metrics import cluster_accuracy
from smcluster.models import ClusterHeads
from smcluster.stages.clustering import (
    ClusteringModel,
    embedding_fetch,
    embedding_mean,
    head_loss,
    head_probabilities,
    score_heads,
    select_head,
    selected_heads,
    self_label_on_embeddings,
    stage3_optimizer,
    stage3_schedule,
    train_heads_on_embeddings,
    train_scan,
)
from smcluster.stages.neighbours import find_neighbours, mine_knn, neighbour_purity


def blobs(n_per: int = 60, clusters: int = 6, dim: int = 16, seed: int = 0, scale: float = 4.0):
    """Gaussian blobs whose kNN neighbours are (nearly) all of their own blob."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * scale
    labels = np.repeat(np.arange(clusters), n_per)
    x = centres[labels] + rng.normal(size=(len(labels), dim))
    return x.astype(np.float32), labels


def test_scan_training_recovers_blobs_from_their_neighbours_alone() -> None:
    x, labels = blobs()
    neighbours = torch.from_numpy(mine_knn(x, 5))
    views = torch.from_numpy(x)[None]
    heads = ClusterHeads(x.shape[1], 6, n_heads=3)
    config = ClusteringConfig(batch_size=120, heads=3)
    losses: list[float] = []
    train_scan(
        ClusteringModel(nn.Identity(), heads),
        embedding_fetch(views, torch.device("cpu")),
        neighbours,
        config,
        lr=1e-2,
        epochs=40,
        seed=0,
        on_epoch_end=lambda e, m, o, r: losses.append(r["loss"]),
        progress=False,
    )
    assert losses[-1] < losses[0] - 0.5
    scores = score_heads(heads, views[0], neighbours, config.entropy_weight, labels)
    best = select_head(heads, scores)
    assert int(heads.best_head) == best
    predicted = head_probabilities(heads, views[0], best).argmax(1).numpy()
    assert cluster_accuracy(labels, predicted) > 0.9


def test_head_loss_matches_a_hand_computed_case() -> None:
    p = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9]])
    neighbours = torch.tensor([[1], [0], [0]])
    out = head_loss(p, neighbours, entropy_weight=2.0)
    dots = np.array([0.9 * 0.8 + 0.1 * 0.2, 0.8 * 0.9 + 0.2 * 0.1, 0.1 * 0.9 + 0.9 * 0.1])
    consistency = -np.log(dots).mean()
    mean = np.array([0.6, 0.4])
    spread = -(mean * np.log(mean)).sum()
    assert np.isclose(out["consistency"], consistency, atol=1e-5)
    assert np.isclose(out["entropy"], spread, atol=1e-5)
    assert np.isclose(out["total"], consistency - 2.0 * spread, atol=1e-5)


def test_select_head_keeps_the_lowest_total_loss_and_records_it() -> None:
    heads = ClusterHeads(4, 3, n_heads=4)
    scores = [{"total": t} for t in (0.5, -1.0, 0.2, -0.3)]
    assert select_head(heads, scores) == 1
    assert int(heads.best_head) == 1
    x = torch.randn(5, 4)
    assert torch.allclose(heads.predict_logits(x), heads.head(1)(x))


def test_embedding_mean_and_shifted_fetch_centre_the_stored_views() -> None:
    views = torch.randn(3, 50, 4) + torch.tensor([5.0, -2.0, 0.0, 1.0])
    mean = embedding_mean(views.half(), chunk=7)
    assert torch.allclose(mean, views.half().float().mean(dim=(0, 1)), atol=1e-4)
    fetched = embedding_fetch(views, torch.device("cpu"), mean)(torch.arange(50))
    assert fetched.shape == (50, 4)
    assert fetched.mean(0).abs().max() < 1.0


def test_centred_training_recovers_blobs_sharing_a_large_offset() -> None:
    """ReLU-like features: a big shared offset; heads trained centred, read raw afterwards."""
    x, labels = blobs(dim=16)
    x = x + 40.0
    neighbours = torch.from_numpy(mine_knn(x - x.mean(0), 5))
    views = torch.from_numpy(x)[None]
    config = ClusteringConfig(batch_size=120, heads=3, frozen_lr=1e-2)
    heads = ClusterHeads(16, 6, n_heads=3)
    train_heads_on_embeddings(heads, views, neighbours, config, epochs=40, seed=0, progress=False)
    best = select_head(heads, score_heads(heads, views[0], neighbours, config.entropy_weight))
    predicted = head_probabilities(heads, views[0], best).argmax(1).numpy()
    assert cluster_accuracy(labels, predicted) > 0.9


def test_heads_on_small_features_become_confident_with_more_clusters_than_the_batch() -> None:
    # Features of norm ~0.5 and 300 clusters: Adam with the decay added to the gradient kept
    # these heads near uniform (ACC 0.04); decoupled decay lets them separate the blobs.
    x, labels = blobs(n_per=10, clusters=300, dim=32, seed=0, scale=2.0)
    x = x * 0.05
    neighbours = torch.from_numpy(mine_knn(x, 5))
    heads = ClusterHeads(32, 300, n_heads=1)
    config = ClusteringConfig(batch_size=128, heads=1, weight_decay=1e-4)
    train_heads_on_embeddings(
        heads, torch.from_numpy(x)[None], neighbours, config, epochs=15, seed=0, progress=False
    )
    p = head_probabilities(heads, torch.from_numpy(x), 0)
    assert cluster_accuracy(labels, p.argmax(1).numpy()) > 0.6
    assert p.max(1).values.mean() > 0.2


def test_stage3_schedule_sizes_the_batch_by_clusters_and_lengthens_short_runs() -> None:
    best = ClusteringConfig(epochs=20, batch_size=512, batch_per_cluster=2.0, min_steps=1600)
    many = stage3_schedule(best, 19_280, 964)  # Omniglot-964: 2K images, 4x the epochs at most
    assert (many.batch_size, many.epochs) == (1928, 80)
    small = stage3_schedule(replace(best, epochs=60), 4000, 200)  # 7 steps an epoch
    assert (small.batch_size, small.epochs) == (512, 229)
    assert stage3_schedule(replace(best, epochs=40), 10_000, 10).epochs == 85
    big = stage3_schedule(replace(best, epochs=5), 10**6, 1000)  # 500 steps an epoch: enough
    assert (big.batch_size, big.epochs) == (2000, 5)
    scan = ClusteringConfig(epochs=20, batch_size=512)
    assert stage3_schedule(scan, 19_280, 964) is scan


def test_a_batch_of_twice_the_clusters_beats_a_batch_below_them_on_the_same_images() -> None:
    """stage3_schedule's batch rule: 300 clusters of 10 points, 60 epochs either way."""
    x, labels = blobs(n_per=10, clusters=300, dim=32, seed=0, scale=1.0)
    neighbours = torch.from_numpy(mine_knn(x, 5))
    accuracy = {}
    for rule in (0.0, 2.0):
        config = ClusteringConfig(
            epochs=60, batch_size=128, heads=1, frozen_lr=3e-2, batch_per_cluster=rule
        )
        config = stage3_schedule(config, len(x), 300)
        assert (config.batch_size, config.epochs) == (128 if rule == 0 else 600, 60)
        torch.manual_seed(0)
        heads = ClusterHeads(32, 300, n_heads=1)
        views = torch.from_numpy(x)[None]
        train_heads_on_embeddings(
            heads, views, neighbours, config, epochs=config.epochs, seed=0, progress=False
        )
        predicted = head_probabilities(heads, views[0], 0).argmax(1).numpy()
        accuracy[rule] = cluster_accuracy(labels, predicted)
    assert accuracy[2.0] > accuracy[0.0] + 0.1


def test_stage3_optimizer_decays_weights_apart_from_the_gradient() -> None:
    w = nn.Parameter(torch.ones(3))
    optimizer = stage3_optimizer([w], lr=0.1, weight_decay=0.5)
    w.grad = torch.zeros(3)
    optimizer.step()
    # Decoupled: w * (1 - lr * wd). Adam with the decay in the gradient would step by lr (0.9).
    assert torch.allclose(w.detach(), torch.full((3,), 0.95))


def warm_head_on_overlapping_blobs():
    """A SCAN head after a short warm-up on close blobs sharing a large offset: right on most
    images but confident on few, where self-labelling has something to do."""
    x, labels = blobs(n_per=60, clusters=6, dim=16, seed=1, scale=1.2)
    x = x + 20.0
    views = torch.from_numpy(x)[None]
    neighbours = torch.from_numpy(mine_knn(x - x.mean(0), 5))
    torch.manual_seed(0)
    heads = ClusterHeads(16, 6, n_heads=1)
    config = ClusteringConfig(batch_size=120, heads=1)
    train_heads_on_embeddings(heads, views, neighbours, config, epochs=5, seed=0, progress=False)
    return heads.head(0), views, labels


def test_self_label_on_embeddings_keeps_the_head_reading_raw_features() -> None:
    head, views, _ = warm_head_on_overlapping_blobs()
    before = head(views[0]).detach()
    config = ClusteringConfig(batch_size=120, self_label_epochs=0)
    self_label_on_embeddings(head, views, views, config, seed=0, progress=False)
    assert torch.allclose(head(views[0]), before, atol=1e-4)


def test_self_label_on_frozen_features_grows_the_confident_set() -> None:
    # The frozen path must train at its own rate: at the backbone's (self_label_lr 1e-4) the
    # confident share went only from 0.08 to 0.09 in 10 epochs (0.11 -> 0.44 at 1e-2).
    head, views, labels = warm_head_on_overlapping_blobs()
    acc_before = cluster_accuracy(labels, head(views[0]).argmax(1).numpy())
    strong = views + 0.5 * torch.randn(
        (4, *views.shape[1:]), generator=torch.Generator().manual_seed(0)
    )
    config = ClusteringConfig(
        batch_size=120,
        self_label_epochs=10,
        self_label_threshold=0.9,
        self_label_lr=1e-4,
        frozen_self_label_lr=1e-2,
    )
    records: list[dict[str, float]] = []
    self_label_on_embeddings(
        head,
        views,
        strong,
        config,
        seed=0,
        on_epoch_end=lambda e, m, o, r: records.append(r),
        progress=False,
    )
    assert records[-1]["confident"] > records[0]["confident"] + 0.2
    assert records[-1]["loss"] < records[0]["loss"]
    # Confident on more images without losing the clusters it had (accuracy moved by
    # -0.05 to +0.01 over four seeds of this set-up; self-labelling need not raise it).
    predicted = head(views[0]).argmax(1).numpy()
    assert cluster_accuracy(labels, predicted) > acc_before - 0.1


def test_score_heads_in_chunks_matches_the_whole_probability_matrix() -> None:
    x, labels = blobs(n_per=30, clusters=5, dim=8, seed=2)
    neighbours = torch.from_numpy(mine_knn(x, 4))
    heads = ClusterHeads(8, 5, n_heads=3)
    emb = torch.from_numpy(x)
    # A budget of 7 anchors per chunk: many chunks, one ending short of the others.
    chunked = score_heads(heads, emb, neighbours, 5.0, labels, budget=7 * 5 * 3 * 5)
    for h, score in enumerate(chunked):
        whole = head_loss(head_probabilities(heads, emb, h), neighbours, 5.0)
        for key in ("total", "consistency", "entropy"):
            assert score[key] == pytest.approx(whole[key], abs=1e-5)
        predicted = head_probabilities(heads, emb, h).argmax(1).numpy()
        assert score["acc"] == cluster_accuracy(labels, predicted)
    # One sampled neighbour per image: an estimate of the same consistency.
    sampled = score_heads(heads, emb, neighbours, 5.0, sample=1, seed=3)
    assert sampled != chunked
    for score, full in zip(sampled, chunked, strict=True):
        assert score["consistency"] == pytest.approx(full["consistency"], rel=0.05)
        assert score["entropy"] == pytest.approx(full["entropy"], abs=1e-6)


def test_heads_on_a_memory_mapped_store_match_the_in_memory_tensor(tmp_path) -> None:
    x, labels = blobs(n_per=40, clusters=4, dim=8, seed=4)
    views = np.stack([x, x + 0.1 * np.random.default_rng(0).normal(size=x.shape)])
    np.save(tmp_path / "views.npy", views.astype(np.float32))
    mapped = np.load(tmp_path / "views.npy", mmap_mode="r")
    neighbours = torch.from_numpy(mine_knn(x, 5))
    config = ClusteringConfig(batch_size=40, heads=2)
    trained = []
    for store in (torch.from_numpy(views.astype(np.float32)), mapped):
        torch.manual_seed(0)
        heads = ClusterHeads(8, 4, n_heads=2)
        train_heads_on_embeddings(
            heads, store, neighbours, config, epochs=3, seed=0, progress=False
        )
        trained.append(heads)
    torch.testing.assert_close(trained[0].weight, trained[1].weight)
    torch.testing.assert_close(trained[0].bias, trained[1].bias)
    assert torch.allclose(embedding_mean(mapped), embedding_mean(torch.from_numpy(views)))
    tensor_scores = score_heads(trained[0], torch.from_numpy(x), neighbours, 5.0, labels)
    mapped_scores = score_heads(trained[1], mapped[0], neighbours, 5.0, labels)
    for in_memory, mapped_score in zip(tensor_scores, mapped_scores, strict=True):
        assert in_memory == pytest.approx(mapped_score)
    out = np.lib.format.open_memmap(tmp_path / "p.npy", mode="w+", dtype=np.float32, shape=(160, 4))
    written = head_probabilities(trained[1], mapped[0], 1, chunk=33, out=out)
    assert written is out
    np.testing.assert_allclose(out, head_probabilities(trained[0], torch.from_numpy(x), 1).numpy())
    # One N x E view works as V = 1.
    fetched = embedding_fetch(mapped[0], torch.device("cpu"))(torch.tensor([3, 1]))
    np.testing.assert_array_equal(fetched.numpy(), x[[3, 1]])


def test_stages_2_and_3_on_precomputed_embeddings_recover_planted_clusters(tmp_path) -> None:
    """Precomputed embeddings without images: a memory-mapped .npy, kNN, heads, selection."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(20, 32))
    labels = rng.integers(0, 20, size=2000)
    x = centres[labels] + 1.25 * rng.normal(size=(2000, 32)) * np.linalg.norm(centres, axis=1)[
        labels, None
    ] / np.sqrt(32)
    np.save(tmp_path / "emb.npy", x.astype(np.float32))
    emb = load_embeddings(tmp_path / "emb.npy")
    assert emb.memory_mapped
    found = find_neighbours(emb.vectors, 10, index="auto")
    assert found.index == "exact" and neighbour_purity(found.indices, labels) > 0.75
    neighbours = torch.from_numpy(found.indices)
    config = ClusteringConfig(batch_size=256, heads=3)
    heads = ClusterHeads(32, 20, n_heads=3)
    losses: list[float] = []
    train_heads_on_embeddings(
        heads,
        emb.vectors,
        neighbours,
        config,
        epochs=30,
        seed=0,
        progress=False,
        on_epoch_end=lambda e, m, o, r: losses.append(r["loss"]),
    )
    assert losses[-1] < losses[0] - 0.5
    scores = score_heads(heads, emb.vectors, neighbours, config.entropy_weight, labels)
    best = select_head(heads, scores)
    predicted = head_probabilities(heads, emb.vectors, best).argmax(1).numpy()
    # Measured 0.96 with neighbour purity 0.87; chance is about 0.05 for 20 clusters.
    assert cluster_accuracy(labels, predicted) > 0.85
    assert scores[best]["acc"] == cluster_accuracy(labels, predicted)


def heads_giving(probabilities: list[list[list[float]]]) -> tuple[ClusterHeads, torch.Tensor]:
    """Heads whose soft assignments are exactly ``probabilities`` (H x N x C): each image's
    input is the log-probabilities of every head side by side, and head h reads its block."""
    p = torch.tensor(probabilities)
    h, n, c = p.shape
    heads = ClusterHeads(h * c, c, h)
    with torch.no_grad():
        heads.weight.zero_()
        heads.bias.zero_()
        for i in range(h):
            heads.weight[i, :, i * c : (i + 1) * c] = torch.eye(c)
    return heads, p.log().permute(1, 0, 2).reshape(n, h * c)


PAIRS = torch.tensor([[1], [0], [3], [2]])  # images 0 and 1 are neighbours, and 2 and 3


def test_head_selection_criteria_pick_the_expected_heads_on_hand_made_probabilities() -> None:
    """Head 0 splits the pairs apart softly (its neighbours agree), head 1 is confident but
    cuts every pair, head 2 lies between the two partitions (it agrees most with the others)."""
    heads, x = heads_giving(
        [
            [[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.4, 0.6]],
            [[0.99, 0.01], [0.01, 0.99], [0.99, 0.01], [0.01, 0.99]],
            [[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.1, 0.9]],
        ]
    )
    scores = score_heads(heads, x, PAIRS, 5.0)
    assert [s["agreement"] for s in scores] == pytest.approx([1.0, 0.0, 0.5])
    assert [s["confidence"] for s in scores] == pytest.approx([0.6, 0.99, 0.9])
    consensus = [s["consensus"] for s in scores]
    assert consensus[0] == pytest.approx(consensus[1]) and consensus[2] == pytest.approx(
        2 * consensus[0]
    )
    picks = {"loss": 0, "agreement": 0, "confidence": 1, "consensus": 2}
    assert selected_heads(scores) == picks
    for criterion, head in picks.items():
        assert select_head(heads, scores, criterion) == head == int(heads.best_head)


def test_neighbour_agreement_can_overrule_the_lowest_loss() -> None:
    """Head 1's confident first pair gives it the lower SCAN loss although its second pair is
    split; head 0 keeps both pairs together."""
    heads, x = heads_giving(
        [
            [[0.51, 0.49], [0.51, 0.49], [0.49, 0.51], [0.49, 0.51]],
            [[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.55, 0.45]],
        ]
    )
    scores = score_heads(heads, x, PAIRS, 5.0)
    assert scores[1]["total"] < scores[0]["total"]
    assert selected_heads(scores)["loss"] == 1 and selected_heads(scores)["agreement"] == 0
