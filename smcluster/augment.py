"""Batched tensor augmentations: the contrastive pair, the strong view and the weak view.

Every function takes a float batch ``B x C x H x W`` in [0, 1] (C = 1 grey or 3 RGB) and
returns a batch of the same shape, dtype and device, in [0, 1]. Each sample draws its own
random parameters from the global torch RNG on the batch's device, so ``torch.manual_seed``
makes a run reproducible, and nothing loops over samples in Python: a whole batch costs a
few tensor operations, cheap enough to run every training step on a CPU.

Where they are used (METHOD.md):
- Stage 1, Augmentations: t_a = random-resized-crop + flip + RandAugment (4 ops, random
  magnitude); t_b = the same + Cutout (one square hole, half the side). See ``ViewMaker``.
- Stage 2, step 2: the strong view = RandAugment (4 random ops) + Cutout, no crop.
- Stage 2, step 3 and Stage 3: the weak view = flip + small shift, as in FixMatch.

RandAugment magnitude scale: 0..10, as FixMatch's RandAugmentMC. Magnitude 0 leaves every op
an identity and 10 is its strongest setting (``MAX_STRENGTH``): rotate 30 degrees, shear
0.3, translate 0.3 of the side, enhance factors 1 +- 0.9 (torchvision's ranges), posterize to
4 bits, solarize at threshold 0. Signed ops (rotate, shear, translate, the enhance factors)
draw the sign at random per sample. "Random magnitude" (the paper's variant, after SCAN's
``Augment``) draws each sample's magnitude uniformly in [0, max_magnitude] for every op slot.
Geometric ops fill the area they expose with black (0), as torchvision's RandAugment.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

MAX_LEVEL = 10.0
"""Top of the RandAugment magnitude scale (FixMatch's RandAugmentMC uses 0..10)."""

MAX_STRENGTH: dict[str, float] = {
    "rotate_degrees": 30.0,
    "shear": 0.3,
    "translate": 0.3,
    "enhance": 0.9,
    "posterize_bits": 4.0,
}
"""Strength of each op at magnitude ``MAX_LEVEL`` (torchvision's RandAugment ranges)."""

CUTOUT_FILL = 0.5
"""Grey, the value Cutout writes into its hole."""

Op = Callable[[Tensor, Tensor], Tensor]


def to_float(x: Tensor) -> Tensor:
    """Convert a uint8 image batch (0..255) to float32 in [0, 1]; float input passes through.

    Data sets are held as uint8 to save memory; augmentations work on floats.
    """
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0
    if x.is_floating_point():
        return x
    raise ValueError(f"expected a uint8 or float image tensor, got dtype {x.dtype}")


def _check(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(
            f"expected an image batch B x C x H x W with C = 1 or 3, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"expected a float batch in [0, 1], got dtype {x.dtype}; use to_float")


def _rand(n: int, like: Tensor) -> Tensor:
    return torch.rand(n, device=like.device, dtype=like.dtype)


def _signs(like: Tensor) -> Tensor:
    """A random +1 or -1 per entry of ``like`` (1-D), same dtype and device."""
    return torch.randint(0, 2, like.shape, device=like.device, dtype=like.dtype) * 2.0 - 1.0


def _per_sample(v: Tensor) -> Tensor:
    return v.view(-1, 1, 1, 1)


def _theta(a: Tensor, b: Tensor, c: Tensor, d: Tensor, tx: Tensor, ty: Tensor) -> Tensor:
    """Stack per-sample entries into ``n x 2 x 3`` affine matrices [[a, b, tx], [c, d, ty]]."""
    return torch.stack([a, b, tx, c, d, ty], 1).view(len(a), 2, 3)


def _affine(
    x: Tensor, theta: Tensor, padding_mode: str = "zeros", mode: str = "bilinear"
) -> Tensor:
    """Resample every sample through its own ``2 x 3`` affine map in one ``grid_sample`` call.

    ``theta`` maps output to input in normalised coordinates (-1..1 from edge to edge, as
    ``affine_grid(..., align_corners=False)``, so the identity reproduces the input exactly).
    The grid is built by broadcasting rather than ``affine_grid``, whose batched matrix product
    costs more on a CPU than the resampling itself.
    """
    n, _, h, w = x.shape
    xs = (torch.arange(w, device=x.device, dtype=x.dtype) * 2.0 + 1.0) / w - 1.0
    ys = ((torch.arange(h, device=x.device, dtype=x.dtype) * 2.0 + 1.0) / h - 1.0).view(h, 1)
    t = theta.reshape(n, 6, 1, 1)
    gx = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    gy = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    grid = torch.stack([gx, gy], -1)
    out = F.grid_sample(x, grid, mode=mode, padding_mode=padding_mode, align_corners=False)
    return out.clamp_(0.0, 1.0)


def _grey(x: Tensor) -> Tensor:
    """Luma (ITU-R 601, as torchvision), kept 1-channel; a grey batch is its own luma."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def _blend(x: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    """PIL ImageEnhance: factor 1 keeps ``x``, 0 gives ``degenerate``, > 1 extrapolates."""
    f = _per_sample(factor)
    return (degenerate + f * (x - degenerate)).clamp_(0.0, 1.0)


def _enhance_factor(level: Tensor) -> Tensor:
    return 1.0 + _signs(level) * MAX_STRENGTH["enhance"] * level


# --- RandAugment ops: (x_subset, level_subset in [0, 1]) -> x_subset -----------------------


def _identity(x: Tensor, level: Tensor) -> Tensor:
    return x


def _auto_contrast(x: Tensor, level: Tensor) -> Tensor:
    """Stretch each channel of each sample to span [0, 1] (constant channels are kept)."""
    lo = x.amin(dim=(2, 3), keepdim=True)
    hi = x.amax(dim=(2, 3), keepdim=True)
    flat = hi <= lo
    scale = torch.where(flat, 1.0, 1.0 / (hi - lo).clamp_min(1e-12))
    return ((x - torch.where(flat, 0.0, lo)) * scale).clamp_(0.0, 1.0)


def _equalize(x: Tensor, level: Tensor) -> Tensor:
    """Histogram equalisation per channel, with PIL's lookup table on the 8-bit quantised image.

    The batched version is exact up to rounding the float input to 256 levels.
    """
    n, c, h, w = x.shape
    q = (x * 255.0).round_().clamp_(0, 255).long().view(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, q, torch.ones_like(q))
    last = 255 - (hist.flip(1) > 0).long().argmax(1, keepdim=True)
    step = (h * w - hist.gather(1, last)) // 255
    before = hist.cumsum(1) - hist
    lut = ((step // 2 + before) // step.clamp_min(1)).clamp_(0, 255)
    lut = torch.where(step > 0, lut, torch.arange(256, device=x.device))
    return lut.gather(1, q).view(n, c, h, w).to(x.dtype) / 255.0


def _solarize(x: Tensor, level: Tensor) -> Tensor:
    """Invert pixels at or above the threshold 1 - level (level 0 changes nothing)."""
    invert = (x >= _per_sample(1.0 - level)) & _per_sample(level > 0)
    return torch.where(invert, 1.0 - x, x)


def _color(x: Tensor, level: Tensor) -> Tensor:
    """Saturation; a grey image has none, so C = 1 is returned unchanged."""
    if x.shape[1] == 1:
        return x
    return _blend(x, _grey(x), _enhance_factor(level))


def _posterize(x: Tensor, level: Tensor) -> Tensor:
    """Keep 8 - round(4 level) bits of each 8-bit value; at 8 bits the sample is unchanged."""
    drop = _per_sample((MAX_STRENGTH["posterize_bits"] * level).round())
    step = torch.pow(2.0, drop)
    posterized = torch.floor((x * 255.0).round() / step) * step / 255.0
    return torch.where(drop > 0, posterized, x)


def _contrast(x: Tensor, level: Tensor) -> Tensor:
    mean = _grey(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean.expand_as(x), _enhance_factor(level))


def _brightness(x: Tensor, level: Tensor) -> Tensor:
    return _blend(x, torch.zeros_like(x), _enhance_factor(level))


def _sharpness(x: Tensor, level: Tensor) -> Tensor:
    """Blend with PIL's smoothing filter (3 x 3, centre weight 5); border pixels kept."""
    c = x.shape[1]
    kernel = torch.ones(3, 3, dtype=x.dtype, device=x.device)
    kernel[1, 1] = 5.0
    kernel = (kernel / kernel.sum()).expand(c, 1, 3, 3)
    smooth = x.clone()
    smooth[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel, groups=c)
    return _blend(x, smooth, _enhance_factor(level))


class _Geometric:
    """A geometric op: per-sample affine matrices from levels, resampled with zero fill.

    Calling it augments like any op; ``rand_augment`` instead collects the matrices of all
    geometric ops drawn in a slot and resamples them together in one call.
    """

    def __init__(self, theta: Callable[[Tensor, float], Tensor]) -> None:
        self.theta = theta

    def __call__(self, x: Tensor, level: Tensor) -> Tensor:
        return _affine(x, self.theta(level, x.shape[2] / x.shape[3]))


def _rotate(level: Tensor, aspect: float) -> Tensor:
    """Rotation by up to 30 degrees; ``aspect`` = H / W keeps it a rotation in pixels."""
    angle = _signs(level) * math.radians(MAX_STRENGTH["rotate_degrees"]) * level
    cos, sin, zero = angle.cos(), angle.sin(), torch.zeros_like(angle)
    return _theta(cos, -sin * aspect, sin / aspect, cos, zero, zero)


def _shear(axis: int) -> Callable[[Tensor, float], Tensor]:
    def theta(level: Tensor, aspect: float) -> Tensor:
        k = _signs(level) * MAX_STRENGTH["shear"] * level
        one, zero = torch.ones_like(k), torch.zeros_like(k)
        if axis == 0:
            return _theta(one, k * aspect, zero, one, zero, zero)
        return _theta(one, zero, k / aspect, one, zero, zero)

    return theta


def _translate(axis: int) -> Callable[[Tensor, float], Tensor]:
    def theta(level: Tensor, aspect: float) -> Tensor:
        t = _signs(level) * 2.0 * MAX_STRENGTH["translate"] * level
        one, zero = torch.ones_like(t), torch.zeros_like(t)
        return _theta(one, zero, zero, one, *((t, zero) if axis == 0 else (zero, t)))

    return theta


RAND_AUGMENT_OPS: dict[str, Op] = {
    "Identity": _identity,
    "AutoContrast": _auto_contrast,
    "Equalize": _equalize,
    "Rotate": _Geometric(_rotate),
    "Solarize": _solarize,
    "Color": _color,
    "Posterize": _posterize,
    "Contrast": _contrast,
    "Brightness": _brightness,
    "Sharpness": _sharpness,
    "ShearX": _Geometric(_shear(0)),
    "ShearY": _Geometric(_shear(1)),
    "TranslateX": _Geometric(_translate(0)),
    "TranslateY": _Geometric(_translate(1)),
}
"""RandAugment's op list (torchvision / FixMatch). Each op maps a sub-batch and its per-sample
levels (magnitude / MAX_LEVEL, in [0, 1]) to the augmented sub-batch. Geometric ops are
``_Geometric`` wrappers so that ``rand_augment`` can resample them together."""


# --- public augmentations ------------------------------------------------------------------


def random_resized_crop(
    x: Tensor,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.0,
) -> Tensor:
    """Crop a random box from each sample and resize it back to the input size (bilinear).

    As torchvision's RandomResizedCrop (METHOD.md, Stage 1, Augmentations): the box's area is
    a uniform share ``scale`` of the image and its aspect ratio log-uniform in ``ratio``; of
    ten tries per sample the first that fits is used, else the last one is clipped to fit.
    Boxes are continuous rather than whole pixels. ``flip_p`` mirrors a sample left-right in
    the same resampling, so crop + flip cost one ``grid_sample`` call for the whole batch.
    """
    _check(x)
    lo, hi = scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"crop scale must satisfy 0 < low <= high <= 1, got {scale}")
    if not 0.0 < ratio[0] <= ratio[1]:
        raise ValueError(f"crop ratio must satisfy 0 < low <= high, got {ratio}")
    b, tries = x.shape[0], 10
    area = lo + (hi - lo) * torch.rand(b, tries, device=x.device, dtype=x.dtype)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    r = (log_lo + (log_hi - log_lo) * torch.rand_like(area)).exp() * (x.shape[2] / x.shape[3])
    w, h = (area * r).sqrt(), (area / r).sqrt()
    fits = (w <= 1.0) & (h <= 1.0)
    first = torch.where(fits.any(1), fits.long().argmax(1), tries - 1).unsqueeze(1)
    w = w.gather(1, first).squeeze(1).clamp(max=1.0)
    h = h.gather(1, first).squeeze(1).clamp(max=1.0)
    cx = (2.0 * _rand(b, x) - 1.0) * (1.0 - w)
    cy = (2.0 * _rand(b, x) - 1.0) * (1.0 - h)
    mirror = torch.where(_rand(b, x) < flip_p, -1.0, 1.0).to(x.dtype)
    zero = torch.zeros_like(w)
    return _affine(x, _theta(w * mirror, zero, zero, h, cx, cy), padding_mode="border")


def horizontal_flip(x: Tensor, p: float = 0.5) -> Tensor:
    """Mirror each sample left-right with probability ``p`` (METHOD.md, Stage 1 and 2)."""
    _check(x)
    idx = (_rand(x.shape[0], x) < p).nonzero().squeeze(1)
    return x.clone().index_copy_(0, idx, x.index_select(0, idx).flip(-1))


def rand_augment(
    x: Tensor,
    num_ops: int = 4,
    magnitude: float | None = None,
    max_magnitude: float = MAX_LEVEL,
) -> Tensor:
    """RandAugment on a batch (METHOD.md, Stage 1 Augmentations and Stage 2 strong view).

    For each of ``num_ops`` slots every sample draws its own op uniformly from
    ``RAND_AUGMENT_OPS`` and its own magnitude uniformly in [0, max_magnitude] (``magnitude``
    None: the paper's "random magnitude", as SCAN's ``Augment``) or the fixed ``magnitude``.
    Magnitudes are on a 0..MAX_LEVEL (0..10) scale. Per slot the batch is sorted by op, each
    op runs once on its slice, and all geometric ops share one resampling call; the original
    sample order is restored once at the end.
    """
    _check(x)
    if num_ops < 0:
        raise ValueError(f"num_ops must be >= 0, got {num_ops}")
    if not 0.0 <= max_magnitude <= MAX_LEVEL:
        raise ValueError(f"max_magnitude must be in [0, {MAX_LEVEL}], got {max_magnitude}")
    if magnitude is not None and not 0.0 <= magnitude <= MAX_LEVEL:
        raise ValueError(f"magnitude must be in [0, {MAX_LEVEL}] or None, got {magnitude}")
    pointwise = [op for op in RAND_AUGMENT_OPS.values() if not isinstance(op, _Geometric)]
    geometric = [op for op in RAND_AUGMENT_OPS.values() if isinstance(op, _Geometric)]
    b, aspect, n_point = x.shape[0], x.shape[2] / x.shape[3], len(pointwise)
    out, origin = x, torch.arange(b, device=x.device)
    for _ in range(num_ops):
        choice = torch.randint(n_point + len(geometric), (b,), device=x.device)
        if magnitude is None:
            level = _rand(b, x) * (max_magnitude / MAX_LEVEL)
        else:
            level = torch.full((b,), magnitude / MAX_LEVEL, device=x.device, dtype=x.dtype)
        order = torch.argsort(choice, stable=True)
        counts = torch.bincount(choice, minlength=n_point + len(geometric)).tolist()
        ordered, levels = out.index_select(0, order), level.index_select(0, order).split(counts)
        pieces = [
            op(xi, li) if len(xi) else xi
            for op, xi, li in zip(pointwise, ordered.split(counts), levels, strict=False)
        ]
        moved = ordered[sum(counts[:n_point]) :]
        if len(moved):
            thetas = [
                op.theta(li, aspect) for op, li in zip(geometric, levels[n_point:], strict=True)
            ]
            moved = _affine(moved, torch.cat(thetas))
        # the batch stays sorted by this slot's ops; ``origin`` tracks where each sample came from
        out, origin = torch.cat([*pieces, moved]), origin.index_select(0, order)
    return out.index_select(0, torch.argsort(origin))


def cutout(x: Tensor, size_fraction: float = 0.5, fill: float = CUTOUT_FILL) -> Tensor:
    """Fill one square hole per sample with grey (METHOD.md, Stage 1 t_b and Stage 2 strong).

    The hole's side is ``round(size_fraction * H)`` and its centre a uniform pixel of the
    image; the parts outside the image are clipped, as in SCAN's and FixMatch's Cutout.
    """
    _check(x)
    if not 0.0 <= size_fraction <= 1.0:
        raise ValueError(f"cutout size_fraction must be in [0, 1], got {size_fraction}")
    b, _, h, w = x.shape
    side = round(size_fraction * h)
    top = torch.randint(h, (b, 1), device=x.device) - side // 2
    left = torch.randint(w, (b, 1), device=x.device) - side // 2
    rows = torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device)
    in_rows = ((rows >= top) & (rows < top + side)).to(x.dtype)
    in_cols = ((cols >= left) & (cols < left + side)).to(x.dtype)
    hole = (in_rows[:, :, None] * in_cols[:, None, :]).unsqueeze(1)
    return x * (1.0 - hole) + fill * hole


def weak_view(x: Tensor, max_shift: float = 0.125, flip_p: float = 0.5) -> Tensor:
    """FixMatch's weak augmentation: random flip + shift by whole pixels (METHOD.md, Stage 2).

    Each sample moves by up to ``round(max_shift * side)`` pixels along each axis, the image
    mirrored at the borders to fill the gap (as FixMatch's reflect padding). Flip and shift are
    one nearest-neighbour ``grid_sample`` call, which copies pixels exactly.
    """
    _check(x)
    if not 0.0 <= max_shift < 1.0:
        raise ValueError(f"weak max_shift must be in [0, 1), got {max_shift}")
    b, _, h, w = x.shape
    px, py = round(max_shift * w), round(max_shift * h)
    dx = torch.randint(-px, px + 1, (b,), device=x.device).to(x.dtype) * (2.0 / w)
    dy = torch.randint(-py, py + 1, (b,), device=x.device).to(x.dtype) * (2.0 / h)
    mirror = torch.where(_rand(b, x) < flip_p, -1.0, 1.0).to(x.dtype)
    one, zero = torch.ones_like(mirror), torch.zeros_like(mirror)
    theta = _theta(mirror, zero, zero, one, dx, dy)
    return _affine(x, theta, padding_mode="reflection", mode="nearest")


@dataclass
class ViewMaker:
    """The views each stage asks for, built from one set of settings (METHOD.md).

    ``view_a`` / ``view_b`` are Stage 1's t_a and t_b, ``strong`` and ``weak`` Stage 2's views
    (the weak view also feeds Stage 3). Every method accepts uint8 (0..255) or float ([0, 1])
    batches and returns float batches in [0, 1].
    """

    crop_scale: tuple[float, float] = (0.2, 1.0)
    num_ops: int = 4
    magnitude: float | None = None
    max_magnitude: float = MAX_LEVEL
    cutout_fraction: float = 0.5
    weak_shift: float = 0.125
    flip: bool = True

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if self.num_ops < 0:
            raise ValueError(f"num_ops must be >= 0, got {self.num_ops}")
        if not 0.0 <= self.max_magnitude <= MAX_LEVEL:
            raise ValueError(f"max_magnitude must be in [0, {MAX_LEVEL}], got {self.max_magnitude}")
        if self.magnitude is not None and not 0.0 <= self.magnitude <= MAX_LEVEL:
            raise ValueError(f"magnitude must be in [0, {MAX_LEVEL}] or None, got {self.magnitude}")
        if not 0.0 <= self.cutout_fraction <= 1.0:
            raise ValueError(f"cutout_fraction must be in [0, 1], got {self.cutout_fraction}")
        if not 0.0 <= self.weak_shift < 1.0:
            raise ValueError(f"weak_shift must be in [0, 1), got {self.weak_shift}")

    def _rand_augment(self, x: Tensor) -> Tensor:
        return rand_augment(x, self.num_ops, self.magnitude, self.max_magnitude)

    def view_a(self, x: Tensor) -> Tensor:
        """t_a: random-resized-crop + flip + RandAugment (METHOD.md, Stage 1 Decision)."""
        x = random_resized_crop(to_float(x), self.crop_scale, flip_p=self._flip_p)
        return self._rand_augment(x)

    def view_b(self, x: Tensor) -> Tensor:
        """t_b: t_a followed by Cutout (METHOD.md, Stage 1 Decision)."""
        return cutout(self.view_a(x), self.cutout_fraction)

    def strong(self, x: Tensor) -> Tensor:
        """Strong view: RandAugment + Cutout, no crop (METHOD.md, Stage 2 step 2)."""
        return cutout(self._rand_augment(to_float(x)), self.cutout_fraction)

    def weak(self, x: Tensor) -> Tensor:
        """Weak view: flip + small shift (METHOD.md, Stage 2 step 3 and Stage 3)."""
        return weak_view(to_float(x), self.weak_shift, flip_p=self._flip_p)

    @property
    def _flip_p(self) -> float:
        """Horizontal flips are on by default (METHOD.md); off for mirror-sensitive data."""
        return 0.5 if self.flip else 0.0
