"""ImageSets from .npz files (smcluster.data.npz): the shared sets and every bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from smcluster.data import FileImageSet, TensorImageSet, load_dataset, load_npz


@pytest.fixture(scope="module")
def cifar_file(shared_data: Path) -> Path:
    return shared_data / "cifar10_lossless_subset.npz"


@pytest.fixture(scope="module")
def cifar(cifar_file: Path) -> TensorImageSet:
    return load_dataset(str(cifar_file))


def test_shared_cifar_subset_native(cifar: TensorImageSet, cifar_file: Path) -> None:
    with np.load(cifar_file) as raw:
        images, labels = raw["images"], raw["labels"]
    assert isinstance(cifar, TensorImageSet)
    assert cifar.name == "cifar10_lossless_subset" and len(cifar) == 5000
    assert cifar.channels == 3 and cifar.image_size == 32 and cifar.num_classes == 10
    assert cifar.class_names[0] == "airplane" and cifar.class_names[9] == "truck"
    assert np.array_equal(cifar.labels, labels)
    assert torch.equal(cifar.as_tensor(), torch.from_numpy(images).permute(0, 3, 1, 2))
    assert cifar.ids[123] == "123"


def test_shared_cifar_subset_grey_resized_and_subset(cifar: TensorImageSet, cifar_file) -> None:
    small = load_npz(cifar_file, image_size=16, channels=1)
    assert small.as_tensor().shape == (5000, 1, 16, 16)
    part = cifar.subset(np.flatnonzero(cifar.labels == 3)[:7])
    assert len(part) == 7 and set(part.labels.tolist()) == {3}
    assert torch.equal(part[0][0], cifar[int(part.ids[0])][0])


def test_shared_omniglot_is_grey_with_964_classes(shared_data: Path) -> None:
    data = load_dataset(str(shared_data / "omniglot_background.npz"))
    assert len(data) == 19280 and data.channels == 1 and data.image_size == 105
    assert data.num_classes == 964 and data.class_names[0] == "Arcadian/character01"
    assert set(torch.unique(data.as_tensor()[:50]).tolist()) == {0, 255}


def _write(path: Path, **fields: np.ndarray) -> str:
    with path.open("wb") as handle:
        np.savez(handle, **fields)
    return str(path)


def test_good_npz_variants(tmp_path: Path) -> None:
    grey = np.arange(4 * 6 * 6, dtype=np.uint8).reshape(4, 6, 6)
    a = load_dataset(_write(tmp_path / "a.npz", images=grey))
    assert a.labels is None and a.channels == 1 and a.image_size == 6
    b = load_dataset(_write(tmp_path / "b.npz", images=grey[..., None], labels=np.arange(4)))
    assert torch.equal(b.as_tensor(), a.as_tensor()) and b.labels.tolist() == [0, 1, 2, 3]
    names = np.array(["w", "x", "y", "z"])
    c = load_dataset(
        _write(tmp_path / "c.NPZ", images=grey, labels=[3, 2, 1, 0], class_names=names)
    )
    assert c.class_names == ["w", "x", "y", "z"]
    wide = np.zeros((2, 4, 8, 3), dtype=np.uint8)
    d = load_dataset(_write(tmp_path / "d.npz", images=wide), image_size=4)
    assert d.as_tensor().shape == (2, 3, 4, 4)


BAD_CASES = {
    "missing images": ({"pixels": np.zeros((2, 4, 4), np.uint8)}, "no 'images' field.*pixels"),
    "label length": (
        {"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0, 1])},
        "2 labels for 3 images",
    ),
    "negative label": (
        {"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0, -2])},
        "non-negative",
    ),
    "float labels": (
        {"images": np.zeros((2, 4, 4), np.uint8), "labels": np.array([0.0, 1.0])},
        "integer",
    ),
    "wrong ndim": ({"images": np.zeros((4, 4), np.uint8)}, "N x H x W"),
    "five dims": ({"images": np.zeros((2, 4, 4, 3, 1), np.uint8)}, "N x H x W"),
    "channels first": ({"images": np.zeros((2, 3, 8, 8), np.uint8)}, "channels-first"),
    "wrong dtype": ({"images": np.zeros((2, 4, 4), np.float32)}, "uint8"),
    "empty": ({"images": np.zeros((0, 4, 4), np.uint8)}, "empty"),
    "not square": ({"images": np.zeros((2, 4, 6), np.uint8)}, "image_size"),
    "object names": (
        {"images": np.zeros((2, 4, 4), np.uint8), "class_names": np.array(["a", 1], dtype=object)},
        "Python objects",
    ),
    "too few names": (
        {
            "images": np.zeros((2, 4, 4), np.uint8),
            "labels": np.array([0, 1]),
            "class_names": np.array(["a"]),
        },
        "no class name",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_npz_raises_a_clear_value_error(tmp_path: Path, case: str) -> None:
    fields, message = BAD_CASES[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **fields)
    with pytest.raises(ValueError, match=message):
        load_dataset(str(path))


def test_not_an_npz_and_missing_file(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset(str(junk))
    with pytest.raises(FileNotFoundError):
        load_dataset(str(tmp_path / "absent.npz"))
    with pytest.raises(ValueError, match="lazy=True"):
        load_dataset(str(junk), lazy=True)
    assert not issubclass(TensorImageSet, FileImageSet)
