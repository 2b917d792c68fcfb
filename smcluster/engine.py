"""Devices, processes and precision: the one place that knows about them.

Training loops run under Lightning Fabric, so the same code runs on one CPU, one GPU or
several processes (``devices`` x ``num_nodes``, gloo on CPU, NCCL on GPU). Only rank 0 writes
files; every rank sees the same seeds, so work that every rank repeats (mining, heads on stored
features) gives the same answer everywhere.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from lightning_fabric import Fabric
from tqdm.auto import tqdm

from smcluster.config import RunConfig


def default_threads() -> int:
    """The CPU cores this process may use (respects affinity masks and containers)."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # pragma: no cover - not Linux
        return max(os.cpu_count() or 1, 1)


def make_fabric(run: RunConfig) -> Fabric:
    """A launched Fabric for the run settings; sets the torch thread count first.

    Several processes per node use Fabric's "ddp" strategy, which re-launches the current
    command once per extra process, so multi-device runs start from the command line.
    """
    threads = run.threads or default_threads()
    if run.devices * run.num_nodes > 1 and run.threads is None:
        threads = max(threads // run.devices, 1)
    torch.set_num_threads(threads)
    world = run.devices * run.num_nodes
    fabric = Fabric(
        accelerator=run.accelerator,
        devices=run.devices,
        num_nodes=run.num_nodes,
        strategy="ddp" if world > 1 else "auto",
        precision=run.precision,
    )
    fabric.launch()
    return fabric


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stage_seed(seed: int, stage: str, epoch: int) -> int:
    """A seed for one epoch of one stage, so a resumed run draws what an unbroken one would."""
    offset = sum(ord(c) * 31**i for i, c in enumerate(stage)) % 100_003
    return seed * 1_000_003 + offset * 1_009 + epoch


@dataclass
class Shard:
    """This process's share of the data: rank and world size."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of(cls, fabric: Fabric) -> Shard:
        return cls(fabric.global_rank, fabric.world_size)


def batch_indices(
    n: int, batch_size: int, *, shuffle: bool, drop_last: bool, shard: Shard | None = None
) -> Iterator[torch.Tensor]:
    """Index batches over ``n`` items; each process gets ``batch_size / world`` of each batch.

    With ``shuffle`` the order comes from the global torch generator (seeded per epoch by the
    caller), identical on every rank, and each rank takes its slice of every global batch.
    """
    shard = shard or Shard()
    order = torch.randperm(n) if shuffle else torch.arange(n)
    per_rank = max(batch_size // shard.world, 1)
    step = per_rank * shard.world
    stop = n - n % step if drop_last and n >= step else n
    for start in range(0, stop, step):
        batch = order[start : start + step]
        mine = batch[shard.rank * per_rank : (shard.rank + 1) * per_rank]
        if len(mine):
            yield mine


def iterate_images(
    data: torch.utils.data.Dataset, batches: Iterator[torch.Tensor], workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(uint8 images B x C x H x W, indices)`` for each index batch.

    Sets held in memory are sliced directly (no per-image Python work); sets read from disk go
    through a DataLoader with ``workers`` processes.
    """
    tensor = data.as_tensor() if hasattr(data, "as_tensor") else None
    if tensor is not None:
        for idx in batches:
            yield tensor[idx], idx
        return
    loader = torch.utils.data.DataLoader(
        data, batch_sampler=[b.tolist() for b in batches], num_workers=workers
    )
    yield from loader


@torch.no_grad()
def map_batches(
    fn,
    data,
    *,
    batch_size: int,
    device: torch.device,
    fabric: Fabric | None = None,
    workers: int = 0,
    progress: str | None = None,
) -> torch.Tensor:
    """Apply ``fn`` (uint8 batch on ``device`` -> B x D tensor) to every image, in order.

    Under several processes each rank maps a contiguous shard and the shards are gathered, so
    every rank returns the full N x D result on the CPU. ``progress`` names a progress bar
    (rank 0 only; none when None).
    """
    n = len(data)
    world = fabric.world_size if fabric is not None else 1
    rank = fabric.global_rank if fabric is not None else 0
    per_rank = -(-n // world)
    mine = torch.arange(rank * per_rank, min((rank + 1) * per_rank, n))
    outputs = []
    batches = iterate_images(data, iter(mine.split(batch_size)), workers)
    total = -(-len(mine) // batch_size)
    shown = progress is not None and rank == 0
    for images, _ in tqdm(batches, total=total, desc=progress, disable=not shown, leave=False):
        outputs.append(fn(images.to(device)).float().cpu())
    result = torch.cat(outputs) if outputs else torch.empty(0)
    if world == 1:
        return result
    padded = torch.zeros(per_rank, *result.shape[1:]) if len(outputs) else None
    if padded is None:
        raise RuntimeError("a process received no images: use fewer devices for this data set")
    padded[: len(result)] = result
    gathered = fabric.all_gather(padded.to(fabric.device)).cpu()
    return gathered.reshape(world * per_rank, *result.shape[1:])[:n]
