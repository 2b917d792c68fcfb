"""ImageSets from uint8 arrays (``.npz`` files, torchvision benchmarks, arrays in memory)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch

from smcluster.data.cache import ResizeCost
from smcluster.data.imageset import TensorImageSet, check_image_size, check_labels
from smcluster.data.pixels import convert_and_resize


def from_arrays(
    images: np.ndarray | torch.Tensor,
    labels: np.ndarray | Sequence[int] | None = None,
    class_names: Sequence[str] | np.ndarray | None = None,
    *,
    name: str = "array",
    image_size: int | None = None,
    channels: int | None = None,
) -> TensorImageSet:
    """An in-memory ImageSet from a uint8 image array.

    ``images`` is grey ``N x H x W`` (or ``N x H x W x 1``) or RGB ``N x H x W x 3``, channel
    order R, G, B; a uint8 ``N x C x H x W`` torch tensor is also taken as is.
    ``image_size=None`` keeps the native size (which must then be square); ``channels=None``
    keeps the native channel count. Conversion and resizing happen once, here, in chunks
    (``pixels.convert_and_resize``); what that cost is the set's ``resize_cost``.
    """
    tensor = _nchw_from_tensor(images, name) if torch.is_tensor(images) else _nchw(images, name)
    n, native_channels, height, width = tensor.shape
    target_channels = native_channels if channels is None else channels
    if target_channels not in (1, 3):
        raise ValueError(f"{name}: channels must be 1 or 3, got {channels!r}")
    if image_size is None and height != width:
        raise ValueError(
            f"{name}: images are {height} x {width} (not square); "
            "pass image_size to resize them to a square"
        )
    image_size = height if image_size is None else check_image_size(image_size, name)
    labels = check_labels(labels, n, name)
    started = time.perf_counter()
    resized = convert_and_resize(tensor, target_channels, image_size)
    images = TensorImageSet(resized, name=name, labels=labels, class_names=class_names)
    if resized.shape != tensor.shape:
        images.resize_cost = ResizeCost(
            native=f"{native_channels} x {height} x {width} px",
            working=f"{target_channels} x {image_size} px",
            seconds=time.perf_counter() - started,
            bytes_before=tensor.numel(),
            bytes_after=resized.numel(),
        )
    return images


def _nchw(array: np.ndarray, name: str) -> torch.Tensor:
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{name}: images must be uint8 (0..255), got dtype {array.dtype}; "
            "scale them to 0..255 and convert with .astype(np.uint8)"
        )
    if array.ndim == 3:
        array = array[..., None]
    elif array.ndim != 4 or array.shape[-1] not in (1, 3):
        hint = (
            "; this looks channels-first, transpose it to N x H x W x C"
            if array.ndim == 4 and array.shape[1] in (1, 3)
            else ""
        )
        raise ValueError(
            f"{name}: images must be N x H x W (grey) or N x H x W x 3 (RGB), "
            f"got shape {array.shape}{hint}"
        )
    if array.shape[0] == 0:
        raise ValueError(f"{name}: the data set is empty (images has shape {array.shape})")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def _nchw_from_tensor(tensor: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.dtype != torch.uint8 or tensor.ndim != 4 or tensor.shape[1] not in (1, 3):
        raise ValueError(
            f"{name}: an image tensor must be uint8 N x C x H x W with C 1 or 3, "
            f"got {tensor.dtype} {tuple(tensor.shape)}"
        )
    if tensor.shape[0] == 0:
        raise ValueError(f"{name}: the data set is empty (images has shape {tuple(tensor.shape)})")
    return tensor.detach().cpu().contiguous()
