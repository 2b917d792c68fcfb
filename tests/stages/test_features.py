"""Stage 1: the paper's feature model, SimCLR, grouped BatchNorm and a short real training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from smcluster.config import Config, RunConfig
from smcluster.data import load_dataset
from smcluster.engine import make_fabric
from smcluster.metrics import knn_accuracy
from smcluster.stages.features import (
    PaperFeatureModel,
    SimCLRFeatureModel,
    build_feature_model,
    extract_features,
    grouped_forward,
    mining_features,
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
def test_training_on_digits_lowers_the_loss_and_beats_an_untrained_network(name: str) -> None:
    """A few epochs on 600 real digits: the loss falls and kNN accuracy rises over init."""
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

    untrained = build_feature_model(config, data.channels, len(data))
    trained = train_features(
        data, config, fabric, on_epoch_end=lambda e, m, o, r: losses.append(r["loss"])
    )
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.05
    before, after = knn_acc(untrained), knn_acc(trained)
    assert after > before + 0.05, (before, after)
    assert after > 0.5
