"""Pretrained backbones from other libraries, and the stage-1 backbone of an earlier run.

A backbone source is a string: ``torchvision:NAME``, ``timm:NAME``, ``open_clip:NAME`` (or
``open_clip:NAME@TAG``) or ``run:PATH``; the plain names of ``BACKBONES`` (``small_cnn``,
``resnet18``, ...) are not sources here. Whatever the source, ``load_pretrained`` returns a
``PretrainedBackbone``: like ``Backbone`` it takes float images in [0, 1] of any size and
returns ``B x out_dim`` features, so stage 1 can train it (METHOD.md, Stage 1, Backbone) and
the frozen path can extract with it.

Each model brings its own preprocessing (input size, resize and crop, mean and std), which
``Preprocess`` applies to batched tensors, on whatever device the batch is on, so that it
equals the library's own PIL transform up to the resampling of uint8 pixels.

Offline by default: weights come from a local file (``weights``), from the library's own
cache when it already holds them, or are downloaded only when ``download`` is true. Every
failure (missing file, unreadable file, weights that do not fit, unknown name, missing
optional package) is a one-line ``ValueError`` / ``FileNotFoundError`` saying what to do.
"""

from __future__ import annotations

import difflib
import importlib
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LUMA = (0.299, 0.587, 0.114)
"""RGB -> grey weights (ITU-R 601-2), as ``smcluster.data.pixels`` and Pillow use."""

INTERPOLATIONS = ("bilinear", "bicubic")


def _resized_center(height: int, width: int, size: int) -> tuple[int, int]:
    """Shorter side to ``size``, the longer one scaled and truncated (torchvision's Resize)."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def _resized_squash(height: int, width: int, size: int) -> tuple[int, int]:
    """Both sides to ``size``, ignoring the aspect ratio (timm's and open_clip's "squash")."""
    del height, width
    return size, size


RESIZE_MODES: dict[str, Callable[[int, int, int], tuple[int, int]]] = {
    "center": _resized_center,
    "squash": _resized_squash,
}


@dataclass(frozen=True)
class Preprocess:
    """A model's inference preprocessing, applied to batches: ``preprocess(images)``.

    Channels are converted to ``channels`` (grey -> RGB replicates the plane), the image is
    resized to ``resize_size`` (``crop`` says how: "center" scales the shorter side,
    "squash" both) with antialiasing, centre-cropped to ``input_size`` and normalised with
    ``mean``/``std`` (``None``: the network normalises its input itself).
    """

    input_size: int
    resize_size: int
    crop: str = "center"
    interpolation: str = "bilinear"
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    channels: int = 3

    def __post_init__(self) -> None:
        if self.crop not in RESIZE_MODES:
            raise ValueError(f"crop mode {self.crop!r} is not supported; use {list(RESIZE_MODES)}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(
                f"interpolation {self.interpolation!r} is not supported; use {INTERPOLATIONS}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if not 0 < self.input_size <= self.resize_size:
            raise ValueError(
                f"input_size {self.input_size} must be positive and at most "
                f"resize_size {self.resize_size}"
            )
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        if self.mean is not None and not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(f"mean and std need {self.channels} values each")

    def __call__(self, images: Tensor) -> Tensor:
        """``B x C x H x W`` uint8 or float in [0, 1] -> float ``B x channels x S x S``."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = self._convert_channels(x)
        height, width = x.shape[-2:]
        new_h, new_w = RESIZE_MODES[self.crop](height, width, self.resize_size)
        if new_w != width:
            x = self._resize(x, height, new_w)
        if new_h != height:
            x = self._resize(x, new_h, new_w)
        size = self.input_size
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        x = x[:, :, top : top + size, left : left + size]
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
            x = (x - mean) / std
        return x

    def _resize(self, x: Tensor, height: int, width: int) -> Tensor:
        """One antialiased pass, clamped to [0, 1].

        Resizing width then height, with the range clamped in between, follows Pillow's two
        separable passes over uint8 pixels: bicubic overshoot on sharp edges is clipped after
        each pass (a single 2-D pass differs from Pillow by up to 20/255 on noisy images).
        Recent Pillow sometimes runs the vertical pass first; on smooth pictures the order
        changes nothing, on pure noise single pixels then differ as much (tests/models).
        """
        return F.interpolate(
            x, size=(height, width), mode=self.interpolation, align_corners=False, antialias=True
        ).clamp_(0.0, 1.0)

    def _convert_channels(self, x: Tensor) -> Tensor:
        have = x.shape[1]
        if have == self.channels:
            return x
        if have == 1 and self.channels == 3:
            return x.expand(-1, 3, -1, -1)
        if have == 3 and self.channels == 1:
            weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
            return (x * weights).sum(dim=1, keepdim=True)
        raise ValueError(f"cannot convert {have}-channel images to {self.channels} channels")


class PretrainedBackbone(nn.Module):
    """A model's feature extractor behind its own preprocessing.

    ``forward`` takes float images in [0, 1] of any size and channel count 1 or 3 and returns
    ``B x out_dim`` features, as ``Backbone`` does; unlike ``Backbone`` its normalisation is
    the model's own and is never refitted to the data.
    """

    def __init__(self, network: nn.Module, preprocess: Preprocess, source: str) -> None:
        super().__init__()
        self.network = network.to(memory_format=torch.channels_last)
        self.preprocess = preprocess
        self.source = source
        self.out_dim = _probe_out_dim(self.network, preprocess)

    def forward(self, x: Tensor) -> Tensor:
        x = self.preprocess(x).contiguous(memory_format=torch.channels_last)
        return self.network(x).flatten(1)


@torch.no_grad()
def _probe_out_dim(network: nn.Module, preprocess: Preprocess) -> int:
    """Feature size from one forward pass, the one answer that holds for every model family."""
    was_training = network.training
    network.eval()
    size = preprocess.input_size
    try:
        out = network(torch.zeros(1, preprocess.channels, size, size))
    finally:
        network.train(was_training)
    return int(out.flatten(1).shape[1])


def _model_of(source: str) -> str:
    return f"{source} model"


def _close_names(name: str, names: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f"; close names: {', '.join(close)}" if close else ""


def _import_extra(module: str, extra: str) -> Any:
    """An optional package, or a clear error saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ValueError(
            f"{module} is not installed: pip install smcluster[{extra}] ({error})"
        ) from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file (``torch.save`` state dict, or ``.safetensors``).

    A checkpoint that wraps its weights under ``"state_dict"`` or ``"model"`` is unwrapped,
    and a ``module.`` prefix (DataParallel) is removed. Loaded with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            safetensors_torch = _import_extra("safetensors.torch", "timm")
            state: Any = safetensors_torch.load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"cannot read weights file {path} ({type(error).__name__}: {first_line}); it must "
            "be a state dict saved with torch.save(model.state_dict(), FILE) or .safetensors"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(
            f"weights file {path} holds no state dict (a mapping of names to tensors); save "
            "one with torch.save(model.state_dict(), FILE)"
        )
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def _examples(keys: list[str], count: int = 3) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > count else ""
    return ", ".join(keys[:count]) + more


def load_matching(module: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """``module.load_state_dict(state)`` if every key and shape matches, else a clear error.

    ``what`` names the weights and the model in the message, e.g. "x.pt for torchvision:vgg11".
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [
        f"{k} (file {list(state[k].shape)}, model {list(own[k].shape)})"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    problems = []
    if reshaped:
        problems.append(f"{len(reshaped)} of other shape: {_examples(reshaped)}")
    if missing:
        problems.append(f"{len(missing)} missing: {_examples(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_examples(unexpected)}")
    if problems:
        raise ValueError(
            f"the weights {what} do not fit: keys {'; '.join(problems)}. Use the weights "
            "saved from this very architecture"
        )
    module.load_state_dict(state)


def _without_prefix(state: Mapping[str, Tensor], prefixes: Iterable[str]) -> dict[str, Tensor]:
    prefixes = tuple(prefixes)
    return {k: v for k, v in state.items() if not (prefixes and k.startswith(prefixes))}


def _no_weights_error(source: str, expected: str, how: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"no weights for {source}: {expected}; {how}, or pass --weights FILE (a state dict)"
    )


# torchvision ----------------------------------------------------------------------------


def _drop_classifier(net: nn.Module, source: str) -> str:
    """Replace the last ``nn.Linear`` (the classification layer) by ``Identity``.

    torchvision names it ``fc`` (ResNets), ``heads.head`` (ViTs), ``head`` (Swin) or
    ``classifier.N`` (ConvNeXt, EfficientNet, MobileNet, VGG); the last Linear covers them all.
    Returns its name, whose keys a full model's weights file holds and a backbone does not.
    """
    linears = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{source} has no linear classification layer to remove")
    name = linears[-1]
    parent_name, _, child = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, child, nn.Identity())
    return name


def _torchvision_default_weights(name: str) -> Any | None:
    try:
        return torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def _torchvision_preprocess(default: Any | None) -> Preprocess:
    if default is None:
        return Preprocess(input_size=224, resize_size=256)
    transform = default.transforms()
    crop = int(transform.crop_size[0])
    return Preprocess(
        input_size=crop,
        resize_size=int(transform.resize_size[0]),
        interpolation=transform.interpolation.value,
        mean=tuple(float(v) for v in transform.mean),
        std=tuple(float(v) for v in transform.std),
    )


def torchvision_cache_file(default: Any) -> Path:
    """Where ``torch.hub`` keeps (or would keep) the file of a torchvision weights enum."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(default.url).path)


def _torchvision_state(
    source: str, default: Any | None, weights: Path | None, download: bool
) -> dict[str, Tensor]:
    if weights is not None:
        return read_state_dict(weights)
    if default is None:
        raise FileNotFoundError(
            f"torchvision has no pretrained weights for {source}: pass --weights FILE"
        )
    if download:
        return default.get_state_dict(progress=True, check_hash=True)
    cached = torchvision_cache_file(default)
    if cached.is_file():
        return read_state_dict(cached)
    raise _no_weights_error(
        source, f"{cached} is not there", f"pass --download to fetch {default.url}"
    )


def load_torchvision(
    name: str, *, weights: Path | None, download: bool, random_init: bool
) -> PretrainedBackbone:
    """A torchvision classification model without its classifier, e.g. ``resnet50``."""
    source = f"torchvision:{name}"
    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise ValueError(f"unknown torchvision model {name!r}{_close_names(name, names)}")
    default = _torchvision_default_weights(name)
    net = torchvision.models.get_model(name, weights=None)
    classifier = _drop_classifier(net, source)
    if not random_init:
        state = _torchvision_state(source, default, weights, download)
        what = f"{weights or 'cached'} for {source}"
        load_matching(net, _without_prefix(state, [f"{classifier}."]), what)
    return PretrainedBackbone(net, _torchvision_preprocess(default), source)


# timm -----------------------------------------------------------------------------------


def _timm_preprocess(timm: Any, model: nn.Module, source: str) -> Preprocess:
    config = timm.data.resolve_data_config({}, model=model)
    _, height, width = config["input_size"]
    if height != width:
        raise ValueError(f"{source} wants {height}x{width} input; only square input is supported")
    crop_mode = config.get("crop_mode") or "center"
    if crop_mode not in RESIZE_MODES:
        raise ValueError(f"{source} uses crop mode {crop_mode!r}; supported: {list(RESIZE_MODES)}")
    return Preprocess(
        input_size=int(height),
        resize_size=math.floor(height / config["crop_pct"]),
        crop=crop_mode,
        interpolation=config["interpolation"],
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
    )


def _timm_cached_file(model: nn.Module) -> Path | None:
    """The model's default weights if the Hugging Face cache already holds them."""
    hub_id = (getattr(model, "pretrained_cfg", None) or {}).get("hf_hub_id")
    if not hub_id:
        return None
    hub = _import_extra("huggingface_hub", "timm")
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = hub.try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _timm_classifier_prefixes(model: nn.Module) -> list[str]:
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return [f"{name}." for name in names]


def _timm_weights(model: nn.Module, path: Path, source: str) -> None:
    """Load a local weights file the way timm does: its filter, then the head dropped."""
    state = read_state_dict(path)
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if convert is not None:
        try:
            state = convert(state, model)
        except Exception as error:
            raise ValueError(
                f"the weights {path} for {source} could not be converted ({error})"
            ) from None
    state = _without_prefix(state, _timm_classifier_prefixes(model))
    load_matching(model, state, f"{path} for {source}")


def load_timm(
    name: str, *, weights: Path | None, download: bool, random_init: bool
) -> PretrainedBackbone:
    """A timm model without its classifier (``num_classes=0``), e.g. ``vit_small_patch16_224``."""
    timm = _import_extra("timm", "timm")
    source = f"timm:{name}"
    if not timm.is_model(name):
        raise ValueError(f"unknown timm model {name!r}{_close_names(name, timm.list_models())}")
    fetch = download and weights is None and not random_init
    model = timm.create_model(name, pretrained=fetch, num_classes=0)
    if not (fetch or random_init):
        path = weights or _timm_cached_file(model)
        if path is None:
            hub_id = model.pretrained_cfg.get("hf_hub_id") or "none known"
            raise _no_weights_error(
                source,
                f"not in the Hugging Face cache (hub id {hub_id})",
                "pass --download to fetch them",
            )
        _timm_weights(model, Path(path), source)
    return PretrainedBackbone(model, _timm_preprocess(timm, model, source), source)


# open_clip ------------------------------------------------------------------------------


def _open_clip_preprocess(open_clip: Any, model: nn.Module, name: str, tag: str) -> Preprocess:
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import merge_preprocess_dict

    config = get_model_preprocess_cfg(model)
    if tag:
        config = merge_preprocess_dict(config, open_clip.get_pretrained_cfg(name, tag))
    size = config["size"]
    size = size if isinstance(size, int) else size[0]
    modes = {"shortest": "center", "squash": "squash"}
    mode = config.get("resize_mode", "shortest")
    if mode not in modes:
        raise ValueError(f"open_clip:{name} resizes in mode {mode!r}; supported: {list(modes)}")
    return Preprocess(
        input_size=int(size),
        resize_size=int(size),
        crop=modes[mode],
        interpolation=config.get("interpolation", "bicubic"),
        mean=tuple(float(v) for v in config["mean"]),
        std=tuple(float(v) for v in config["std"]),
    )


def load_open_clip(
    name: str, *, weights: Path | None, download: bool, random_init: bool
) -> PretrainedBackbone:
    """The image tower of an open_clip model: ``NAME`` (weights file) or ``NAME@TAG``.

    A weights file may hold the whole CLIP model (its ``visual.*`` keys are used) or the
    image tower alone; ``@TAG`` names the pretrained weights to fetch with ``download`` and
    whose preprocessing to use.
    """
    open_clip = _import_extra("open_clip", "open_clip")
    model_name, _, tag = name.partition("@")
    source = f"open_clip:{name}"
    if model_name not in open_clip.list_models():
        raise ValueError(
            f"unknown open_clip model {model_name!r}"
            f"{_close_names(model_name, open_clip.list_models())}"
        )
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if tag and tag not in tags:
        raise ValueError(f"open_clip has no tag {tag!r} for {model_name}; tags: {tags}")
    fetch = download and weights is None and not random_init
    if not (fetch or random_init or weights is not None):
        how = (
            f"pass --download to fetch tag {tag}"
            if tag
            else f"pass --download with a tag, open_clip:{model_name}@TAG (tags: {tags})"
        )
        raise _no_weights_error(source, "open_clip loads weights only from a file", how)
    if fetch and not tag:
        raise ValueError(f"name the weights to download: open_clip:{model_name}@TAG ({tags})")
    model = open_clip.create_model(model_name, pretrained=tag if fetch else None)
    visual = model.visual
    if weights is not None and not random_init:
        state = read_state_dict(weights)
        if any(key.startswith("visual.") for key in state):
            state = {k[len("visual.") :]: v for k, v in state.items() if k.startswith("visual.")}
        load_matching(visual, state, f"{weights} for {source} (image tower)")
    preprocess = _open_clip_preprocess(open_clip, model, model_name, tag)
    return PretrainedBackbone(visual, preprocess, source)


# run ------------------------------------------------------------------------------------


def load_run_backbone(
    name: str, *, weights: Path | None, download: bool, random_init: bool
) -> PretrainedBackbone:
    """The stage-1 online backbone of a finished smcluster run in folder ``name``.

    Its normalisation is inside the backbone already; the preprocessing only brings new
    images to the run's size and channels.
    """
    del download
    # Imported here: the run folder's modules import the configuration, which imports this.
    from smcluster.config import Config
    from smcluster.runfolder import FILES, RunFolder
    from smcluster.stages.features import stage1_backbone

    source = f"run:{name}"
    if weights is not None:
        raise ValueError(f"{source} takes its weights from the run; leave out --weights")
    folder = RunFolder(name, writer=False)
    if not folder.exists():
        raise FileNotFoundError(f"{folder.root} is not a run folder (no {FILES['config']})")
    try:
        checkpoint = folder.load_checkpoint("features")
    except Exception as error:
        raise ValueError(
            f"cannot read {folder.checkpoint_path('features')} ({type(error).__name__})"
        ) from None
    if checkpoint is None:
        raise FileNotFoundError(
            f"{folder.root} has no stage-1 checkpoint ({folder.checkpoint_path('features')}): "
            "run `smcluster fit --resume` on it first"
        )
    config = Config.load(folder.path("config"))
    backbone = stage1_backbone(config, checkpoint, load_weights=not random_init)
    size, channels = int(checkpoint["image_size"]), int(checkpoint["channels"])
    preprocess = Preprocess(
        input_size=size, resize_size=size, mean=None, std=None, channels=channels
    )
    return PretrainedBackbone(backbone, preprocess, source)


# registry -------------------------------------------------------------------------------

Loader = Callable[..., PretrainedBackbone]

PRETRAINED_SOURCES: dict[str, Loader] = {
    "torchvision": load_torchvision,
    "timm": load_timm,
    "open_clip": load_open_clip,
    "run": load_run_backbone,
}


def parse_backbone(source: str) -> tuple[str, str]:
    """``"timm:vit_small_patch16_224"`` -> ``("timm", "vit_small_patch16_224")``.

    A plain name (no colon) is ``("", name)``: one of ``BACKBONES``, not a pretrained source.
    """
    kind, colon, name = source.partition(":")
    if not colon:
        return "", source
    if kind not in PRETRAINED_SOURCES:
        raise ValueError(
            f"unknown backbone source {kind!r} in {source!r}; use one of "
            f"{', '.join(f'{k}:NAME' for k in PRETRAINED_SOURCES)} or a plain backbone name"
        )
    if not name:
        raise ValueError(f"backbone source {source!r} names no model: write {kind}:NAME")
    return kind, name


def is_pretrained(source: str) -> bool:
    """True for ``KIND:NAME`` sources, False for the plain names of ``BACKBONES``."""
    return bool(parse_backbone(source)[0])


def load_pretrained(
    source: str, *, weights: str | Path | None = None, download: bool = False
) -> PretrainedBackbone:
    """The backbone ``source`` with its weights, e.g. ``load_pretrained("torchvision:resnet50")``.

    ``weights`` is a local file; without one, the library's cache is used if it holds the
    default weights, and they are downloaded only when ``download`` is true.
    """
    kind, name = _pretrained_kind(source)
    path = Path(weights) if weights is not None else None
    if path is not None and not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    return PRETRAINED_SOURCES[kind](name, weights=path, download=download, random_init=False)


def build_pretrained(source: str) -> PretrainedBackbone:
    """The architecture and preprocessing of ``source`` with random weights.

    For loading a saved state dict into (a run that trained or used this backbone) and for
    tests and speed measurements; nothing is read or downloaded but a ``run:`` config.
    """
    kind, name = _pretrained_kind(source)
    return PRETRAINED_SOURCES[kind](name, weights=None, download=False, random_init=True)


def _pretrained_kind(source: str) -> tuple[str, str]:
    kind, name = parse_backbone(source)
    if not kind:
        raise ValueError(
            f"{source!r} is not a pretrained source (KIND:NAME, KIND one of "
            f"{', '.join(PRETRAINED_SOURCES)}); build plain backbones with build_backbone"
        )
    return kind, name
