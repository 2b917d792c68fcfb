"""Public benchmark names through torchvision (smcluster.data.benchmarks), without network."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from smcluster.data import BENCHMARKS, CIFAR100_COARSE, default_root, load_dataset
from smcluster.data.benchmarks import CIFAR100_COARSE_NAMES

_FINE_NAMES = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house "
    "kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle "
    "mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree "
    "plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew "
    "skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper table tank "
    "telephone television tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf "
    "woman worm"
)
CIFAR100_FINE = _FINE_NAMES.split()

# The CIFAR-100 superclass listing (Krizhevsky 2009, the data set's web page), in coarse order.
SUPERCLASSES = (
    "beaver dolphin otter seal whale",
    "aquarium_fish flatfish ray shark trout",
    "orchid poppy rose sunflower tulip",
    "bottle bowl can cup plate",
    "apple mushroom orange pear sweet_pepper",
    "clock keyboard lamp telephone television",
    "bed chair couch table wardrobe",
    "bee beetle butterfly caterpillar cockroach",
    "bear leopard lion tiger wolf",
    "bridge castle house road skyscraper",
    "cloud forest mountain plain sea",
    "camel cattle chimpanzee elephant kangaroo",
    "fox porcupine possum raccoon skunk",
    "crab lobster snail spider worm",
    "baby boy girl man woman",
    "crocodile dinosaur lizard snake turtle",
    "hamster mouse rabbit shrew squirrel",
    "maple_tree oak_tree palm_tree pine_tree willow_tree",
    "bicycle bus motorcycle pickup_truck train",
    "lawn_mower rocket streetcar tank tractor",
)


def test_cifar100_coarse_table_matches_the_official_superclasses() -> None:
    assert len(CIFAR100_COARSE) == 100 and len(CIFAR100_FINE) == 100
    assert len(CIFAR100_COARSE_NAMES) == 20
    for coarse, members in enumerate(SUPERCLASSES):
        fine = sorted(CIFAR100_FINE.index(name) for name in members.split())
        assert [f for f in range(100) if CIFAR100_COARSE[f] == coarse] == fine, coarse


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_missing_local_copy_says_how_to_download(tmp_path: Path, name: str) -> None:
    with pytest.raises(FileNotFoundError, match=r"download=True.*--download"):
        load_dataset(name, root=str(tmp_path))
    assert not any(tmp_path.rglob("*.gz")) and not any(tmp_path.rglob("*.zip"))


def _idx(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize(
    ("name", "folder"), [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]
)
def test_mnist_style_copy_loads_train_then_test(tmp_path: Path, name: str, folder: str) -> None:
    rng = np.random.default_rng(0)
    train, test = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 256, (3, 28, 28))
    train_y, test_y = np.array([0, 1, 2, 3, 4]), np.array([9, 8, 7])
    raw = tmp_path / folder / "raw"
    _idx(raw / "train-images-idx3-ubyte", train)
    _idx(raw / "train-labels-idx1-ubyte", train_y)
    _idx(raw / "t10k-images-idx3-ubyte", test)
    _idx(raw / "t10k-labels-idx1-ubyte", test_y)
    data = load_dataset(name, root=str(tmp_path), image_size=14)
    assert data.name == name and len(data) == 8 and data.channels == 1
    assert data.labels.tolist() == [0, 1, 2, 3, 4, 9, 8, 7] and len(data.class_names) == 10
    assert data.as_tensor().shape == (8, 1, 14, 14)
    native = load_dataset(name, root=str(tmp_path), channels=3)
    assert torch.equal(native.as_tensor()[5, 0], torch.from_numpy(test[0].astype(np.uint8)))
    if name == "mnist":
        assert native.class_names == [str(k) for k in range(10)]


def test_default_root_follows_the_environment(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SMCLUSTER_DATA", str(tmp_path))
    assert default_root() == tmp_path
    monkeypatch.delenv("SMCLUSTER_DATA")
    assert default_root() == Path("~/.cache/smcluster").expanduser()
