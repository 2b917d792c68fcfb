"""The embedded default data set (smcluster.data.digits)."""

from __future__ import annotations

import numpy as np
import torch

from smcluster.data import load_dataset


def test_digits_native() -> None:
    data = load_dataset("digits")
    assert data.name == "digits" and len(data) == 1797
    assert data.channels == 1 and data.image_size == 8
    assert data.class_names == [str(k) for k in range(10)]
    assert np.array_equal(np.unique(data.labels), np.arange(10))
    tensor = data.as_tensor()
    assert tensor.shape == (1797, 1, 8, 8) and tensor.dtype == torch.uint8
    assert int(tensor.min()) == 0 and int(tensor.max()) == 255
    assert data.ids[:2] == ["0", "1"] and len(set(data.ids)) == 1797


def test_digits_resized_and_as_rgb() -> None:
    data = load_dataset("DIGITS", image_size=16, channels=3)
    assert data.as_tensor().shape == (1797, 3, 16, 16)
    image, index = data[10]
    assert index == 10 and torch.equal(image[0], image[2])
    assert data.labels[10] == load_dataset("digits").labels[10]
