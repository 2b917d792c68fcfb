"""Public benchmark sets through torchvision, with train and test together (METHOD.md: "Image
sets use train+test together"), so N matches the papers' tables (STL-10: 13,000 images).

``root`` is where the local copy lives, in torchvision's own layout (so an existing torchvision
copy can be pointed at directly); default ``$SMCLUSTER_DATA`` or ``~/.cache/smcluster``.
Nothing is downloaded unless ``download=True``; a missing copy is a FileNotFoundError saying so.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from smcluster.data.arrays import from_arrays
from smcluster.data.imageset import TensorImageSet

ROOT_ENV = "SMCLUSTER_DATA"
DEFAULT_ROOT = "~/.cache/smcluster"

# CIFAR-100 fine label (alphabetical fine-class index) -> superclass, as in SCAN's CIFAR-20.
CIFAR100_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3,
    3, 14, 9, 18, 7, 11, 3, 9, 7, 11,
    6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
    0, 11, 1, 10, 12, 14, 16, 9, 11, 5,
    5, 19, 8, 8, 15, 13, 14, 17, 18, 10,
    16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
    10, 3, 2, 12, 12, 16, 12, 1, 9, 19,
    2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
    18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip

CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip

Arrays = tuple[np.ndarray, np.ndarray, list[str]]
Reader = Callable[[str, Path, bool], Arrays]


def default_root() -> Path:
    """``$SMCLUSTER_DATA`` if set, else ``~/.cache/smcluster``."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser()


def _open(factory: Callable[..., Any], name: str, root: Path, download: bool, **kwargs: Any) -> Any:
    try:
        return factory(root=str(root), download=download, **kwargs)
    except (RuntimeError, OSError) as error:
        if download:
            raise RuntimeError(f"{name}: could not download to {root}: {error}") from error
        raise FileNotFoundError(
            f"{name}: no usable local copy under {root} ({error}). Pass download=True "
            f"(--download on the command line) to download it there, or point root (--root, "
            f"or ${ROOT_ENV}) at the folder that holds your torchvision copy"
        ) from error


def _train_test(factory_name: str, name: str, root: Path, download: bool, **splits: Any) -> list:
    """The torchvision data set ``factory_name`` opened once per split (kwarg -> values)."""
    import torchvision.datasets

    factory = getattr(torchvision.datasets, factory_name)
    ((key, values),) = splits.items()
    return [_open(factory, name, root, download, **{key: value}) for value in values]


def _cifar10(name: str, root: Path, download: bool) -> Arrays:
    parts = _train_test("CIFAR10", name, root, download, train=(True, False))
    return _concat(parts, "data", "targets"), _concat(parts, None, "targets"), parts[0].classes


def _cifar100(name: str, root: Path, download: bool) -> Arrays:
    parts = _train_test("CIFAR100", name, root, download, train=(True, False))
    return _concat(parts, "data", "targets"), _concat(parts, None, "targets"), parts[0].classes


def _cifar100_20(name: str, root: Path, download: bool) -> Arrays:
    images, fine, _ = _cifar100(name, root, download)
    coarse = np.asarray(CIFAR100_COARSE, dtype=np.int64)[fine]
    return images, coarse, list(CIFAR100_COARSE_NAMES)


def _stl10(name: str, root: Path, download: bool) -> Arrays:
    parts = _train_test("STL10", name, root, download, split=("train", "test"))
    images = _concat(parts, "data", "labels").transpose(0, 2, 3, 1)
    classes = getattr(parts[0], "classes", None) or [str(k) for k in range(10)]
    return images, _concat(parts, None, "labels"), list(classes)


def _mnist_like(factory_name: str, class_names: list[str] | None = None) -> Reader:
    def read(name: str, root: Path, download: bool) -> Arrays:
        parts = _train_test(factory_name, name, root, download, train=(True, False))
        classes = class_names if class_names is not None else list(parts[0].classes)
        return _concat(parts, "data", "targets"), _concat(parts, None, "targets"), classes

    return read


def _omniglot(name: str, root: Path, download: bool) -> Arrays:
    (part,) = _train_test("Omniglot", name, root, download, background=(True,))
    items = [part[i] for i in range(len(part))]
    images = np.stack([np.asarray(image, dtype=np.uint8) for image, _ in items])
    labels = np.asarray([label for _, label in items], dtype=np.int64)
    characters = getattr(part, "_characters", None)
    classes = list(characters) if characters else [str(k) for k in range(labels.max() + 1)]
    return images, labels, classes


def _concat(parts: list, data: str | None, targets: str) -> np.ndarray:
    """Train and test arrays stacked: images if ``data`` is given, else int64 labels."""
    if data is None:
        return np.concatenate([np.asarray(getattr(p, targets), dtype=np.int64) for p in parts])
    return np.concatenate([np.asarray(getattr(p, data), dtype=np.uint8) for p in parts])


BENCHMARKS: dict[str, Reader] = {
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "cifar100-20": _cifar100_20,
    "stl10": _stl10,
    "mnist": _mnist_like("MNIST", [str(k) for k in range(10)]),
    "fashion-mnist": _mnist_like("FashionMNIST"),
    "kmnist": _mnist_like("KMNIST"),
    "omniglot": _omniglot,
}
"""Benchmark name -> reader of (images, labels, class names), train and test together."""


def load_benchmark(
    name: str,
    *,
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
    image_size: int | None = None,
    channels: int | None = None,
) -> TensorImageSet:
    """Load a benchmark from ``BENCHMARKS`` (ids: ``str(index)``, train first, then test).

    cifar10 / cifar100 / cifar100-20: 60,000 RGB 32 x 32 (cifar100-20: the 20 superclasses of
    ``CIFAR100_COARSE``); stl10: the 13,000 labelled RGB 96 x 96 images (train + test, no
    unlabelled split); mnist / fashion-mnist / kmnist: 70,000 grey 28 x 28; omniglot: the
    background set, 19,280 grey 105 x 105 images of 964 characters.
    """
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    folder = default_root() if root is None else Path(root).expanduser()
    images, labels, class_names = BENCHMARKS[name](name, folder, download)
    return from_arrays(
        images, labels, class_names, name=name, image_size=image_size, channels=channels
    )
