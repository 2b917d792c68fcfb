"""ImageSet: the one data type every stage reads, and its two storage implementations.

- ``TensorImageSet`` holds the whole set as one uint8 ``N x C x H x W`` tensor (small and
  medium sets: digits, .npz files, torchvision benchmarks, folders up to a threshold).
- ``FileImageSet`` holds only file paths and decodes an image when it is asked for, so that
  DataLoader workers can stream ImageNet-size folders (1.3M JPEGs) without holding them.

Both return ``(uint8 C x H x W tensor, index)`` from ``__getitem__``, with every image at
``image_size x image_size`` and ``channels`` planes; augmentation happens later, on batches.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from smcluster.data.pixels import read_image
from smcluster.data.strings import StringTable

if TYPE_CHECKING:
    from smcluster.data.cache import ResizeCost

log = logging.getLogger(__name__)

Indices = Sequence[int] | np.ndarray | torch.Tensor


class ImageSet(Dataset, ABC):
    """N images as uint8 tensors (C, H, W), all at image_size x image_size, labels optional.

    ``labels`` are for metrics only (never for training, CONTRIBUTING.md). ``ids`` name each
    image in ``assignments.csv``: the file path for images read from files, else ``str(index)``
    of the image in the source it was loaded from (a subset keeps its images' original ids).
    """

    name: str
    labels: np.ndarray | None
    class_names: list[str] | None
    channels: int
    image_size: int
    resize_cost: ResizeCost | None = None
    """What bringing the images to ``image_size`` once at load cost (None: nothing was done)."""

    def __init__(
        self,
        *,
        name: str,
        ids: StringTable,
        channels: int,
        image_size: int,
        labels: np.ndarray | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        if len(ids) == 0:
            raise ValueError(f"{name}: the data set is empty (no images)")
        if channels not in (1, 3):
            raise ValueError(f"{name}: channels must be 1 or 3, got {channels}")
        image_size = check_image_size(image_size, name)
        self.name = name
        self._ids = ids
        self.channels = channels
        self.image_size = image_size
        self.labels = check_labels(labels, len(ids), name)
        self.class_names = _check_class_names(class_names, self.labels, name)

    @cached_property
    def ids(self) -> list[str]:
        """Per-image ids, unique (checked when the set is built)."""
        return self._ids.tolist()

    @property
    def num_classes(self) -> int | None:
        """Number of known classes (from class_names, else from labels), None if unlabelled."""
        if self.class_names is not None:
            return len(self.class_names)
        if self.labels is not None:
            return int(self.labels.max()) + 1
        return None

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        index = self._index(i)
        return self._image(index), index

    @abstractmethod
    def _image(self, index: int) -> torch.Tensor:
        """The uint8 ``C x H x W`` image at a valid non-negative index."""

    @abstractmethod
    def as_tensor(self) -> torch.Tensor | None:
        """The whole set as one uint8 ``N x C x H x W`` tensor if held in memory, else None.

        The tensor is the set's own storage, not a copy: do not modify it in place.
        """

    @abstractmethod
    def _take(self, indices: np.ndarray) -> ImageSet:
        """A new set of the same kind holding the images at ``indices`` (valid, unique)."""

    def subset(self, indices: Indices) -> ImageSet:
        """The images at ``indices`` (ints or a boolean mask of length N), in that order.

        Labels, class names and ids follow the images; repeated indices are refused because
        ids must stay unique.
        """
        array = indices.detach().cpu().numpy() if torch.is_tensor(indices) else np.asarray(indices)
        if array.dtype == bool:
            if array.shape != (len(self),):
                raise ValueError(
                    f"{self.name}: a boolean mask must have shape ({len(self)},), got {array.shape}"
                )
            array = np.flatnonzero(array)
        if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
            raise ValueError(
                f"{self.name}: subset indices must be a 1-D sequence of ints or a boolean mask, "
                f"got dtype {array.dtype} and shape {array.shape}"
            )
        array = array.astype(np.int64)
        if array.size == 0:
            raise ValueError(f"{self.name}: the subset is empty (no indices given)")
        if array.min() < 0 or array.max() >= len(self):
            raise ValueError(
                f"{self.name}: subset indices must lie in 0..{len(self) - 1}, "
                f"got {array.min()}..{array.max()}"
            )
        if np.unique(array).size != array.size:
            raise ValueError(f"{self.name}: subset indices repeat (ids must stay unique)")
        return self._take(array)

    def _index(self, i: Any) -> int:
        n = len(self)
        index = int(i)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"{self.name}: index {i} out of range for {n} images")
        return index

    def _subset_fields(self, indices: np.ndarray) -> dict[str, Any]:
        return {
            "name": self.name,
            "ids": self._ids.take(indices),
            "labels": None if self.labels is None else self.labels[indices],
            "class_names": self.class_names,
        }

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("ids", None)
        return state

    def __repr__(self) -> str:
        classes = self.num_classes
        return (
            f"{type(self).__name__}(name={self.name!r}, images={len(self)}, "
            f"channels={self.channels}, image_size={self.image_size}, "
            f"classes={classes if classes is not None else 'unlabelled'})"
        )


class TensorImageSet(ImageSet):
    """An ImageSet held in memory as one uint8 ``N x C x H x W`` tensor (CPU)."""

    def __init__(
        self,
        images: torch.Tensor,
        *,
        name: str = "images",
        labels: np.ndarray | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        ids: Sequence[str] | StringTable | None = None,
    ) -> None:
        if not torch.is_tensor(images) or images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"{name}: images must be a uint8 N x C x H x W tensor, got "
                f"{type(images).__name__} {getattr(images, 'dtype', '')} "
                f"{tuple(getattr(images, 'shape', ()))}"
            )
        if images.shape[2] != images.shape[3]:
            raise ValueError(
                f"{name}: images must be square, got {images.shape[2]} x {images.shape[3]}"
            )
        if ids is None:
            ids = StringTable(str(i) for i in range(images.shape[0]))
        table = _unique_ids(ids, images.shape[0], name)
        super().__init__(
            name=name,
            ids=table,
            channels=int(images.shape[1]),
            image_size=int(images.shape[2]),
            labels=labels,
            class_names=class_names,
        )
        self._images = images.cpu().contiguous()

    def _image(self, index: int) -> torch.Tensor:
        return self._images[index]

    def as_tensor(self) -> torch.Tensor:
        return self._images

    def _take(self, indices: np.ndarray) -> TensorImageSet:
        selected = self._images[torch.from_numpy(indices)]
        fields = self._subset_fields(indices)
        return TensorImageSet(selected, **fields)


class FileImageSet(ImageSet):
    """An ImageSet that decodes image files on demand with Pillow (lazy).

    Each ``__getitem__`` opens the file, converts it to L or RGB (``channels``) and resizes it
    to ``image_size`` (``pixels.read_image``), so memory does not grow with the set. Loaders
    check every file's header when the set is built; a file that still fails to decode later
    (truncated after a valid header, or removed since) is logged and replaced by a black image
    rather than stopping a long training run.
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]] | StringTable,
        *,
        channels: int,
        image_size: int,
        name: str = "images",
        labels: np.ndarray | Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        ids: Sequence[str] | StringTable | None = None,
    ) -> None:
        if not isinstance(paths, StringTable):
            paths = StringTable(os.fspath(p) for p in paths)
        table = paths
        ids_table = _unique_ids(table if ids is None else ids, len(table), name)
        super().__init__(
            name=name,
            ids=ids_table,
            channels=channels,
            image_size=image_size,
            labels=labels,
            class_names=class_names,
        )
        self._paths = table

    def path(self, i: int) -> str:
        """The file behind image ``i``."""
        return self._paths[self._index(i)]

    def _image(self, index: int) -> torch.Tensor:
        path = self._paths[index]
        try:
            return read_image(path, self.channels, self.image_size)
        except Exception as error:  # any decoder failure: keep a long run alive
            log.warning("%s: could not decode %s (%s); using a black image", self.name, path, error)
            return torch.zeros((self.channels, self.image_size, self.image_size), dtype=torch.uint8)

    def as_tensor(self) -> None:
        return None

    def _take(self, indices: np.ndarray) -> FileImageSet:
        fields = self._subset_fields(indices)
        return FileImageSet(
            self._paths.take(indices),
            channels=self.channels,
            image_size=self.image_size,
            **fields,
        )


def _unique_ids(ids: Sequence[str] | StringTable, n: int, name: str) -> StringTable:
    table = ids if isinstance(ids, StringTable) else StringTable(str(s) for s in ids)
    if len(table) != n:
        raise ValueError(f"{name}: {len(table)} ids for {n} images")
    values = table.tolist()
    if len(set(values)) != n:
        seen: set[str] = set()
        repeated = next(v for v in values if v in seen or seen.add(v))
        raise ValueError(f"{name}: image ids must be unique, {repeated!r} appears more than once")
    return table


def check_image_size(image_size: object, name: str) -> int:
    """``image_size`` as a positive int (numpy integers accepted); ValueError otherwise."""
    if (
        isinstance(image_size, (bool, np.bool_))
        or not isinstance(image_size, (int, np.integer))
        or image_size < 1
    ):
        raise ValueError(f"{name}: image_size must be a positive int, got {image_size!r}")
    return int(image_size)


def check_labels(labels: np.ndarray | Sequence[int] | None, n: int, name: str) -> np.ndarray | None:
    """Labels as int64 ``(n,)`` non-negative class indices, or None; ValueError otherwise."""
    if labels is None:
        return None
    array = labels.detach().cpu().numpy() if torch.is_tensor(labels) else np.asarray(labels)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name}: labels must be a 1-D integer array, got dtype {array.dtype} "
            f"and shape {array.shape}"
        )
    if array.shape[0] != n:
        raise ValueError(f"{name}: {array.shape[0]} labels for {n} images (lengths must match)")
    if array.size and array.min() < 0:
        raise ValueError(
            f"{name}: labels must be non-negative class indices, found {int(array.min())}"
        )
    return array.astype(np.int64, copy=False)


def _check_class_names(
    class_names: Sequence[str] | np.ndarray | None, labels: np.ndarray | None, name: str
) -> list[str] | None:
    if class_names is None:
        return None
    if isinstance(class_names, str):
        raise ValueError(f"{name}: class_names must be a sequence of strings, not one string")
    names = [str(c) for c in np.asarray(class_names).reshape(-1).tolist()]
    if labels is not None and labels.size and int(labels.max()) >= len(names):
        raise ValueError(
            f"{name}: label {int(labels.max())} has no class name ({len(names)} class names given)"
        )
    return names
