"""Images brought to the working size once, not at every epoch, and what that cost.

Sets held in memory (``.npz`` files, named benchmarks, arrays, small folders) are converted and
resized once when loaded (``arrays.from_arrays``, ``folders``); ``ResizeCost`` records what that
took. A lazy ``FileImageSet`` (large folders) decodes and resizes a file every time an image is
asked for, so every epoch pays the decoding again; ``write_image_cache`` decodes each file once
into a uint8 ``N x C x S x S`` ``.npy`` file and ``open_image_cache`` maps it back as a
``TensorImageSet`` (memory-mapped: the pages are read on demand, nothing is copied whole), with
the same pixels ``FileImageSet`` returns. The pipeline keeps that file in the run folder, so a
resumed run maps it again instead of decoding.

Resizing once at the working size, rather than at a margin above it, gives the augmentations
(random-resized crop, METHOD.md Stage 1) the same input a run at that size always had.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smcluster.data.imageset import FileImageSet, TensorImageSet

CACHE_MAX_BYTES = 32 * 2**30
"""Largest image cache written; a bigger set stays lazy (decoded at every epoch)."""

_CHUNK = 256


@dataclass(frozen=True)
class ResizeCost:
    """Bringing a set's images to the working size once: from what, in how long, how big.

    ``bytes_before`` is the decoded native pixels for arrays, the files on disk for a folder.
    """

    native: str
    working: str
    seconds: float
    bytes_before: int
    bytes_after: int

    def record(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def line(self, how: str) -> str:
        return (
            f"images: {how} from {self.native} to {self.working} once in {self.seconds:.1f} s "
            f"({_megabytes(self.bytes_before)} -> {_megabytes(self.bytes_after)})"
        )


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def cache_fits(data: FileImageSet, path: Path) -> bool:
    """Whether the cache of ``data`` is under ``CACHE_MAX_BYTES`` and leaves half the free disk."""
    need = len(data) * data.channels * data.image_size**2
    existing = next(p for p in (path, *path.parents) if p.exists())
    return need <= CACHE_MAX_BYTES and 2 * need <= shutil.disk_usage(existing).free


def write_image_cache(data: FileImageSet, path: Path) -> ResizeCost:
    """Decode and resize every image of ``data`` once into ``path`` (through a temporary file
    and a rename, so a kill leaves no partial cache); files that fail are black images, as
    ``FileImageSet`` gives them."""
    started = time.perf_counter()
    shape = (len(data), data.channels, data.image_size, data.image_size)
    tmp = path.with_name(f".{path.name}.tmp")
    _decode_into(data, np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape))
    os.replace(tmp, path)
    files = sum(os.path.getsize(data.path(i)) for i in range(len(data)))
    return ResizeCost(
        native="files",
        working=f"{data.channels} x {data.image_size} px",
        seconds=time.perf_counter() - started,
        bytes_before=files,
        bytes_after=int(np.prod(shape)),
    )


def _decode_into(data: FileImageSet, out: np.ndarray) -> None:
    """Every image of ``data`` into ``out``, in threads (Pillow releases the GIL)."""

    def decode(start: int) -> None:
        for i in range(start, min(start + _CHUNK, len(data))):
            out[i] = data[i][0].numpy()

    workers = min(16, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode, range(0, len(data), _CHUNK)))
    if isinstance(out, np.memmap):
        out.flush()


def open_image_cache(data: FileImageSet, path: Path) -> TensorImageSet:
    """The cache of ``data`` memory-mapped as a ``TensorImageSet`` (same ids and labels).

    Mapped copy-on-write: torch needs a writable array, and the file is never changed.
    """
    array = np.load(path, mmap_mode="c", allow_pickle=False)
    expected = (len(data), data.channels, data.image_size, data.image_size)
    if array.shape != expected or array.dtype != np.uint8:
        raise ValueError(
            f"{path} holds {array.dtype} images of shape {array.shape}, not the {expected} "
            "of this run's data: delete it and resume, which decodes the images again"
        )
    return TensorImageSet(
        torch.from_numpy(array),
        name=data.name,
        labels=data.labels,
        class_names=data.class_names,
        ids=data.ids,
    )
