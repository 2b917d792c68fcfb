"""Momentum schedule, EMA update and FIFO queue (METHOD.md, Stage 1 Eq. 7-8)."""

import math

import pytest
import torch
from torch import nn

from smcluster.momentum import MomentumQueue, cosine_lr, cosine_momentum, ema_update


def test_cosine_momentum_endpoints_and_midpoint() -> None:
    assert math.isclose(cosine_momentum(0, 100, 0.996), 0.996)
    assert math.isclose(cosine_momentum(50, 100, 0.996), 0.998)
    assert math.isclose(cosine_momentum(100, 100, 0.996), 1.0)
    values = [cosine_momentum(s, 100) for s in range(101)]
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))


def test_ema_update_moves_target_towards_online() -> None:
    online, target = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        online.weight.fill_(1.0)
        target.weight.fill_(0.0)
    ema_update(target, online, momentum=0.9)
    assert torch.allclose(target.weight, torch.full((2, 2), 0.1))
    ema_update(target, online, momentum=1.0)
    assert torch.allclose(target.weight, torch.full((2, 2), 0.1))


def test_cosine_lr_warmup_then_decay() -> None:
    assert math.isclose(cosine_lr(0, 100, 1.0, warmup_steps=10), 0.1)
    assert math.isclose(cosine_lr(9, 100, 1.0, warmup_steps=10), 1.0)
    assert math.isclose(cosine_lr(10, 100, 1.0, warmup_steps=10), 1.0)
    assert cosine_lr(99, 100, 1.0, warmup_steps=10) < 0.01


def test_queue_is_fifo_and_wraps_around() -> None:
    queue = MomentumQueue(length=5, dim=2)
    first = torch.tensor([[1.0, 0.0]] * 3)
    second = torch.tensor([[0.0, 1.0]] * 3)
    queue.enqueue(first)
    assert torch.equal(queue.vectors[:3], first) and int(queue.pointer) == 3
    queue.enqueue(second)
    # rows 3, 4 then 0 are overwritten: the oldest entry (row 0) goes first
    assert torch.equal(queue.vectors[3:], second[:2])
    assert torch.equal(queue.vectors[0], second[2])
    assert torch.equal(queue.vectors[1:3], first[1:])
    assert int(queue.pointer) == 1


def test_queue_normalises_and_keeps_the_newest_of_a_large_batch() -> None:
    queue = MomentumQueue(length=2, dim=2)
    queue.enqueue(torch.tensor([[3.0, 0.0], [0.0, 2.0], [0.0, -5.0]]))
    assert torch.allclose(queue.vectors.norm(dim=1), torch.ones(2))
    assert {tuple(v.tolist()) for v in queue.vectors} == {(0.0, 1.0), (0.0, -1.0)}


def test_queue_length_must_be_positive() -> None:
    with pytest.raises(ValueError, match="queue length"):
        MomentumQueue(0, 4)
