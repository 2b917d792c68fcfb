"""Heads: BYOL-style MLPs (projector, predictor) and SCAN's multi-head clustering layer."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class MLP(nn.Sequential):
    """Linear -> BatchNorm -> ReLU -> Linear, the projector and predictor of BYOL and MoBY.

    ``out_bn`` appends a BatchNorm without affine parameters to the output, as MoCo v3's
    projector has: it centres the outputs of every batch.
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, out_bn: bool = False) -> None:
        layers: list[nn.Module] = [
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        ]
        if out_bn:
            layers.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*layers)
        self.out_dim = out_dim


class ClusterHeads(nn.Module):
    """Several linear clustering heads trained at once (METHOD.md, Stage 3).

    The heads share one weight tensor, so all of them cost one matrix product. ``forward``
    returns logits of shape (heads, batch, clusters). After training, the head with the lowest
    total SCAN loss is recorded in the ``best_head`` buffer (saved with the weights), and
    ``predict_logits`` uses only that head.
    """

    def __init__(self, in_dim: int, n_clusters: int, n_heads: int = 10) -> None:
        super().__init__()
        if n_heads < 1:
            raise ValueError(f"need at least one clustering head, got {n_heads}")
        layer = nn.Linear(in_dim, n_heads * n_clusters)
        self.weight = nn.Parameter(layer.weight.detach().reshape(n_heads, n_clusters, in_dim))
        self.bias = nn.Parameter(layer.bias.detach().reshape(n_heads, n_clusters))
        self.register_buffer("best_head", torch.zeros((), dtype=torch.long))
        self.n_clusters = n_clusters

    def __len__(self) -> int:
        return len(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return torch.einsum("be,hce->hbc", x, self.weight) + self.bias[:, None, :]

    def predict_logits(self, x: Tensor) -> Tensor:
        head = int(self.best_head)
        return x @ self.weight[head].T + self.bias[head]

    def head(self, index: int) -> nn.Linear:
        """A copy of one head as a plain linear layer."""
        layer = nn.Linear(self.weight.shape[2], self.n_clusters)
        with torch.no_grad():
            layer.weight.copy_(self.weight[index])
            layer.bias.copy_(self.bias[index])
        return layer.to(self.weight.device)

    def set_head(self, index: int, layer: nn.Linear) -> None:
        """Write a linear layer's weights back into head ``index``."""
        with torch.no_grad():
            self.weight[index].copy_(layer.weight)
            self.bias[index].copy_(layer.bias)

    @torch.no_grad()
    def fold_input_shift(self, shift: Tensor) -> None:
        """Heads trained on ``x - shift`` give the same logits on ``x`` afterwards.

        ``W (x - shift) + b = W x + (b - W shift)``: the shift moves into the biases.
        """
        self.bias -= torch.einsum("hce,e->hc", self.weight, shift.to(self.weight))

    def select(self, head: int) -> None:
        """Record ``head`` as the winner."""
        self.best_head.fill_(head)
