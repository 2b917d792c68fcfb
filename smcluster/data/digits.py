"""The embedded default data set: scikit-learn's bundled handwritten digits (no download)."""

from __future__ import annotations

import numpy as np

from smcluster.data.arrays import from_arrays
from smcluster.data.imageset import TensorImageSet


def load_digits_set(
    *, image_size: int | None = None, channels: int | None = None
) -> TensorImageSet:
    """1,797 grey 8 x 8 digits (UCI optical recognition set), labels 0..9, names "0".."9".

    The source values 0..16 are scaled to 0..255 (rounded), so the set looks like any other
    uint8 image set.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return from_arrays(
        images,
        bunch.target.astype(np.int64),
        [str(c) for c in range(10)],
        name="digits",
        image_size=image_size,
        channels=channels,
    )
