"""Batched augmentations (METHOD.md, Stage 1 Augmentations, Stage 2 strong and weak views)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from sklearn.datasets import load_digits

from smcluster.augment import (
    CUTOUT_FILL,
    RAND_AUGMENT_OPS,
    ViewMaker,
    cutout,
    horizontal_flip,
    rand_augment,
    random_resized_crop,
    to_float,
    weak_view,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NOT_MAGNITUDE_DRIVEN = {"Identity", "AutoContrast", "Equalize"}


def _digits(n: int = 16) -> torch.Tensor:
    """Real grey images: scikit-learn's 8 x 8 hand-written digits, n x 1 x 8 x 8 in [0, 1]."""
    images = load_digits().images[:n] / 16.0
    return torch.from_numpy(images).float().unsqueeze(1)


def _scene(n: int = 8, channels: int = 3, size: int = 32) -> torch.Tensor:
    """Colour images with gradients, a bright square and texture, values within [0.1, 0.9]."""
    g = torch.Generator().manual_seed(1)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([xs, ys, (xs + ys) / 2])[:channels]
    images = 0.15 + 0.5 * base.expand(n, channels, size, size).clone()
    q = size // 4
    images[:, :, q : 2 * q, q : 3 * q] += 0.2
    images += 0.05 * torch.rand(n, channels, size, size, generator=g)
    return images.clamp(0.1, 0.9)


def _all_views(x: torch.Tensor) -> dict[str, torch.Tensor]:
    views = ViewMaker()
    return {
        "crop": random_resized_crop(x),
        "flip": horizontal_flip(x),
        "rand_augment": rand_augment(x),
        "cutout": cutout(x),
        "weak_view": weak_view(x),
        "view_a": views.view_a(x),
        "view_b": views.view_b(x),
        "strong": views.strong(x),
        "weak": views.weak(x),
    }


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels,size", [(1, 8), (1, 28), (3, 32), (3, 17)])
def test_shape_dtype_device_and_range_are_kept(device: str, channels: int, size: int) -> None:
    x = _scene(6, channels, size).to(device)
    for name, y in _all_views(x).items():
        assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device, name
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, name


def test_double_precision_and_real_digits_are_kept() -> None:
    x = _digits().double()
    for name, y in _all_views(x).items():
        assert y.dtype == torch.float64 and y.shape == x.shape, name
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0, name


def test_uint8_input_is_converted() -> None:
    x = (_scene(4) * 255).round().to(torch.uint8)
    assert torch.equal(to_float(x), x.float() / 255)
    views = ViewMaker()
    for y in (views.view_a(x), views.view_b(x), views.strong(x), views.weak(x)):
        assert y.dtype == torch.float32 and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with pytest.raises(ValueError, match="uint8 or float"):
        to_float(x.long())


def test_bad_inputs_and_settings_raise() -> None:
    with pytest.raises(ValueError, match="to_float"):
        rand_augment((_scene(2) * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        cutout(torch.rand(2, 4, 8, 8))
    with pytest.raises(ValueError, match="C = 1 or 3"):
        weak_view(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="magnitude"):
        rand_augment(_scene(2), magnitude=11.0)
    with pytest.raises(ValueError, match="crop_scale"):
        ViewMaker(crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="cutout_fraction"):
        ViewMaker(cutout_fraction=1.5)


def test_each_sample_draws_its_own_parameters() -> None:
    x = _scene(1).expand(8, -1, -1, -1).contiguous()
    views = ViewMaker()
    for name, y in {"view_a": views.view_a(x), "view_b": views.view_b(x)}.items():
        flat = y.flatten(1)
        distances = torch.cdist(flat, flat) + torch.eye(8) * 1e9
        assert float(distances.min()) > 1e-3, name
    strong = views.strong(x).flatten(1)
    assert len(torch.unique(strong, dim=0)) >= 6
    weak = views.weak(x).flatten(1)
    assert len(torch.unique(weak, dim=0)) >= 4


def test_seed_makes_views_reproducible() -> None:
    x = _scene(8)
    torch.manual_seed(3)
    first = _all_views(x)
    torch.manual_seed(3)
    second = _all_views(x)
    torch.manual_seed(4)
    third = _all_views(x)
    for name in first:
        assert torch.equal(first[name], second[name]), name
        assert not torch.equal(first[name], third[name]), name


def test_horizontal_flip_extremes() -> None:
    x = _scene(4)
    assert torch.equal(horizontal_flip(x, p=1.0), torch.flip(x, dims=[-1]))
    assert torch.equal(horizontal_flip(x, p=0.0), x)
    flipped = horizontal_flip(x[:1].expand(64, -1, -1, -1).contiguous(), p=0.5)
    is_flipped = (flipped == torch.flip(x[:1], dims=[-1])).flatten(1).all(1)
    assert 10 < int(is_flipped.sum()) < 54


@pytest.mark.parametrize("size,fraction", [(32, 0.5), (28, 0.5), (9, 0.3)])
def test_cutout_fills_one_clipped_square_per_sample(size: int, fraction: float) -> None:
    x = torch.full((200, 3, size, size), 0.2)
    y = cutout(x, fraction)
    side = round(fraction * size)
    hole = y == CUTOUT_FILL
    assert torch.equal(hole | (y == 0.2), torch.ones_like(hole))
    assert torch.equal(hole[:, :1].expand_as(hole), hole)
    hole = hole[:, 0]
    row_any, col_any = hole.any(2), hole.any(1)
    rows, cols = row_any.sum(1), col_any.sum(1)
    assert torch.equal(hole.flatten(1).sum(1), rows * cols)
    for present, span in ((row_any, rows), (col_any, cols)):
        first = present.float().argmax(1)
        last = size - 1 - present.flip(1).float().argmax(1)
        assert torch.equal(last - first + 1, span)
        assert int(span.min()) >= math.ceil(side / 2) and int(span.max()) == side


def test_crop_of_whole_image_is_identity_and_crops_zoom() -> None:
    x = _scene(4)
    whole = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert torch.allclose(whole, x, atol=1e-5)
    mirrored = random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    assert torch.allclose(mirrored, torch.flip(x, dims=[-1]), atol=1e-5)
    constant = torch.full((16, 3, 20, 20), 0.7)
    assert torch.allclose(random_resized_crop(constant), constant, atol=1e-5)
    zoomed = random_resized_crop(x, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    assert float((zoomed - x).abs().mean()) > 0.01
    ramp = torch.linspace(0.1, 0.9, 24).expand(8, 1, 24, 24).contiguous()
    half = random_resized_crop(ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0))
    # output columns 1 and 22 sample the box 21 half-pixels apart: 10.5 input pixels
    spans = half[:, 0, :, -2] - half[:, 0, :, 1]
    assert torch.allclose(spans, torch.full_like(spans, 10.5 * 0.8 / 23), atol=1e-4)


def test_weak_view_copies_pixels_and_is_identity_without_flip_or_shift() -> None:
    x = _scene(6)
    assert torch.equal(weak_view(x, max_shift=0.0, flip_p=0.0), x)
    assert torch.equal(weak_view(x, max_shift=0.0, flip_p=1.0), torch.flip(x, dims=[-1]))
    shifted = weak_view(x, max_shift=0.125, flip_p=0.0)
    for image, out in zip(x, shifted, strict=True):
        assert bool(torch.isin(out, image).all())
    assert not torch.equal(shifted, x)


def test_weak_view_shift_is_whole_pixels_within_the_limit() -> None:
    size, limit = 32, 4
    ramp = torch.arange(size, dtype=torch.float32) / 64 + 0.2
    x = ramp.expand(64, 1, size, size).contiguous()
    y = weak_view(x, max_shift=limit / size, flip_p=0.0)
    centre = y[:, 0, 0, size // 2]
    shift = torch.round((centre - ramp[size // 2]) * 64)
    assert int(shift.abs().max()) == limit
    assert torch.allclose(y[:, 0, 0, limit:-limit], ramp[limit:-limit] + shift[:, None] / 64)


def test_color_is_a_no_op_on_grey() -> None:
    x = _digits()
    assert torch.equal(RAND_AUGMENT_OPS["Color"](x, torch.ones(len(x))), x)
    grey_rgb = x.expand(-1, 3, -1, -1)
    assert torch.allclose(RAND_AUGMENT_OPS["Color"](grey_rgb, torch.ones(len(x))), grey_rgb)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", sorted(RAND_AUGMENT_OPS))
def test_each_op_changes_an_image_at_full_strength(name: str, channels: int) -> None:
    x = _scene(4, channels, 16)
    level = torch.ones(4)
    y = RAND_AUGMENT_OPS[name](x, level)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    unchanged = name == "Identity" or (name == "Color" and channels == 1)
    assert torch.equal(y, x) if unchanged else float((y - x).abs().amax(dim=(1, 2, 3)).min()) > 0.01
    if name not in NOT_MAGNITUDE_DRIVEN:
        assert torch.allclose(RAND_AUGMENT_OPS[name](x, torch.zeros(4)), x, atol=1e-5)


def test_each_op_accepts_an_empty_and_a_single_sample_batch() -> None:
    x = _scene(1, 3, 8)
    for name, op in RAND_AUGMENT_OPS.items():
        assert op(x[:0], torch.ones(0)).shape == (0, 3, 8, 8), name
        assert op(x, torch.full((1,), 0.5)).shape == x.shape, name


def test_equalize_posterize_and_solarize_match_pillow() -> None:
    x = (_scene(2, 3, 24) * 255).round().to(torch.uint8)
    x[1] = (x[1].float() * 0.4 + 80).round().to(torch.uint8)
    for name, pil_op in [
        ("Equalize", ImageOps.equalize),
        ("Posterize", lambda image: ImageOps.posterize(image, 4)),
        ("Solarize", lambda image: ImageOps.solarize(image, 128)),
    ]:
        level = torch.full((2,), 0.5 if name == "Solarize" else 1.0)
        ours = (RAND_AUGMENT_OPS[name](to_float(x), level) * 255).round().to(torch.uint8)
        for image, out in zip(x, ours, strict=True):
            pil = pil_op(Image.fromarray(image.permute(1, 2, 0).numpy()))
            expected = torch.from_numpy(np.asarray(pil).copy()).permute(2, 0, 1)
            assert torch.equal(out, expected), name


def test_rand_augment_magnitudes_and_op_counts() -> None:
    x = _scene(32)
    assert torch.equal(rand_augment(x, num_ops=0), x)
    gentle = rand_augment(x, num_ops=2, magnitude=1.0)
    strong = rand_augment(x, num_ops=2, magnitude=10.0)
    assert float((gentle - x).abs().mean()) < float((strong - x).abs().mean())
    changed = (rand_augment(x, num_ops=4) - x).abs().flatten(1).amax(1) > 1e-3
    assert int(changed.sum()) >= 28
    tiles = x[:1, :, :8, :8].expand(280, -1, -1, -1).contiguous()
    untouched = (rand_augment(tiles, num_ops=1) == tiles).flatten(1).all(1)
    # about one sample in 14 draws Identity; every other op moves almost every sample
    assert 5 < int(untouched.sum()) < 60


def test_rand_augment_returns_each_sample_in_its_place() -> None:
    # every 8-bit level once per channel: AutoContrast and Equalize leave such images alone,
    # so at magnitude 0 all ops are identities and only a mix-up of samples could show
    levels = torch.arange(256, dtype=torch.float32) / 255
    x = torch.stack([levels[torch.randperm(256)] for _ in range(40 * 3)]).view(40, 3, 16, 16)
    assert torch.allclose(rand_augment(x, num_ops=4, magnitude=0.0), x, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_views_follow_the_batch_device(device: str) -> None:
    x = (_scene(4) * 255).to(torch.uint8).to(device)
    views = ViewMaker(num_ops=2, magnitude=5.0)
    for y in (views.view_a(x), views.view_b(x), views.strong(x), views.weak(x)):
        assert y.device == x.device
