"""Thumbnails and PNG sprite sheets: one sheet per cluster, tiles in display order.

A sheet per cluster keeps the file count at C and lets the page load only the clusters it
shows; the page cuts tiles out with CSS background positions. Images larger than
``MAX_TILE`` pixels are shrunk (antialiased), smaller ones are kept at their size and scaled
up by the browser with pixelated rendering.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from smcluster.data import ImageSet

MAX_TILE = 64
"""Largest tile side in pixels stored in a sheet."""

_CHUNK = 2048


@dataclass(frozen=True)
class Sheet:
    """A written sprite sheet: file name (relative to the report), grid and tile count."""

    file: str
    cols: int
    rows: int
    count: int


def tile_size(images: ImageSet) -> int:
    return min(int(images.image_size), MAX_TILE)


def tiles(images: ImageSet, indices: np.ndarray, size: int | None = None) -> np.ndarray:
    """Images ``indices`` as uint8 ``n x size x size x C`` (C = 1 or 3), in that order."""
    size = size or tile_size(images)
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty((indices.size, size, size, images.channels), dtype=np.uint8)
    stored = images.as_tensor()
    for start in range(0, indices.size, _CHUNK):
        part = indices[start : start + _CHUNK]
        if stored is not None:
            batch = stored[torch.from_numpy(part)]
        else:
            batch = torch.stack([images[int(i)][0] for i in part])
        out[start : start + part.size] = _resize(batch, size).permute(0, 2, 3, 1).numpy()
    return out


def _resize(batch: torch.Tensor, size: int) -> torch.Tensor:
    if batch.shape[-1] == size:
        return batch
    x = torch.nn.functional.interpolate(
        batch.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return x.round().clamp(0, 255).to(torch.uint8)


def grid(tile_array: np.ndarray, cols: int, pad_value: int = 255) -> np.ndarray:
    """Tiles (n x T x T x C) laid out row by row in ``cols`` columns, padded with white."""
    n, t, _, c = tile_array.shape
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    full = np.full((rows * cols, t, t, c), pad_value, dtype=np.uint8)
    full[:n] = tile_array
    return full.reshape(rows, cols, t, t, c).transpose(0, 2, 1, 3, 4).reshape(rows * t, cols * t, c)


def save_png(array: np.ndarray, path: Path) -> None:
    """Save an H x W x C uint8 array (C = 1 grey, 3 RGB) as PNG, favouring speed."""
    image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    image.save(path, format="PNG", compress_level=1)


def write_sheets(
    images: ImageSet,
    groups: Iterable[np.ndarray],
    folder: Path,
    *,
    prefix: str,
    cols: int,
    threads: int = 2,
) -> list[Sheet]:
    """One sheet ``folder/{prefix}{k:04d}.png`` per group of image indices (empty groups: none).

    The tiles are read in one pass (the data may be on disk), then sheets are encoded in a
    small thread pool (Pillow releases the GIL while compressing).
    """
    folder.mkdir(parents=True, exist_ok=True)
    groups = [np.asarray(g, dtype=np.int64) for g in groups]
    size = tile_size(images)
    everything = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
    all_tiles = tiles(images, everything, size) if everything.size else None
    bounds = np.cumsum([0] + [g.size for g in groups])
    sheets: list[Sheet] = []
    jobs: list[tuple[np.ndarray, Path]] = []
    for k, group in enumerate(groups):
        if group.size == 0 or all_tiles is None:
            sheets.append(Sheet("", 0, 0, 0))
            continue
        name = f"{prefix}{k:04d}.png"
        part = all_tiles[bounds[k] : bounds[k + 1]]
        c = max(1, min(cols, group.size))
        sheets.append(Sheet(f"{folder.name}/{name}", c, -(-group.size // c), int(group.size)))
        jobs.append((grid(part, c), folder / name))
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(lambda job: save_png(*job), jobs))
    return sheets
