"""ImageSets from .npz files (smcluster.data.npz): the shared sets and every bad input."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

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


FUZZ = settings(max_examples=60, deadline=None, database=None, derandomize=True)
MAGIC = st.sampled_from([b"", b"PK\x03\x04", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00"])


def _valid_npz() -> bytes:
    buffer = io.BytesIO()
    images = np.arange(3 * 5 * 5, dtype=np.uint8).reshape(3, 5, 5)
    np.savez_compressed(buffer, images=images, labels=np.arange(3), class_names=["a", "b", "c"])
    return buffer.getvalue()


VALID_NPZ = _valid_npz()


@FUZZ
@given(head=MAGIC, body=st.binary(max_size=600))
def test_fuzz_random_bytes_as_npz(clean_outcome, head: bytes, body: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npz"
        path.write_bytes(head + body)
        clean_outcome(lambda: load_dataset(str(path)))


@FUZZ
@given(
    cut=st.integers(0, len(VALID_NPZ)) | st.just(len(VALID_NPZ)),
    flips=st.lists(st.tuples(st.integers(0, len(VALID_NPZ) - 1), st.integers(0, 255)), max_size=4),
)
def test_fuzz_truncated_and_corrupted_npz(
    clean_outcome, cut: int, flips: list[tuple[int, int]]
) -> None:
    data = bytearray(VALID_NPZ)
    for position, value in flips:
        data[position] = value
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npz"
        path.write_bytes(bytes(data[:cut]))
        clean_outcome(lambda: load_npz(path, image_size=4, channels=3))


ARRAYS = hnp.arrays(
    dtype=st.sampled_from([np.uint8, np.int64, np.float32, np.bool_, np.dtype("<U2")]),
    shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5),
)
IMAGE_SHAPES = st.tuples(st.integers(0, 4), st.integers(1, 5), st.sampled_from([(), (1,), (3,)]))
IMAGE_ARRAYS = hnp.arrays(np.uint8, IMAGE_SHAPES.map(lambda s: (s[0], s[1], s[1], *s[2])))
LABEL_ARRAYS = hnp.arrays(np.int64, st.tuples(st.integers(0, 4)), elements=st.integers(-1, 5))
NAME_ARRAYS = hnp.arrays(np.dtype("<U3"), st.tuples(st.integers(0, 6)))


@FUZZ
@given(
    fields=st.fixed_dictionaries(
        {"images": IMAGE_ARRAYS | ARRAYS},
        optional={
            "labels": LABEL_ARRAYS | ARRAYS,
            "class_names": NAME_ARRAYS | ARRAYS,
            "other": ARRAYS,
        },
    ),
    image_size=st.sampled_from([None, 1, 8]),
    channels=st.sampled_from([None, 1, 3]),
)
def test_fuzz_malformed_npz_fields(
    clean_outcome, fields: dict[str, np.ndarray], image_size: int | None, channels: int | None
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npz"
        np.savez(path, **fields)
        clean_outcome(lambda: load_dataset(str(path), image_size=image_size, channels=channels))
