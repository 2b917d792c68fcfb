"""Backbones and heads: shapes, grey/RGB input, the recorded winning head."""

import pytest
import torch

from smcluster.models import BACKBONES, ClusterHeads, build_backbone


@pytest.mark.parametrize("name", sorted(BACKBONES))
@pytest.mark.parametrize("channels", [1, 3])
def test_backbones_give_vectors_of_out_dim(name: str, channels: int) -> None:
    net = build_backbone(name, channels, width=8, small_stem=True).eval()
    out = net(torch.rand(2, channels, 32, 32))
    assert out.shape == (2, net.out_dim)


def test_imagenet_stem_downsamples_and_small_stem_does_not() -> None:
    small = build_backbone("resnet18", 3, small_stem=True).trunk
    large = build_backbone("resnet18", 3, small_stem=False).trunk
    assert small.conv1.stride == (1, 1) and isinstance(small.maxpool, torch.nn.Identity)
    assert large.conv1.stride == (2, 2)


def test_normalization_is_fitted_and_saved() -> None:
    net = build_backbone("small_cnn", 1, width=8)
    images = torch.rand(64, 1, 16, 16) * 0.5
    net.normalize.fit(images)
    normalised = net.normalize(images)
    assert abs(float(normalised.mean())) < 1e-4
    assert abs(float(normalised.std()) - 1.0) < 0.05
    assert "normalize.mean" in net.state_dict()


def test_unknown_backbone_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'vgg'"):
        build_backbone("vgg", 3)


def test_cluster_heads_shapes_and_kept_head() -> None:
    heads = ClusterHeads(in_dim=5, n_clusters=4, n_heads=3)
    x = torch.randn(7, 5)
    logits = heads(x)
    assert logits.shape == (3, 7, 4)
    heads.select(2)
    assert torch.allclose(heads.predict_logits(x), logits[2], atol=1e-6)
    assert int(heads.state_dict()["best_head"]) == 2


def test_head_copy_round_trips() -> None:
    heads = ClusterHeads(in_dim=5, n_clusters=4, n_heads=2)
    layer = heads.head(1)
    x = torch.randn(3, 5)
    assert torch.allclose(layer(x), heads(x)[1], atol=1e-6)
    with torch.no_grad():
        layer.bias.add_(1.0)
    heads.set_head(1, layer)
    assert torch.allclose(heads(x)[1], layer(x), atol=1e-6)
