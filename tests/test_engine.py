"""Batching and seeding helpers of the engine."""

import torch

from smcluster.engine import Shard, batch_indices, stage_seed


def test_batches_cover_every_index_once() -> None:
    torch.manual_seed(0)
    batches = list(batch_indices(10, 4, shuffle=True, drop_last=False))
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert [len(b) for b in batches] == [4, 4, 2]


def test_drop_last_and_shards_split_each_global_batch() -> None:
    torch.manual_seed(1)
    full = list(batch_indices(10, 4, shuffle=True, drop_last=True))
    torch.manual_seed(1)
    rank0 = list(batch_indices(10, 4, shuffle=True, drop_last=True, shard=Shard(0, 2)))
    torch.manual_seed(1)
    rank1 = list(batch_indices(10, 4, shuffle=True, drop_last=True, shard=Shard(1, 2)))
    assert len(full) == 2 and all(len(b) == 4 for b in full)
    for whole, a, b in zip(full, rank0, rank1, strict=True):
        assert torch.equal(torch.cat([a, b]), whole)


def test_stage_seeds_differ_by_stage_and_epoch() -> None:
    seeds = {stage_seed(0, s, e) for s in ("features", "clustering") for e in range(5)}
    assert len(seeds) == 10
    assert stage_seed(1, "features", 0) != stage_seed(0, "features", 0)
