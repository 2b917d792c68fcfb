"""Source resolution and argument checks of load_dataset (smcluster.data.sources)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smcluster.data import NAMED_SOURCES, load_dataset


def test_registry_names() -> None:
    expected = {"digits", "cifar10", "cifar100", "cifar100-20", "stl10", "mnist"}
    assert expected | {"fashion-mnist", "kmnist", "omniglot"} == set(NAMED_SOURCES)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("imagenet-9000", "unknown data source.*digits.*cifar100-20.*\\.npz.*folder"),
        ("cifar1O", "Did you mean 'cifar10'"),
        ("no/such/folder", "does not exist"),
    ],
)
def test_unknown_sources(source: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(source)


def test_a_file_that_is_not_npz(tmp_path: Path) -> None:
    text = tmp_path / "images.csv"
    text.write_text("a,b\n")
    with pytest.raises(ValueError, match="not an .npz file"):
        load_dataset(str(text))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"image_size": 0}, "image_size"),
        ({"image_size": 12.5}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"lazy": True}, "lazy=True"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset("digits", **kwargs)


def test_numpy_integer_sizes_are_accepted() -> None:
    assert load_dataset("digits", image_size=np.int64(10)).image_size == 10
