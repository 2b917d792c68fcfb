"""Stage 1: the paper's feature model, SimCLR, grouped BatchNorm and a short real training."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from smcluster.config import Config, RunConfig
from smcluster.data import load_dataset
from smcluster.engine import make_fabric, seed_everything
from smcluster.metrics import knn_accuracy
from smcluster.models import build_backbone
from smcluster.stages import features as features_module
from smcluster.stages.features import (
    Encoder,
    PaperFeatureModel,
    SimCLRFeatureModel,
    build_feature_model,
    extract_features,
    fit_normalization,
    grouped_forward,
    mining_features,
    queue_length_for,
    train_features,
)
from smcluster.stages.neighbours import mine_knn


def small_config(**features) -> Config:
    settings = {
        "backbone": "small_cnn",
        "width": 8,
        "projector_hidden": 32,
        "predictor_hidden": 32,
        "out_dim": 16,
        "queue_length": 64,
        "batch_size": 16,
        **features,
    }
    return Config.from_dict({"features": settings}).validate()


def test_grouped_forward_gives_each_group_its_own_batch_statistics() -> None:
    bn = nn.BatchNorm1d(3).train()
    x = torch.randn(8, 3)
    out = grouped_forward(bn, x, group_size=4)
    assert torch.allclose(out[:4], bn(x[:4]), atol=1e-6)
    assert torch.allclose(out[4:], bn(x[4:]), atol=1e-6)
    changed = x.clone()
    changed[4:] += 10.0
    assert torch.allclose(grouped_forward(bn, changed, 4)[:4], out[:4], atol=1e-6)
    assert torch.allclose(grouped_forward(bn, x, 0), bn(x), atol=1e-6)


def test_grouped_forward_returns_rows_in_input_order_after_shuffling() -> None:
    x = torch.arange(12.0).reshape(12, 1)
    order = torch.randperm(12)
    out = grouped_forward(lambda t: t * 2, x, group_size=4, order=order)
    assert torch.equal(out, x * 2)


def test_grouped_forward_never_makes_a_group_smaller_than_asked() -> None:
    sizes: list[int] = []
    grouped_forward(lambda t: sizes.append(len(t)) or t, torch.zeros(65, 2), group_size=32)
    assert sum(sizes) == 65 and min(sizes) >= 32


def test_shuffled_groups_hide_the_batch_from_the_target_network() -> None:
    """An image's online and target outputs see BatchNorm statistics of different images."""
    config = small_config(bn_group_size=4)
    model = build_feature_model(config, channels=1, n_images=256)
    seen: list[torch.Tensor] = []
    model.target.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    view_a, view_b = torch.rand(16, 1, 16, 16), torch.rand(16, 1, 16, 16)
    model(view_a, view_b)
    both = torch.cat([view_a, view_b])
    assert len(seen) == 8
    assert any(not torch.equal(group, both[4 * k : 4 * k + 4]) for k, group in enumerate(seen))


def test_paper_model_trains_only_the_online_branch_and_enqueues_both_views() -> None:
    config = small_config()
    model = build_feature_model(config, channels=1, n_images=256)
    assert isinstance(model, PaperFeatureModel)
    target_before = [p.clone() for p in model.target.parameters()]
    loss, targets = model(torch.rand(16, 1, 16, 16), torch.rand(16, 1, 16, 16))
    loss.backward()
    assert all(p.grad is None for p in model.target.parameters())
    assert all(p.grad is not None for p in model.predictor.parameters())
    with torch.no_grad():
        for p in model.online.parameters():
            p.add_(1.0)
    model.after_step(1, 10, targets)
    assert targets.shape == (32, 16)
    assert torch.allclose(model.queue.vectors[:32], nn.functional.normalize(targets), atol=1e-5)
    after = model.target.parameters()
    assert all(not torch.equal(a, b) for a, b in zip(target_before, after, strict=True))


def eq9_by_hand(online: torch.Tensor, positive: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 9 written out: -log(e^(s+/t) / (e^(s+/t) + sum_Q e^(s-/t))), t = 0.2."""
    on, h, q = (nn.functional.normalize(x, dim=1) for x in (online, positive, queue))
    pos = torch.exp((on * h).sum(dim=1) / 0.2)
    neg = torch.exp(on @ q.T / 0.2).sum(dim=1)
    return -torch.log(pos / (pos + neg)).mean()


def test_paper_loss_pairs_each_online_view_with_the_other_views_target() -> None:
    """Eq. 10: 1/2 L(l_a, h_b, Q) + 1/2 L(l_b, h_a, Q), by hand from the model's parts."""
    model = build_feature_model(small_config(bn_group_size=0), channels=1, n_images=256)
    with torch.no_grad():
        for p in model.target.parameters():
            p.add_(0.3 * torch.randn_like(p))
    view_a, view_b = torch.rand(16, 1, 16, 16), torch.rand(16, 1, 16, 16)
    loss, targets = model(view_a, view_b)
    with torch.no_grad():
        l_a = model.predictor(model.online(view_a))
        l_b = model.predictor(model.online(view_b))
        h_a, h_b = model.target(torch.cat([view_a, view_b])).chunk(2)
        queue = model.queue.vectors
        cross = 0.5 * eq9_by_hand(l_a, h_b, queue) + 0.5 * eq9_by_hand(l_b, h_a, queue)
        own = 0.5 * eq9_by_hand(l_a, h_a, queue) + 0.5 * eq9_by_hand(l_b, h_b, queue)
    assert torch.allclose(targets, torch.cat([h_a, h_b]), atol=1e-4)
    assert abs(float(own) - float(cross)) > 0.05, "the case must tell the pairings apart"
    value = float(loss.detach())
    assert math.isclose(value, float(cross), rel_tol=1e-4), (value, float(cross))


def test_target_network_starts_with_the_fitted_input_statistics(monkeypatch) -> None:
    """The target's first forward pass normalises with the data's statistics, not 0.5/0.25."""
    data = load_dataset("digits").subset(np.arange(64))
    config = small_config(epochs=1)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def spy(module, x, group_size, order=None):
        if isinstance(module, Encoder) and not seen:
            seen.append((module.backbone.normalize.mean.clone(), module.backbone.normalize.std))
        return grouped_forward(module, x, group_size, order)

    monkeypatch.setattr(features_module, "grouped_forward", spy)
    train_features(data, config, make_fabric(RunConfig(threads=1, accelerator="cpu")))
    fitted = build_backbone("small_cnn", data.channels, width=8)
    fit_normalization(fitted, data)
    mean, std = seen[0]
    assert not torch.allclose(fitted.normalize.mean, torch.full_like(mean, 0.5))
    assert torch.allclose(mean, fitted.normalize.mean) and torch.allclose(std, fitted.normalize.std)


@pytest.mark.parametrize(
    ("n_images", "queue", "batch", "expected"),
    [(10_000, 65536, 256, 9744), (1797, 65536, 128, 1669), (1797, 512, 128, 512)],
)
def test_queue_is_capped_at_the_images_minus_one_batch(
    n_images: int, queue: int, batch: int, expected: int
) -> None:
    config = small_config(queue_length=queue, batch_size=batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert queue_length_for(config, n_images) == expected
        model = build_feature_model(config, channels=1, n_images=n_images)
    assert len(model.queue) == expected


@pytest.mark.parametrize(
    ("n_images", "queue", "batch", "expected", "advice"),
    [
        (200, 65536, 256, 1, "features.batch_size to at most 100"),
        (256, 65536, 256, 1, "features.batch_size to at most 128"),
        (300, 65536, 256, 44, "features.batch_size to at most 150"),
        (10_000, 100, 256, 100, "features.queue_length to at least 256"),
    ],
)
def test_a_queue_shorter_than_one_batch_warns_and_names_the_setting(
    n_images: int, queue: int, batch: int, expected: int, advice: str
) -> None:
    """With N at most one batch, training's batch is all N images and the queue holds one."""
    config = small_config(queue_length=queue, batch_size=batch)
    with pytest.warns(UserWarning, match=advice):
        model = build_feature_model(config, channels=1, n_images=n_images)
    assert len(model.queue) == expected


def test_simclr_has_no_queue_to_warn_about() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_feature_model(small_config(model="simclr", batch_size=256), 1, n_images=200)


def test_training_applies_the_cosine_momentum_of_eq_8_at_every_step(monkeypatch) -> None:
    """Each step: target <- m target + (1 - m) online, m = 1 - (1 - base)(cos(pi n/N) + 1)/2."""
    data = load_dataset("digits").subset(np.arange(64))
    config = small_config(epochs=2, momentum_base=0.9)
    updates: list[tuple[float, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]] = []
    real_update = features_module.ema_update

    def spy(target: nn.Module, online: nn.Module, momentum: float) -> None:
        before = [p.clone() for p in target.parameters()]
        now = [p.detach().clone() for p in online.parameters()]
        real_update(target, online, momentum)
        updates.append((momentum, before, now, [p.clone() for p in target.parameters()]))

    monkeypatch.setattr(features_module, "ema_update", spy)
    train_features(data, config, make_fabric(RunConfig(threads=1, accelerator="cpu")))
    total = 2 * (64 // 16)
    assert len(updates) == total
    expected = [1 - 0.1 * (math.cos(math.pi * n / total) + 1) / 2 for n in range(1, total + 1)]
    assert [m for m, *_ in updates] == pytest.approx(expected, abs=1e-12)
    assert 0.9 < updates[0][0] < 0.91 and updates[-1][0] == pytest.approx(1.0)
    for m, before, online, after in updates[:3]:
        assert any(not torch.equal(b, o) for b, o in zip(before, online, strict=True))
        for b, o, a in zip(before, online, after, strict=True):
            assert torch.allclose(a, m * b + (1 - m) * o, rtol=1e-6, atol=1e-7)


def test_projector_out_bn_centres_each_batch() -> None:
    config = small_config(projector_out_bn=True)
    model = build_feature_model(config, channels=1, n_images=256).train()
    out = model.online(torch.rand(32, 1, 16, 16))
    assert torch.allclose(out.mean(0), torch.zeros(16), atol=1e-5)
    plain = build_feature_model(small_config(), channels=1, n_images=256).train()
    assert not torch.allclose(plain.online(torch.rand(32, 1, 16, 16)).mean(0), torch.zeros(16))


def test_simclr_model_has_no_target_or_queue() -> None:
    model = build_feature_model(small_config(model="simclr"), channels=1, n_images=256)
    assert isinstance(model, SimCLRFeatureModel)
    loss, targets = model(torch.rand(8, 1, 16, 16), torch.rand(8, 1, 16, 16))
    assert targets is None and loss.ndim == 0
    assert not hasattr(model, "target")


@pytest.mark.parametrize("name", ["paper", "simclr"])
def test_training_on_digits_lowers_the_loss_and_beats_its_starting_network(name: str) -> None:
    """A few epochs on 600 real digits: the loss falls and kNN accuracy rises over init.

    "Init" is the very network training starts from (same seed, fitted input statistics): an
    untrained network's kNN accuracy depends on its initialisation (0.61-0.70 at seeds 0-2),
    and so does the trained one's (paper model 0.72-0.84), so only the paired gain is stable
    (paper 0.11-0.17 at seeds 0-2, SimCLR 0.20-0.27 at 0-1; losses fall by 0.37-0.66). Eq. 8's
    schedule is pinned exactly by ``test_training_applies_the_cosine_momentum_of_eq_8...``.
    """
    data = load_dataset("digits").subset(np.arange(600))
    labels = np.asarray(data.labels)
    config = Config.from_dict(
        {
            "features": {
                "model": name,
                "backbone": "small_cnn",
                "width": 16,
                "projector_hidden": 128,
                "predictor_hidden": 128,
                "out_dim": 32,
                "projector_out_bn": True,
                "queue_length": 512,
                "batch_size": 64,
                "epochs": 8,
                "warmup_epochs": 1,
            },
            "augment": {"crop_scale": [0.5, 1.0], "max_magnitude": 5.0, "flip": False},
            "run": {"threads": 2, "progress": False},
        }
    ).validate()
    fabric = make_fabric(RunConfig(threads=2, accelerator="cpu"))
    losses: list[float] = []

    def knn_acc(model: nn.Module) -> float:
        features = extract_features(mining_features(model.online, config), data, config, fabric)
        return knn_accuracy(mine_knn(features.numpy(), 10), labels)

    seed_everything(config.run.seed)  # as train_features does: the network it starts from
    start = build_feature_model(config, data.channels, len(data), data)
    trained = train_features(
        data, config, fabric, on_epoch_end=lambda e, m, o, r: losses.append(r["loss"])
    )
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.1, losses
    before, after = knn_acc(start), knn_acc(trained)
    assert after > before + 0.05, (before, after)
