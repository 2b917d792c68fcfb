"""Channel conversion and resizing shared by every loader (smcluster.data.pixels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from smcluster.data.pixels import convert_and_resize, read_image, resize_square, to_channels


def _random(n: int, c: int, h: int, w: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, c, h, w), dtype=torch.uint8)


def test_rgb_to_grey_equals_pillow_luma() -> None:
    images = _random(6, 3, 9, 11)
    grey = to_channels(images, 1)
    expected = np.stack(
        [np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()).convert("L")) for im in images]
    )
    assert grey.shape == (6, 1, 9, 11)
    np.testing.assert_array_equal(grey[:, 0].numpy(), expected)


def test_grey_to_rgb_replicates_the_plane() -> None:
    images = _random(2, 1, 5, 5)
    rgb = to_channels(images, 3)
    assert rgb.shape == (2, 3, 5, 5)
    for c in range(3):
        assert torch.equal(rgb[:, c], images[:, 0])


def test_resize_keeps_same_size_and_is_the_same_in_a_batch_or_alone() -> None:
    images = _random(5, 3, 37, 45)
    assert torch.equal(resize_square(images[:, :, :20, :20], 20), images[:, :, :20, :20])
    batch = resize_square(images, 24)
    assert batch.shape == (5, 3, 24, 24) and batch.dtype == torch.uint8
    for i in range(5):
        assert torch.equal(batch[i], resize_square(images[i : i + 1], 24)[0])


def test_non_square_images_keep_aspect_and_are_centre_cropped() -> None:
    wide = torch.zeros((1, 1, 10, 30), dtype=torch.uint8)
    wide[..., 10:20] = 255
    out = resize_square(wide, 10)
    assert out.shape == (1, 1, 10, 10)
    assert out.min() == 255


def test_upsampling_a_constant_image_stays_constant() -> None:
    flat = torch.full((2, 1, 8, 8), 77, dtype=torch.uint8)
    assert torch.equal(convert_and_resize(flat, 3, 16), torch.full((2, 3, 16, 16), 77))


def test_read_image_flattens_transparency_onto_white(tmp_path) -> None:
    rgba = np.zeros((12, 12, 4), dtype=np.uint8)
    rgba[:6, :, :] = (255, 0, 0, 255)
    path = tmp_path / "half.png"
    Image.fromarray(rgba, "RGBA").save(path)
    image = read_image(path, 3, 12)
    assert image.shape == (3, 12, 12)
    red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 6, 12)
    assert torch.equal(image[:, :6], red)
    assert image[:, 6:].min() == 255


def test_read_image_scales_16_bit_grey(tmp_path) -> None:
    values = np.full((8, 8), 65535, dtype=np.uint16)
    values[:, :4] = 257 * 100
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    image = read_image(path, 1, 8)
    assert image[0, :, :4].unique().tolist() == [100]
    assert image[0, :, 4:].unique().tolist() == [255]


@pytest.mark.parametrize("channels", [1, 3])
def test_convert_and_resize_equals_convert_then_resize(channels: int) -> None:
    images = _random(3, 3, 20, 20)
    expected = resize_square(to_channels(images, channels), 13)
    assert torch.equal(convert_and_resize(images, channels, 13), expected)
