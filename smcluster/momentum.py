"""Momentum helpers of the feature model: the EMA schedule, the EMA update and the queue.

METHOD.md, Stage 1: ``v2 <- m v2 + (1 - m) v1`` (Eq. 7) with the cosine schedule of Eq. 8,
and a FIFO queue of target outputs used as negatives.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def cosine_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """Paper Eq. 8: ``m = 1 - (1 - base) (cos(pi n / N) + 1) / 2``, rising from base to 1."""
    if total_steps <= 0:
        return 1.0
    progress = min(max(step / total_steps, 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """Paper Eq. 7: every target parameter becomes ``m * target + (1 - m) * online``.

    Buffers (batch-norm statistics) are copied from the online network, as BYOL and MoBY do.
    """
    for t, o in zip(target.parameters(), online.parameters(), strict=True):
        t.mul_(momentum).add_(o.detach(), alpha=1.0 - momentum)
    for t, o in zip(target.buffers(), online.buffers(), strict=True):
        t.copy_(o)


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0) -> float:
    """Linear warm-up to ``base_lr`` then cosine decay to zero (METHOD.md, Stage 1 optimiser)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


class MomentumQueue(nn.Module):
    """A FIFO queue of L2-normalised target outputs, the negatives of Eq. 9.

    The queue is a registered buffer, so it is saved and restored with the model's state and
    follows the model to its device. It starts filled with random unit vectors (as MoCo does)
    and ``enqueue`` overwrites the oldest rows, wrapping around.
    """

    def __init__(self, length: int, dim: int) -> None:
        super().__init__()
        if length < 1:
            raise ValueError(f"queue length must be positive, got {length}")
        self.register_buffer("vectors", nn.functional.normalize(torch.randn(length, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    def __len__(self) -> int:
        return len(self.vectors)

    @torch.no_grad()
    def enqueue(self, batch: Tensor) -> None:
        """Insert ``batch`` (B x D) after the newest entries, dropping the oldest."""
        batch = nn.functional.normalize(batch.detach().to(self.vectors.dtype), dim=1)
        length = len(self.vectors)
        if len(batch) > length:
            batch = batch[-length:]
        start = int(self.pointer)
        index = (torch.arange(len(batch), device=batch.device) + start) % length
        self.vectors[index] = batch
        self.pointer.fill_((start + len(batch)) % length)
