"""The MLP heads of stage 1 and the shift folding of the clustering heads."""

from __future__ import annotations

import torch

from smcluster.models import ClusterHeads
from smcluster.models.heads import MLP


def test_fold_input_shift_gives_raw_inputs_the_logits_of_shifted_ones() -> None:
    heads = ClusterHeads(6, 4, n_heads=3)
    x, shift = torch.randn(10, 6), torch.randn(6)
    on_shifted = heads(x - shift)
    heads.fold_input_shift(shift)
    assert torch.allclose(heads(x), on_shifted, atol=1e-5)


def test_mlp_out_bn_is_a_plain_normalisation_without_parameters() -> None:
    plain, normed = MLP(8, 16, 4), MLP(8, 16, 4, out_bn=True)
    assert len(normed) == len(plain) + 1
    assert sum(p.numel() for p in normed.parameters()) == sum(p.numel() for p in plain.parameters())
