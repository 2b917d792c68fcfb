"""ImageSet semantics shared by both implementations (smcluster.data.imageset)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from smcluster.data import FileImageSet, ImageSet, TensorImageSet
from smcluster.data.strings import StringTable


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)


def test_tensor_set_items_ids_and_tensor(images: torch.Tensor) -> None:
    data = TensorImageSet(images, name="t", labels=[0, 1, 2, 0, 1, 2], class_names=list("abc"))
    assert isinstance(data, ImageSet) and isinstance(data, torch.utils.data.Dataset)
    assert len(data) == 6 and data.channels == 3 and data.image_size == 8
    image, index = data[4]
    assert index == 4 and torch.equal(image, images[4])
    assert data[-1][1] == 5 and data[np.int64(2)][1] == 2
    assert data.ids == ["0", "1", "2", "3", "4", "5"]
    assert data.labels.dtype == np.int64 and data.class_names == ["a", "b", "c"]
    assert data.num_classes == 3
    assert torch.equal(data.as_tensor(), images)
    with pytest.raises(IndexError):
        data[6]


def test_subset_keeps_labels_and_original_ids(images: torch.Tensor) -> None:
    data = TensorImageSet(images, labels=np.arange(6) % 2)
    part = data.subset([4, 1])
    assert part.ids == ["4", "1"] and part.labels.tolist() == [0, 1]
    assert torch.equal(part.as_tensor(), images[[4, 1]])
    mask = np.array([True, False, True, False, False, True])
    assert data.subset(mask).ids == ["0", "2", "5"]
    assert data.subset(torch.tensor([3])).ids == ["3"]
    assert part.subset([1]).ids == ["1"]


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        ([], "empty"),
        ([0, 6], "0..5"),
        ([-1], "0..5"),
        ([1, 1], "repeat"),
        ([0.5], "ints"),
        (np.ones(3, dtype=bool), "shape"),
    ],
)
def test_subset_refuses_bad_indices(images: torch.Tensor, indices, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TensorImageSet(images).subset(indices)


def test_validation_of_labels_ids_and_shapes(images: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="5 labels for 6 images"):
        TensorImageSet(images, labels=[0] * 5)
    with pytest.raises(ValueError, match="non-negative"):
        TensorImageSet(images, labels=[0, 1, -1, 0, 0, 0])
    with pytest.raises(ValueError, match="no class name"):
        TensorImageSet(images, labels=[0, 1, 2, 0, 0, 0], class_names=["a", "b"])
    with pytest.raises(ValueError, match="not one string"):
        TensorImageSet(images, class_names="abc")
    with pytest.raises(ValueError, match="unique"):
        TensorImageSet(images, ids=["a", "b", "c", "d", "e", "a"])
    with pytest.raises(ValueError, match="empty"):
        TensorImageSet(images[:0])
    with pytest.raises(ValueError, match="square"):
        TensorImageSet(images[:, :, :, :5])
    with pytest.raises(ValueError, match="uint8"):
        TensorImageSet(images.float())


def test_string_table_round_trip_and_take() -> None:
    strings = ["a", "", "ümlaut/ß.png", "日本.jpg", "z" * 300]
    table = StringTable(strings)
    assert len(table) == 5 and table.tolist() == strings
    assert [table[i] for i in range(5)] == strings
    assert table.take(np.array([3, 0])).tolist() == ["日本.jpg", "a"]


def test_file_set_reads_lazily_pickles_and_subsets(tmp_path) -> None:
    paths = []
    for k in range(3):
        path = tmp_path / f"{k}.png"
        Image.fromarray(np.full((10, 10), 80 * k, dtype=np.uint8)).save(path)
        paths.append(path)
    data = FileImageSet(paths, channels=1, image_size=5, labels=[0, 1, 1])
    assert data.as_tensor() is None and data.ids == [str(p) for p in paths]
    assert data[2][0].shape == (1, 5, 5) and data[2][0].unique().tolist() == [160]
    copy = pickle.loads(pickle.dumps(data))
    assert torch.equal(copy[1][0], data[1][0]) and copy.ids == data.ids
    part = data.subset([2, 0])
    assert isinstance(part, FileImageSet) and part.labels.tolist() == [1, 0]
    assert part.path(0) == str(paths[2])
    batch, index = next(iter(torch.utils.data.DataLoader(data, batch_size=3)))
    assert batch.shape == (3, 1, 5, 5) and index.tolist() == [0, 1, 2]


def test_file_set_replaces_a_file_broken_after_loading(tmp_path, caplog) -> None:
    path = tmp_path / "gone.png"
    Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(path)
    data = FileImageSet([path], channels=3, image_size=4)
    path.write_bytes(b"not an image any more")
    image, _ = data[0]
    assert torch.equal(image, torch.zeros((3, 4, 4), dtype=torch.uint8))
    assert "gone.png" in caplog.text
