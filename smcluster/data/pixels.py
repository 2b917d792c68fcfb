"""Pixel conversions shared by every loader: channel count, square resize, file decoding.

All loaders end in the same two operations, so a picture gives the same tensor whether it came
from an array, an in-memory folder or the lazy folder reader:

- channels: RGB -> grey with the ITU-R 601-2 luma weights in Pillow's integer form (so a tensor
  conversion equals ``PIL.Image.convert("L")`` bit for bit); grey -> RGB replicates the plane.
- size: the shorter side is scaled to ``image_size`` (bilinear, antialiased, in float32, rounded
  back to uint8) and the longer side is centre-cropped, so non-square pictures keep their aspect
  ratio. Square pictures are simply resized; pictures already at ``image_size`` are untouched.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

LUMA_WEIGHTS = (19595, 38470, 7471)
"""R, G, B weights in 1/65536 (0.299, 0.587, 0.114), as Pillow's ``convert("L")``."""

_RESIZE_CHUNK_VALUES = 1 << 25
"""Float values converted per resize chunk (128 MiB), whatever the image size."""

_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
"""File name endings read as images (compared case-insensitively)."""


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert uint8 ``N x C x H x W`` images to ``channels`` (1 or 3) planes."""
    have = images.shape[1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA_WEIGHTS, dtype=torch.int32).view(1, 3, 1, 1)
        grey = (images.to(torch.int32) * weights).sum(dim=1, keepdim=True)
        return ((grey + 32768) >> 16).to(torch.uint8)
    raise ValueError(f"cannot convert {have}-channel images to {channels} channels")


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``N x C x H x W`` images to ``size x size`` (shorter side, centre crop).

    Done in chunks so that a large set never exists in float32 all at once.
    """
    n, _, height, width = images.shape
    if height == size and width == size:
        return images
    scale = size / min(height, width)
    new_h = size if height <= width else max(size, round(height * scale))
    new_w = size if width <= height else max(size, round(width * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    per_image = images[0].numel() + images.shape[1] * new_h * new_w
    chunk = max(1, _RESIZE_CHUNK_VALUES // per_image)
    out = torch.empty((n, images.shape[1], size, size), dtype=torch.uint8)
    for start in range(0, n, chunk):
        block = images[start : start + chunk].to(torch.float32)
        block = F.interpolate(
            block, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
        )
        block = block[:, :, top : top + size, left : left + size]
        out[start : start + chunk] = block.round_().clamp_(0, 255).to(torch.uint8)
    return out


def convert_and_resize(images: torch.Tensor, channels: int, size: int) -> torch.Tensor:
    """Channel conversion then resize, in the order that keeps the result exact and cheap.

    RGB -> grey happens before the resize (as a decoded file is converted before it is
    resized); grey -> RGB after it, which gives the same pixels with a third of the work.
    """
    if images.shape[1] > channels:
        images = to_channels(images, channels)
    images = resize_square(images, size)
    return to_channels(images, channels)


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    """Pillow image in mode L (channels 1) or RGB (channels 3); transparency over white."""
    if image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float32) / 257.0
        image = Image.fromarray(np.rint(values).astype(np.uint8), mode="L")
    has_alpha = image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("L" if channels == 1 else "RGB")


def read_image(path: str | os.PathLike[str], channels: int, size: int) -> torch.Tensor:
    """Decode one image file to a uint8 ``channels x size x size`` tensor.

    JPEGs are decoded at a reduced DCT scale when that still leaves the shorter side at least
    ``size`` (Pillow's ``draft``): for large photos this is several times faster and the final
    antialiased resize hides the difference.
    """
    with Image.open(path) as image:
        if image.format == "JPEG":
            image.draft(image.mode, (size, size))
        image = _to_mode(image, channels)
        array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return resize_square(tensor.unsqueeze(0), size)[0]


def probe_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Width and height from the file header only (no pixel decoding)."""
    with Image.open(path) as image:
        return image.size


GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
"""Pillow modes of single-channel pictures (with or without transparency)."""


def probe_shape(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """Width, height and channel count (1 grey, 3 colour) from the file header only."""
    with Image.open(path) as image:
        return *image.size, 1 if image.mode in GREY_MODES else 3


def is_image_file(path: str | os.PathLike[str]) -> bool:
    """True for a file name with an image extension (case-insensitive)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS
