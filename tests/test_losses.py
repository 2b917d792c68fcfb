"""The loss equations against hand-computed cases (METHOD.md, Stage 1 Eq. 9-10, Stage 3)."""

import math

import pytest
import torch
import torch.nn.functional as F

from smcluster.losses import (
    entropy,
    nt_xent,
    queue_info_nce,
    scan_loss,
    self_label_loss,
    symmetric_queue_info_nce,
)


def test_queue_info_nce_matches_hand_computation() -> None:
    online = torch.tensor([[1.0, 0.0]])
    positive = torch.tensor([[0.6, 0.8]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    t = 0.2
    s_pos, s_negs = 0.6, [0.0, -1.0]
    expected = -math.log(
        math.exp(s_pos / t) / (math.exp(s_pos / t) + sum(math.exp(s / t) for s in s_negs))
    )
    assert math.isclose(float(queue_info_nce(online, positive, queue, t)), expected, rel_tol=1e-5)


def test_queue_info_nce_normalises_inputs() -> None:
    online, positive, queue = torch.randn(4, 8), torch.randn(4, 8), torch.randn(16, 8)
    a = queue_info_nce(online, positive, queue, 0.2)
    b = queue_info_nce(3 * online, 0.5 * positive, 7 * queue, 0.2)
    assert torch.allclose(a, b, atol=1e-5)


def test_symmetric_loss_is_mean_of_both_directions() -> None:
    la, lb, ha, hb, q = (torch.randn(5, 8) for _ in range(5))
    expected = 0.5 * queue_info_nce(la, hb, q, 0.2) + 0.5 * queue_info_nce(lb, ha, q, 0.2)
    assert torch.allclose(symmetric_queue_info_nce(la, lb, ha, hb, q, 0.2), expected)


def test_gradient_reaches_only_the_online_outputs() -> None:
    online = torch.randn(4, 8, requires_grad=True)
    target = torch.randn(4, 8, requires_grad=True)
    queue = torch.randn(10, 8, requires_grad=True)
    queue_info_nce(online, target, queue, 0.2).backward()
    assert online.grad is not None and online.grad.abs().sum() > 0
    assert target.grad is None and queue.grad is None


def test_nt_xent_matches_explicit_cross_entropy() -> None:
    za, zb = torch.randn(3, 4), torch.randn(3, 4)
    z = F.normalize(torch.cat([za, zb]), dim=1)
    t = 0.5
    total = 0.0
    for i in range(6):
        positive = (i + 3) % 6
        logits = [float(z[i] @ z[j]) / t for j in range(6) if j != i]
        pos = float(z[i] @ z[positive]) / t
        total += -pos + math.log(sum(math.exp(v) for v in logits))
    assert math.isclose(float(nt_xent(za, zb, t)), total / 6, rel_tol=1e-5)


def test_scan_loss_terms_by_hand() -> None:
    anchor = torch.log(torch.tensor([[0.9, 0.1], [0.2, 0.8]]))
    neighbour = torch.log(torch.tensor([[0.8, 0.2], [0.3, 0.7]]))
    dots = [0.9 * 0.8 + 0.1 * 0.2, 0.2 * 0.3 + 0.8 * 0.7]
    consistency = -sum(math.log(d) for d in dots) / 2
    mean = [0.55, 0.45]
    spread = -sum(p * math.log(p) for p in mean)
    total, c, e = scan_loss(anchor, neighbour, entropy_weight=5.0)
    assert math.isclose(float(c), consistency, rel_tol=1e-5)
    assert math.isclose(float(e), spread, rel_tol=1e-5)
    assert math.isclose(float(total), consistency - 5.0 * spread, rel_tol=1e-5)


def test_entropy_term_prefers_spread_assignments() -> None:
    confident = torch.tensor([[10.0, 0.0]] * 4)
    spread = torch.tensor([[10.0, 0.0], [0.0, 10.0]] * 2)
    _, _, e_collapsed = scan_loss(confident, confident, 1.0)
    _, _, e_spread = scan_loss(spread, spread, 1.0)
    assert float(e_spread) > float(e_collapsed)
    assert math.isclose(float(e_spread), math.log(2), rel_tol=1e-3)
    assert math.isclose(float(entropy(torch.full((4,), 0.25))), math.log(4), rel_tol=1e-6)


def test_self_label_loss_uses_only_confident_images() -> None:
    weak = torch.tensor([[10.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.0, 10.0]])
    strong = torch.randn(3, 3, requires_grad=True)
    loss, count = self_label_loss(weak, strong, threshold=0.99)
    assert count == 2
    expected = 0.5 * (
        F.cross_entropy(strong[[0]], torch.tensor([0]))
        + F.cross_entropy(strong[[2]], torch.tensor([2]))
    )
    assert torch.allclose(loss, expected, atol=1e-6)
    loss.backward()
    assert strong.grad[1].abs().sum() == 0


def test_self_label_loss_without_confident_images_is_zero() -> None:
    loss, count = self_label_loss(torch.zeros(4, 3), torch.randn(4, 3, requires_grad=True))
    assert count == 0 and float(loss.detach()) == 0.0


def test_weighted_scan_loss_with_unit_weights_is_the_plain_loss() -> None:
    torch.manual_seed(0)
    anchor, neighbour = torch.randn(3, 8, 5), torch.randn(3, 8, 5)
    plain = scan_loss(anchor, neighbour, 2.0)
    unit = scan_loss(anchor, neighbour, 2.0, torch.ones(8))
    for a, b in zip(plain, unit, strict=True):
        assert torch.allclose(a, b)


def test_weighted_scan_loss_matches_a_hand_computation() -> None:
    """Two anchors, two clusters: p = (0.8, 0.2), (0.3, 0.7); neighbours (0.6, 0.4), (0.1, 0.9);
    weights 3 and 1: consistency = -(3 log 0.56 + log 0.66) / 4, entropy of the anchors' mean
    prediction (0.55, 0.45) unchanged by the weights."""
    anchor = torch.tensor([[0.8, 0.2], [0.3, 0.7]]).log()
    neighbour = torch.tensor([[0.6, 0.4], [0.1, 0.9]]).log()
    total, consistency, spread = scan_loss(anchor, neighbour, 5.0, torch.tensor([3.0, 1.0]))
    expected = -(3 * math.log(0.8 * 0.6 + 0.2 * 0.4) + math.log(0.3 * 0.1 + 0.7 * 0.9)) / 4
    entropy_ = -(0.55 * math.log(0.55) + 0.45 * math.log(0.45))
    assert consistency.item() == pytest.approx(expected, rel=1e-5)
    assert spread.item() == pytest.approx(entropy_, rel=1e-5)
    assert total.item() == pytest.approx(expected - 5.0 * entropy_, rel=1e-5)
